"""A strategy's life on a Kite account (through the paper exchange's Kite face) when Kite is slow to
close a cancel: Kite answers once it has the request, shows the order OPEN until it has closed it,
and refuses a second cancel meanwhile. Each test is a life a review found broken."""

import dataclasses

import pytest

from brokers.errors import InputError
from brokers.kite.adapter import KiteBroker
from monitoring import cycle
from monitoring.tests.test_strategy_exits import (
    at_modification_cap,
    entry,
    live_exits,
    quote,
    strategy,
    trailing_stop_at_the_cap,
)
from orders import services
from orders.models import Order
from tradingplatform import background

from .test_strategy_exits import D

pytestmark = pytest.mark.django_db(transaction=True)


def monitor(account):
    assert background.wait_idle(30)
    run = cycle.account_monitor(account=account)
    assert background.wait_idle(30)
    return run


class PendingCancels:
    """Kite takes a cancel at once and closes the order later; until then its order and book show
    the order OPEN, and a second cancel is refused as being processed."""

    def __init__(self, monkeypatch):
        self.pending, self.sent = set(), []
        real_cancel, real_order, real_orders = KiteBroker.cancel_order, KiteBroker.order, KiteBroker.orders
        self._real_cancel, me = real_cancel, self

        def shown(state):
            if state.broker_order_id in me.pending:
                return dataclasses.replace(state, status="OPEN", raw={**state.raw, "status": "OPEN"})
            return state

        def cancel_order(broker, broker_order_id):
            me.sent.append(broker_order_id)
            if broker_order_id in me.pending:
                raise InputError("Order cannot be cancelled as it is being processed. Try later.")
            me.pending.add(broker_order_id)
            me.broker = broker

        monkeypatch.setattr(KiteBroker, "cancel_order", cancel_order)
        monkeypatch.setattr(KiteBroker, "order", lambda broker, i: shown(real_order(broker, i)))
        monkeypatch.setattr(KiteBroker, "orders", lambda broker: [shown(s) for s in real_orders(broker)])

    def close_all(self):
        for broker_order_id in list(self.pending):
            self._real_cancel(self.broker, broker_order_id)
            self.pending.discard(broker_order_id)
        assert background.wait_idle(30)


def test_a_cancel_kite_is_still_processing_is_not_sent_again(trader, kite_on_face, monkeypatch):
    """The take-profit (4) fills; the stop-loss's cancel is pending over a cycle: not sent again (Kite
    would refuse it, and the refusal read as the trader's). The entry's last 6 then fill: they get
    both exits."""
    account = kite_on_face
    guarded = strategy(trader, account, stop_loss=D("1"), take_profit=D("2"))
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    quote("1498.9", bid="1498.8", ask="1498.9", volume=4)
    monitor(account)
    assert live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 4
    kite = PendingCancels(monkeypatch)
    quote("1529.1", bid="1529.1", ask="1529.2", volume=4)  # the take-profit fills
    monitor(account)  # the stop-loss's cancel: pending
    monitor(account)  # still pending
    assert len(kite.sent) == 1
    kite.close_all()
    quote("1498.9", bid="1498.8", ask="1498.9", volume=10)  # the entry fills its last 6
    monitor(account)
    monitor(account)
    first.refresh_from_db()
    assert first.filled_quantity == 10
    assert live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 6


def test_a_trailing_stop_replaced_past_the_cap_after_kite_closes_it_keeps_the_trail(trader, kite_on_face, monkeypatch):
    """Past the cap the stop is cancelled to be replaced at 1500.10; Kite closes it only a cycle later,
    when the price has eased to 1506. It is put back at 1500.10 (a trail never moves back), not at
    the first level, and trails on at the first stop's distance."""
    account = kite_on_face
    first, stop = trailing_stop_at_the_cap(trader, account, run=monitor)
    kite = PendingCancels(monkeypatch)
    quote("1512")
    monitor(account)
    monitor(account)  # still pending: nothing sent again, nothing put back
    assert len(kite.sent) == 1 and live_exits(account, "stop_loss") == 10
    kite.close_all()
    quote("1506")
    monitor(account)
    monitor(account)
    now = first.children.get(role="stop_loss", status__in=Order.LIVE)
    assert (now.trigger_price, now.quantity) == (D("1500.10"), 10)
    quote("1517")
    monitor(account)
    now.refresh_from_db()
    assert now.trigger_price == D("1505.10")


def filled_in_two(trader, account, guarded):
    """An entry of 10 at 1499.00 that fills 4, then 6, a cycle after each: two stop-losses."""
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    quote("1498.9", bid="1498.8", ask="1498.9", volume=4)
    monitor(account)
    quote("1498.9", bid="1498.8", ask="1498.9")
    monitor(account)
    return first


def test_the_older_of_two_trailing_stops_replaced_past_the_cap_is_put_back_where_it_had_trailed(
    trader, kite_on_face, monkeypatch
):
    """The entry filled 4, then 6: two stop-losses, both trailed to 1499.00. The older one, at the
    cap, is cancelled to be replaced; Kite closes it a cycle later, when the price has eased to
    1506. Its 4 are put back at 1499.00 (a trail never moves back), not at the first level of
    1489.00 (trailed again only to 1494.00): the newer, live stop must not hide what was owed."""
    account = kite_on_face
    guarded = strategy(trader, account, stop_loss=D("10"), stop_loss_unit="points", trailing_step=D("5"))
    first = filled_in_two(trader, account, guarded)
    older, newer = first.children.filter(role="stop_loss").order_by("pk")
    assert (older.quantity, newer.quantity, older.trigger_price) == (4, 6, D("1489.00"))
    at_modification_cap(older)
    kite = PendingCancels(monkeypatch)
    quote("1512")
    monitor(account)
    newer.refresh_from_db()
    assert newer.trigger_price == D("1499.00") and kite.sent == [older.broker_order_id]
    kite.close_all()
    quote("1506")
    monitor(account)
    monitor(account)
    live = first.children.filter(role="stop_loss", status__in=Order.LIVE).order_by("pk")
    assert [(o.quantity, o.trigger_price) for o in live] == [(6, D("1499.00")), (4, D("1499.00"))]


def test_a_chased_entry_the_trader_cancelled_while_its_cap_cancel_was_pending_is_not_replaced(
    trader, kite_on_face, monkeypatch
):
    account = kite_on_face
    guarded = strategy(trader, account, chase_after_s=0, chase_max_ticks=10)
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    Order.objects.filter(pk=first.pk).update(chase_count=cycle.BROKER_MODIFICATION_CAP - 1)
    kite = PendingCancels(monkeypatch)
    quote("1499.20", bid="1499.30", ask="1499.40")
    monitor(account)
    first.refresh_from_db()
    assert first.status in Order.LIVE  # its cancel is pending
    services.order_cancel(order=first, actor=trader, cause="trader via the order page")
    kite.close_all()
    monitor(account)
    monitor(account)
    first.refresh_from_db()
    assert first.status == Order.Status.CANCELLED
    assert not Order.objects.filter(parent=first, role="entry").exists()


def test_an_entry_stopped_out_by_two_stop_losses_re_enters_once(trader, kite_on_face):
    """The entry filled 4, then 6: two stop-losses, both filled when the price fell. One re-entry of
    10 (max_reentries 1), not one per stop-loss."""
    account = kite_on_face
    guarded = strategy(trader, account, stop_loss=D("1"), reentry_enabled=True, max_reentries=1)
    first = filled_in_two(trader, account, guarded)
    assert first.children.filter(role="stop_loss").count() == 2
    quote("1470")  # both stops trigger
    for _ in range(3):
        monitor(account)
    again = Order.objects.filter(account=account, role="entry").exclude(pk=first.pk)
    assert [(o.quantity, o.parent_id) for o in again] == [(10, first.pk)]


def test_a_stop_the_trader_cut_by_hand_is_put_back_for_its_cut_quantity_after_kite_closes_its_cap_cancel(
    trader, kite_on_face, monkeypatch
):
    """The trader keeps the stop on 5 of the 10 (cut by hand); past the cap its trail cancels it to
    replace it, and Kite closes it a cycle later. It is put back, for the trader's 5, where it had
    trailed: a cut by hand is not a reason to leave the position with no stop at all."""
    account = kite_on_face
    guarded = strategy(trader, account, stop_loss=D("10"), stop_loss_unit="points", trailing_step=D("5"))
    quote("1500")
    first = entry(trader, account, guarded)
    monitor(account)
    stop = first.children.get(role="stop_loss")
    services.order_modify(order=stop, actor=trader, cause="trader via the order page", quantity=5)
    at_modification_cap(stop)
    kite = PendingCancels(monkeypatch)
    quote("1512")
    monitor(account)
    monitor(account)
    assert len(kite.sent) == 1
    kite.close_all()
    quote("1506")
    monitor(account)
    monitor(account)
    live = first.children.filter(role="stop_loss", status__in=Order.LIVE)
    assert [(o.quantity, o.trigger_price) for o in live] == [(5, D("1500.10"))]


def test_a_chase_under_an_order_value_limit_asks_kites_price_once_in_a_run(trader, kite_on_face, monkeypatch):
    """A short entry's SELL LIMIT is valued at the market it fills at, Kite's last price: the chase's
    check of its move asked Kite for it again, a second quote call in the run (and a wait of a second
    for the quote budget) for the price the run had just fetched. Checked at the run's own price."""
    from accounts.services import broker_account_update
    from tradingplatform import memo

    account = kite_on_face
    broker_account_update(account=account, actor=trader, max_order_value=D("10000000"))
    account.refresh_from_db()
    guarded = strategy(trader, account, chase_after_s=0, chase_max_ticks=10)
    quote("1500")
    first = entry(trader, account, guarded, side="SELL", order_type="LIMIT", price="1501.00")
    asked, ltp = [], KiteBroker.ltp
    monkeypatch.setattr(KiteBroker, "ltp", lambda broker, keys: asked.append(list(keys)) or ltp(broker, keys))
    quote("1500.50", bid="1500.40", ask="1500.60")
    memo.clear_all()  # the price the entry's check asked is long gone by the next run
    monitor(account)
    first.refresh_from_db()
    assert (first.price, first.chase_count) == (D("1500.50"), 1)  # chased toward the market
    assert asked == [["NSE:INFY"]]  # the run's fetch only
