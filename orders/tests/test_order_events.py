"""Each order's timeline (its ``OrderEvent`` rows) tells its status as it was when each event was
written: the last event's status is the order's, whatever landed in between."""

from decimal import Decimal

import pytest

from brokers.base import Status
from brokers.client import AccountBroker
from brokers.errors import NetworkError, OrderRejected
from brokers.paper import engine
from orders import services
from orders.models import Order
from orders.tests.factories import broker_state, place
from tradingplatform import background

pytestmark = pytest.mark.django_db(transaction=True)
D = Decimal


def resting(trader, account):
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=D("1500"), bid=D("1499.9"), ask=D("1500.1"))
    order = place(trader, account, order_type="LIMIT", price="1400", quantity=2)
    assert background.wait_idle(30)
    order.refresh_from_db()
    assert order.status == Order.Status.OPEN
    return order


def broker_word_lands(order, **state):
    """The broker's update of ``order`` applied by another worker (its own copy of the row)."""
    told = broker_state(order, **state)
    services.order_apply_broker_state(Order.objects.get(pk=order.pk), told, cause="Paper exchange's order update")


def timeline(order):
    return list(order.events.order_by("id").values_list("kind", "from_status", "to_status"))


def test_a_lost_cancel_answer_after_the_brokers_word_closed_it_shows_it_cancelled(trader, account, monkeypatch):
    """The broker cancelled the order and said so (its update recorded CANCELLED) before the
    cancel's own answer was lost: the "answer lost" event says CANCELLED, not OPEN after Cancelled."""
    order = resting(trader, account)

    def cancelled_then_lost(self, broker_order_id):
        broker_word_lands(order, status=Status.CANCELLED, pending_quantity=0, cancelled_quantity=2)
        raise NetworkError("read timed out")

    monkeypatch.setattr(AccountBroker, "cancel_order", cancelled_then_lost)
    with pytest.raises(services.OrderActionRefused):
        services.order_cancel(order=Order.objects.get(pk=order.pk), actor=trader, cause="trader via the order page")
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    assert timeline(order)[-2:] == [
        ("cancelled", "OPEN", "CANCELLED"),
        ("cancel_unknown", "CANCELLED", "CANCELLED"),
    ]


def test_a_modify_refused_after_the_brokers_word_filled_it_shows_it_filled(trader, account, monkeypatch):
    """The order filled, and its fill was recorded, while the modify was on its way; the broker
    refused the modify: the refusal's event says FILLED, not OPEN after Filled."""
    order = resting(trader, account)

    def filled_then_refused(self, broker_order_id, change):
        broker_word_lands(order, status=Status.FILLED, filled_quantity=2, pending_quantity=0, average_price=D("1400"))
        raise OrderRejected("other", "Order is already complete")

    monkeypatch.setattr(AccountBroker, "modify_order", filled_then_refused)
    with pytest.raises(services.OrderActionRefused):
        services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="API by trader", price="1401")
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED
    assert timeline(order)[-2:] == [
        ("filled", "OPEN", "FILLED"),
        ("modify_rejected", "FILLED", "FILLED"),
    ]


def test_an_order_found_by_its_tag_after_a_lost_answer_says_so_in_its_timeline(trader, account):
    """The placement's answer was lost and the order was found in the broker's book by its tag:
    its timeline says so (why it took that long, and that it was sent once), not that the broker's
    answer said it was filled."""
    from brokers.paper.models import PaperClient

    engine.client_get_or_create(user_id=account.client_id)
    PaperClient.objects.filter(user_id=account.client_id).update(timeout_rate=1)
    order = place(trader, account, cause="ticket by trader")
    assert order.status == Order.Status.FILLED
    submitted, filled = order.events.order_by("id")[1:3]
    assert (submitted.kind, submitted.cause) == ("submitted", "ticket by trader")
    assert "answer was lost" in submitted.message and "found by its tag" in submitted.message
    assert filled.kind == "filled" and "answer" not in filled.cause and "by its tag" in filled.cause
