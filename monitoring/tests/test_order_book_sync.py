"""Steps 1-3 of the cycle against the paper exchange: the broker's order book and fills brought
into our orders, trades and positions, whatever order, how often and from where they come."""

import threading
import time as clock
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from accounts.tests.factories import make_broker_account
from brokers import markets
from brokers.client import AccountBroker
from brokers.paper import engine
from brokers.paper.models import PaperClient, PaperOrder
from monitoring import cycle, tasks
from monitoring.models import AccountRun, BrokerSnapshot, MonitoringRun
from orders import services
from orders.models import Order, OrderEvent
from orders.tests.factories import place, recording_fails_for
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


def test_partial_fills_move_an_order_on_run_by_run_and_each_fill_is_recorded_once(trader, account):
    set_price("1500")
    order = place(trader, account, quantity=10, order_type="LIMIT", price="1490")
    monitor(account)
    for filled in (4, 8):
        set_price("1489", volume=4)  # the ask crosses 1490: 4 a tick
        run = monitor(account)
        assert run.status == AccountRun.Status.OK, run.errors
        order.refresh_from_db()
        assert (order.status, order.filled_quantity) == (Order.Status.PARTIALLY_FILLED, filled)
        assert Position.objects.get(account=account).net_quantity == filled
    set_price("1489", volume=4)
    monitor(account)
    order.refresh_from_db()
    assert (order.status, order.filled_quantity, order.average_price) == (Order.Status.FILLED, 10, D("1490"))
    kinds = list(order.events.order_by("pk").values_list("kind", flat=True))
    assert kinds[-3:] == ["partially_filled", "fill", "filled"]
    monitor(account)  # the same book and fills again
    assert order.events.count() == len(kinds)
    assert list(Trade.objects.filter(account=account).order_by("pk").values_list("quantity", "order_id")) == [
        (4, order.pk),
        (4, order.pk),
        (2, order.pk),
    ]
    assert Position.objects.get(account=account).net_quantity == 10


def test_a_book_read_before_a_fill_never_moves_the_order_back(trader, account, monkeypatch):
    set_price("1500")
    order = place(trader, account, quantity=10, order_type="LIMIT", price="1490")
    monitor(account)
    book_before = AccountBroker(account).orders()  # the order open
    set_price("1489")
    monitor(account)
    order.refresh_from_db()
    events = order.events.count()
    monkeypatch.setattr(AccountBroker, "orders", lambda broker: book_before)  # a lagging replica, a retry's old answer
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == (Order.Status.FILLED, 10)
    assert order.events.count() == events


def test_an_order_cancelled_at_the_broker_after_part_filled_keeps_its_fills(trader, account):
    set_price("1500")
    order = place(trader, account, quantity=10, order_type="LIMIT", price="1490")
    set_price("1489", volume=3)
    engine.order_cancel(client=exchange_client(account), order_id=PaperOrder.objects.get(tag=order.reference).order_id)
    monitor(account)
    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == (Order.Status.CANCELLED, 3)
    assert Trade.objects.get(account=account).order_id == order.pk
    assert Position.objects.get(account=account).net_quantity == 3


def test_orders_placed_in_the_brokers_app_count_in_the_position_and_make_no_order_rows(trader, account):
    set_price("1500")
    client = exchange_client(account)
    terms = {"client": client, "exchange": "NSE", "tradingsymbol": "INFY", "transaction_type": "BUY", "product": "MIS"}
    engine.order_place(**terms, order_type="MARKET", quantity=5)
    engine.order_place(**terms, order_type="LIMIT", price=D("1450"), quantity=5)  # rests
    mine = place(trader, account, quantity=2)
    for _ in range(2):
        run = monitor(account)
        assert run.status == AccountRun.Status.OK, run.errors
    assert list(Order.objects.values_list("pk", flat=True)) == [mine.pk]
    assert sorted(Trade.objects.filter(account=account).values_list("quantity", "order_id")) == [
        (2, mine.pk),
        (5, None),
    ]
    assert Position.objects.get(account=account).net_quantity == 7


def test_a_fill_the_broker_lists_twice_is_recorded_once(trader, account, monkeypatch):
    set_price("1500")
    order = place(trader, account, quantity=4)
    listed = AccountBroker.trades
    monkeypatch.setattr(AccountBroker, "trades", lambda broker: listed(broker) * 2)
    monitor(account)
    monitor(account)
    assert list(Trade.objects.values_list("order_id", "quantity")) == [(order.pk, 4)]
    assert Position.objects.get(account=account).net_quantity == 4


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


def test_a_fill_is_linked_in_the_same_run_even_when_another_order_cannot_be_reconciled(trader, account, monkeypatch):
    """The same, with another order of the account that step 3 cannot bring in line (a bad row):
    the others are still reconciled, the lost answer's order given its broker id, but its fill was
    left unlinked, so step 4 of that run took the order's fill for one not in the position yet."""
    listed = AccountBroker.trades
    monkeypatch.setattr(AccountBroker, "trades", lambda broker: [replace(t, order_tag=None) for t in listed(broker)])
    set_price("1500")
    other = place(trader, account, quantity=1, order_type="LIMIT", price="1400")  # rests
    order = lost(trader, account, quantity=3)
    recording_fails_for(monkeypatch, other, "a bad row")
    run = monitor(account)
    assert "recorded 1 fill(s)" in run.actions
    assert [error["step"] for error in run.errors] == ["3_orders"]
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


def test_prices_that_cannot_be_read_do_not_stop_the_accounts_fills_and_orders(trader, account, monkeypatch):
    """The order book, fills and positions were read, the last prices were not (Kite's quote limit,
    a 5xx): the fills are still recorded and the orders reconciled, not left for the next run; the
    price failure is the run's error."""
    from brokers.client import AccountBroker
    from brokers.errors import BrokerUnavailable

    set_price("1500")
    order = place(trader, account, quantity=10, order_type="LIMIT", price="1490")
    set_price("1489")

    def no_prices(self, symbols):
        raise BrokerUnavailable("quotes are down")

    monkeypatch.setattr(AccountBroker, "ltp", no_prices)
    run = monitor(account)
    assert [e["step"] for e in run.errors] == ["1_fetch"] and "quotes are down" in run.errors[0]["error"]
    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == (Order.Status.FILLED, 10)
    assert Position.objects.get(account=account).net_quantity == 10


@pytest.mark.django_db(transaction=True)
def test_a_run_of_an_account_still_running_is_skipped_not_run_beside_it(trader, account, monkeypatch):
    set_price("1500")
    place(trader, account, quantity=4)
    reading, go_on = threading.Event(), threading.Event()
    fetch = cycle._fetch_many

    def slow_broker(contexts):
        reading.set()
        assert go_on.wait(30)
        return fetch(contexts)

    monkeypatch.setitem(cycle.BATCHED, cycle.step_fetch, slow_broker)
    first = []

    def run_first():
        try:
            first.append(monitor(account))
        finally:
            connection.close()

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        assert reading.wait(30)
        second = monitor(account)
    finally:
        go_on.set()
        thread.join(60)
    assert second.status == AccountRun.Status.SKIPPED and second.step_ms == {}
    assert first[0].status == AccountRun.Status.OK, first[0].errors
    assert Trade.objects.filter(account=account).count() == 1
    assert Position.objects.get(account=account).net_quantity == 4


def test_a_batch_delivered_twice_changes_nothing_the_second_time(trader, account, other_trader, instruments):
    theirs = make_broker_account(other_trader, broker="paper", client_id="PAPER-O2", label="Theirs")
    set_price("1500")
    place(trader, account, quantity=4)
    place(other_trader, theirs, quantity=3, order_type="LIMIT", price="1450")
    run = MonitoringRun.objects.create(accounts=2)
    assert tasks.monitor_accounts([account.pk, theirs.pk], run.pk) == {AccountRun.Status.OK: 2}
    events, trades = OrderEvent.objects.count(), list(Trade.objects.values_list("pk", flat=True))
    orders = list(Order.objects.order_by("pk").values_list("status", "filled_quantity", "updated_at"))
    assert tasks.monitor_accounts([account.pk, theirs.pk], run.pk) == {AccountRun.Status.OK: 2}
    assert OrderEvent.objects.count() == events
    assert list(Trade.objects.values_list("pk", flat=True)) == trades
    assert list(Order.objects.order_by("pk").values_list("status", "filled_quantity", "updated_at")) == orders
    assert [p.net_quantity for p in Position.objects.order_by("account_id")] == [4]
