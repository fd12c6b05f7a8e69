"""A strategy's exits keep up with what its entry still holds, whatever fills, fails or is cancelled.

Each test is a life a review found broken against the paper exchange: exits split in pairs,
partly filled, refused by the broker, retried, replaced, or left behind by a cancelled entry.
"""

import dataclasses
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from brokers.paper import engine
from brokers.paper.models import PaperClient, PaperInstrument, PaperOrder
from monitoring import cycle
from monitoring.models import AccountRun
from orders import services, sources
from orders.models import Order
from orders.tests.factories import place, recording_fails_for
from portfolio.models import Position
from tradingplatform import background

D = Decimal
EXITS = ("stop_loss", "take_profit")


def monitor(account):
    return cycle.account_monitor(account=account)


def quote(last, *, bid=None, ask=None, volume=10**6):
    """The market for INFY; ``volume``: what may trade at each match (less than an order: a partial fill)."""
    last = D(last)
    engine.market_set(
        exchange="NSE",
        tradingsymbol="INFY",
        last_price=last,
        bid=D(bid) if bid else last - D("0.1"),
        ask=D(ask) if ask else last + D("0.1"),
        tick_volume=volume,
    )


def strategy(trader, account, **params):
    row, _ = sources.strategy_save(owner=trader, name="Guarded", account_ids=[account.pk], **params)
    return row


def entry(trader, account, guarded, **kwargs):
    return place(trader, account, quantity=10, strategy=guarded, source="strategy", **kwargs)


def entry_with_stop(trader, account):
    """A strategy's entry of 10 filled at 1500 and, after a run, its stop-loss 1 % under it."""
    guarded = strategy(trader, account, stop_loss=D("1"))
    quote("1500")
    first = entry(trader, account, guarded)
    monitor(account)
    return first, first.children.get(role="stop_loss")


def live_exits(account, role):
    return sum(
        o.quantity - o.filled_quantity for o in Order.objects.filter(account=account, role=role, status__in=Order.LIVE)
    )


def held(account):
    return Position.objects.get(account=account).net_quantity


def knobs(account, **values):
    engine.client_get_or_create(user_id=account.client_id)
    PaperClient.objects.filter(user_id=account.client_id).update(**values)


def test_an_exit_filling_leaves_the_exits_of_the_rest_of_the_position(trader, account):
    """The entry fills 4, then 6: two pairs of exits. The first take-profit (4) fills: the other
    six stay covered, and the first pair's stop-loss goes."""
    guarded = strategy(trader, account, stop_loss=D("1"), take_profit=D("2"))
    quote("1500")
    entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    quote("1498.9", bid="1498.8", ask="1498.9", volume=4)
    monitor(account)
    quote("1498.9", bid="1498.8", ask="1498.9")
    monitor(account)
    assert live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 10
    quote("1529.1", bid="1529.1", ask="1529.2", volume=4)  # 4 trade at the first take-profit
    monitor(account)
    monitor(account)
    assert held(account) == 6
    assert live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 6


def test_a_partly_filled_entry_whose_broker_tells_no_average_is_guarded_from_its_fills(trader, account, monkeypatch):
    """Kite documents ``average_price`` for complete orders only: a partly filled entry may come
    with 0. Its exits were priced from 0: a stop-loss at 0 or below, a take-profit selling at once.
    They are priced from the fills recorded, and the order keeps no average of 0 it was told."""
    from brokers.paper import adapter

    told = adapter.to_broker_order

    def without_average(order):
        state = told(order)
        return state if state.status == "FILLED" else dataclasses.replace(state, average_price=D(0))

    monkeypatch.setattr(adapter, "to_broker_order", without_average)
    guarded = strategy(trader, account, stop_loss=D("1"), take_profit=D("2"))
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    quote("1498.9", bid="1498.8", ask="1498.9", volume=4)  # 4 of 10 fill at its limit
    monitor(account)
    monitor(account)
    first.refresh_from_db()
    assert (first.status, first.filled_quantity, first.average_price) == (Order.Status.PARTIALLY_FILLED, 4, 0)
    assert set(first.trades.values_list("price", flat=True)) == {D("1499")}
    stop, target = (first.children.get(role=role) for role in EXITS)
    assert (stop.trigger_price, target.price) == (D("1484.00"), D("1529.00"))  # 1 % and 2 % from 1499, on ticks
    assert target.status == Order.Status.OPEN and held(account) == 4


def test_a_partly_filled_take_profit_cuts_the_stop_loss_to_what_is_held(trader, account):
    guarded = strategy(trader, account, stop_loss=D("1"), take_profit=D("2"))
    quote("1500")
    first = entry(trader, account, guarded)
    monitor(account)
    quote("1530.2", bid="1530.2", ask="1530.3", volume=4)  # the take-profit (1530.10) sells 4
    run = monitor(account)
    stop = first.children.get(role="stop_loss")
    assert (stop.quantity, stop.status) == (6, Order.Status.OPEN)
    assert f"cut {stop.reference} to 6: only 6 are held now" in run.actions
    assert "only 6 are held" in stop.events.last().cause
    quote("1480")  # the stop triggers: it sells what is held, not more
    monitor(account)
    monitor(account)
    assert held(account) == 0 and live_exits(account, "take_profit") == 0


def test_a_refused_exit_is_an_error_of_the_run_and_is_placed_again(trader, account):
    guarded = strategy(trader, account, stop_loss=D("1"), take_profit=D("2"))
    quote("1500")
    first = entry(trader, account, guarded)
    knobs(account, rejection_rate=1)
    run = monitor(account)
    assert run.status == AccountRun.Status.ERRORS
    assert any("REJECTED" in error["error"] for error in run.errors)
    knobs(account, rejection_rate=0)
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    assert live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 10
    assert first.children.filter(role="stop_loss").count() == 2  # the refused one and its replacement


def test_an_exit_refused_again_and_again_is_reported_not_placed_forever(trader, account):
    guarded = strategy(trader, account, stop_loss=D("1"))
    quote("1500")
    first = entry(trader, account, guarded)
    knobs(account, rejection_rate=1)
    for _ in range(cycle.EXIT_ATTEMPTS + 2):
        run = monitor(account)
    assert first.children.filter(role="stop_loss").count() == cycle.EXIT_ATTEMPTS
    assert "without a stop-loss" in run.errors[-1]["error"]


def test_an_exit_the_trader_cancelled_is_not_put_back(trader, account):
    guarded = strategy(trader, account, stop_loss=D("1"), take_profit=D("2"))
    quote("1500")
    first = entry(trader, account, guarded)
    monitor(account)
    services.order_cancel(order=first.children.get(role="stop_loss"), actor=trader, cause="trader via the order page")
    run = monitor(account)
    assert run.status == AccountRun.Status.OK and run.actions == []
    assert live_exits(account, "stop_loss") == 0 and live_exits(account, "take_profit") == 10


def test_a_retried_entry_is_not_cancelled_as_a_dependant_of_the_refused_one(trader, account):
    guarded = strategy(trader, account, max_retries=1, retryable_kinds=["funds"])
    quote("1500")
    knobs(account, cash=D("10"))
    refused = entry(trader, account, guarded, order_type="LIMIT", price="1490")
    assert refused.status == Order.Status.REJECTED
    knobs(account, cash=D("10000000"))
    Order.objects.filter(pk=refused.pk).update(updated_at=timezone.now() - timedelta(days=1))
    monitor(account)
    monitor(account)
    retry = Order.objects.get(parent=refused)
    assert retry.status == Order.Status.OPEN and retry.retry_count == 1


@pytest.mark.django_db(transaction=True)
def test_a_cancelled_entry_that_partly_filled_gets_exits_for_what_filled(trader, account):
    guarded = strategy(trader, account, stop_loss=D("1"), take_profit=D("2"))
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    quote("1498.9", bid="1498.8", ask="1498.9", volume=4)
    services.order_cancel(order=first, actor=trader, cause="trader cancels the rest")
    assert background.wait_idle(30)
    monitor(account)
    monitor(account)
    first.refresh_from_db()
    assert (first.status, first.filled_quantity) == (Order.Status.CANCELLED, 4)
    assert held(account) == live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 4


def test_a_replacement_buys_only_what_the_cancelled_order_had_not(trader, account, monkeypatch):
    """Past the modification cap a chased entry is cancelled and replaced; 4 filled between the
    cycle's fetch and the cancel: the replacement is for 6."""
    guarded = strategy(trader, account, chase_after_s=0, chase_max_ticks=10)
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    Order.objects.filter(pk=first.pk).update(chase_count=cycle.BROKER_MODIFICATION_CAP - 1)

    def fills_some(ctx):
        quote("1499.0", bid="1498.9", ask="1499.0", volume=4)
        ctx.last_prices[("NSE", "INFY")] = D("1499.20")

    monkeypatch.setattr(cycle, "STEPS", [*cycle.STEPS[:4], ("4b_fills", fills_some), *cycle.STEPS[4:]])
    monitor(account)
    replacement = Order.objects.get(parent=first, role="entry")
    first.refresh_from_db()
    assert first.filled_quantity == 4 and replacement.quantity == 6


def test_a_replacement_is_chased_no_further_than_the_first_orders_cap(trader, account):
    guarded = strategy(trader, account, chase_after_s=0, chase_max_ticks=10)  # 1499.00 + 10 x 0.10
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    Order.objects.filter(pk=first.pk).update(chase_count=cycle.BROKER_MODIFICATION_CAP - 1)
    quote("1499.20", bid="1499.30", ask="1499.40")
    monitor(account)
    for last in ("1499.40", "1500", "1503", "1510"):
        quote(last, bid=last, ask=D(last) + D("5"))  # never crosses the entry
        monitor(account)
    live = Order.objects.get(account=account, role="entry", status__in=Order.LIVE)
    assert live.pk != first.pk and live.price == D("1500.00")


def test_a_paused_strategy_does_not_re_enter(trader, account):
    guarded = strategy(trader, account, stop_loss=D("1"), reentry_enabled=True, max_reentries=2)
    quote("1500")
    entry(trader, account, guarded)
    monitor(account)
    guarded.is_active = False
    guarded.save()
    quote("1480")  # the stop-loss fills
    monitor(account)
    monitor(account)
    assert Order.objects.filter(account=account, role="entry").count() == 1


def test_exits_the_cycle_cancelled_are_placed_again_when_the_entry_fills_more(trader, account):
    """The take-profit for the first 4 fills and the cycle cancels its stop-loss (whoever's word on
    that cancel lands first); when the entry fills its other 6, both exits come back for 6."""
    guarded = strategy(trader, account, stop_loss=D("1"), take_profit=D("2"))
    quote("1500")
    entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    quote("1498.9", bid="1498.8", ask="1498.9", volume=4)
    monitor(account)
    quote("1529.1", bid="1529.1", ask="1529.2")  # the take-profit for 4 fills
    monitor(account)
    assert held(account) == 0 and live_exits(account, "stop_loss") == 0
    quote("1498.9", bid="1498.8", ask="1498.9")  # the rest of the entry fills
    monitor(account)
    assert held(account) == live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 6


def closed_by_hand(trader, account) -> Order:
    """A strategy's entry of 10 whose stop-loss was rejected, its position then closed by the
    trader's own SELL, and one run since: its entry."""
    guarded = strategy(trader, account, stop_loss=D("1"))
    quote("1500")
    first = entry(trader, account, guarded)
    knobs(account, rejection_rate=1)
    monitor(account)  # its stop-loss is rejected
    knobs(account, rejection_rate=0)
    place(trader, account, side="SELL", quantity=10)  # the trader closes the position by hand
    monitor(account)
    return first


def test_no_exit_is_placed_for_a_position_closed_by_hand(trader, account):
    first = closed_by_hand(trader, account)
    assert held(account) == 0
    place(trader, account, quantity=10)  # and later buys again by hand: not the strategy's
    monitor(account)
    assert held(account) == 10
    assert list(first.children.values_list("status", flat=True)) == [Order.Status.REJECTED]


def test_an_exit_cancelled_at_the_broker_is_not_put_back(trader, account):
    """Cancelled in the broker's own app (no request of ours): the trader's word, not the cycle's."""
    first, stop = entry_with_stop(trader, account)
    engine.order_cancel(client=engine.client_get_or_create(user_id=account.client_id), order_id=stop.broker_order_id)
    monitor(account)
    run = monitor(account)
    stop.refresh_from_db()
    assert stop.status == Order.Status.CANCELLED and live_exits(account, "stop_loss") == 0
    # Nobody here saw it go: the position is unprotected, and the trader is told so on every run.
    assert run.status == AccountRun.Status.ERRORS
    assert run.errors == [
        {
            "step": "4_exits",
            "error": f"{first.reference} holds 10 without a stop-loss: {stop.reference} was cancelled at the broker"
            " (in its own app, or by its risk system), not through the platform, so it is not placed again"
            " (place one, or close the position)",
        }
    ]


def test_a_failed_exit_waits_for_a_cycle_that_could_read_the_brokers_orders(trader, account, monkeypatch):
    guarded = strategy(trader, account, stop_loss=D("1"))
    quote("1500")
    first = entry(trader, account, guarded)
    monitor(account)
    Order.objects.filter(parent=first).update(
        status=Order.Status.FAILED, updated_at=timezone.now() - timedelta(hours=1)
    )
    monkeypatch.setattr(cycle, "FETCH_READS", ("missing_read",))  # the fetch fails
    run = monitor(account)
    assert "could not be read" in run.errors[-1]["error"]
    assert first.children.count() == 1


def test_an_exit_that_never_reached_the_broker_is_placed_again_after_a_while(trader, account, monkeypatch):
    from brokers.client import AccountBroker
    from brokers.errors import NetworkError

    guarded = strategy(trader, account, stop_loss=D("1"))
    quote("1500")
    first = entry(trader, account, guarded)
    send = AccountBroker.place_order

    def unreachable_for_stops(broker, request, **options):
        if request.order_type == "SL-M":
            raise NetworkError("connection refused")
        return send(broker, request, **options)

    monkeypatch.setattr(AccountBroker, "place_order", unreachable_for_stops)
    for _ in range(cycle.EXIT_ATTEMPTS + 1):  # failures do not use up the attempts
        Order.objects.filter(parent=first).update(updated_at=timezone.now() - timedelta(minutes=5))
        monitor(account)
    assert first.children.filter(status=Order.Status.FAILED).count() == cycle.EXIT_ATTEMPTS + 1
    run = monitor(account)
    assert "placing again within" in run.errors[-1]["error"]  # the last failure was just now
    monkeypatch.setattr(AccountBroker, "place_order", send)
    Order.objects.filter(parent=first).update(updated_at=timezone.now() - timedelta(minutes=5))
    monitor(account)
    assert live_exits(account, "stop_loss") == 10


def test_an_entry_whose_fill_is_not_recorded_yet_is_not_taken_for_closed(trader, account):
    """Filled by the broker's word, its fill not yet in the position: step 4 waits for it."""
    guarded = strategy(trader, account, stop_loss=D("1"))
    quote("1500")
    first = entry(trader, account, guarded)
    assert first.status == Order.Status.FILLED and not Position.objects.filter(account=account).exists()
    cycle.step_exits(cycle.Context(account=account))  # before step 2 has recorded the fill
    assert not first.events.filter(kind=cycle.EXITS_DONE).exists()
    monitor(account)
    assert live_exits(account, "stop_loss") == 10


def test_an_entry_on_the_other_side_leaves_the_position_of_the_older_ones(trader, account):
    """Long 10 with exits, then a strategy SELL of 5: the long entry holds 5, not nothing."""
    guarded = strategy(trader, account, stop_loss=D("1"))
    quote("1500")
    entry(trader, account, guarded)
    monitor(account)
    place(trader, account, side="SELL", quantity=5, strategy=guarded, source="strategy")
    monitor(account)
    assert held(account) == 5 and live_exits(account, "stop_loss") == 5


def at_modification_cap(order):
    PaperOrder.objects.filter(order_id=order.broker_order_id).update(modifications=engine.MAX_MODIFICATIONS)


def trailing_stop_at_the_cap(trader, account, run=None):
    """An entry of 10 at 1500 with a stop-loss 10 points below (1490.10), trailing by 5, whose stop
    the broker will not modify again: (the entry, its stop)."""
    guarded = strategy(trader, account, stop_loss=D("10"), stop_loss_unit="points", trailing_step=D("5"))
    quote("1500")
    first = entry(trader, account, guarded)
    (run or monitor)(account)
    stop = first.children.get(role="stop_loss")
    assert stop.trigger_price == D("1490.10")
    at_modification_cap(stop)
    return first, stop


def test_a_trailing_stop_past_the_modification_cap_is_replaced_and_trails_on(trader, account):
    """After 25 trails the broker refuses the stop's next modify: it is cancelled and replaced at
    the new trigger, for what it covered, and the replacement trails at the first stop's distance."""
    first, stop = trailing_stop_at_the_cap(trader, account)
    quote("1512")  # two steps of 5
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    stop.refresh_from_db()
    assert stop.status == Order.Status.CANCELLED and stop.trigger_price == D("1490.10")
    replacement = first.children.get(role="stop_loss", status__in=Order.LIVE)
    assert (replacement.trigger_price, replacement.quantity, replacement.order_type) == (D("1500.10"), 10, "SL-M")
    quote("1517")  # one more step, from the first stop's distance (10), not the replacement's
    monitor(account)
    replacement.refresh_from_db()
    assert replacement.trigger_price == D("1505.10")
    assert live_exits(account, "stop_loss") == held(account) == 10
    monitor(account)
    assert first.children.filter(role="stop_loss").count() == 2  # the cycle places nothing more


OPTION = "NIFTY26DEC26000CE"


def quote_option(last):
    last = D(last)
    engine.market_set(
        exchange="NFO", tradingsymbol=OPTION, last_price=last, bid=last - D("0.05"), ask=last + D("0.05"),
        tick_volume=10**6,
    )  # fmt: skip


def option_entry(trader, account, settings) -> Order:
    """A strategy's BUY of 75 of the option at 250 (its stop 10 points under, trailing by 5, the
    protection band 3 %), not monitored yet."""
    settings.STOP_LIMIT_PROTECTION_PERCENT = D("3")
    guarded = strategy(trader, account, stop_loss=D("10"), stop_loss_unit="points", trailing_step=D("5"))
    quote_option("250")
    return place(
        trader, account, symbol=OPTION, exchange="NFO", quantity=75, product="NRML", strategy=guarded,
        source="strategy",
    )  # fmt: skip


def test_a_stop_loss_on_an_option_is_an_sl_banded_past_its_trigger_and_trails_with_both_prices(
    trader, account, settings
):
    """Kite blocks SL-M on options: the cycle placed an option entry's stop as SL-M, refused at the
    broker each run while the position went unprotected. It is an SL whose limit is the protection
    band (3 % of the trigger) under it, on the tick; the paper exchange takes it; each trail and
    the replacement past the modification cap move the trigger and the limit together, the limit
    the band of the new trigger under it (wider than the gap kept: 3 % of a higher trigger)."""
    first = option_entry(trader, account, settings)
    run = monitor(account)  # filled at 250.05: the stop 10 under, at 240.05; 3 % of it is 7.20
    assert run.status == AccountRun.Status.OK, run.errors
    stop = first.children.get(role="stop_loss")
    assert (stop.order_type, stop.trigger_price, stop.price) == ("SL", D("240.05"), D("232.80"))
    at_exchange = PaperOrder.objects.get(order_id=stop.broker_order_id)
    assert at_exchange.status == PaperOrder.Status.TRIGGER_PENDING
    assert (at_exchange.order_type, at_exchange.trigger_price, at_exchange.price) == ("SL", D("240.05"), D("232.80"))
    quote_option("262")  # two steps of 5
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    stop.refresh_from_db()
    assert (stop.trigger_price, stop.price) == (D("250.05"), D("242.50"))  # 3 % of 250.05 is 7.50
    at_exchange.refresh_from_db()
    assert (at_exchange.trigger_price, at_exchange.price) == (D("250.05"), D("242.50"))
    at_modification_cap(stop)
    quote_option("267")  # one more step: past the cap, cancelled and replaced
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    replacement = first.children.get(role="stop_loss", status__in=Order.LIVE)
    assert (replacement.order_type, replacement.trigger_price, replacement.price) == ("SL", D("255.05"), D("247.35"))
    assert PaperOrder.objects.get(order_id=replacement.broker_order_id).status == PaperOrder.Status.TRIGGER_PENDING
    assert live_exits(account, "stop_loss") == 75


@pytest.mark.parametrize("capped", [False, True])
def test_an_options_sl_m_stop_from_before_the_rule_trails_on_as_a_banded_sl(trader, account, settings, capped):
    """An option's stop placed as SL-M before SL-M was refused on options (the paper exchange took
    it then) is still pending: each trail was refused ("SL-M orders are blocked"), by modify and
    past the cap by cancel-and-replace, and the stop stayed where it was, every run. It trails as
    the SL it is put back as: its trigger and its protection band under it."""
    first = option_entry(trader, account, settings)
    assert monitor(account).status == AccountRun.Status.OK
    stop = first.children.get(role="stop_loss")
    Order.objects.filter(pk=stop.pk).update(order_type="SL-M", price=None)  # as placed before the rule
    PaperOrder.objects.filter(order_id=stop.broker_order_id).update(order_type="SL-M", price=0)
    if capped:
        at_modification_cap(stop)
    quote_option("262")  # two steps of 5
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    assert not [line for line in run.actions if "could not" in line], run.actions
    live = first.children.get(role="stop_loss", status__in=Order.LIVE)
    assert (live.order_type, live.trigger_price, live.price) == ("SL", D("250.05"), D("242.50"))
    at_exchange = PaperOrder.objects.get(order_id=live.broker_order_id)
    assert (at_exchange.status, at_exchange.order_type) == (PaperOrder.Status.TRIGGER_PENDING, "SL")
    assert live_exits(account, "stop_loss") == 75


def wide_option_entry(trader, account, settings, *, side="BUY", stop_loss="19", trailing_step="1") -> Order:
    """A strategy's entry of 75 of the option at 250 (previous close 250: circuit limits 200 - 300)
    with a wide stop (``stop_loss`` %, trailing by ``trailing_step`` points), not monitored yet."""
    settings.STOP_LIMIT_PROTECTION_PERCENT = D("3")
    guarded = strategy(trader, account, stop_loss=D(stop_loss), trailing_step=D(trailing_step))
    quote_option("250")
    return place(
        trader, account, symbol=OPTION, exchange="NFO", side=side, quantity=75, product="NRML", strategy=guarded,
        source="strategy",
    )  # fmt: skip


@pytest.mark.parametrize(
    "side, trigger, limit, trailed",
    [
        # Filled at 250.05, its stop 19 % under at 202.55: the band's limit, 196.45, is under 200.
        # Trailed 7 steps to 209.55: its 3 % band again (203.25), not the narrowed gap kept (207.00).
        ("BUY", D("202.55"), D("200.00"), (D("209.55"), D("203.25"))),
        # A short filled at 249.95, its stop 19 % over at 297.45: the band's limit, 306.40, is over 300.
        # Trailed 7 steps to 290.45: its band again (299.20), not the narrowed gap kept (293.00).
        ("SELL", D("297.45"), D("300.00"), (D("290.45"), D("299.20"))),
    ],
)
def test_an_options_stop_whose_band_crosses_the_circuit_limit_is_placed_with_its_limit_at_the_limit(
    trader, account, settings, side, trigger, limit, trailed
):
    """An option's stop-loss limit goes its protection band (3 %) beyond its trigger: a wide stop's
    trigger near a circuit limit put the limit outside it, the paper exchange rejected it (price
    band, as Kite does) and the cycle placed it again every run, the position unprotected. Its limit
    is held at the circuit limit, the exchange takes it, and trailing keeps it inside. Trailed away
    from the limit, its band widens back to the protection band: the narrowed gap kept (at worst a
    limit at its trigger) could leave it unfilled by a gap through it."""
    first = wide_option_entry(trader, account, settings, side=side)
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    stop = first.children.get(role="stop_loss")
    assert (stop.status, stop.order_type, stop.trigger_price, stop.price) == (Order.Status.OPEN, "SL", trigger, limit)
    at_exchange = PaperOrder.objects.get(order_id=stop.broker_order_id)
    assert (at_exchange.status, at_exchange.trigger_price, at_exchange.price) == (
        PaperOrder.Status.TRIGGER_PENDING,
        trigger,
        limit,
    )
    quote_option("258" if side == "BUY" else "242")  # 7 steps of 1 toward the market
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    stop.refresh_from_db()
    at_exchange.refresh_from_db()
    lower, upper = engine.price_band(at_exchange.instrument)
    assert (stop.trigger_price, stop.price) == trailed and lower <= stop.price <= upper
    assert (at_exchange.trigger_price, at_exchange.price) == (stop.trigger_price, stop.price)
    assert at_exchange.status == PaperOrder.Status.TRIGGER_PENDING
    assert live_exits(account, "stop_loss") == 75


def test_an_options_sl_m_stop_from_before_the_rule_trails_with_its_limit_inside_the_circuit_limits(
    trader, account, settings
):
    """An option's SL-M stop from before the rule trails as an SL with its protection band under the
    new trigger: near the lower circuit limit that band fell under it and the exchange refused the
    modify every run ("could not trail"). Its limit is held at the circuit limit."""
    first = wide_option_entry(trader, account, settings)
    assert monitor(account).status == AccountRun.Status.OK
    stop = first.children.get(role="stop_loss")
    assert stop.trigger_price == D("202.55")
    Order.objects.filter(pk=stop.pk).update(order_type="SL-M", price=None)  # as placed before the rule
    PaperOrder.objects.filter(order_id=stop.broker_order_id).update(order_type="SL-M", price=0)
    quote_option("251.5")  # one step of 1: 203.55, whose band's limit is 197.40
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    assert not [line for line in run.actions if "could not" in line], run.actions
    stop.refresh_from_db()
    assert (stop.order_type, stop.trigger_price, stop.price) == ("SL", D("203.55"), D("200.00"))
    at_exchange = PaperOrder.objects.get(order_id=stop.broker_order_id)
    assert (at_exchange.status, at_exchange.order_type, at_exchange.price) == (
        PaperOrder.Status.TRIGGER_PENDING,
        "SL",
        D("200.00"),
    )


def test_an_options_stop_whose_trigger_is_outside_the_circuit_limits_waits_for_them_to_reach_it(
    trader, account, settings
):
    """A 25 % stop of an option bought at 250.05 triggers at 187.55, under its lower circuit limit
    (200): the exchange refuses it, and the market cannot fall there while the limits hold. It is
    not sent (no refusal after refusal); the run says why, and the run that finds the limits moved
    to it (the next day's, from a lower close) places it at the trader's level, its limit inside."""
    first = wide_option_entry(trader, account, settings, stop_loss="25")
    run = monitor(account)
    assert run.status == AccountRun.Status.ERRORS
    assert any(
        "without a stop-loss" in e["error"] and "circuit limits 200.00 - 300.00" in e["error"] for e in run.errors
    )
    assert not first.children.filter(role="stop_loss").exists()
    assert not PaperOrder.objects.filter(instrument__tradingsymbol=OPTION, order_type="SL").exists()
    PaperInstrument.objects.filter(tradingsymbol=OPTION).update(previous_close=D("230"))  # limits 184 - 276
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    stop = first.children.get(role="stop_loss")
    assert (stop.status, stop.trigger_price, stop.price) == (Order.Status.OPEN, D("187.55"), D("184.00"))


def quotes_asked(monkeypatch) -> list:
    """The broker quote calls the cycle makes from here on (each a list of instruments), not those of
    its last prices (the paper adapter's ``ltp`` reads its quotes), which every run makes."""
    from brokers.paper.adapter import PaperBroker

    asked, pricing = [], threading.local()
    real_quote, real_ltp = PaperBroker.quote, PaperBroker.ltp

    def ltp(self, instruments):
        pricing.on = True
        try:
            return real_ltp(self, instruments)
        finally:
            pricing.on = False

    def quote(self, instruments):
        instruments = list(instruments)
        if not getattr(pricing, "on", False):
            asked.append(instruments)
        return real_quote(self, instruments)

    monkeypatch.setattr(PaperBroker, "ltp", ltp)
    monkeypatch.setattr(PaperBroker, "quote", quote)
    return asked


@pytest.mark.parametrize(
    "role, side, level, close",
    [
        # Filled at 1500.10, its 25 % target at 1875.10 is over the upper limit, 1800 (20 % of 1500).
        ("take_profit", "BUY", D("1875.10"), D("1600")),  # the next day's limits from 1600: 1280 - 1920
        # A short filled at 1499.90, its 25 % target at 1124.90 is under the lower limit, 1200.
        ("take_profit", "SELL", D("1124.90"), D("1400")),  # 1120 - 1680
        # An equity's SL-M: its 25 % stop's trigger at 1125.10 is under the lower limit.
        ("stop_loss", "BUY", D("1125.10"), D("1400")),
    ],
)
def test_an_exit_beyond_the_circuit_limits_waits_for_them_to_reach_it_not_refused_until_given_up(
    trader, account, monkeypatch, role, side, level, close
):
    """A strategy's 25 % exit of a stock whose band is 20 %: the paper exchange refused it (price
    band, as Kite does), step 4 placed it again each run, and after EXIT_ATTEMPTS refusals gave up
    on it for good ("3 rejected"): the position never got it, even on a day whose limits reached
    it. After the first refusal for the band the cycle asks the circuit limits (one quote, none
    before an ordinary exit), does not send it while it is outside them, says why, and the run
    that finds the limits reaching it places it at the trader's level."""
    asked = quotes_asked(monkeypatch)
    guarded = strategy(trader, account, **{role: D("25")})
    quote("1500")
    first = entry(trader, account, guarded, side=side)
    run = monitor(account)  # its fill recorded and the exit sent as any other: refused for the band
    refused = first.children.get(role=role)
    assert (refused.status, refused.reject_kind) == (Order.Status.REJECTED, "price_band")
    assert asked == []
    for _ in range(cycle.EXIT_ATTEMPTS + 1):
        run = monitor(account)
        assert run.status == AccountRun.Status.ERRORS
        assert any(
            f"without a {role.replace('_', '-')}" in e["error"]
            and f"{level} is outside today's circuit limits 1200.00 - 1800.00" in e["error"]
            for e in run.errors
        ), run.errors
    assert list(first.children.filter(role=role)) == [refused]  # not sent again: no refusal toward giving up
    assert asked == [["NSE:INFY"]] * (cycle.EXIT_ATTEMPTS + 1)  # one quote a run, only while it waits
    PaperInstrument.objects.filter(tradingsymbol="INFY").update(previous_close=close)
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    placed = first.children.get(role=role, status__in=Order.LIVE)
    assert (placed.price if role == "take_profit" else placed.trigger_price) == level  # the trader's, not the limit
    at_exchange = PaperOrder.objects.get(order_id=placed.broker_order_id)
    assert at_exchange.status in (PaperOrder.Status.OPEN, PaperOrder.Status.TRIGGER_PENDING)
    assert live_exits(account, role) == 10


def test_an_options_take_profit_beyond_the_circuit_limits_is_not_sent_until_they_reach_it(trader, account, settings):
    """A 25 % target of an option bought at 250.05 sells at 312.55, over its upper circuit limit
    (300): refused by the exchange each run until step 4 gave up on it. An option's exits are
    checked against the limits its stop asks for anyway: it is never sent while outside them, the
    run says why, and the run that finds the limits moved to it places it at the trader's level."""
    settings.STOP_LIMIT_PROTECTION_PERCENT = D("3")
    guarded = strategy(trader, account, stop_loss=D("10"), take_profit=D("25"))
    quote_option("250")
    first = place(
        trader, account, symbol=OPTION, exchange="NFO", quantity=75, product="NRML", strategy=guarded,
        source="strategy",
    )  # fmt: skip
    for _ in range(cycle.EXIT_ATTEMPTS + 1):
        run = monitor(account)
        assert any(
            "without a take-profit" in e["error"]
            and "312.55 is outside today's circuit limits 200.00 - 300.00" in e["error"]
            for e in run.errors
        ), run.errors
    assert not first.children.filter(role="take_profit").exists()
    assert not PaperOrder.objects.filter(instrument__tradingsymbol=OPTION, order_type="LIMIT").exists()
    assert live_exits(account, "stop_loss") == 75  # its stop placed as ever
    PaperInstrument.objects.filter(tradingsymbol=OPTION).update(previous_close=D("270"))  # limits 216 - 324
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    target = first.children.get(role="take_profit")
    assert (target.status, target.price) == (Order.Status.OPEN, D("312.55"))


def test_the_stop_of_an_entrys_first_fill_trails_at_its_own_distance_when_the_entry_fills_higher(trader, account):
    """A chased entry fills 4 at 1499: their stop-loss goes 10 points under, at 1489. The entry is
    chased up and fills 6 more at 1510 (its average 1505.60). The first stop still trails 10
    behind the market, as the strategy placed it, not 16.60 (the entry's new average to its
    first trigger), which left those 4 shares 6.60 less protected than the strategy says."""
    guarded = strategy(
        trader, account, stop_loss=D("10"), stop_loss_unit="points", trailing_step=D("1"),
        chase_after_s=0, chase_max_percent=D("1"),
    )  # fmt: skip
    quote("1500", bid="1500", ask="1505")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    quote("1499.0", bid="1498.9", ask="1499.0", volume=4)  # 4 fill at 1499
    monitor(account)
    stop = first.children.get(role="stop_loss")
    assert (stop.quantity, stop.trigger_price) == (4, D("1489.00"))
    quote("1510", bid="1509.9", ask="1510.0", volume=0)  # the entry is chased to 1510
    monitor(account)
    quote("1513", bid="1512.9", ask="1513.0")  # the other 6 fill at 1510
    monitor(account)
    first.refresh_from_db()
    assert (first.filled_quantity, first.average_price) == (10, D("1505.60"))
    quote("1530", bid="1529.9", ask="1530.0")
    monitor(account)
    stop.refresh_from_db()
    assert stop.trigger_price == D("1520.00")


def test_a_trailing_stop_past_the_cap_is_replaced_whatever_the_accounts_order_value_limit(trader, account):
    """The stop trailed up is worth more than the entry was: the limits that cap what an order
    opens do not hold back its replacement past the modification cap (nor the stop itself)."""
    account.max_order_value = D("15000")  # the entry of 10 at 1500, exactly
    account.save(update_fields=["max_order_value"])
    first, stop = trailing_stop_at_the_cap(trader, account)
    quote("1512")
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    replacement = first.children.get(role="stop_loss", status__in=Order.LIVE)
    assert (replacement.trigger_price, replacement.quantity) == (D("1500.10"), 10)  # worth 15,001


def test_an_exit_past_the_modification_cap_is_replaced_to_shrink_it(trader, account):
    """The take-profit sells 4 of 10; the stop-loss, modified as often as the broker allows,
    cannot be cut to 6: it is replaced by one for 6 (not left at 10, which would sell short)."""
    guarded = strategy(trader, account, stop_loss=D("1"), take_profit=D("2"))
    quote("1500")
    first = entry(trader, account, guarded)
    monitor(account)
    stop = first.children.get(role="stop_loss")
    at_modification_cap(stop)
    quote("1530.2", bid="1530.2", ask="1530.3", volume=4)  # the take-profit (1530.10) sells 4
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    stop.refresh_from_db()
    assert stop.status == Order.Status.CANCELLED
    replacement = first.children.get(role="stop_loss", status__in=Order.LIVE)
    assert (replacement.quantity, replacement.trigger_price) == (6, stop.trigger_price)
    monitor(account)
    assert live_exits(account, "stop_loss") == live_exits(account, "take_profit") == held(account) == 6
    quote("1480")  # the stop triggers: it sells what is held, not more
    monitor(account)
    monitor(account)
    assert held(account) == 0 and live_exits(account, "take_profit") == 0


def test_a_chased_entry_whose_cap_the_trader_used_up_is_replaced(trader, account):
    guarded = strategy(trader, account, chase_after_s=0, chase_max_ticks=10)
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    at_modification_cap(first)  # modified by hand 25 times: the chase's own count is 0
    quote("1499.20", bid="1499.30", ask="1499.40")
    monitor(account)
    first.refresh_from_db()
    replacement = Order.objects.get(parent=first, role="entry")
    assert first.status == Order.Status.CANCELLED and replacement.price == D("1499.20")


def test_an_order_whose_cancel_is_still_pending_is_replaced_once_the_broker_closes_it(trader, account, monkeypatch):
    """Kite answers a cancel once it has the request; the order may still fill. Only an order the
    broker has closed is replaced (else both could fill): the next cycle, once it has."""
    import dataclasses

    from brokers.paper.adapter import PaperBroker

    guarded = strategy(trader, account, chase_after_s=0, chase_max_ticks=10)
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    Order.objects.filter(pk=first.pk).update(chase_count=cycle.BROKER_MODIFICATION_CAP - 1)
    real = PaperBroker.order
    monkeypatch.setattr(PaperBroker, "order", lambda self, i: dataclasses.replace(real(self, i), status="OPEN"))
    quote("1499.20", bid="1499.30", ask="1499.40")
    run = monitor(account)
    assert not Order.objects.filter(parent=first).exists()
    assert any("cancel is pending" in action for action in run.actions)
    monkeypatch.undo()  # the broker has closed it now
    monitor(account)
    monitor(account)
    first.refresh_from_db()
    replacement = Order.objects.get(parent=first)  # one, however many cycles
    assert first.status == Order.Status.CANCELLED and replacement.status in Order.LIVE
    assert (replacement.quantity, replacement.role) == (10, "entry")


def test_a_chased_entry_of_a_deactivated_trader_is_not_cancelled_past_the_cap(trader, account):
    """No entry is placed for a deactivated trader (``order_prepare``), so the replacement of a chased
    entry past the modification cap would be refused: the entry is left resting, not cancelled with
    nothing put back."""
    guarded = strategy(trader, account, chase_after_s=0, chase_max_ticks=10)
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    Order.objects.filter(pk=first.pk).update(chase_count=cycle.BROKER_MODIFICATION_CAP - 1)
    type(trader).objects.filter(pk=trader.pk).update(is_active=False)
    account.owner.refresh_from_db()
    quote("1499.20", bid="1499.30", ask="1499.40")
    run = monitor(account)
    first.refresh_from_db()
    assert first.status == Order.Status.OPEN and first.price == D("1499.00")
    assert PaperOrder.objects.get(tag=first.reference).status == "OPEN"
    assert any("deactivated" in error["error"] for error in run.errors), run.errors


def test_a_replacement_that_would_be_refused_cancels_nothing(trader, account, monkeypatch):
    from django.core.exceptions import ValidationError

    first, stop = trailing_stop_at_the_cap(trader, account)
    checks, real = [], services.order_check

    def refuses_the_replacement(**spec):  # the modify's own check passes; the replacement's does not
        checks.append(spec)
        if len(checks) > 1:
            raise ValidationError({"quantity": "Above this account's limit of 5."})
        return real(**spec)

    monkeypatch.setattr(services, "order_check", refuses_the_replacement)
    quote("1512")
    run = monitor(account)
    stop.refresh_from_db()
    assert stop.status == Order.Status.OPEN and stop.trigger_price == D("1490.10")  # still protecting
    assert any("could not replace" in error["error"] for error in run.errors), (run.errors, run.actions)


def test_an_exit_the_trader_cancelled_at_the_broker_after_a_failed_platform_cancel_is_not_put_back(
    trader, account, monkeypatch
):
    """The trailing stop is at the modification cap: the cycle's cancel to replace it fails before it
    is sent (a 429: ``cancel_failed``). The trader then cancels the stop in the broker's own app:
    that cancel is theirs, and the cycle does not put a stop-loss back."""
    from brokers.client import AccountBroker
    from brokers.errors import RateLimited

    first, stop = trailing_stop_at_the_cap(trader, account)

    def refused(self, broker_order_id):
        raise RateLimited("Too many requests", retry_after=1)

    monkeypatch.setattr(AccountBroker, "cancel_order", refused)
    quote("1512")  # the trail wants a step up: the cap refuses the modify, the cycle cancels to replace
    monitor(account)
    monkeypatch.undo()
    stop.refresh_from_db()
    kinds = list(stop.events.values_list("kind", flat=True))
    assert stop.status == Order.Status.OPEN and kinds[-2:] == ["cancel_requested", "cancel_failed"], kinds
    engine.order_cancel(client=engine.client_get_or_create(user_id=account.client_id), order_id=stop.broker_order_id)
    monitor(account)
    monitor(account)
    stop.refresh_from_db()
    assert stop.status == Order.Status.CANCELLED and not services.cancel_asked_by_platform(stop)
    assert live_exits(account, "stop_loss") == 0


def two_entries_the_newer_filled_at_the_broker(trader, account):
    """E1 (10, filled and recorded, its stop-loss and take-profit live) and E2 (10, the same
    instrument and product) just filled at the broker."""
    guarded = strategy(trader, account, stop_loss=D("1"), take_profit=D("2"))
    quote("1500")
    e1 = entry(trader, account, guarded)
    monitor(account)
    assert live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 10
    e2 = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    monitor(account)
    quote("1498.9", bid="1498.8", ask="1498.9")  # E2 fills
    e2.refresh_from_db()
    return e1, e2


def test_a_newer_entrys_fill_the_fill_list_lacks_yet_does_not_strip_the_older_entrys_exits(
    trader, account, monkeypatch
):
    """The book says E2 filled; the fill list lags (as Kite's can), or E2 filled between a run's two
    reads: its fill is not in the position yet. E1 still holds its 10 and keeps its exits, run after
    run; E2 gets its own; once the fill is recorded, 20 are held and covered."""
    from brokers.client import AccountBroker

    e1, e2 = two_entries_the_newer_filled_at_the_broker(trader, account)
    trades = AccountBroker.trades
    monkeypatch.setattr(
        AccountBroker, "trades", lambda broker: [t for t in trades(broker) if t.broker_order_id != e2.broker_order_id]
    )
    monitor(account)
    monitor(account)
    assert Position.objects.get(account=account).net_quantity == 10  # E2's fill: not recorded yet
    assert Order.objects.filter(parent=e1, status__in=Order.LIVE).count() == 2
    assert not e1.events.filter(kind=cycle.EXITS_DONE).exists()
    monkeypatch.undo()
    monitor(account)
    assert Position.objects.get(account=account).net_quantity == 20
    assert live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 20


def test_a_newer_entrys_fill_told_before_it_is_recorded_does_not_strip_the_older_entrys_exits(trader, account):
    """E2's order update (a postback) lands between a run's steps 2 and 4, before its fill is in the
    position: step 4 leaves E1's exits as they are."""
    from brokers.client import AccountBroker

    e1, e2 = two_entries_the_newer_filled_at_the_broker(trader, account)
    services.order_broker_update(account, AccountBroker(account).order(e2.broker_order_id), True)
    e2.refresh_from_db()
    assert e2.status == Order.Status.FILLED and Position.objects.get(account=account).net_quantity == 10
    cycle.step_exits(cycle.Context(account=account))
    assert Order.objects.filter(parent=e1, status__in=Order.LIVE).count() == 2


def test_a_newer_entrys_exit_fill_the_book_lacks_yet_does_not_strip_the_older_entrys_exits(
    trader, account, monkeypatch
):
    """E2's take-profit fills; the run's book was read before it (the book and the fill list are read
    at once, and either can lag), its fill list after: the fill is in the position (10), the book still
    has the take-profit open. E1 still holds its 10: its exits stay (they were cancelled as nothing
    held, and put back next run at their first levels, a trailed stop loosened), and E2's stop-loss
    goes (its take-profit took what it held); nothing is asked of the take-profit that filled."""
    from brokers.client import AccountBroker

    e1, e2 = two_entries_the_newer_filled_at_the_broker(trader, account)
    monitor(account)
    assert live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 20
    book = AccountBroker(account).orders()  # read before E2's take-profit fills
    quote("1529.0", bid="1529.0", ask="1529.1")  # E2's take-profit (1529.00) fills; E1's (1530.10) does not
    monkeypatch.setattr(AccountBroker, "orders", lambda broker: book)
    run = monitor(account)
    assert held(account) == 10
    assert set(e1.children.values_list("status", flat=True)) == {Order.Status.OPEN}, run.actions
    assert e2.children.get(role="stop_loss").status == Order.Status.CANCELLED
    assert run.errors == []
    monkeypatch.undo()
    monitor(account)
    assert e2.children.get(role="take_profit").status == Order.Status.FILLED
    assert e1.children.count() == 2 and live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 10


def test_both_exits_filling_is_told_to_the_trader_and_nothing_re_enters(trader, account):
    """The take-profit fills, and before a run can cancel the stop-loss the price falls through it:
    both sell 10, and the account is short 10 that nobody asked for. The run says so, and the
    strategy does not re-enter on top of it."""
    guarded = strategy(trader, account, stop_loss=D("1"), take_profit=D("2"), reentry_enabled=True, max_reentries=3)
    quote("1500")
    entry(trader, account, guarded)
    monitor(account)
    quote("1531")  # the take-profit fills
    quote("1480")  # then the stop-loss, before any run
    runs = [monitor(account), monitor(account)]
    assert Position.objects.get(account=account).net_quantity == -10
    errors = [e["error"] for run in runs for e in run.errors]
    assert any("the position is reversed" in error for error in errors), errors
    assert Order.objects.filter(account=account, role="entry").count() == 1


def test_an_entry_the_broker_rejected_after_part_filled_keeps_its_exits(trader, account):
    """4 of 10 fill, then the broker refuses the rest (REJECTED with 4 filled): the 4 held keep
    their stop-loss and take-profit (step 7 cancelled them as a rejected order's dependants)."""
    guarded = strategy(trader, account, stop_loss=D("1"), take_profit=D("2"))
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    quote("1498.9", bid="1498.8", ask="1498.9", volume=4)
    monitor(account)
    assert held(account) == live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 4
    PaperOrder.objects.filter(order_id=first.broker_order_id).update(status="REJECTED", status_message="RMS")
    quote("1500")
    monitor(account)
    monitor(account)
    first.refresh_from_db()
    assert (first.status, first.filled_quantity) == (Order.Status.REJECTED, 4)
    assert held(account) == live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 4


def test_a_stop_the_market_fell_past_before_it_was_placed_goes_at_market(trader, account):
    """The entry fills at 1500 and the market falls through the stop's level (1485.10) before step 4
    places it: a stop-loss sell must trigger under the last price (the exchange refuses it, three
    refusals end the attempts: the position would be left unprotected as it loses). It goes at market,
    as the stop would have fired had it rested, and the take-profit waits: nothing is left to take."""
    guarded = strategy(trader, account, stop_loss=D("1"), take_profit=D("2"))
    quote("1500")
    first = entry(trader, account, guarded)
    quote("1480")
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    stop = first.children.get(role="stop_loss")
    assert (stop.order_type, stop.trigger_price, stop.quantity) == ("MARKET", None, 10)
    assert any("at market" in action and "1485.10" in action for action in run.actions), run.actions
    assert not first.children.filter(role="take_profit").exists()
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    stop.refresh_from_db()
    assert (stop.status, stop.filled_quantity) == (Order.Status.FILLED, 10)
    assert held(account) == 0
    assert not first.children.filter(role="take_profit").exists()


def test_a_short_entrys_stop_the_market_rose_past_goes_at_market(trader, account):
    guarded = strategy(trader, account, stop_loss=D("1"))
    quote("1500")
    first = entry(trader, account, guarded, side="SELL")
    quote("1520")  # past the buy stop's level, 1514.90
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    stop = first.children.get(role="stop_loss")
    assert (stop.side, stop.order_type, stop.quantity) == ("BUY", "MARKET", 10)


@pytest.mark.parametrize("side, stop, target", [("BUY", "1499.90", "1500.10"), ("SELL", "1500.10", "1499.90")])
def test_exits_closer_to_the_entry_than_half_a_tick_are_not_rounded_onto_its_price(trader, account, side, stop, target):
    """INFY's tick is 0.10; the exits are 0.04 from the entry at 1500.00 (as a 1 % stop is from a 2.35
    option on 0.05 ticks). Rounded to the nearest tick both would sit on the entry's own price: the
    stop would go at market at once, closing what was just bought, and the take-profit sell at no
    profit. Each goes to the tick beyond the entry instead, on its own side."""
    guarded = strategy(
        trader, account, stop_loss=D("0.04"), stop_loss_unit="points", take_profit=D("0.04"),
        take_profit_unit="points",
    )  # fmt: skip
    quote("1500", bid="1500", ask="1500")
    first = entry(trader, account, guarded, side=side)
    assert first.average_price == D("1500.00")
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    sl = first.children.get(role="stop_loss")
    assert (sl.order_type, sl.trigger_price, sl.status) == ("SL-M", D(stop), Order.Status.OPEN), run.actions
    tp = first.children.get(role="take_profit")
    assert (tp.order_type, tp.price, tp.status) == ("LIMIT", D(target), Order.Status.OPEN)
    assert abs(held(account)) == 10


def test_a_trailed_stops_owed_replacement_the_market_fell_past_goes_at_market(trader, account, monkeypatch):
    """The trail's cancel past the modification cap is pending at the broker; by the time the broker
    closes it, the market is under the trail's new trigger (1500.10): the replacement goes at market."""
    import dataclasses

    from brokers.paper.adapter import PaperBroker

    first, stop = trailing_stop_at_the_cap(trader, account)
    real = PaperBroker.order
    monkeypatch.setattr(PaperBroker, "order", lambda self, i: dataclasses.replace(real(self, i), status="OPEN"))
    quote("1512")
    monitor(account)
    assert not first.children.filter(role="stop_loss", status__in=Order.LIVE).exists()
    monkeypatch.undo()
    quote("1495")  # above the cancelled stop (1490.10), under the trail's new trigger
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    replacement = first.children.get(role="stop_loss", status__in=Order.LIVE + (Order.Status.FILLED,))
    assert replacement.idempotency_key.endswith(f"replace:{stop.pk}")
    assert (replacement.order_type, replacement.quantity) == ("MARKET", 10)


def test_a_chased_entrys_replacement_that_never_reached_the_broker_is_placed_again(trader, account, monkeypatch):
    """The chase cancelled the trader's entry past the cap; its replacement failed before the broker
    had it. The platform cancelled the entry: it owes it back, whatever the strategy's
    retries (none here), once, after a wait; not by step 9 too."""
    from brokers.errors import BrokerError
    from brokers.paper.adapter import PaperBroker

    guarded = strategy(trader, account, chase_after_s=0, chase_max_ticks=10)
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    at_modification_cap(first)
    real, calls = PaperBroker.place_order, []

    def limited_once(self, request):
        calls.append(request)
        if len(calls) == 1:
            raise BrokerError("the broker's order system is down")
        return real(self, request)

    monkeypatch.setattr(PaperBroker, "place_order", limited_once)
    quote("1499.20", bid="1499.30", ask="1499.40")
    run = monitor(account)
    failed = Order.objects.get(parent=first, role="entry")
    assert failed.status == Order.Status.FAILED, run.errors
    monitor(account)  # within the wait: nothing more
    assert Order.objects.filter(parent=first).count() == 1
    Order.objects.filter(pk=failed.pk).update(updated_at=timezone.now() - timedelta(seconds=120))
    run = monitor(account)
    monitor(account)
    again = Order.objects.exclude(pk=failed.pk).get(parent=first)
    assert again.status in Order.LIVE and (again.quantity, again.price) == (10, D("1499.20")), run.errors
    assert again.idempotency_key.endswith(f"replace:{first.pk}#2")
    assert Order.objects.filter(role="entry", status__in=Order.LIVE).count() == 1


def test_a_failed_exit_the_brokers_book_lists_is_not_placed_again_when_its_sync_fails(trader, account, monkeypatch):
    """A stop held FAILED (its answer lost, not found in time) that the broker has after all: the
    run's book lists it by its tag, but recording that failed (one order step 3 could not
    reconcile). It is at the broker: a second stop would sell the position twice when hit."""
    first, stop = entry_with_stop(trader, account)
    Order.objects.filter(pk=stop.pk).update(
        status=Order.Status.FAILED, broker_order_id=None, updated_at=timezone.now() - timedelta(hours=1)
    )
    recording_fails_for(monkeypatch, stop)
    run = monitor(account)
    assert first.children.filter(role="stop_loss").count() == 1
    assert PaperOrder.objects.filter(client__user_id=account.client_id, order_type="SL-M").count() == 1
    assert any(stop.reference in e["error"] and "at the broker" in e["error"] for e in run.errors), run.errors
    monkeypatch.undo()
    monitor(account)  # its sync records it: it is the stop
    stop.refresh_from_db()
    assert stop.status == Order.Status.OPEN and live_exits(account, "stop_loss") == 10
    assert first.children.filter(role="stop_loss").count() == 1


def test_a_chased_entrys_failed_replacement_the_brokers_book_lists_is_not_placed_again(trader, account, monkeypatch):
    """The replacement of an entry cancelled past the cap is held FAILED, but the broker took it: the
    run's book lists it by its tag, and recording that failed. Placed again, the entry would be there twice."""
    from brokers.errors import BrokerError
    from brokers.paper.adapter import PaperBroker

    guarded = strategy(trader, account, chase_after_s=0, chase_max_ticks=10)
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    at_modification_cap(first)
    real, calls = PaperBroker.place_order, []

    def taken_but_answered_as_failed(self, request):
        calls.append(request)
        placed = real(self, request)
        if len(calls) == 1:
            raise BrokerError("the broker's order system is down")
        return placed

    monkeypatch.setattr(PaperBroker, "place_order", taken_but_answered_as_failed)
    quote("1499.20", bid="1499.30", ask="1499.40")
    monitor(account)
    failed = Order.objects.get(parent=first, role="entry")
    assert failed.status == Order.Status.FAILED
    Order.objects.filter(pk=failed.pk).update(updated_at=timezone.now() - timedelta(seconds=120))
    apply = recording_fails_for(monkeypatch, failed)
    run = monitor(account)
    assert Order.objects.filter(parent=first).count() == 1
    assert any("at the broker after all" in e["error"] for e in run.errors), run.errors
    monkeypatch.setattr(services, "order_apply_broker_state", apply)
    monitor(account)
    failed.refresh_from_db()
    assert failed.status in Order.LIVE and Order.objects.filter(parent=first).count() == 1


def test_an_nrml_equity_entry_taken_before_that_was_refused_gets_its_stop_loss(trader, account):
    """NRML is refused on equity now, but a strategy's NRML equity entry taken before holds its
    position: its stop-loss (NRML, as its entry) closes it, and refused as NRML on equity the
    position was left without one, every run saying only "product"."""
    from brokers.models import Instrument
    from orders import services as order_services

    guarded = strategy(trader, account, stop_loss=D("1"))
    quote("1500")
    infy = Instrument.objects.get(exchange="NSE", tradingsymbol="INFY")
    infy.instrument_type = "FUT"  # in memory only: taken as it was before the rule
    first = order_services.order_place(
        actor=trader,
        account=account,
        instrument=infy,
        side="BUY",
        quantity=10,
        order_type="MARKET",
        product="NRML",
        strategy=guarded,
        source="strategy",
        cause="test",
    )
    assert first.status == Order.Status.FILLED
    run = monitor(account)
    stop = first.children.get(role="stop_loss")
    assert (stop.status, stop.product, stop.quantity) == (Order.Status.OPEN, "NRML", 10), run.errors


def test_a_newer_entrys_exit_fill_the_fill_list_lacks_yet_does_not_top_up_the_older_entrys_exits(
    trader, account, monkeypatch
):
    """E1 holds 5 of its 10 (the trader sold 5 by hand: its exits were cut to 5). E2's take-profit
    fills; the run's fill list was read before it (or lags, as Kite's can), its book after: the
    position still counts E2's 10. E1 is not taken to hold 10 again: its exits are not topped up
    to 10 for a position of 5 (the stop would sell 5 the account does not hold)."""
    from brokers.client import AccountBroker

    e1, e2 = two_entries_the_newer_filled_at_the_broker(trader, account)
    monitor(account)
    place(trader, account, side="SELL", quantity=5)  # the trader sells 5 by hand
    monitor(account)
    assert held(account) == 15
    assert live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 15
    trades = AccountBroker(account).trades()  # read before E2's take-profit fills
    quote("1529.0", bid="1529.0", ask="1529.1")  # E2's take-profit (1529.00) fills; E1's (1530.10) does not
    monkeypatch.setattr(AccountBroker, "trades", lambda broker: trades)
    run = monitor(account)
    assert held(account) == 15  # E2's take-profit fill: not recorded yet
    assert e2.children.get(role="take_profit").status == Order.Status.FILLED
    assert e1.children.count() == 2, run.actions
    assert live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 5
    monkeypatch.undo()
    monitor(account)
    assert held(account) == 5
    assert e1.children.count() == 2
    assert live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 5
