"""Review: a ``paper`` account signs in to the paper exchange with its client id alone (the
in-process adapter has no credentials). A client that staff gave a login password, for a trader's
``kite`` account through the Kite face (README: "add a Kite account with that client's id, API key
and secret"), could so be taken by any other trader adding a paper account with that client id:
they read the first trader's orders and fills, and traded on their funds."""

import pytest

from accounts.tests.factories import make_broker_account
from brokers import services as broker_services
from brokers.client import AccountBroker
from brokers.errors import AuthError
from orders.tests.factories import place
from portfolio.models import Position, Trade

pytestmark = pytest.mark.django_db(transaction=True)


def test_another_trader_cannot_take_a_kite_face_client_as_a_paper_account(kite_on_face, trader, other_trader):
    mine = place(trader, kite_on_face, quantity=2)
    assert mine.broker_order_id
    theirs = make_broker_account(other_trader, broker="paper", client_id=kite_on_face.client_id, label="Taken")

    with pytest.raises(AuthError):
        broker_services.session_connect(account=theirs, actor=other_trader)
    with pytest.raises(AuthError):
        seen = AccountBroker(theirs, attempts=1).orders()
        pytest.fail(f"another trader's paper account read the kite client's orders: {seen}")


def test_a_kite_face_clients_fills_are_not_told_to_another_traders_paper_account(kite_on_face, trader, other_trader):
    """The exchange tells the platform of its changes in-process, as the ``paper`` broker's, by client
    id: a paper account with the Kite client's id (refused a session, but still there) had the other
    trader's fills recorded as its own, in its positions and PnL."""
    from tradingplatform import background

    theirs = make_broker_account(other_trader, broker="paper", client_id=kite_on_face.client_id, label="Taken")
    mine = place(trader, kite_on_face, quantity=2)
    assert mine.broker_order_id
    assert background.wait_idle(30)

    assert not Trade.objects.filter(account=theirs).exists(), "the kite client's fill was recorded on a paper account"
    assert not Position.objects.filter(account=theirs).exists()
