"""Review: the monitoring batch's one price request per broker went through whichever account came
first, another trader's as well: one trader's Kite session (their API app, its quote budget) asked
for the instruments another trader holds. Market data at the paper exchange, which has no per-client
credentials, is still asked once for the batch."""

import pytest
from django.contrib.auth.hashers import make_password

from accounts.tests.factories import make_kite_account
from brokers import services as broker_services
from brokers.paper import engine
from brokers.paper.models import PaperClient
from monitoring import cycle
from monitoring.models import AccountRun
from orders.tests.factories import place
from portfolio.models import Position

from .test_cycle import D, set_price

pytestmark = pytest.mark.django_db(transaction=True)


def kite_account(owner, client_id):
    """A kite account of ``owner`` connected to its own client at the paper exchange's Kite face."""
    exchange_client = PaperClient.objects.create(user_id=client_id, password=make_password("pw-123456"))
    account = make_kite_account(
        owner, client_id=client_id, api_key=exchange_client.api_key, api_secret=exchange_client.api_secret
    )
    _, request_token = engine.login_with_password(
        api_key=exchange_client.api_key, user_id=client_id, password="pw-123456"
    )
    broker_services.connect_complete(account=account, request_token=request_token, actor=owner)
    return account


def test_a_traders_kite_session_asks_prices_only_for_that_traders_accounts(
    face_url, settings, trader, other_trader, instruments, monkeypatch
):
    settings.KITE_API_URL = face_url
    set_price("1500")
    mine, theirs = kite_account(trader, "AB1234"), kite_account(other_trader, "CD5678")
    place(trader, mine, quantity=4)
    place(other_trader, theirs, symbol="TCS", quantity=3)
    asked = []
    real_ltp = cycle.AccountBroker.ltp

    def counted_ltp(self, instruments):
        asked.append((self.account.pk, sorted(instruments)))
        return real_ltp(self, instruments)

    monkeypatch.setattr(cycle.AccountBroker, "ltp", counted_ltp)
    set_price("1510")
    results = cycle.accounts_monitor(accounts=[mine, theirs])
    assert [r.status for r in results] == [AccountRun.Status.OK] * 2, [r.errors for r in results]
    assert sorted(asked) == sorted([(mine.pk, ["NSE:INFY"]), (theirs.pk, ["NSE:TCS"])]), (
        "a trader's broker session was used for another trader's prices"
    )
    assert Position.objects.get(account=mine).last_price == D("1510")
    assert Position.objects.get(account=theirs).last_price > 0
