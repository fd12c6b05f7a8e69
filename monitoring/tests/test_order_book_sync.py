"""Steps 1-3 of the cycle against the paper exchange: the broker's order book and fills brought
into our orders, trades and positions, whatever order, how often and from where they come."""

import time as clock
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

from django.utils import timezone

from brokers import markets
from brokers.client import AccountBroker
from brokers.paper import engine
from brokers.paper.models import PaperClient, PaperOrder
from monitoring import cycle
from monitoring.models import BrokerSnapshot
from orders import services
from orders.models import Order
from orders.tests.factories import place
from portfolio.models import Position, Trade

D = Decimal


def monitor(account):
    return cycle.account_monitor(account=account)


def set_price(last, symbol="INFY", *, volume=None):
    """The quote at ``last``, one tick either side; ``volume``: what a tick may fill (partial fills)."""
    last = D(last)
    engine.market_set(
        exchange="NSE", tradingsymbol=symbol, last_price=last, bid=last - D("0.1"), ask=last + D("0.1"),
        tick_volume=volume,
    )  # fmt: skip


def exchange_client(account) -> PaperClient:
    return engine.client_get_or_create(user_id=account.client_id)


def knobs(account, **values):
    exchange_client(account)
    PaperClient.objects.filter(user_id=account.client_id).update(**values)


def lost(trader, account, **order) -> Order:
    """An order the exchange took whose answer was lost, and the look-up by its tag too: SUBMITTED,
    no broker id known (``services.order_outcome_unknown``)."""
    knobs(account, timeout_rate=1)

    def lookup_fails(_seconds):
        knobs(account, timeout_rate=0, error_rate=1)

    placed = place(trader, account, broker=AccountBroker(account, sleep=lookup_fails), **order)
    knobs(account, timeout_rate=0, error_rate=0)
    assert PaperOrder.objects.filter(tag=placed.reference).exists()
    assert (placed.status, placed.broker_order_id) == (Order.Status.SUBMITTED, None)
    return placed


def written_a_minute_ago(order: Order) -> None:
    """Written, and its answer lost, over ``UNSENT_STALE_S`` ago on today's trading date (in the first
    minute after midnight in India this waits that minute out: an earlier day's is closed with it)."""
    ago = timedelta(seconds=services.UNSENT_STALE_S + 1)
    while markets.trading_date(timezone.now() - ago) != markets.trading_date():
        clock.sleep(1)
    at = timezone.now() - ago
    Order.objects.filter(pk=order.pk).update(created_at=at, updated_at=at)


def test_a_fill_recorded_before_its_order_had_its_broker_id_is_linked_in_the_same_run(trader, account, monkeypatch):
    """Kite's fill list names no tag: the fill of an order whose answer was lost is recorded (step 2)
    before the order is found in the book by its tag and given its broker id (step 3). It was linked
    to it only by the next run, and until then step 4 took the order's fill for one not in the
    position yet (counted twice where an entry's exits are sized)."""
    listed = AccountBroker.trades
    monkeypatch.setattr(AccountBroker, "trades", lambda broker: [replace(t, order_tag=None) for t in listed(broker)])
    set_price("1500")
    order = lost(trader, account, quantity=3)
    run = monitor(account)
    assert "recorded 1 fill(s)" in run.actions
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED and order.broker_order_id
    assert Trade.objects.get(account=account).order_id == order.pk


def test_an_order_failed_as_not_at_the_broker_then_found_there_drops_its_failure(trader, account, monkeypatch):
    """Its answer lost, a minute later the book did not list it (lagging the order it had just
    taken): FAILED, not at the broker. The next run finds it there after all: open, and no longer
    showing the failure's reason and kind (the order book, the API and a basket's results did)."""
    set_price("1500")
    order = lost(trader, account, quantity=2, order_type="LIMIT", price="1450")
    written_a_minute_ago(order)
    listed = AccountBroker.orders
    monkeypatch.setattr(AccountBroker, "orders", lambda broker: [o for o in listed(broker) if o.tag != order.reference])
    monitor(account)
    order.refresh_from_db()
    assert order.status == Order.Status.FAILED and order.reject_kind == "network"
    monkeypatch.setattr(AccountBroker, "orders", listed)
    monitor(account)
    order.refresh_from_db()
    assert order.status == Order.Status.OPEN and order.broker_order_id
    assert (order.reject_kind, order.reject_reason) == ("", "")
    assert "found at the broker after all" in order.events.get(to_status=Order.Status.OPEN).cause


def test_a_snapshot_the_database_refuses_does_not_stop_the_accounts_fills_and_orders(trader, account, monkeypatch):
    """The broker's data is read: keeping its raw copy (for staff) failing for one account, its
    fills are still recorded and its orders reconciled; the failure is the run's error."""
    set_price("1500")
    order = place(trader, account, quantity=10, order_type="LIMIT", price="1490")
    set_price("1489")
    real = BrokerSnapshot.objects.bulk_create

    def refused(rows, **options):
        if any(row.kind == "orders" for row in rows):
            raise ValueError("row size too large")
        return real(rows, **options)

    monkeypatch.setattr(BrokerSnapshot.objects, "bulk_create", refused)
    run = monitor(account)
    assert [e["step"] for e in run.errors] == ["1_fetch"] and "row size too large" in run.errors[0]["error"]
    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == (Order.Status.FILLED, 10)
    assert Position.objects.get(account=account).net_quantity == 10
