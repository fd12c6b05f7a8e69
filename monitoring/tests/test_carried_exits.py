"""A strategy's exits of a position carried overnight: the exchange ends DAY orders with their day,
and step 4 puts them back, at their own terms (a trail's level), when orders trade again (the
paper exchange's market never shuts: at once; Kite's at the exchange's next open); not those the
trader cancelled, nor one whose last fills the platform never saw.

The exchanges' hours are ``brokers.markets``' (tested in ``brokers/tests/test_markets.py``); on
Kite here the session is open or not as the test says."""

from datetime import timedelta

import pytest
from django.utils import timezone

from brokers import markets
from brokers.base import Broker
from brokers.client import AccountBroker
from brokers.paper import engine
from brokers.paper.models import PaperClient, PaperInstrument, PaperOrder
from monitoring import cycle
from monitoring.models import AccountRun
from orders import services
from orders.models import Order
from tradingplatform import background

from .test_strategy_exits import D, entry, held, knobs, live_exits, quote, strategy


@pytest.fixture
def session(monkeypatch):
    """The exchanges' sessions: shut (opening in an hour) until a test opens them (``session["open"] = True``)."""
    state = {"open": False}
    shut_for = lambda: timedelta(hours=0 if state["open"] else 1)  # noqa: E731
    monkeypatch.setattr(Broker, "next_open", classmethod(lambda cls, exchange, after: after + shut_for()))
    return state


def monitor(account):
    assert background.wait_idle(30)
    run = cycle.account_monitor(account=account)
    assert background.wait_idle(30)
    return run


def guarded_yesterday(trader, account, **params):
    """A delivery (CNC) entry of 10 bought at 1500 and its stop-loss 10 points under it, placed on
    the day before today: (the entry, its stop)."""
    guarded = strategy(trader, account, stop_loss=D("10"), stop_loss_unit="points", **params)
    quote("1500")
    first = entry(trader, account, guarded, product="CNC")
    monitor(account)
    return first, first.children.get(role="stop_loss")


def placed_yesterday(order):
    yesterday = timezone.now() - timedelta(days=1)
    Order.objects.filter(pk=order.pk).update(created_at=yesterday)
    PaperOrder.objects.filter(tag=order.reference).update(placed_at=yesterday)


def day_ends(stop):
    """The exchange closes yesterday's resting DAY orders (the platform reads it at its next run)."""
    placed_yesterday(stop)
    assert engine.day_orders_close() == 1


def stops(first):
    return list(first.children.filter(role="stop_loss").order_by("pk"))


def filled_in_two_parts(trader, account):
    """A delivery entry that filled 4, then 6, with a stop-loss 10 points under it for each part."""
    guarded = strategy(trader, account, stop_loss=D("10"), stop_loss_unit="points")
    quote("1500")
    first = entry(trader, account, guarded, product="CNC", order_type="LIMIT", price="1499.00")
    quote("1498.9", bid="1498.8", ask="1498.9", volume=4)
    monitor(account)
    quote("1498.9", bid="1498.8", ask="1498.9")
    monitor(account)
    monitor(account)
    return first


def test_a_stop_the_exchange_ended_with_its_day_goes_back_the_next_day(trader, account):
    first, stop = guarded_yesterday(trader, account)
    assert stop.trigger_price == D("1490.10")
    day_ends(stop)
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    stop.refresh_from_db()
    assert stop.status == Order.Status.CANCELLED
    assert stop.events.get(kind="cancelled").data[services.BROKER_AT]
    monitor(account)  # once
    old, new = stops(first)
    assert old.pk == stop.pk
    assert (new.status, new.order_type, new.trigger_price, new.quantity) == (
        Order.Status.OPEN,
        "SL-M",
        D("1490.10"),
        10,
    )
    assert new.idempotency_key.endswith(f"replace:{stop.pk}")
    assert (new.product, new.side) == ("CNC", "SELL")


def test_a_stop_refused_days_after_earlier_refusals_is_still_put_back(trader, account):
    """Refusals over the entry's whole life were counted: two on its first day and one of its stop
    put back after a day's end made three, and the delivery position was left without a stop-loss
    for good. Only refusals in a row count; a stop taken since starts again."""
    guarded = strategy(trader, account, stop_loss=D("10"), stop_loss_unit="points")
    quote("1500")
    first = entry(trader, account, guarded, product="CNC")
    knobs(account, rejection_rate=1)
    monitor(account)
    monitor(account)
    knobs(account, rejection_rate=0)
    monitor(account)
    *refused, stop = stops(first)
    assert [o.status for o in refused] == [Order.Status.REJECTED] * 2 and stop.status == Order.Status.OPEN
    day_ends(stop)
    knobs(account, rejection_rate=1)
    monitor(account)
    monitor(account)  # its day's end read, and it is put back: refused
    assert stops(first)[-1].status == Order.Status.REJECTED
    knobs(account, rejection_rate=0)
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    assert live_exits(account, "stop_loss") == 10
    assert stops(first)[-1].trigger_price == D("1490.10")  # where the stop taken had been


def test_a_trailed_stop_goes_back_where_it_had_trailed_and_trails_on(trader, account):
    first, stop = guarded_yesterday(trader, account, trailing_step=D("5"))
    quote("1512")  # two steps of 5
    monitor(account)
    stop.refresh_from_db()
    assert stop.trigger_price == D("1500.10")
    day_ends(stop)
    monitor(account)
    _old, new = stops(first)
    assert new.trigger_price == D("1500.10")  # not the first level, 1490.10
    quote("1517")  # the trail's distance (10) is kept: one more step
    monitor(account)
    new.refresh_from_db()
    assert new.trigger_price == D("1505.10")


def test_a_stop_the_market_opened_beyond_is_an_exit_at_market(trader, account):
    """And its take-profit is not put back beside it (it would sell what the stop sells: refused for
    delivery shares no longer held, or opening a short)."""
    first, stop = guarded_yesterday(trader, account, take_profit=D("50"), take_profit_unit="points")
    for exit_ in (stop, first.children.get(role="take_profit")):
        placed_yesterday(exit_)
    assert engine.day_orders_close() == 2
    quote("1470")  # the market opens under the stop's trigger (1490.10)
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    _old, new = stops(first)
    assert (new.order_type, new.trigger_price) == ("MARKET", None)
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    new.refresh_from_db()
    assert (new.status, new.filled_quantity) == (Order.Status.FILLED, 10)
    assert held(account) == 0
    assert first.children.filter(role="take_profit").count() == 1  # the one that ended, not put back


def test_a_stop_the_trader_cancelled_at_the_broker_during_its_day_is_not_put_back(
    trader, account, monkeypatch, django_capture_on_commit_callbacks
):
    first, stop = guarded_yesterday(trader, account)
    placed_yesterday(stop)
    # Cancelled in the broker's app at 11:00 yesterday, before the close: the broker's time says so,
    # however late the platform hears of it (told now: the exchange's book of today no longer
    # lists an order of yesterday, as Kite's does not).
    at = markets.date_start(markets.trading_date() - timedelta(days=1)) + timedelta(hours=11)
    with django_capture_on_commit_callbacks(execute=True):
        with monkeypatch.context() as clock:
            clock.setattr(timezone, "now", lambda: at)
            engine.order_cancel(
                client=PaperClient.objects.get(user_id=account.client_id), order_id=stop.broker_order_id
            )
    assert background.wait_idle(30)
    run = monitor(account)
    assert run.status == AccountRun.Status.ERRORS
    assert "was cancelled at the broker" in run.errors[-1]["error"]
    assert stops(first) == [stop]


def test_a_stop_closed_with_its_day_while_nobody_read_the_broker_is_reported_not_put_back(trader, account, monkeypatch):
    """Kite lists today's orders only: a stop still live when the platform last read it, gone from
    the book the next day, may have filled before the close. Placed again, it could sell what is no
    longer held."""
    first, stop = guarded_yesterday(trader, account)
    placed_yesterday(stop)
    monkeypatch.setattr(AccountBroker, "orders", lambda broker: [])
    run = monitor(account)
    stop.refresh_from_db()
    assert stop.status == Order.Status.CANCELLED
    assert run.status == AccountRun.Status.ERRORS
    assert "what it filled since our last look is not known" in run.errors[-1]["error"]
    assert stops(first) == [stop]


@pytest.mark.django_db(transaction=True)
def test_a_kite_stop_the_exchange_ended_goes_back_at_the_next_open(trader, kite_on_face, session):
    """On a Kite account (the paper exchange's Kite face), Kite's time of the cancel
    (``exchange_update_timestamp``), heard by postback or read from the book, says the day ended
    it; it goes back when the exchange opens, and until then the run says when."""
    account = kite_on_face
    session["open"] = True
    first, stop = guarded_yesterday(trader, account)
    day_ends(stop)
    session["open"] = False
    run = monitor(account)  # the exchange is shut: it waits for the open, and says so
    assert run.status == AccountRun.Status.OK, run.errors
    assert any("ended with its trading day: placed at NSE's open" in a for a in run.actions), run.actions
    assert live_exits(account, "stop_loss") == 0
    session["open"] = True
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    _old, new = stops(first)
    assert new.status in Order.LIVE and (new.trigger_price, new.quantity) == (D("1490.10"), 10)


@pytest.mark.django_db(transaction=True)
def test_a_kite_exit_due_while_the_exchange_is_shut_waits_for_its_open(trader, kite_on_face, session):
    """An entry filled just before the close: its stop is not sent to a shut exchange (Kite refuses
    regular orders then, and three refusals would end the stop's attempts for good)."""
    account = kite_on_face
    guarded = strategy(trader, account, stop_loss=D("10"), stop_loss_unit="points")
    quote("1500")
    first = entry(trader, account, guarded, product="CNC")
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    assert any(f"a stop-loss for {first.reference}: placed at NSE's open" in a for a in run.actions), run.actions
    assert stops(first) == []
    session["open"] = True
    monitor(account)
    assert [(s.trigger_price, s.quantity) for s in stops(first)] == [(D("1490.10"), 10)]


def test_stops_of_an_entry_filled_in_two_parts_each_go_back_and_a_cut_of_one_is_not_topped_up(trader, account):
    """The entry fills 4, then 6: a stop for each part. Both end with their day: each goes back for
    what it had, at once. The trader then cuts one of them in the broker's app: the cut is theirs,
    and the other part's stop (already back) is not put back a second time to top it up."""
    first = filled_in_two_parts(trader, account)
    parts = stops(first)
    assert [stop.quantity for stop in parts] == [4, 6]
    for stop in parts:
        placed_yesterday(stop)
    assert engine.day_orders_close() == 2
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    assert live_exits(account, "stop_loss") == 10
    newest = stops(first)[-1]
    client = engine.client_get_or_create(user_id=account.client_id)
    engine.order_modify(client=client, order_id=newest.broker_order_id, quantity=newest.quantity - 2)
    monitor(account)
    run = monitor(account)
    assert live_exits(account, "stop_loss") == 8, run.actions
    assert "so it is not topped up" in run.errors[-1]["error"]


@pytest.mark.django_db(transaction=True)
def test_a_kite_stop_the_market_fell_past_before_it_was_placed_goes_at_market(trader, kite_on_face, session):
    """Through Kite's wire format too: the fresh stop's level (1490.10) is over the last price, so it
    goes at market instead of as an SL-M Kite would refuse."""
    account = kite_on_face
    session["open"] = True
    guarded = strategy(trader, account, stop_loss=D("10"), stop_loss_unit="points")
    quote("1500")
    first = entry(trader, account, guarded, product="CNC")
    quote("1480")
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    [stop] = stops(first)
    assert (stop.order_type, stop.quantity, stop.side) == ("MARKET", 10, "SELL")
    monitor(account)
    stop.refresh_from_db()
    assert (stop.status, stop.filled_quantity) == (Order.Status.FILLED, 10)


def test_an_exit_refused_because_the_market_is_closed_keeps_its_terms_and_its_attempts(trader, account):
    """A holiday the platform's calendar lacks: the exchange refuses the trailed stop put back at the
    open ("Markets are closed right now"). It is not one of the stop's three attempts (three runs would
    leave the position unprotected for good), it is tried again further apart, and it goes back at the
    trail's level, not the strategy's first one."""
    first, stop = guarded_yesterday(trader, account, trailing_step=D("5"))
    quote("1512")  # the trail moves the stop to 1500.10
    monitor(account)
    day_ends(stop)
    knobs(account, market_closed=True)
    run = monitor(account)
    assert run.status == AccountRun.Status.ERRORS
    [refused] = stops(first)[1:]
    assert (refused.status, refused.reject_kind) == (Order.Status.REJECTED, "market_closed")
    for _ in range(cycle.EXIT_ATTEMPTS + 1):  # within the wait: not sent again
        run = monitor(account)
        assert "market is closed" in run.errors[-1]["error"], run.errors
    assert len(stops(first)) == 2
    Order.objects.filter(pk=refused.pk).update(updated_at=timezone.now() - timedelta(seconds=cycle.CLOSED_RETRY_S))
    monitor(account)  # tried again, refused again: now it waits twice as long
    assert [s.status for s in stops(first)[1:]] == [Order.Status.REJECTED] * 2
    knobs(account, market_closed=False)
    Order.objects.filter(role="stop_loss").update(updated_at=timezone.now() - timedelta(hours=2))
    quote("1505")  # a fresh stop at the first level (1490.10) would not trail up to where it was
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    back = stops(first)[-1]
    assert (back.status, back.order_type, back.trigger_price, back.quantity) == (
        Order.Status.OPEN,
        "SL-M",
        D("1500.10"),
        10,
    )
    assert back.idempotency_key.endswith(f"replace:{stop.pk}#3")
    quote("1517")  # and it trails on at the first stop's distance
    monitor(account)
    back.refresh_from_db()
    assert back.trigger_price == D("1505.10")


def test_a_carried_stop_refused_by_the_broker_goes_back_at_its_own_level_next_time(trader, account):
    """A refusal of another kind is one of its attempts, but the next try is the same stop put back
    (the trail's level), not a fresh one at the strategy's first level."""
    first, stop = guarded_yesterday(trader, account, trailing_step=D("5"))
    quote("1512")
    monitor(account)
    day_ends(stop)
    knobs(account, rejection_rate=1)
    monitor(account)
    knobs(account, rejection_rate=0)
    quote("1505")  # a fresh stop at the first level (1490.10) would not trail up to where it was
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    _old, refused, back = stops(first)
    assert refused.status == Order.Status.REJECTED and refused.reject_kind != "market_closed"
    assert (back.status, back.trigger_price) == (Order.Status.OPEN, D("1500.10"))


@pytest.mark.django_db(transaction=True)
def test_a_kite_refusal_because_markets_are_closed_is_not_an_attempt(trader, kite_on_face, session):
    account = kite_on_face
    session["open"] = True
    guarded = strategy(trader, account, stop_loss=D("10"), stop_loss_unit="points")
    quote("1500")
    first = entry(trader, account, guarded, product="CNC")
    knobs(account, market_closed=True)
    monitor(account)
    [refused] = stops(first)
    assert (refused.status, refused.reject_kind) == (Order.Status.REJECTED, "market_closed")
    knobs(account, market_closed=False)
    Order.objects.filter(pk=refused.pk).update(updated_at=timezone.now() - timedelta(seconds=cycle.CLOSED_RETRY_S))
    monitor(account)
    assert [(s.status in Order.LIVE, s.trigger_price) for s in stops(first)][1:] == [(True, D("1490.10"))]


def test_a_stop_the_exchange_ended_goes_back_beside_one_the_trader_cancelled(trader, account):
    """The entry fills 4, then 6: a stop for each part. The trader cancels the first part's stop
    through the platform (those 4 are theirs to leave uncovered); the second part's stop ends with
    its day. It goes back for its 6, as it would alone: the trader's cancel was of the other one."""
    first = filled_in_two_parts(trader, account)
    theirs, ended = stops(first)
    assert (theirs.quantity, ended.quantity) == (4, 6)
    services.order_cancel(order=theirs, actor=trader, cause="trader via the order page")
    monitor(account)
    assert live_exits(account, "stop_loss") == 6
    day_ends(ended)
    monitor(account)
    run = monitor(account)
    assert held(account) == 10
    assert live_exits(account, "stop_loss") == 6, (run.actions, run.errors)
    back = stops(first)[-1]
    assert back.idempotency_key.endswith(f"replace:{ended.pk}") and back.quantity == 6


def test_a_stop_whose_cancel_failed_during_its_day_goes_back_after_the_day_ended_it(trader, account, monkeypatch):
    """The trader's cancel of the stop failed yesterday before it reached the broker (a rate limit):
    the stop rested on, and the exchange ended it with its day. A cancel that closed nothing is no
    reason to leave the position without its stop the next day, unannounced."""
    from brokers.errors import RateLimited

    first, stop = guarded_yesterday(trader, account)

    def refused(self, broker_order_id):
        raise RateLimited("Too many requests", retry_after=1)

    at = markets.date_start(markets.trading_date() - timedelta(days=1)) + timedelta(hours=11)  # yesterday
    with monkeypatch.context() as broker:
        broker.setattr(AccountBroker, "cancel_order", refused)
        broker.setattr(timezone, "now", lambda: at)
        with pytest.raises(services.OrderActionRefused):
            services.order_cancel(order=stop, actor=trader, cause="the trader, on the book")
    assert stop.events.get(kind="cancel_failed").created_at == at
    day_ends(stop)
    monitor(account)
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    old, new = stops(first)
    assert old.pk == stop.pk and old.status == Order.Status.CANCELLED
    assert (new.status, new.trigger_price, new.quantity) == (Order.Status.OPEN, D("1490.10"), 10)


def test_a_stop_the_trader_asked_to_cancel_after_its_day_ended_is_not_put_back(trader, account):
    """The day's end closed the stop before the platform read it; the trader's cancel asked then is
    refused by the broker (it is closed already), but says what they want: it stays cancelled, and
    the trader is answered so (the order, cancelled), not with the broker's refusal."""
    first, stop = guarded_yesterday(trader, account)
    day_ends(stop)
    answered = services.order_cancel(order=stop, actor=trader, cause="the trader, on the book")
    assert answered.status == Order.Status.CANCELLED
    monitor(account)
    monitor(account)
    assert stops(first) == [stop]
    stop.refresh_from_db()
    assert stop.status == Order.Status.CANCELLED


def target_ended_with_its_day(trader, account) -> tuple[Order, Order]:
    """A delivery entry bought at 1500 and its 15 % target (1725.10), which ended with its day
    before the platform read it: (the entry, its target)."""
    guarded = strategy(trader, account, take_profit=D("15"))
    quote("1500")
    first = entry(trader, account, guarded, product="CNC")
    monitor(account)
    target = first.children.get(role="take_profit")
    assert (target.status, target.price) == (Order.Status.OPEN, D("1725.10"))
    day_ends(target)
    return first, target


def test_a_carried_take_profit_the_next_days_limits_leave_out_waits_for_them_not_refused_until_given_up(
    trader, account
):
    """A delivery entry's 15 % target (1725.10) ended with its day; the next day's limits, from a
    lower close, end at 1680: put back, it was refused for the band every run until step 4 gave up
    on it ("3 rejected"), and the position kept no target even when the limits reached it again.
    After the one refusal it waits, not sent, the run saying why, and goes back at its own level
    when the limits reach it."""
    first, target = target_ended_with_its_day(trader, account)
    PaperInstrument.objects.filter(tradingsymbol="INFY").update(previous_close=D("1400"))  # limits 1120 - 1680
    for _ in range(cycle.EXIT_ATTEMPTS + 2):
        run = monitor(account)
    assert any("1725.10 is outside today's circuit limits 1120.00 - 1680.00" in e["error"] for e in run.errors), (
        run.errors
    )
    _taken, refused = first.children.filter(role="take_profit").order_by("pk")  # one refusal, nothing more sent
    assert (refused.status, refused.reject_kind) == (Order.Status.REJECTED, "price_band")
    PaperInstrument.objects.filter(tradingsymbol="INFY").update(previous_close=D("1450"))  # 1160 - 1740
    run = monitor(account)
    assert run.status == AccountRun.Status.OK, run.errors
    back = first.children.get(role="take_profit", status__in=Order.LIVE)
    assert (back.price, back.quantity) == (D("1725.10"), 10)
    assert back.idempotency_key.split("#")[0].endswith(f"replace:{target.pk}")  # put back, not a fresh one
    assert PaperOrder.objects.get(order_id=back.broker_order_id).status == PaperOrder.Status.OPEN


def test_a_carried_take_profit_the_market_went_past_beyond_the_limits_closes_the_position_not_left_waiting(
    trader, account
):
    """A delivery entry's 15 % target (1725.10) ended with its day; by the run that put it back the
    stock traded at 2200, its limits 1760 - 2640: the target's sale under the lower limit, one the
    market already fills. Refused for the band, it was then left waiting, "placed when they reach
    it", every run while the market stood beyond the trader's level: the profit never taken. It
    goes at the limit, a better price than the trader's, and sells at the market."""
    first, _target = target_ended_with_its_day(trader, account)
    PaperInstrument.objects.filter(tradingsymbol="INFY").update(previous_close=D("2200"))  # limits 1760 - 2640
    quote("2200")
    for _ in range(cycle.EXIT_ATTEMPTS + 1):
        run = monitor(account)
    sold = first.children.get(role="take_profit", status=Order.Status.FILLED)
    assert sold.price == D("1760.00")  # the limit: the trader's level the exchange refuses
    assert sold.average_price > D("2199")  # at the market, better than the target
    assert held(account) == 0
    assert not any("outside today's circuit limits" in e["error"] for e in run.errors), run.errors
