"""A strategy's exits after the trader acted on them by hand: the cycle goes on from what the trader
did, and never undoes it. Each test is a life a review found broken against the paper exchange."""

from decimal import Decimal

import pytest

from brokers import services as broker_services
from brokers.client import AccountBroker
from brokers.paper import engine
from monitoring import cycle
from monitoring.models import AccountRun
from monitoring.tests.test_cycle import trailing_stop
from monitoring.tests.test_strategy_exits import entry, entry_with_stop, held, live_exits, quote, strategy
from orders import services
from orders.models import Order
from orders.tests.factories import place
from tradingplatform import background

D = Decimal


def monitor(account):
    return cycle.account_monitor(account=account)


def test_a_trailing_stop_the_trader_loosened_by_hand_is_not_pulled_back(trader, account):
    """The stop trails 10 behind; the trader gives it room (1490.10 -> 1480.10) with the market
    where it was. The trail does not pull it back to 10 behind: it trails on from where the trader
    put it, as far behind the market as they put it."""
    stop = trailing_stop(trader, account)
    assert stop.trigger_price == D("1490.10")
    services.order_modify(order=stop, actor=trader, cause="trader by hand", trigger_price="1480.10")
    run = monitor(account)
    stop.refresh_from_db()
    assert stop.trigger_price == D("1480.10"), run.actions
    monitor(account)
    stop.refresh_from_db()
    assert stop.trigger_price == D("1480.10")
    quote("1505")  # a step up: the stop follows, 19.90 behind, as the trader left it
    monitor(account)
    stop.refresh_from_db()
    assert stop.trigger_price == D("1485.10")


def test_a_short_trailing_stop_the_trader_loosened_in_the_brokers_app_is_not_pulled_back(trader, account):
    """The same for a short, its stop moved in the broker's own app: the platform finds it changed."""
    stop = trailing_stop(trader, account, side="SELL")
    assert stop.trigger_price == D("1509.90")
    client = engine.client_get_or_create(user_id=account.client_id)
    engine.order_modify(client=client, order_id=stop.broker_order_id, trigger_price=D("1519.90"))
    monitor(account)
    monitor(account)
    stop.refresh_from_db()
    assert stop.trigger_price == D("1519.90")
    quote("1495")  # a step down: the stop follows, 19.90 above the market, as the trader left it
    monitor(account)
    stop.refresh_from_db()
    assert stop.trigger_price == D("1514.90")


def test_a_stop_the_trader_tightened_past_the_runs_last_price_trails_on_from_where_they_put_it(
    trader, account, monkeypatch
):
    """The market rises to 1510 while a run is under way, its last price read at 1500; the trader
    tightens the stop to 1505.10 before its step 6. Measured against the run's last price, the
    stop would trail 5.10 beyond the market, every trail refused by the broker (a sell's trigger
    above the last price): the stop would never trail again. It is measured when the next run
    reads the market (6.90 behind 1512) and trails on from there."""
    stop = trailing_stop(trader, account)

    def trader_tightens(ctx):
        quote("1510")
        services.order_modify(
            order=Order.objects.get(pk=stop.pk), actor=trader, cause="by hand", trigger_price="1505.10"
        )

    steps = cycle.STEPS
    monkeypatch.setattr(cycle, "STEPS", [*steps[:5], ("5b_by_hand", trader_tightens), *steps[5:]])
    monitor(account)
    monkeypatch.setattr(cycle, "STEPS", steps)
    quote("1512")
    monitor(account)
    stop.refresh_from_db()
    assert stop.trigger_price == D("1505.10")
    quote("1517")  # a step up: the stop follows, 6.90 behind
    run = monitor(account)
    stop.refresh_from_db()
    assert (stop.status, stop.trigger_price) == (Order.Status.OPEN, D("1510.10")), run.actions


def test_a_stop_loss_the_trader_cut_by_hand_is_not_topped_up_again(trader, account):
    """The trader keeps a stop on half the position (10 -> 5) through the order page: the cycle does
    not place a second stop-loss for the other half, undoing the cut."""
    guarded = strategy(trader, account, stop_loss=D("1"), take_profit=D("2"))
    quote("1500")
    first = entry(trader, account, guarded)
    monitor(account)
    stop = first.children.get(role="stop_loss")
    services.order_modify(order=stop, actor=trader, cause="trader via the order page", quantity=5)
    run = monitor(account)
    monitor(account)
    assert live_exits(account, "stop_loss") == 5, run.actions
    assert first.children.filter(role="stop_loss").count() == 1
    assert run.status == AccountRun.Status.OK and live_exits(account, "take_profit") == 10
    quote("1530.2", bid="1530.2", ask="1530.3", volume=7)  # the take-profit sells 7: 3 held, the stop cut to 3
    monitor(account)
    monitor(account)
    assert held(account) == 3 and live_exits(account, "stop_loss") == 3


def test_a_stop_loss_cut_by_hand_still_covers_what_the_entry_fills_after_the_cut(trader, account):
    """The entry fills 4 of 10 and gets a stop for 4; the trader cuts that stop to 2 (leaving 2 of
    the 4 uncovered). The entry then fills its other 6: those are new shares, not what the trader
    chose to leave uncovered, and they get their stop-loss (the trader's 2 stay uncovered)."""
    guarded = strategy(trader, account, stop_loss=D("1"))
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    quote("1498.9", bid="1498.8", ask="1498.9", volume=4)
    monitor(account)
    assert live_exits(account, "stop_loss") == 4
    stop = first.children.get(role="stop_loss")
    services.order_modify(order=stop, actor=trader, cause="trader via the order page", quantity=2)
    monitor(account)
    assert live_exits(account, "stop_loss") == 2
    quote("1498.9", bid="1498.8", ask="1498.9", volume=100)  # the other 6 fill
    run = monitor(account)
    monitor(account)
    assert held(account) == 10
    assert live_exits(account, "stop_loss") == 8, run.actions


def test_a_stop_loss_cut_in_the_brokers_app_is_not_topped_up_and_the_trader_is_told(trader, account):
    first, stop = entry_with_stop(trader, account)
    client = engine.client_get_or_create(user_id=account.client_id)
    engine.order_modify(client=client, order_id=stop.broker_order_id, quantity=4)
    monitor(account)
    run = monitor(account)
    assert live_exits(account, "stop_loss") == 4
    assert run.errors == [
        {
            "step": "4_exits",
            "error": f"{first.reference} holds 6 without a stop-loss: {stop.reference}'s quantity was cut at the"
            " broker, not through the platform, so it is not topped up (place one, or close the position)",
        }
    ]


def test_what_the_entry_fills_after_the_trader_cancelled_its_stop_gets_one(trader, account):
    """The entry fills 4 of 10 and gets a stop for 4; the trader cancels it through the platform (those
    4 are theirs to leave uncovered). The entry then fills its other 6: new shares, which get their
    stop-loss, as after a cut by hand (the trader's 4 stay uncovered)."""
    guarded = strategy(trader, account, stop_loss=D("1"))
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    quote("1498.9", bid="1498.8", ask="1498.9", volume=4)
    monitor(account)
    theirs = first.children.get(role="stop_loss")
    services.order_cancel(order=theirs, actor=trader, cause="trader via the order page")
    monitor(account)
    assert live_exits(account, "stop_loss") == 0
    quote("1498.9", bid="1498.8", ask="1498.9")  # the other 6 fill
    run = monitor(account)
    monitor(account)
    assert held(account) == 10
    assert live_exits(account, "stop_loss") == 6, (run.actions, run.errors)


def runs_asked(place) -> list[int]:
    """The accounts whose monitoring run ``place()`` (an order and its fill) asked for at once."""
    queued = []
    broker_services.account_activity_listeners.append(queued.append)
    try:
        place()
        assert background.wait_idle(30)
    finally:
        broker_services.account_activity_listeners.remove(queued.append)
    return queued


def in_the_brokers_app(account, side, quantity):
    """A MARKET order placed in the broker's own app: not the platform's."""
    client = engine.client_get_or_create(user_id=account.client_id)
    engine.order_place(
        client=client, exchange="NSE", tradingsymbol="INFY", transaction_type=side, product="MIS",
        order_type="MARKET", quantity=quantity,
    )  # fmt: skip


def closed_with_its_exits_cancelled_at_once(account, place):
    """``place`` sells the strategy's 10: its fill asks for the account's run, which cancels the
    exits before the market reaches them."""
    assert live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 10
    assert runs_asked(place) == [account.pk]
    monitor(account)  # the run that queued: the exits go before the market reaches them
    quote("1531")
    monitor(account)
    assert held(account) == 0 and sum(exchange_positions(account).values()) == 0
    assert live_exits(account, "stop_loss") == live_exits(account, "take_profit") == 0


@pytest.mark.django_db(transaction=True)
def test_a_position_closed_by_hand_has_its_exits_cancelled_at_once_not_at_the_next_cycle(trader, account):
    """The trader sells the strategy's 10 by hand (a MARKET order of their own). Its exits, still
    resting at the exchange, would sell 10 more (a short) if the market reached them before the next
    cycle: the fill has the account's steps run at once, as a strategy order's fill does."""
    guarded = strategy(trader, account, stop_loss=D("1"), take_profit=D("2"))
    quote("1500")
    entry(trader, account, guarded)
    monitor(account)
    closed_with_its_exits_cancelled_at_once(account, lambda: place(trader, account, side="SELL", quantity=10))


@pytest.mark.django_db(transaction=True)
def test_a_position_closed_in_the_brokers_app_has_its_exits_cancelled_at_once_not_at_the_next_cycle(trader, account):
    """The same sale made in the broker's own app (an order not the platform's): the exchange tells
    of its fill, recorded at once, but the exits stayed resting until the next cycle, a minute in
    which the market reaching either sold 10 more (a short nobody asked for). Its fill has the
    account's steps run at once too."""
    guarded = strategy(trader, account, stop_loss=D("1"), take_profit=D("2"))
    quote("1500")
    entry(trader, account, guarded)
    monitor(account)
    closed_with_its_exits_cancelled_at_once(account, lambda: in_the_brokers_app(account, "SELL", 10))


def test_an_outside_fill_where_no_strategy_guards_the_position_queues_no_run(trader, account):
    """A fill of an order placed in the broker's app where no strategy's exit is live needs no run."""
    quote("1500")
    assert runs_asked(lambda: in_the_brokers_app(account, "BUY", 3)) == []


def test_a_manual_fill_where_no_strategy_guards_the_position_queues_no_run(trader, account):
    """Unchanged: a manual fill in an instrument no strategy's exit covers needs no monitoring run."""
    assert runs_asked(lambda: place(trader, account, quantity=3)) == []


def exchange_positions(account):
    return {(p.tradingsymbol, p.product): p.quantity for p in AccountBroker(account).positions()}
