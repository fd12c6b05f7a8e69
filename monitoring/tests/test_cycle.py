"""The monitoring cycle against the paper exchange: each step, and idempotency when run twice."""

import hashlib
import json
import re
import socket
import threading
import time as clock
from decimal import Decimal

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.tests.factories import make_kite_account
from brokers.paper import engine
from brokers.paper.models import PaperClient, PaperOrder
from monitoring import cycle, tasks
from monitoring import services as monitoring_services
from monitoring.models import AccountRun, BrokerSnapshot, MonitoringRun
from orders import services, sources
from orders.models import Order
from orders.tests.factories import place
from portfolio.models import Position, Trade
from tradingplatform import locks

D = Decimal


def monitor(account):
    return cycle.account_monitor(account=account)


def set_price(last, symbol="INFY"):
    last = D(last)
    engine.market_set(exchange="NSE", tradingsymbol=symbol, last_price=last, bid=last - D("0.1"), ask=last + D("0.1"))


@pytest.fixture
def strategy(trader, account):
    row, _ = sources.strategy_save(
        owner=trader,
        name="Guarded",
        account_ids=[account.pk],
        stop_loss=D("1"),
        take_profit=D("2"),
        reentry_enabled=True,
        max_reentries=1,
    )
    return row


def entry(trader, account, strategy, **kwargs):
    return place(trader, account, quantity=10, strategy=strategy, source="strategy", **kwargs)


def test_fetch_pnl_and_orders_steps(trader, account):
    order = place(trader, account, quantity=4)
    result = monitor(account)
    assert result.status == AccountRun.Status.OK, result.errors
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED
    assert Trade.objects.get(order=order).quantity == 4
    assert Position.objects.get(account=account).net_quantity == 4
    kinds = BrokerSnapshot.objects.filter(account=account).values_list("kind", flat=True)
    assert sorted(kinds) == ["holdings", "orders", "positions", "trades"]  # holdings: once a day
    assert set(result.step_ms) >= {"1_fetch", "2_pnl", "3_orders", "4_exits"}


def test_filled_entry_gets_stop_loss_and_take_profit_once(trader, account, strategy):
    set_price("1500")
    first = entry(trader, account, strategy)
    monitor(account)
    monitor(account)  # a second cycle (or a redelivered task) places nothing more
    exits = {o.role: o for o in first.children.all()}
    assert set(exits) == {"stop_loss", "take_profit"} and first.children.count() == 2
    assert exits["stop_loss"].order_type == "SL-M" and exits["stop_loss"].trigger_price == D("1485.10")
    assert exits["take_profit"].order_type == "LIMIT" and exits["take_profit"].price == D("1530.10")
    assert exits["stop_loss"].side == exits["take_profit"].side == "SELL"
    assert "monitoring step 4" in exits["stop_loss"].events.first().cause


def test_take_profit_fill_cancels_the_stop_loss(trader, account, strategy):
    set_price("1500")
    first = entry(trader, account, strategy)
    monitor(account)
    set_price("1531")  # crosses the take-profit
    monitor(account)
    exits = {o.role: o for o in first.children.all()}
    assert exits["take_profit"].status == Order.Status.FILLED
    assert exits["stop_loss"].status == Order.Status.CANCELLED
    assert PaperOrder.objects.get(tag=exits["stop_loss"].reference).status == "CANCELLED"
    assert Position.objects.get(account=account, product="MIS").net_quantity == 0


def test_stop_loss_exit_re_enters_once(trader, account, strategy):
    set_price("1500")
    first = entry(trader, account, strategy)
    monitor(account)
    set_price("1480")  # triggers the stop-loss
    monitor(account)
    monitor(account)
    reentries = Order.objects.filter(parent=first, role="entry")
    assert reentries.count() == 1
    assert reentries.get().reentry_count == 1


def test_retryable_rejection_is_retried_once(trader, account, settings):
    strategy, _ = sources.strategy_save(
        owner=trader, name="Retry", account_ids=[account.pk], max_retries=1, retryable_kinds=["funds"]
    )
    engine.client_get_or_create(user_id=account.client_id)
    PaperClient.objects.filter(user_id=account.client_id).update(cash=D("10"))
    rejected = place(trader, account, strategy=strategy, source="strategy")
    assert rejected.status == Order.Status.REJECTED and rejected.reject_kind == "funds"
    PaperClient.objects.filter(user_id=account.client_id).update(cash=D("1000000"))
    Order.objects.filter(pk=rejected.pk).update(updated_at=rejected.updated_at.replace(year=2020))
    monitor(account)
    monitor(account)
    retries = Order.objects.filter(parent=rejected)
    assert retries.count() == 1 and retries.get().retry_count == 1


def test_dependants_of_a_rejected_order_are_cancelled(trader, account):
    parent = place(trader, account, order_type="LIMIT", price="2500")  # band: rejected
    child = place(trader, account, order_type="LIMIT", price="1400", parent=parent, role="stop_loss")
    monitor(account)
    child.refresh_from_db()
    assert parent.status == Order.Status.REJECTED and child.status == Order.Status.CANCELLED


def test_an_account_still_running_is_skipped(account):
    token = locks.acquire(f"monitor:{account.pk}", ttl_s=30)
    assert monitor(account).status == AccountRun.Status.SKIPPED
    locks.release(f"monitor:{account.pk}", token)
    assert monitor(account).status == AccountRun.Status.OK


def test_a_fast_path_run_that_finds_the_account_running_is_queued_again(account, monkeypatch):
    # A fill's run (the fast path) while a cycle's batch still holds the account, which may have read
    # the broker before the fill: dropped, the fill's exits would wait for the next cycle.
    queued = []
    monkeypatch.setattr(tasks.monitor_account, "apply_async", lambda args, **options: queued.append(args))
    token = locks.acquire(f"monitor:{account.pk}", ttl_s=30)
    try:
        assert tasks.monitor_account(account.pk, None) == AccountRun.Status.SKIPPED
        assert [args[:2] for args in queued] == [(account.pk, None)]
        queued.clear()
        run = MonitoringRun.objects.create()
        assert tasks.monitor_account(account.pk, run.pk) == AccountRun.Status.SKIPPED
        assert queued == []  # a cycle's own run skipped: the run holding the account is that cycle's work
    finally:
        locks.release(f"monitor:{account.pk}", token)


def cut_short_by_the_time_limit(monkeypatch):
    """Celery's soft time limit raised in the task's thread once the accounts' steps are done."""
    real = cycle._in_pool

    def cut_short(fn, items, **options):
        real(fn, items, **options)
        if fn is cycle._account_steps:
            raise SoftTimeLimitExceeded()

    monkeypatch.setattr(cycle, "_in_pool", cut_short)


def test_a_batch_cut_short_by_its_time_limit_still_records_what_it_did(trader, account, monkeypatch):
    # Celery's soft time limit is raised in the task's thread while it waits for the pool's jobs
    # (which still finish): what the accounts' steps did and the errors the traders see are kept.
    place(trader, account, quantity=4)
    cut_short_by_the_time_limit(monkeypatch)
    with pytest.raises(SoftTimeLimitExceeded):
        monitor(account)
    run = AccountRun.objects.get(account=account)
    assert run.status == AccountRun.Status.ERRORS
    assert "recorded 1 fill(s)" in run.actions
    assert [e["step"] for e in run.errors] == ["time_limit"]
    assert locks.acquire(f"monitor:{account.pk}", ttl_s=1)  # and the account is free again


def test_a_cycle_run_ends_however_its_batches_end(trader, account, monkeypatch):
    # A run without a finish time reads as one still going, in admin, for ever: a batch cut short
    # by its time limit, a batch whose accounts were all still running (skipped) and a cycle with
    # no account to look at end their runs too.
    place(trader, account, quantity=4)
    cut = MonitoringRun.objects.create(accounts=1)
    with monkeypatch.context() as limit:
        cut_short_by_the_time_limit(limit)
        with pytest.raises(SoftTimeLimitExceeded):
            tasks.monitor_accounts([account.pk], cut.pk)
    cut.refresh_from_db()
    assert cut.finished_at is not None

    skipped = MonitoringRun.objects.create(accounts=1)
    token = locks.acquire(f"monitor:{account.pk}", ttl_s=30)
    try:
        assert tasks.monitor_accounts([account.pk], skipped.pk) == {AccountRun.Status.SKIPPED: 1}
    finally:
        locks.release(f"monitor:{account.pk}", token)
    skipped.refresh_from_db()
    assert skipped.finished_at is not None

    account.is_active = False
    account.save(update_fields=["is_active"])
    empty, account_ids = monitoring_services.cycle_start()
    empty.refresh_from_db()
    assert account_ids == [] and empty.finished_at is not None


def test_a_cycle_whose_batches_could_not_be_queued_shows_a_finish(account, monkeypatch):
    """Redis away as a cycle fans out (a restart): no batch was queued, so none would ever end the
    run, which showed as running for good. It ends as it starts; the error goes on (the task fails,
    the next cycle covers the accounts)."""

    def broker_down(*args, **kwargs):
        raise ConnectionError("Error 111 connecting to redis:6379. Connection refused.")

    from brokers import services as broker_services

    broker_services.session_live(account)  # monitored: it has a live session
    monkeypatch.setattr(tasks.monitor_accounts, "delay", broker_down)
    with pytest.raises(ConnectionError):
        tasks.start_cycle()
    run = MonitoringRun.objects.get()
    assert run.accounts == 1 and run.finished_at is not None


def test_a_batch_cut_short_while_it_reads_the_brokers_stops_there(trader, account, monkeypatch):
    # The time limit reached while the batch waits for the brokers' answers (a slow broker, the
    # likeliest moment): taken for a failed read, the batch went on with its other steps until the
    # hard time limit ended the worker, and then nothing of the run was recorded.
    place(trader, account, quantity=4)
    real = cycle._in_pool
    later = []

    def cut_short(fn, items, **options):
        if fn is cycle._account_steps:
            later.append(items)
        real(fn, items, **options)
        if fn.__qualname__.startswith("_fetch_many"):
            raise SoftTimeLimitExceeded()

    monkeypatch.setattr(cycle, "_in_pool", cut_short)
    with pytest.raises(SoftTimeLimitExceeded):
        monitor(account)
    assert later == []  # no step after the limit
    run = AccountRun.objects.get(account=account)
    assert "time_limit" in [e["step"] for e in run.errors]
    assert locks.acquire(f"monitor:{account.pk}", ttl_s=1)


@pytest.mark.parametrize("where", ["saving the snapshots", "recording the fills", "marking the positions"])
def test_a_batch_cut_short_while_it_records_what_it_read_stops_there(trader, account, monkeypatch, where):
    # The time limit reached in the batched steps' own writes (step 1 saves what it read, step 2
    # records the fills and values the positions): taken for one account's failure, or for the
    # batch's and done again row by row, the batch went on with its other steps until the hard
    # time limit, and then nothing of the run was recorded.
    place(trader, account, quantity=4)
    monitor(account)  # a position held, to be valued by the next run
    place(trader, account, quantity=2)  # and a fill to record
    owner, name = {
        "saving the snapshots": (BrokerSnapshot.objects, "bulk_create"),
        "recording the fills": (cycle.portfolio, "trades_record_many"),
        "marking the positions": (cycle.portfolio, "positions_mark"),
    }[where]
    real, real_pool = getattr(owner, name), cycle._in_pool
    cut, later = [], []

    def once(*args, **kwargs):
        if not cut:
            cut.append(name)
            raise SoftTimeLimitExceeded()  # Celery raises it once, where the thread is
        return real(*args, **kwargs)

    def watched(fn, items, **options):
        if fn is cycle._account_steps:
            later.extend(items)
        real_pool(fn, items, **options)

    monkeypatch.setattr(owner, name, once)
    monkeypatch.setattr(cycle, "_in_pool", watched)
    with pytest.raises(SoftTimeLimitExceeded):
        monitor(account)
    assert cut and later == []  # no step after the limit
    run = AccountRun.objects.filter(account=account).latest("pk")
    assert "time_limit" in [e["step"] for e in run.errors]


def test_a_batch_whose_time_limit_comes_while_it_records_its_runs_still_records_them(trader, account, monkeypatch):
    # Every step done, the time limit reached while the batch writes its accounts' runs: the runs
    # are what the traders' dashboards show of it (the fill recorded, or an error), not to be lost.
    place(trader, account, quantity=4)
    real = AccountRun.objects.bulk_create
    cut = []

    def once(*args, **kwargs):
        if not cut:
            cut.append(True)
            raise SoftTimeLimitExceeded()  # Celery raises it once, where the thread is
        return real(*args, **kwargs)

    monkeypatch.setattr(AccountRun.objects, "bulk_create", once)
    with pytest.raises(SoftTimeLimitExceeded):
        monitor(account)
    assert cut
    run = AccountRun.objects.get(account=account)
    assert "recorded 1 fill(s)" in run.actions
    assert locks.acquire(f"monitor:{account.pk}", ttl_s=1)


def test_one_failing_step_does_not_stop_the_others(account, monkeypatch):
    def broken(ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(cycle, "STEPS", [("1_fetch", cycle.step_fetch), ("4_exits", broken), *cycle.STEPS[2:]])
    result = monitor(account)
    assert result.status == AccountRun.Status.ERRORS
    assert result.errors == [{"step": "4_exits", "error": "RuntimeError: boom"}]
    assert "9_retries" in result.step_ms


def test_kite_postbacks_are_verified(client, trader, instruments):
    account = make_kite_account(trader, client_id="AB1234", api_secret="s3cret")
    body = {"user_id": "AB1234", "order_id": "1", "order_timestamp": "2026-11-21 10:00:00", "status": "COMPLETE"}
    body["checksum"] = hashlib.sha256(b"12026-11-21 10:00:00s3cret").hexdigest()
    assert client.post("/hooks/kite/postback/", json.dumps(body), content_type="application/json").status_code == 200
    body["checksum"] = "0" * 64
    assert client.post("/hooks/kite/postback/", json.dumps(body), content_type="application/json").status_code == 403
    assert client.get("/hooks/kite/postback/").status_code == 405
    assert account.pk


def test_a_cycle_covers_active_accounts_with_a_live_session(trader, account, instruments):
    from accounts.tests.factories import make_broker_account
    from brokers.services import session_live
    from monitoring import services

    idle = make_broker_account(trader, broker="paper", client_id="IDLE")
    session_live(account)
    run, account_ids = services.cycle_start()
    assert account_ids == [account.pk] and run.accounts == 1
    assert idle.pk not in account_ids


def test_an_open_limit_entry_is_chased_within_its_cap(trader, account):
    strategy, _ = sources.strategy_save(
        owner=trader, name="Chaser", account_ids=[account.pk], chase_after_s=1, chase_max_ticks=20
    )
    set_price("1500")
    order = entry(trader, account, strategy, order_type="LIMIT", price="1495")
    Order.objects.filter(pk=order.pk).update(submitted_at=order.submitted_at.replace(year=2020))
    set_price("1497")
    monitor(account)
    order.refresh_from_db()
    assert order.price == D("1497") and order.chase_count == 1
    assert PaperOrder.objects.get(tag=order.reference).price == D("1497")
    clock.sleep(1.1)  # the chase delay since the last move
    set_price("1520")  # far away: the cap (20 ticks of 0.1 from 1495) stops it at 1497
    monitor(account)
    order.refresh_from_db()
    assert order.price == D("1497")


def test_a_paused_strategys_entry_is_not_chased(trader, account):
    """Pausing a strategy stops it opening anything new: its resting entry is left where it is,
    not moved toward the market to fill (its exits still protect what it holds)."""
    strategy, _ = sources.strategy_save(
        owner=trader, name="Chaser", account_ids=[account.pk], chase_after_s=0, chase_max_ticks=20
    )
    set_price("1520")
    order = entry(trader, account, strategy, order_type="LIMIT", price="1495.00")
    sources.strategy_save(owner=trader, name="Chaser", account_ids=[account.pk], strategy=strategy, is_active=False)
    monitor(account)
    order.refresh_from_db()
    assert (order.price, order.chase_count) == (D("1495.00"), 0)


@pytest.mark.parametrize("where", ["platform", "broker app"])
def test_an_entry_the_trader_repriced_by_hand_is_not_chased_back(trader, account, where):
    """The trader moves the strategy's resting buy from 1495 down to 1490 (on a page, or in the
    broker's own app): it stays where they put it. The chase is the strategy's, not the trader's:
    it took the order 7 points up again (to its cap, 1497), undoing their price."""
    strategy, _ = sources.strategy_save(
        owner=trader, name="Chaser", account_ids=[account.pk], chase_after_s=0, chase_max_ticks=20
    )
    set_price("1520")
    order = entry(trader, account, strategy, order_type="LIMIT", price="1495.00")
    if where == "platform":
        services.order_modify(order=order, actor=trader, cause="trader by hand", price="1490")
    else:
        client = engine.client_get_or_create(user_id=account.client_id)
        engine.order_modify(client=client, order_id=order.broker_order_id, price=D("1490"))
    for _ in range(2):
        monitor(account)
    order.refresh_from_db()
    assert (order.price, order.chase_count) == (D("1490.00"), 0)
    assert PaperOrder.objects.get(tag=order.reference).price == D("1490.00")


def test_a_re_entry_is_chased_no_further_than_the_first_entrys_cap(trader, account):
    """The signal's buy at 1495 may be chased 20 ticks, to 1497, where it fills. Stopped out, it
    re-enters at that price: the re-entry stands for the entry, and is chased no further than its
    cap. It was chased 20 ticks more, to 1499: 4 points past the first price, where the trader
    allowed 2 (and 2 more with each further re-entry)."""
    strategy, _ = sources.strategy_save(
        owner=trader, name="Chaser", account_ids=[account.pk], chase_after_s=0, chase_max_ticks=20,
        stop_loss=D("10"), stop_loss_unit="points", reentry_enabled=True, max_reentries=1,
    )  # fmt: skip
    set_price("1520")
    first = entry(trader, account, strategy, order_type="LIMIT", price="1495.00")
    monitor(account)
    first.refresh_from_db()
    assert first.price == D("1497.00")
    set_price("1496")  # fills at 1497 at most
    monitor(account)
    first.refresh_from_db()
    assert first.status == Order.Status.FILLED and first.children.filter(role="stop_loss").exists()
    set_price("1480")  # the stop fills
    set_price("1520")  # and the market runs away before the re-entry is placed
    monitor(account)
    reentry = Order.objects.get(parent=first, role="entry")
    assert (reentry.price, reentry.status) == (D("1497.00"), Order.Status.OPEN)
    monitor(account)
    reentry.refresh_from_db()
    assert reentry.price == D("1497.00") and reentry.chase_count == 0


@pytest.mark.parametrize("side, far, chased_to", [("BUY", "1520", "1499.20"), ("SELL", "1480", "1498.80")])
def test_a_percent_chase_cap_is_not_passed_by_rounding_to_the_tick(trader, account, side, far, chased_to):
    """0.02 % of the first price (1499.00) is 0.2998: a buy is chased to 1499.2998 at most, a sell
    to 1498.7002 at least. The chase stops at the last tick within (1499.20, 1498.80), not at the
    tick rounded half up past it (1499.30, 1498.70)."""
    strategy, _ = sources.strategy_save(
        owner=trader, name="Chaser", account_ids=[account.pk], chase_after_s=0, chase_max_percent=D("0.02")
    )
    set_price(far)  # far away, never crossing the order
    order = entry(trader, account, strategy, side=side, order_type="LIMIT", price="1499.00")
    monitor(account)
    order.refresh_from_db()
    assert order.price == D(chased_to)
    assert abs(order.price - D("1499.00")) <= D("1499.00") * D("0.02") / 100


def trailing_stop(trader, account, *, step="5", side="BUY"):
    """A strategy's stop-loss 10 points from an entry filled at 1500 (a long's at 1490.10, a short's
    at 1509.90), trailing in steps of ``step``."""
    strategy, _ = sources.strategy_save(
        owner=trader, name="Trail", account_ids=[account.pk], stop_loss=D("10"), stop_loss_unit="points",
        trailing_step=D(step),
    )  # fmt: skip
    set_price("1500")
    first = entry(trader, account, strategy, side=side)
    monitor(account)
    return first.children.get(role="stop_loss")


def test_a_stop_loss_trails_favourable_moves_and_never_back(trader, account):
    stop = trailing_stop(trader, account)
    assert stop.trigger_price == D("1490.10")
    set_price("1512")  # +11.9 over the entry: two steps of 5
    monitor(account)
    stop.refresh_from_db()
    assert stop.trigger_price == D("1500.10")
    set_price("1505")  # back down: the stop stays
    monitor(account)
    stop.refresh_from_db()
    assert stop.trigger_price == D("1500.10")


def test_a_stop_loss_that_triggered_is_not_trailed(trader, account):
    """A stop its broker said triggered (a MARKET not yet filled, a LIMIT resting) is the plain order
    it became: its trigger can no longer change. The trail tried each minute, refused each time."""
    stop = trailing_stop(trader, account)
    Order.objects.filter(pk=stop.pk).update(triggered_at=timezone.now())
    events = stop.events.count()
    set_price("1512")  # two steps of 5 up: an untriggered stop would trail to 1500.10
    for _ in range(2):
        result = monitor(account)
        assert not [action for action in result.actions if "trail" in action], result.actions
    stop.refresh_from_db()
    assert stop.trigger_price == D("1490.10") and stop.events.count() == events
    assert PaperOrder.objects.get(order_id=stop.broker_order_id).modifications == 0


def odd_step_stop(trader, account, step):
    """As ``trailing_stop`` (10 points under 1500.10: 1490.10), trailing in steps of ``step``, not
    a multiple of INFY's tick of 0.1."""
    stop = trailing_stop(trader, account, step=step)
    assert stop.trigger_price == D("1490.10")
    return stop


def test_a_trail_of_a_step_off_the_tick_never_comes_closer_than_the_distance(trader, account):
    """One step of 0.07 from 1490.10 is 1490.17, on the tick 1490.20 (rounded half up): 9.98
    under a last price of 1500.18, closer than the 10 points the trader set. It stays at 1490.10
    until a whole tick of steps fits (two steps: 1490.24, down to 1490.20)."""
    stop = odd_step_stop(trader, account, "0.07")
    set_price("1500.18")
    monitor(account)
    stop.refresh_from_db()
    assert stop.trigger_price == D("1490.10")
    set_price("1500.25")
    monitor(account)
    stop.refresh_from_db()
    assert stop.trigger_price == D("1490.20") and D("1500.25") - stop.trigger_price >= D("10")


def test_a_trail_of_a_step_off_the_tick_is_not_sent_when_it_rounds_back(trader, account):
    """One step of 0.03 from 1490.10 is 1490.13, back to 1490.10 on the tick: the trail moved
    nothing, yet was sent as a modification every cycle (each one of the broker's 25)."""
    stop = odd_step_stop(trader, account, "0.03")
    events = stop.events.count()
    set_price("1500.14")
    for _ in range(2):
        result = monitor(account)
        assert not [action for action in result.actions if "trail" in action], result.actions
    stop.refresh_from_db()
    assert stop.trigger_price == D("1490.10") and stop.events.count() == events


def test_a_last_price_of_zero_is_no_price_to_trail_or_chase_to(trader, account, monkeypatch):
    """The broker gives 0 for an instrument's last price (no trade yet, a number missing from its
    answer): a short's trailing stop is not pulled down toward 0, nor a SELL entry chased there."""
    strategy, _ = sources.strategy_save(
        owner=trader, name="Trail short", account_ids=[account.pk], stop_loss=D("10"), stop_loss_unit="points",
        trailing_step=D("5"), chase_after_s=0, chase_max_percent=D("5"),
    )  # fmt: skip
    set_price("1500")
    short = entry(trader, account, strategy, side="SELL")
    monitor(account)
    stop = short.children.get(role="stop_loss")
    before = stop.trigger_price
    set_price("1600")  # far above: the SELL LIMIT below rests
    chased = entry(trader, account, strategy, side="SELL", order_type="LIMIT", price="1650.00")
    from brokers.paper.adapter import PaperBroker

    real = PaperBroker.ltp
    monkeypatch.setattr(PaperBroker, "ltp", lambda self, keys: {k: D(0) for k in real(self, keys)})
    monitor(account)
    stop.refresh_from_db()
    chased.refresh_from_db()
    assert (stop.trigger_price, chased.price) == (before, D("1650.00"))


@pytest.mark.django_db(transaction=True)
def test_a_trail_whose_answer_was_lost_is_not_taken_for_a_move_by_hand(trader, account):
    """The trail's own modify reaches the exchange but its answer is lost; the next sync finds the
    trigger changed at the broker. That is the trail's own change, not the trader's: the stop
    trails on at the strategy's distance (not re-measured from the market as one moved by hand)."""
    stop = trailing_stop(trader, account)
    PaperClient.objects.filter(user_id=account.client_id).update(timeout_rate=1)
    set_price("1512")
    monitor(account)  # trails to 1500.10 at the exchange; the answer is lost
    PaperClient.objects.filter(user_id=account.client_id).update(timeout_rate=0)
    services.orders_sync_account(account=account)
    stop.refresh_from_db()
    assert stop.trigger_price == D("1500.10") and "found changed at the broker" in stop.events.last().message
    set_price("1522")
    run = monitor(account)
    stop.refresh_from_db()
    assert not [a for a in run.actions if "moved by hand" in a]
    assert stop.trigger_price == D("1510.10")


def test_a_trail_worked_out_before_the_trader_tightened_the_stop_by_hand_is_not_sent(trader, account, monkeypatch):
    """Step 6 works out a trail from the stop as it read it (1490.10 -> 1500.10); the trader moves
    the stop to 1505.10 by hand before the step's modify takes the order's lock. The trail is not
    sent over it: it would loosen the stop the trader had just tightened."""
    stop = trailing_stop(trader, account)
    modify = services.order_modify

    def trader_first(**kwargs):
        monkeypatch.setattr(services, "order_modify", modify)
        modify(order=Order.objects.get(pk=stop.pk), actor=trader, cause="trader by hand", trigger_price="1505.10")
        return modify(**kwargs)

    monkeypatch.setattr(services, "order_modify", trader_first)
    set_price("1512")
    monitor(account)
    stop.refresh_from_db()
    assert stop.trigger_price == D("1505.10")


# --- Batches: many accounts in one run ---------------------------------------------------------


@pytest.fixture
def their_account(other_trader, instruments):
    from accounts.tests.factories import make_broker_account

    return make_broker_account(other_trader, broker="paper", client_id="PAPER-O2", label="Theirs")


def test_a_batch_records_every_account_and_asks_for_prices_once(trader, account, their_account, monkeypatch):
    set_price("1500")
    place(trader, account, quantity=4)
    place(their_account.owner, their_account, quantity=3)
    asked = []
    real_ltp = cycle.AccountBroker.ltp

    def counted_ltp(self, instruments):
        asked.append(list(instruments))
        return real_ltp(self, instruments)

    monkeypatch.setattr(cycle.AccountBroker, "ltp", counted_ltp)
    set_price("1510")
    results = cycle.accounts_monitor(accounts=[account, their_account])
    assert [r.status for r in results] == [AccountRun.Status.OK, AccountRun.Status.OK], [r.errors for r in results]
    assert asked == [["NSE:INFY"]]  # market data: one request for the batch
    for acct, quantity in ((account, 4), (their_account, 3)):
        position = Position.objects.get(account=acct)
        assert position.net_quantity == quantity and position.last_price == D("1510")
        assert Trade.objects.filter(account=acct).count() == 1
        assert BrokerSnapshot.objects.filter(account=acct).count() == 4  # with the day's holdings
    assert all(set(r.step_ms) == {name for name, _ in cycle.STEPS} for r in results)


@pytest.mark.parametrize("batch", ["one account", "two accounts"])
def test_a_batch_cut_short_while_a_broker_answers_its_price_request_stops_there(
    trader, account, their_account, monkeypatch, batch
):
    # The batch's price request is made from the task's own thread, where the time limit is raised
    # while a slow broker has not answered: taken for a failed request, each account asked again
    # (the slow broker again) and the steps went on until the hard limit, nothing recorded.
    accounts = [account] if batch == "one account" else [account, their_account]
    for acct in accounts:
        place(acct.owner, acct, quantity=2)
    asked = []

    def slow(self, instruments):
        asked.append(self.account.pk)
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(cycle.AccountBroker, "ltp", slow)
    with pytest.raises(SoftTimeLimitExceeded):
        cycle.accounts_monitor(accounts=accounts)
    assert len(asked) == 1
    runs = AccountRun.objects.filter(account__in=accounts)
    assert len(runs) == len(accounts)
    assert all("time_limit" in [e["step"] for e in run.errors] for run in runs)


def test_a_batch_marks_its_positions_in_account_order_whatever_its_accounts_order(account, their_account):
    """The batch's re-valued positions are written in one transaction in (account, instrument,
    product) order, the order every fill recorder locks them in (a scheduled burst records the fills
    of many accounts in one transaction): in the batch's own order, two accounts' rows could be
    taken the other way round from a recorder, a deadlock that rolls back the batch's marks."""
    set_price("1500")
    for acct in (account, their_account):
        place(acct.owner, acct, quantity=2)
        monitor(acct)
    set_price("1520")
    account_of = dict(Position.objects.values_list("pk", "account_id"))
    with CaptureQueriesContext(connection) as queries:
        cycle.accounts_monitor(accounts=[their_account, account])  # not in account order
    marked = [
        account_of[int(match.group(1))]
        for query in queries
        if re.match(r"UPDATE [`\"]portfolio_position[`\"]", query["sql"])
        and (match := re.search(r"[`\"]id[`\"] = (\d+)", query["sql"]))
    ]
    assert sorted(marked) == marked and set(marked) == {account.pk, their_account.pk}
    assert set(Position.objects.values_list("last_price", flat=True)) == {D("1520")}


def test_when_the_batch_cannot_record_its_fills_each_account_records_its_own(
    trader, account, their_account, monkeypatch
):
    from portfolio import services as portfolio

    set_price("1500")
    place(trader, account, quantity=4)
    place(their_account.owner, their_account, quantity=3)

    real_many, real_one = portfolio.trades_record_many, portfolio.trades_record

    def batch_fails(fills, **kwargs):  # the batch of two fails; one account alone does not
        if len(fills) > 1:
            raise RuntimeError("deadlock found when trying to get lock")
        return real_many(fills, **kwargs)

    def one_fails(*, account, broker_trades, **kwargs):
        if account.pk == their_account.pk:
            raise ValueError("a fill of theirs cannot be recorded")
        return real_one(account=account, broker_trades=broker_trades, **kwargs)

    monkeypatch.setattr(portfolio, "trades_record_many", batch_fails)
    monkeypatch.setattr(portfolio, "trades_record", one_fails)
    mine, theirs = cycle.accounts_monitor(accounts=[account, their_account])
    assert mine.status == AccountRun.Status.OK, mine.errors
    assert "recorded 1 fill(s)" in mine.actions
    assert Trade.objects.filter(account=account).count() == 1
    assert theirs.status == AccountRun.Status.ERRORS and [e["step"] for e in theirs.errors] == ["2_pnl"]
    assert not Trade.objects.filter(account=their_account).exists()


def test_a_locked_or_failing_account_leaves_the_rest_of_the_batch_alone(account, their_account):
    from brokers.paper.models import PaperClient

    engine.client_get_or_create(user_id=account.client_id)
    PaperClient.objects.filter(user_id=account.client_id).update(error_rate=1)  # every call fails
    token = locks.acquire(f"monitor:{their_account.pk}", ttl_s=30)
    third = their_account.owner.broker_accounts.create(broker="paper", client_id="PAPER-O3", label="Third")
    failing, skipped, fine = cycle.accounts_monitor(accounts=[account, their_account, third])
    locks.release(f"monitor:{their_account.pk}", token)
    assert skipped.status == AccountRun.Status.SKIPPED
    assert failing.status == AccountRun.Status.ERRORS
    assert [e["step"] for e in failing.errors] == ["1_fetch", "2_pnl", "3_orders"]
    assert fine.status == AccountRun.Status.OK, fine.errors
    assert BrokerSnapshot.objects.filter(account=third).count() == 4  # with the day's holdings
    assert not BrokerSnapshot.objects.filter(account=account).exists()


def test_a_batched_steps_failure_as_a_whole_shows_no_accounts_data_to_another_trader(
    account, their_account, monkeypatch
):
    """A batched step that fails for the whole batch: its text can name one account's rows (a
    duplicate key). Each trader's run says which step failed and how, not that text; one account
    alone (the fast path) keeps its own."""

    def broken(contexts):
        raise IntegrityError(f"(1062, \"Duplicate entry '{account.pk}-260DIFFERENTSECRET' for key 'trade_unique'\")")

    monkeypatch.setitem(cycle.BATCHED, cycle.step_pnl, broken)
    mine, theirs = cycle.accounts_monitor(accounts=[account, their_account])
    for run in (mine, theirs):
        (error,) = [e for e in run.errors if e["step"] == "2_pnl"]
        assert "SECRET" not in error["error"] and error["error"].startswith("BatchStepFailed: IntegrityError")
    (alone,) = [e for e in cycle.account_monitor(account=account).errors if e["step"] == "2_pnl"]
    assert "DIFFERENTSECRET" in alone["error"]


def test_steps_3_to_9_run_only_for_accounts_with_orders_to_look_at(trader, account, their_account, strategy):
    run = [(name, step) for name, step in cycle.STEPS if step not in cycle.BATCHED]
    ids = [account.pk, their_account.pk]
    assert cycle._accounts_with_work(ids, run) == set()
    set_price("1500")
    entry(trader, account, strategy)
    monitor(account)  # its fill recorded, its exits live: step 4 has work
    assert cycle._accounts_with_work(ids, run) == {account.pk}
    # A step the filters do not know (a new one) runs for everyone.
    assert cycle._accounts_with_work(ids, [*run, ("10_new", lambda ctx: None)]) == set(ids)


@pytest.mark.django_db(transaction=True)
def test_a_pool_thread_whose_connection_was_dropped_runs_its_next_jobs():
    """MariaDB dropped a pool thread's connection and the failure closed it: the thread's later
    jobs still run (a closed connection cannot be asked whether it is usable; found by e2e/faults.py)."""
    from django.db import connection

    def dropped(_):
        connection.ensure_connection()
        connection.close()
        connection.errors_occurred = True

    ran = []
    for i in range(20):
        cycle._in_pool(dropped, [i])
        cycle._in_pool(lambda i: ran.append((i, AccountRun.objects.count())), [i])
    assert [i for i, _ in ran] == list(range(20))


def test_when_redis_is_down_the_run_says_so_on_the_dashboard(account, settings):
    """No account lock can be taken (Redis restarting): nothing runs, and each account's run
    records why, so the trader's dashboard shows it (found by e2e/faults.py)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens here once the socket is closed
    settings.REDIS_URL = f"redis://127.0.0.1:{dead}/0"
    locks.redis_client.cache_clear()
    try:
        result = monitor(account)
    finally:
        locks.redis_client.cache_clear()
    assert result.status == AccountRun.Status.ERRORS
    assert result.errors[0]["step"] == "lock" and "unavailable" in result.errors[0]["error"]
    assert AccountRun.objects.get(account=account).status == AccountRun.Status.ERRORS


def test_redis_gone_when_a_run_lets_its_locks_go_fails_nothing_the_run_did(account, settings):
    """Redis restarting as a batch ends: its account locks expire on their own; the run, already
    recorded, is not turned into a failed task (a traceback, the batch's other results lost)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    steps = cycle._run_steps

    def then_redis_goes(contexts):
        steps(contexts)
        settings.REDIS_URL = f"redis://127.0.0.1:{dead}/0"
        locks.redis_client.cache_clear()

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cycle, "_run_steps", then_redis_goes)
            result = monitor(account)
    finally:
        locks.redis_client.cache_clear()
    assert result.status == AccountRun.Status.OK, result.errors
    assert AccountRun.objects.get(account=account).status == AccountRun.Status.OK


def test_a_bad_row_in_a_batch_insert_fails_alone(account, their_account):
    from django.db import IntegrityError
    from django.utils import timezone

    from portfolio.models import PnlSnapshot

    now = timezone.now()
    rows = [
        PnlSnapshot(account=account, taken_at=now, realized=D(1), unrealized=D(0)),
        PnlSnapshot(account_id=None, taken_at=now, realized=D(2), unrealized=D(0)),  # NOT NULL: refused
        PnlSnapshot(account=their_account, taken_at=now, realized=D(3), unrealized=D(0)),
    ]
    failures = cycle._insert(PnlSnapshot, rows)
    assert list(failures) == [1] and isinstance(failures[1], IntegrityError)
    assert sorted(PnlSnapshot.objects.values_list("realized", flat=True)) == [D(1), D(3)]


@pytest.mark.django_db(transaction=True)
def test_a_batch_cut_short_while_its_accounts_steps_run_begins_no_more_of_them(
    account, their_account, monkeypatch, settings
):
    """Celery's soft time limit raised while the batch waits for its accounts' steps (a slow broker
    holds the first account's): the batch waits for what has begun (the account locks must outlast
    it), but the accounts whose steps had not begun, and the steps an account had not begun, used
    to run all the same, placing and cancelling past the limit until the hard limit killed the
    worker, and then no run of the batch was recorded. They do not run: each run says so."""
    from tradingplatform import background

    settings.MONITORING_THREADS = 1  # one account's steps at a time: the second waits its turn
    monkeypatch.setattr(cycle, "_pool", background.Pool("MONITORING_THREADS", "test-monitoring-pool"))
    ran, started, release = [], threading.Event(), threading.Event()

    def slow_step(ctx):
        ran.append(("slow", ctx.account.pk))
        if ctx.account.pk == account.pk:
            started.set()
            assert release.wait(10)  # the slow broker answers once the limit has come

    def next_step(ctx):
        ran.append(("next", ctx.account.pk))

    monkeypatch.setattr(cycle, "STEPS", [("8_slow", slow_step), ("9_next", next_step)])
    real_wait, waits = background.Jobs._wait, []

    def cut_short_once(self):
        waits.append(self)
        if len(waits) == 1:
            assert started.wait(10)
            raise SoftTimeLimitExceeded()  # in the waiting thread, as Celery's signal handler does
        release.set()
        real_wait(self)

    monkeypatch.setattr(background.Jobs, "_wait", cut_short_once)
    with pytest.raises(SoftTimeLimitExceeded):
        cycle.accounts_monitor(accounts=[account, their_account])
    assert ran == [("slow", account.pk)]
    runs = {run.account_id: run for run in AccountRun.objects.all()}
    assert set(runs) == {account.pk, their_account.pk}
    assert all("time_limit" in [e["step"] for e in run.errors] for run in runs.values())
    assert list(runs[account.pk].step_ms) == ["8_slow"] and runs[their_account.pk].step_ms == {}


def test_a_runs_record_says_when_it_started_and_a_skipped_one_when_it_ended(account, monkeypatch):
    """The monitoring page's time of a run and admin's start and finish: the start was the time the
    record was written, after its steps (after its own finish), so a slow run showed as starting
    when it ended; a run skipped (its account still running elsewhere) never showed a finish."""

    def slow(ctx):
        clock.sleep(0.3)  # a slow broker

    monkeypatch.setattr(cycle, "STEPS", [*cycle.STEPS, ("10_slow", slow)])
    before = timezone.now()
    run = monitor(account)
    run.refresh_from_db()
    assert before <= run.started_at < run.finished_at
    assert (run.finished_at - run.started_at).total_seconds() >= 0.3

    token = locks.acquire(f"monitor:{account.pk}", ttl_s=30)
    try:
        skipped = monitor(account)
    finally:
        locks.release(f"monitor:{account.pk}", token)
    skipped.refresh_from_db()
    assert skipped.status == AccountRun.Status.SKIPPED
    assert skipped.finished_at is not None and run.finished_at <= skipped.started_at <= skipped.finished_at
