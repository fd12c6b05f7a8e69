"""A strategy's retry and re-entry limits hold whatever replaces an order and wherever a worker stops;
a re-entry buys back what was stopped out."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from brokers.models import Instrument
from brokers.paper import engine
from brokers.paper.models import PaperClient, PaperOrder, PaperTrade
from monitoring import cycle
from orders import services, sources
from orders.models import Order, Strategy
from orders.tests.factories import place, recording_fails_for
from portfolio.models import Trade
from tradingplatform import background

from .test_strategy_exits import held, knobs, quote

D = Decimal


def rejecting(account, rate):
    engine.client_get_or_create(user_id=account.client_id)
    PaperClient.objects.filter(user_id=account.client_id).update(rejection_rate=rate)


def backed_off(order):
    """As if its retry's backoff had long passed."""
    Order.objects.filter(pk=order.pk).update(updated_at=order.updated_at.replace(year=2020))


def refused_entry(trader, account, **order):
    """A strategy that retries an RMS refusal once, and its entry, refused, its backoff passed."""
    strategy, _ = sources.strategy_save(
        owner=trader, name="Retry", account_ids=[account.pk], max_retries=1, retryable_kinds=["rms"]
    )
    rejecting(account, 1)
    first = place(trader, account, strategy=strategy, source="strategy", **order)
    assert first.status == Order.Status.REJECTED
    backed_off(first)
    return strategy, first


def test_a_retried_reentry_is_the_reentry_still_and_does_not_reenter_past_the_limit(trader, account):
    """max_reentries=1: the stop-loss fills, the re-entry is refused (RMS) and retried; the retry
    fills and its own stop-loss fills. The strategy has re-entered once: nothing more is placed."""
    strategy, _ = sources.strategy_save(
        owner=trader,
        name="Reenter",
        account_ids=[account.pk],
        stop_loss=D("1"),
        reentry_enabled=True,
        max_reentries=1,
        max_retries=1,
        retryable_kinds=["rms"],
    )
    quote("1500")
    first = place(trader, account, quantity=10, strategy=strategy, source="strategy")
    cycle.account_monitor(account=account)  # its stop-loss
    rejecting(account, 1)
    quote("1480")  # the stop-loss fills; the re-entry is refused
    cycle.account_monitor(account=account)
    reentry = Order.objects.get(parent=first, role="entry")
    assert reentry.status == Order.Status.REJECTED and reentry.reentry_count == 1
    rejecting(account, 0)
    backed_off(reentry)
    cycle.account_monitor(account=account)  # step 9 retries the re-entry
    retry = Order.objects.get(parent=reentry, role="entry")
    assert retry.status == Order.Status.FILLED
    assert (retry.retry_count, retry.reentry_count) == (1, 1)
    cycle.account_monitor(account=account)  # the retry's stop-loss
    quote("1460")  # it fills
    cycle.account_monitor(account=account)
    cycle.account_monitor(account=account)
    entries = Order.objects.filter(account=account, role="entry")
    assert entries.count() == 3  # the first, its re-entry and the re-entry's retry: no second re-entry


def test_a_retry_placed_just_before_the_worker_stops_counts_as_one(trader, account, monkeypatch):
    """max_retries=1: the worker stops right after placing the retry, which is refused too. Its
    count was written with its row, so no run retries it again."""
    _, first = refused_entry(trader, account)
    placing = cycle._place_again

    def stops_after_placing(*args, **kwargs):
        placing(*args, **kwargs)
        monkeypatch.setattr(cycle, "_place_again", placing)
        raise SystemExit("worker stopped")  # the order placed, nothing after it

    monkeypatch.setattr(cycle, "_place_again", stops_after_placing)
    try:
        cycle.account_monitor(account=account)
    except SystemExit:
        pass
    retry = Order.objects.get(parent=first)
    assert retry.status == Order.Status.REJECTED and retry.retry_count == 1
    backed_off(retry)
    cycle.account_monitor(account=account)
    cycle.account_monitor(account=account)
    assert Order.objects.filter(account=account).count() == 2  # the first and its one retry


def test_a_retry_places_only_what_its_refused_order_did_not_fill(trader, account):
    """A broker's word of a refusal after part filled (4 of 10): the retry places the other 6,
    never the 10 again (which would hold 14)."""
    _, first = refused_entry(trader, account, quantity=10)
    Order.objects.filter(pk=first.pk).update(filled_quantity=4, average_price=D("1500"))
    rejecting(account, 0)
    cycle.account_monitor(account=account)
    assert Order.objects.get(parent=first, role="entry").quantity == 6


def test_a_paused_strategy_retries_nothing_until_it_is_resumed(trader, account):
    """A retry is a new entry: a paused strategy opens nothing new (as it re-enters nothing)."""
    strategy, first = refused_entry(trader, account)
    rejecting(account, 0)
    Strategy.objects.filter(pk=strategy.pk).update(is_active=False)
    cycle.account_monitor(account=account)
    assert not Order.objects.filter(parent=first).exists()
    Strategy.objects.filter(pk=strategy.pk).update(is_active=True)
    cycle.account_monitor(account=account)
    assert Order.objects.get(parent=first).status == Order.Status.FILLED


def reentering(trader, account, **params):
    strategy, _ = sources.strategy_save(
        owner=trader, name="Reenter", account_ids=[account.pk], reentry_enabled=True, **params
    )
    return strategy


@pytest.mark.django_db(transaction=True)
def test_a_reentry_restores_what_was_stopped_out_not_what_the_entry_asked_for(trader, account):
    """max_reentries=2: the entry (10) fills 4 and the trader cancels the rest; its stop-loss (4)
    fills. The re-entry buys the 4 that were stopped out, not 10; so does the re-entry's own."""
    strategy = reentering(trader, account, stop_loss=D("1"), max_reentries=2)
    quote("1500")
    first = place(
        trader, account, quantity=10, order_type="LIMIT", price="1499.00", strategy=strategy, source="strategy"
    )
    quote("1498.9", bid="1498.8", ask="1498.9", volume=4)
    services.order_cancel(order=first, actor=trader, cause="trader cancels the rest")
    assert background.wait_idle(30)
    cycle.account_monitor(account=account)  # its stop-loss, for 4
    quote("1480")  # the stop-loss fills
    cycle.account_monitor(account=account)
    cycle.account_monitor(account=account)
    reentry = Order.objects.get(parent=first, role="entry")
    assert (reentry.quantity, reentry.status, reentry.reentry_count) == (4, Order.Status.FILLED, 1)
    assert held(account) == 4
    cycle.account_monitor(account=account)  # the re-entry's stop-loss
    quote("1460")  # it fills
    cycle.account_monitor(account=account)
    cycle.account_monitor(account=account)
    again = Order.objects.get(parent=reentry, role="entry")
    assert (again.quantity, again.reentry_count) == (4, 2)
    assert held(account) == 4


def test_a_reentry_after_a_take_profit_took_part_buys_back_only_what_the_stop_loss_sold(trader, account):
    """The entry (10) fills; its take-profit sells 4, so its stop-loss is cut to 6 and then sells
    those. The 4 were closed at the strategy's target, not stopped out: the re-entry buys 6."""
    strategy = reentering(trader, account, stop_loss=D("1"), take_profit=D("2"), max_reentries=1)
    quote("1500")
    first = place(trader, account, quantity=10, strategy=strategy, source="strategy")
    cycle.account_monitor(account=account)  # its exits
    quote("1530.2", bid="1530.2", ask="1530.3", volume=4)  # the take-profit sells 4
    cycle.account_monitor(account=account)
    quote("1480")  # the stop-loss sells the other 6
    cycle.account_monitor(account=account)
    cycle.account_monitor(account=account)
    reentry = Order.objects.get(parent=first, role="entry")
    assert (reentry.quantity, reentry.status) == (6, Order.Status.FILLED)
    assert held(account) == 6


@pytest.mark.django_db(transaction=True)
def test_a_reentry_in_a_future_buys_back_the_lots_stopped_out(trader, account):
    """A NIFTY future (lot 75): the entry (3 lots) fills 1 lot and is cancelled; its stop-loss sells
    that lot. The re-entry is that lot, a multiple of the lot size the broker takes."""
    strategy = reentering(trader, account, stop_loss=D("1"), max_reentries=1)
    symbol = Instrument.objects.filter(exchange="NFO", name="NIFTY").latest("expiry").tradingsymbol  # not expired

    def future(last, volume=10**6):
        last = D(last)
        engine.market_set(
            exchange="NFO", tradingsymbol=symbol, last_price=last, bid=last - 1, ask=last, tick_volume=volume
        )

    knobs(account, cash=D("100000000"))
    future("26000")
    first = place(
        trader,
        account,
        symbol=symbol,
        exchange="NFO",
        quantity=225,
        order_type="LIMIT",
        price="25990.00",
        strategy=strategy,
        source="strategy",
    )
    future("25990", volume=75)
    services.order_cancel(order=first, actor=trader, cause="trader cancels the rest")
    assert background.wait_idle(30)
    cycle.account_monitor(account=account)  # its stop-loss, for 75
    future("25700")  # the stop-loss fills
    cycle.account_monitor(account=account)
    cycle.account_monitor(account=account)
    first.refresh_from_db()
    assert first.filled_quantity == 75
    reentry = Order.objects.get(parent=first, role="entry")
    assert (reentry.quantity, reentry.status) == (75, Order.Status.FILLED)


def test_an_entry_refused_on_an_earlier_day_is_not_retried(trader, account):
    """Refused yesterday, its strategy paused then resumed today (or the account back today): its
    signal is a day old; a retry would open a position nobody asked for today."""
    strategy, first = refused_entry(trader, account)
    Order.objects.filter(pk=first.pk).update(created_at=first.created_at - timedelta(days=1))
    rejecting(account, 0)
    cycle.account_monitor(account=account)
    cycle.account_monitor(account=account)
    assert not Order.objects.filter(parent=first).exists()


def test_a_stop_loss_filled_on_an_earlier_day_does_not_re_enter_when_the_strategy_is_resumed(trader, account):
    """Stopped out while the strategy was paused; resumed the next day: that stop-out is a day
    old, a re-entry now would open a position on it."""
    strategy = reentering(trader, account, stop_loss=D("1"), max_reentries=2)
    quote("1500")
    first = place(trader, account, quantity=10, strategy=strategy, source="strategy")
    cycle.account_monitor(account=account)  # its stop-loss
    Strategy.objects.filter(pk=strategy.pk).update(is_active=False)
    quote("1480")  # the stop-loss fills
    cycle.account_monitor(account=account)
    stop = first.children.get(role="stop_loss", status=Order.Status.FILLED)
    Trade.objects.filter(order=stop).update(filled_at=timezone.now() - timedelta(days=1))  # it filled yesterday
    Strategy.objects.filter(pk=strategy.pk).update(is_active=True)
    cycle.account_monitor(account=account)
    assert not Order.objects.filter(parent=first, role="entry").exists()


def test_a_stop_loss_that_filled_yesterday_and_is_learnt_of_today_does_not_re_enter(trader, account):
    """An account not monitored overnight: today's first run learns of a stop-out that happened
    yesterday (a broker listing earlier days' orders, as the paper exchange does). When it filled,
    not when we heard of it, makes it a day old: no re-entry on it."""
    strategy = reentering(trader, account, stop_loss=D("1"), max_reentries=2)
    quote("1500")
    first = place(trader, account, quantity=10, strategy=strategy, source="strategy")
    cycle.account_monitor(account=account)  # its stop-loss
    stop = first.children.get(role="stop_loss")
    quote("1480")  # the stop-loss fills; say it filled yesterday
    yesterday = timezone.now() - timedelta(days=1)
    PaperTrade.objects.filter(order__order_id=stop.broker_order_id).update(filled_at=yesterday)
    Trade.objects.filter(order=stop).update(filled_at=yesterday)
    cycle.account_monitor(account=account)
    stop.refresh_from_db()
    assert stop.status == Order.Status.FILLED and stop.updated_at > yesterday + timedelta(hours=12)
    assert not Order.objects.filter(parent=first, role="entry").exists()


def test_a_retried_replacement_is_chased_no_further_than_the_first_orders_cap(trader, account):
    """A chased entry past the modification cap is replaced at its cap (1499.00 + 10 ticks); the
    replacement is refused (RMS) and retried. The retry stands for the first order still: it is
    chased no further than that order's cap, not 10 more ticks from where the replacement was."""
    strategy, _ = sources.strategy_save(
        owner=trader, name="Chase", account_ids=[account.pk], chase_after_s=0, chase_max_ticks=10,
        max_retries=1, retryable_kinds=["rms"],
    )  # fmt: skip
    quote("1500", bid="1500", ask="1505")  # never crosses the entry
    first = place(trader, account, strategy=strategy, source="strategy", order_type="LIMIT", price="1499.00")
    Order.objects.filter(pk=first.pk).update(chase_count=cycle.BROKER_MODIFICATION_CAP - 1)
    rejecting(account, 1)
    cycle.account_monitor(account=account)
    replacement = Order.objects.get(parent=first, role="entry")
    assert replacement.status == Order.Status.REJECTED and replacement.price == D("1500.00")
    rejecting(account, 0)
    backed_off(replacement)
    cycle.account_monitor(account=account)
    retry = Order.objects.get(parent=replacement, role="entry")
    assert retry.status == Order.Status.OPEN and retry.price == D("1500.00")
    quote("1510", bid="1510", ask="1515")
    cycle.account_monitor(account=account)
    retry.refresh_from_db()
    assert retry.price == D("1500.00")


def test_an_account_taken_off_the_strategy_gets_no_retry_of_its_refused_entry(trader, account):
    """A retry is a new entry: the trader who took the account off the strategy wants nothing new
    opened there by it (as a paused strategy opens nothing)."""
    strategy, first = refused_entry(trader, account)
    rejecting(account, 0)
    strategy.accounts.remove(account)
    cycle.account_monitor(account=account)
    assert not Order.objects.filter(parent=first).exists()
    strategy.accounts.add(account)
    cycle.account_monitor(account=account)
    assert Order.objects.get(parent=first).status == Order.Status.FILLED


def test_an_account_taken_off_the_strategy_does_not_re_enter_but_keeps_its_exits(trader, account):
    strategy = reentering(trader, account, stop_loss=D("1"), take_profit=D("2"), max_reentries=1)
    quote("1500")
    first = place(trader, account, quantity=10, strategy=strategy, source="strategy")
    strategy.accounts.remove(account)
    cycle.account_monitor(account=account)  # what it holds is still protected
    assert set(first.children.values_list("role", "status")) == {
        ("stop_loss", Order.Status.OPEN),
        ("take_profit", Order.Status.OPEN),
    }
    quote("1480")  # the stop-loss fills
    cycle.account_monitor(account=account)
    cycle.account_monitor(account=account)
    assert held(account) == 0
    assert not Order.objects.filter(parent=first, role="entry").exists()


def _filled_entry_held_failed(trader, account) -> Order:
    """A strategy entry (one network retry) the broker filled, held FAILED here (as far as the
    platform knows, never sent: a network failure), its retry's backoff long passed."""
    strategy, _ = sources.strategy_save(
        owner=trader, name="Retry", account_ids=[account.pk], max_retries=1, retryable_kinds=["network"]
    )
    quote("1500")
    first = place(trader, account, quantity=10, strategy=strategy, source="strategy")
    assert first.status == Order.Status.FILLED
    Order.objects.filter(pk=first.pk).update(
        status=Order.Status.FAILED,
        broker_order_id=None,
        filled_quantity=0,
        average_price=D(0),
        reject_kind="network",
        updated_at=first.updated_at.replace(year=2020),
    )
    return first


def test_a_failed_entry_is_not_retried_by_a_cycle_that_could_not_read_the_brokers_orders(trader, account, monkeypatch):
    """The platform holds a strategy's entry FAILED (as far as it knows the broker never got it: a
    network failure); the broker has it after all. Only a sync, looking for it by its tag, can tell:
    a cycle that could not read the broker's orders does not retry it (a second position), the next
    one finds it at the broker, and nothing is placed twice."""
    first = _filled_entry_held_failed(trader, account)
    monkeypatch.setattr(cycle, "FETCH_READS", ("missing_read",))  # the fetch fails
    cycle.account_monitor(account=account)
    assert not Order.objects.filter(parent=first).exists()
    monkeypatch.undo()
    cycle.account_monitor(account=account)
    cycle.account_monitor(account=account)
    first.refresh_from_db()
    assert first.status == Order.Status.FILLED and not Order.objects.filter(parent=first).exists()
    assert PaperOrder.objects.filter(client__user_id=account.client_id).count() == 1


def test_an_account_taken_off_the_strategy_has_its_entries_neither_chased_nor_replaced(trader, account, monkeypatch):
    """Taking an account off a strategy says it opens nothing more there, as pausing it does: a
    resting entry is not moved toward the market to fill, nor is one the cycle cancelled past the
    modification cap put back, until the account is on the strategy again."""
    import dataclasses

    from brokers.paper.adapter import PaperBroker

    strategy, _ = sources.strategy_save(
        owner=trader, name="Chaser", account_ids=[account.pk], chase_after_s=0, chase_max_ticks=10
    )
    quote("1520")  # far above: the BUY LIMITs rest
    capped = place(trader, account, quantity=10, strategy=strategy, source="strategy", order_type="LIMIT",
                   price="1498.00")  # fmt: skip
    Order.objects.filter(pk=capped.pk).update(chase_count=cycle.BROKER_MODIFICATION_CAP - 1)
    real = PaperBroker.order  # the cap's cancel still pending at the broker: its replacement owed
    monkeypatch.setattr(PaperBroker, "order", lambda self, i: dataclasses.replace(real(self, i), status="OPEN"))
    cycle.account_monitor(account=account)
    monkeypatch.undo()
    resting = place(trader, account, quantity=10, strategy=strategy, source="strategy", order_type="LIMIT",
                    price="1499.00")  # fmt: skip
    capped.refresh_from_db()
    assert capped.status == Order.Status.CANCELLED and not Order.objects.filter(parent=capped).exists()
    strategy.accounts.remove(account)
    cycle.account_monitor(account=account)
    cycle.account_monitor(account=account)
    resting.refresh_from_db()
    assert (resting.price, resting.chase_count) == (D("1499.00"), 0)
    assert not Order.objects.filter(parent__in=[resting, capped]).exists()
    strategy.accounts.add(account)
    cycle.account_monitor(account=account)
    resting.refresh_from_db()
    assert resting.price == D("1500.00") and Order.objects.get(parent=capped).price == D("1499.00")


def test_a_failed_entry_the_brokers_book_lists_is_not_retried_when_its_sync_fails(trader, account, monkeypatch):
    """A strategy's entry held FAILED that the broker has after all: the run's book lists it by its
    tag, but recording that failed (one order step 3 could not reconcile). Retried, it would be a
    second position; the next run records it and nothing is placed twice."""
    first = _filled_entry_held_failed(trader, account)
    recording_fails_for(monkeypatch, first)
    cycle.account_monitor(account=account)
    assert not Order.objects.filter(parent=first).exists()
    monkeypatch.undo()
    cycle.account_monitor(account=account)
    first.refresh_from_db()
    assert first.status == Order.Status.FILLED and not Order.objects.filter(parent=first).exists()
    assert PaperOrder.objects.filter(client__user_id=account.client_id).count() == 1
