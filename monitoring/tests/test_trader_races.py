"""The trader acting on a strategy's orders while a monitoring cycle works on the same orders: what
the trader did stands, nothing is placed twice, and the trader is told what happened."""

import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection

from accounts.models import BrokerAccount
from accounts.services import broker_account_set_active
from brokers.paper.models import PaperOrder
from monitoring import cycle
from monitoring.tests.test_strategy_counts import refused_entry, rejecting
from monitoring.tests.test_strategy_exits import (
    at_modification_cap,
    entry,
    monitor,
    quote,
    strategy,
    trailing_stop_at_the_cap,
)
from orders import services, sources
from orders.models import Order, Strategy
from tradingplatform.testing import mariadb_only

pytestmark = pytest.mark.django_db(transaction=True)
D = Decimal


def test_a_chased_entry_the_trader_cancels_while_the_chase_replaces_it_is_not_replaced(trader, account, monkeypatch):
    """The chase has cancelled the entry past the modification cap to replace it; before the
    replacement is placed, the trader cancels the entry (a page, the API). The cancel wins: no
    replacement entry is placed after it, and the trader is not told "nothing to cancel"."""
    guarded = strategy(trader, account, chase_after_s=0, chase_max_ticks=10)
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    at_modification_cap(first)
    answers = []
    cancelled_by_the_trader_before_the_replacement(monkeypatch, trader, answers)
    quote("1499.20", bid="1499.30", ask="1499.40")
    monitor(account)
    monkeypatch.undo()
    monitor(account)  # nor by a later cycle
    first.refresh_from_db()
    assert not isinstance(answers[0], Exception), answers[0]
    assert first.status == answers[0].status == Order.Status.CANCELLED
    assert not Order.objects.filter(parent=first).exists()
    assert services.last_cancel_request(first).data["by"] == "trader"


def cancelled_by_the_trader_before_the_replacement(monkeypatch, trader, answers):
    """The trader's cancel (a page, the API) of the order a step has just cancelled past the
    modification cap, before the step places its replacement: the answer (or refusal) in ``answers``."""
    real = cycle._replace_closed

    def trader_cancels_first(ctx, order, *args, **kwargs):
        try:
            answers.append(services.order_cancel(order=Order.objects.get(pk=order.pk), actor=trader, cause="page"))
        except services.OrderActionRefused as refused:
            answers.append(refused)
        return real(ctx, order, *args, **kwargs)

    monkeypatch.setattr(cycle, "_replace_closed", trader_cancels_first)


def cancelled_by_the_trader_as_step_4_places(monkeypatch, trader, account, stop):
    """Two runs, the trader cancelling ``stop`` (a page, the API) in the first just as step 4 is
    about to place its exit; the answer says it is cancelled, and so it is after both."""
    answers, real_shut = [], cycle._exchange_shut

    def trader_cancels_first(ctx, entry, what):
        if not answers:
            answers.append(services.order_cancel(order=Order.objects.get(pk=stop.pk), actor=trader, cause="page"))
        return real_shut(ctx, entry, what)

    monkeypatch.setattr(cycle, "_exchange_shut", trader_cancels_first)
    monitor(account)
    monkeypatch.undo()
    monitor(account)
    stop.refresh_from_db()
    assert stop.status == answers[0].status == Order.Status.CANCELLED


def test_a_trailing_stop_the_trader_cancels_while_the_trail_replaces_it_is_not_put_back(trader, account, monkeypatch):
    """Past the cap the trail cancels the stop to replace it at its new trigger; the trader cancels
    the stop meanwhile (they mean to close the position themselves). No stop is placed after it,
    by the trail or by step 4's look at the entry's exits."""
    first, stop = trailing_stop_at_the_cap(trader, account)
    answers = []
    cancelled_by_the_trader_before_the_replacement(monkeypatch, trader, answers)
    quote("1512")
    monitor(account)
    monkeypatch.undo()
    monitor(account)
    monitor(account)
    stop.refresh_from_db()
    assert not isinstance(answers[0], Exception), answers[0]
    assert stop.status == answers[0].status == Order.Status.CANCELLED
    assert list(first.children.filter(role="stop_loss")) == [stop]


def test_a_stop_loss_the_trader_cancels_while_step_4_cuts_it_down_is_not_put_back(trader, account, monkeypatch):
    """The take-profit sells 4 of 10; step 4 cuts the stop-loss to 6 by cancel-and-replace (it is past
    the modification cap) and the trader cancels the stop-loss meanwhile. No stop-loss is placed
    after it: neither the cut's replacement nor, at a later look, a fresh one for the 6 held."""
    guarded = strategy(trader, account, stop_loss=D("1"), take_profit=D("2"))
    quote("1500")
    first = entry(trader, account, guarded)
    monitor(account)
    stop = first.children.get(role="stop_loss")
    at_modification_cap(stop)
    answers = []
    cancelled_by_the_trader_before_the_replacement(monkeypatch, trader, answers)
    quote("1530.2", bid="1530.2", ask="1530.3", volume=4)  # the take-profit (1530.10) sells 4
    monitor(account)
    monkeypatch.undo()
    quote("1520")
    monitor(account)
    monitor(account)
    stop.refresh_from_db()
    assert not isinstance(answers[0], Exception), answers[0]
    assert stop.status == answers[0].status == Order.Status.CANCELLED
    assert list(first.children.filter(role="stop_loss")) == [stop]
    target = first.children.get(role="take_profit", status__in=Order.LIVE)
    assert target.quantity - target.filled_quantity == 6  # the rest still has its target


def test_a_cancel_while_the_replacement_is_being_placed_waits_and_names_it(trader, account, monkeypatch):
    """The trader's cancel comes while the chase is placing the entry's replacement (its broker call
    on its way). It waits for the placement, and says which order stands for the entry now: not
    "Cancelled", with a new entry going out beside that answer."""
    guarded = strategy(trader, account, chase_after_s=0, chase_max_ticks=10)
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    at_modification_cap(first)
    real, placing = services.order_place, threading.Event()

    def slow(**order):
        if "replace:" in (order.get("idempotency_key") or ""):
            placing.set()
            time.sleep(1)  # the trader's cancel arrives meanwhile
        return real(**order)

    monkeypatch.setattr(services, "order_place", slow)

    def run():
        try:
            monitor(account)
        finally:
            connection.close()

    cycle_run = threading.Thread(target=run)
    quote("1499.20", bid="1499.30", ask="1499.40")
    cycle_run.start()
    assert placing.wait(30)
    with pytest.raises(services.OrderActionRefused) as refused:
        services.order_cancel(order=Order.objects.get(pk=first.pk), actor=trader, cause="page")
    cycle_run.join(60)
    replacement = Order.objects.get(parent=first)
    assert replacement.status in Order.LIVE and replacement.reference in refused.value.message


def test_a_stop_the_trader_cancels_as_step_4_puts_back_its_owed_replacement_is_not_placed(trader, account, monkeypatch):
    """The trail cancelled the stop past the cap while its cancel was still pending at the broker, so
    step 4 places its replacement at a later run; the trader cancels the stop as that run is about
    to. No stop is placed after the trader's cancel."""
    import dataclasses

    from brokers.paper.adapter import PaperBroker

    first, stop = trailing_stop_at_the_cap(trader, account)
    real_order = PaperBroker.order
    with monkeypatch.context() as pending:
        pending.setattr(PaperBroker, "order", lambda self, i: dataclasses.replace(real_order(self, i), status="OPEN"))
        quote("1512")
        run = monitor(account)
    assert any("cancel is pending" in action for action in run.actions), run.actions
    assert list(first.children.filter(role="stop_loss")) == [stop]
    cancelled_by_the_trader_as_step_4_places(monkeypatch, trader, account, stop)
    assert list(first.children.filter(role="stop_loss")) == [stop]


def test_a_chased_entry_the_trader_re_prices_as_the_chase_replaces_it_keeps_the_traders_price(
    trader, account, monkeypatch
):
    """The chase worked out its move from the entry at 1499.00 and, its own modifications used up,
    goes to cancel it and place it again at 1499.20; the trader re-prices the entry to 1498.00 just
    before (a page, the API). The trader's price stands: the entry is not cancelled and replaced at
    the chase's, as a chase's modify would not be sent either."""
    guarded = strategy(trader, account, chase_after_s=0, chase_max_ticks=10)
    quote("1500")
    first = entry(trader, account, guarded, order_type="LIMIT", price="1499.00")
    Order.objects.filter(pk=first.pk).update(chase_count=cycle.BROKER_MODIFICATION_CAP - 1)
    real = cycle._cancel_and_replace

    def trader_re_prices_first(ctx, order, *args, **kwargs):
        services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="page", price="1498.00")
        return real(ctx, order, *args, **kwargs)

    monkeypatch.setattr(cycle, "_cancel_and_replace", trader_re_prices_first)
    quote("1499.20", bid="1499.30", ask="1499.40")
    monitor(account)
    monkeypatch.undo()
    monitor(account)  # nor chased at a later look: the trader re-priced it
    first.refresh_from_db()
    assert (first.status, first.price) == (Order.Status.OPEN, D("1498.00"))
    assert not Order.objects.filter(parent=first).exists()


def test_a_stop_the_day_ended_that_the_trader_cancels_before_it_goes_back_is_not_put_back(
    trader, kite_on_face, monkeypatch
):
    """At Kite the exchange ended the carried stop with its day; the run says it goes back at the
    open. The trader, who means to close the position by hand then, cancels the stop meanwhile (the
    order page, the API). Their cancel is not refused as "nothing to cancel" with the stop going
    back at the open regardless: it is recorded, as one asked before the platform read the close is."""
    from brokers.base import Broker
    from monitoring.tests.test_carried_exits import day_ends, guarded_yesterday, monitor, stops

    account = kite_on_face
    first, stop = guarded_yesterday(trader, account)
    day_ends(stop)
    shut = classmethod(lambda cls, exchange, after: after + timedelta(hours=1))
    with monkeypatch.context() as night:
        night.setattr(Broker, "next_open", shut)
        run = monitor(account)
        assert any("ended with its trading day: placed at NSE's open" in a for a in run.actions), run.actions
        stop.refresh_from_db()
        assert stop.status == Order.Status.CANCELLED
        answer = services.order_cancel(order=stop, actor=trader, cause="page")
    assert answer.status == Order.Status.CANCELLED
    run = monitor(account)  # the exchange opens
    assert stops(first) == [stop], run.actions


def test_a_stop_the_day_ended_that_the_trader_cancels_as_step_4_puts_it_back_is_not_placed(
    trader, account, monkeypatch
):
    """The exchange ended the carried stop with its day; step 4 has found it ended and is about to put
    it back when the trader cancels it (a page, the API), and is told it is cancelled. No stop is
    placed after that answer: the put-back checks under the stop's change lock, as a replacement
    past the cap does."""
    from monitoring.tests.test_carried_exits import day_ends, guarded_yesterday, stops

    first, stop = guarded_yesterday(trader, account)
    day_ends(stop)
    cancelled_by_the_trader_as_step_4_places(monkeypatch, trader, account, stop)
    assert stops(first) == [stop]


def test_a_cancel_of_a_stop_the_day_ended_once_it_is_back_names_the_stop_back(trader, account):
    """The exchange ended the carried stop with its day and step 4 has put it back. The trader then
    cancels the old stop (a page still showing it, the API): they are not told it is cancelled,
    with the stop put back still live at the broker, but which order stands for it now."""
    from monitoring.tests.test_carried_exits import day_ends, guarded_yesterday, stops

    first, stop = guarded_yesterday(trader, account)
    day_ends(stop)
    monitor(account)
    old, back = stops(first)
    assert back.status in Order.LIVE
    with pytest.raises(services.OrderActionRefused) as refused:
        services.order_cancel(order=Order.objects.get(pk=stop.pk), actor=trader, cause="page")
    assert back.reference in refused.value.message


# --- A pause or a deactivation while a run is placing -------------------------------------------


def stopped_as_the_run_places(monkeypatch, key_part, stop):
    """``stop()`` (the trader's pause or deactivation, committed: its answer shown) just before the
    run places the order whose idempotency key holds ``key_part``, after the step chose to place it."""
    real = services.order_place

    def stopped_first(**order):
        if key_part in (order.get("idempotency_key") or ""):
            monkeypatch.setattr(services, "order_place", real)
            stop()
        return real(**order)

    monkeypatch.setattr(services, "order_place", stopped_first)


def paused(trader, row):
    return lambda: sources.strategy_change(owner=trader, strategy=Strategy.objects.get(pk=row.pk), is_active=False)


def deactivated(trader, account):
    account = BrokerAccount.objects.get(pk=account.pk)  # the page's own, not the run's
    return lambda: broker_account_set_active(account=account, actor=trader, active=False)


def at_the_broker(account):
    return PaperOrder.objects.filter(client__user_id=account.client_id).count()


def stopped_out(trader, account):
    """A re-entering strategy's entry of 10 at 1500 with its stop-loss; the price falls through it."""
    row = strategy(trader, account, stop_loss=D("1"), reentry_enabled=True, max_reentries=1)
    quote("1500")
    first = entry(trader, account, row)
    monitor(account)
    quote("1480")  # the stop-loss fills: the run re-enters
    return row, first


def test_a_strategy_paused_as_the_run_retries_gets_no_retry(trader, account, monkeypatch):
    row, first = refused_entry(trader, account)
    rejecting(account, 0)
    stopped_as_the_run_places(monkeypatch, "retry:", paused(trader, row))
    run = monitor(account)
    assert not Order.objects.filter(parent=first).exists(), run.actions
    monkeypatch.undo()
    monitor(account)  # nor at a later run, until it is resumed
    assert not Order.objects.filter(parent=first).exists()


def test_a_strategy_paused_as_the_chase_replaces_its_entry_gets_no_replacement(trader, account, monkeypatch):
    """The chase cancelled the entry past the modification cap; the trader pauses the strategy before
    its replacement is written. No entry is placed after "Paused"; the run says why, not an error."""
    row = strategy(trader, account, chase_after_s=0, chase_max_ticks=10)
    quote("1500")
    first = entry(trader, account, row, order_type="LIMIT", price="1499.00")
    at_modification_cap(first)
    stopped_as_the_run_places(monkeypatch, "replace:", paused(trader, row))
    quote("1499.20", bid="1499.30", ask="1499.40")
    run = monitor(account)
    assert not Order.objects.filter(parent=first).exists(), run.actions
    assert f"{first.reference} is not replaced: its strategy was paused meanwhile" in run.actions
    assert not run.errors, run.errors


def chased_after(monkeypatch, stop):
    """``stop()`` (committed: its answer shown) just before the chase sends its move of an entry."""
    real = services.order_modify

    def stopped_first(**change):
        monkeypatch.setattr(services, "order_modify", real)
        stop()
        return real(**change)

    monkeypatch.setattr(services, "order_modify", stopped_first)


def chased_entry(trader, account):
    """A chasing strategy's resting LIMIT entry at 1499.00, the market moved up away from it."""
    row = strategy(trader, account, chase_after_s=0, chase_max_ticks=10)
    quote("1500")
    first = entry(trader, account, row, order_type="LIMIT", price="1499.00")
    quote("1499.20", bid="1499.30", ask="1499.40")
    return row, first


def test_a_strategy_paused_as_the_chase_moves_its_entry_gets_no_move(trader, account, monkeypatch):
    """The chase worked out its move of the entry toward the market; the trader pauses the strategy
    (and is told "Paused") before it is sent. A move toward the market opens exposure as a new
    entry would: none is sent after "Paused", and the run says why, not an error."""
    row, first = chased_entry(trader, account)
    chased_after(monkeypatch, paused(trader, row))
    run = monitor(account)
    first.refresh_from_db()
    assert (first.price, PaperOrder.objects.get(tag=first.reference).price) == (D("1499.00"), D("1499.00"))
    assert f"{first.reference} is not chased: its strategy was paused meanwhile" in run.actions, run.actions
    assert not run.errors, run.errors


def test_an_account_deactivated_as_the_run_retries_gets_no_retry(trader, account, monkeypatch):
    _row, first = refused_entry(trader, account)
    rejecting(account, 0)
    stopped_as_the_run_places(monkeypatch, "retry:", deactivated(trader, account))
    run = monitor(account)
    assert not Order.objects.filter(parent=first).exists(), run.actions
    assert any("is deactivated" in action for action in run.actions), run.actions


def test_an_account_deactivated_as_step_4_places_a_stop_loss_gets_none_as_between_runs(trader, account, monkeypatch):
    """A deactivated account is not monitored and takes no order, an exit included (``order_check``):
    so too once deactivated within a run. The run says the position is left without its stop-loss."""
    row = strategy(trader, account, stop_loss=D("1"))
    quote("1500")
    first = entry(trader, account, row)
    stopped_as_the_run_places(monkeypatch, "exit:", deactivated(trader, account))
    run = monitor(account)
    assert not first.children.exists()
    assert any("is deactivated" in error["error"] for error in run.errors), run.errors


def taken_off(trader, row):
    """The trader takes the account off the strategy (its page, the API): it keeps no account."""
    return lambda: sources.strategy_change(owner=trader, strategy=Strategy.objects.get(pk=row.pk), account_ids=[])


def test_an_account_taken_off_the_strategy_as_the_run_retries_gets_no_retry(trader, account, monkeypatch):
    row, first = refused_entry(trader, account)
    rejecting(account, 0)
    stopped_as_the_run_places(monkeypatch, "retry:", taken_off(trader, row))
    run = monitor(account)
    assert not Order.objects.filter(parent=first).exists(), run.actions
    monkeypatch.undo()
    monitor(account)  # nor at a later run
    assert not Order.objects.filter(parent=first).exists()


def test_an_account_taken_off_the_strategy_as_the_chase_replaces_its_entry_gets_no_replacement(
    trader, account, monkeypatch
):
    row = strategy(trader, account, chase_after_s=0, chase_max_ticks=10)
    quote("1500")
    first = entry(trader, account, row, order_type="LIMIT", price="1499.00")
    at_modification_cap(first)
    stopped_as_the_run_places(monkeypatch, "replace:", taken_off(trader, row))
    quote("1499.20", bid="1499.30", ask="1499.40")
    run = monitor(account)
    assert not Order.objects.filter(parent=first).exists(), run.actions
    assert f"{first.reference} is not replaced: its account was taken off its strategy meanwhile" in run.actions
    assert not run.errors, run.errors


def trader_deactivated(trader):
    """Staff deactivate the trader (their user, in admin: the row saved with the rest as read)."""

    def deactivate():
        user = type(trader).objects.get(pk=trader.pk)
        user.is_active = False
        user.save()

    return deactivate


def test_a_trader_deactivated_as_the_run_retries_gets_no_retry(trader, account, monkeypatch):
    _row, first = refused_entry(trader, account)
    rejecting(account, 0)
    stopped_as_the_run_places(monkeypatch, "retry:", trader_deactivated(trader))
    run = monitor(account)
    assert not Order.objects.filter(parent=first).exists(), run.actions


def stopper(name, trader, account, row):
    """What stops the strategy's new entries on the account (the trader's or staff's change, its
    answer shown), and what the run says of an entry it then does not open."""
    return {
        "paused": (paused(trader, row), "This strategy is paused"),
        "account deactivated": (deactivated(trader, account), "is deactivated"),
        "taken off": (taken_off(trader, row), "no longer one of this strategy's"),
        "trader deactivated": (trader_deactivated(trader), "owner is deactivated"),
    }[name]


@pytest.mark.parametrize("stop", ["paused", "account deactivated", "taken off", "trader deactivated"])
def test_an_entry_stopped_as_the_run_re_enters_gets_no_re_entry(trader, account, monkeypatch, stop):
    """The run found the stop-out and chose to re-enter; the strategy is paused, the account taken
    off it or deactivated, or the trader deactivated (``owner_check``), before the re-entry is
    written. Nothing is re-entered after that answer, and the run says why."""
    row, first = stopped_out(trader, account)
    stop_now, says = stopper(stop, trader, account, row)
    stopped_as_the_run_places(monkeypatch, "reentry:", stop_now)
    sent = at_the_broker(account)
    run = monitor(account)
    assert not Order.objects.filter(parent=first, role="entry").exists(), run.actions
    assert at_the_broker(account) == sent
    assert any(says in action for action in run.actions), run.actions


@pytest.mark.parametrize("stop", ["paused", "taken off", "trader deactivated"])
def test_an_entry_stopped_as_step_4_places_its_stop_loss_still_gets_it(trader, account, monkeypatch, stop):
    """Stopping new exposure is not stopping protection: the stop-loss of what is held is placed (a
    deactivated trader's accounts are still monitored, ``owner_check`` refuses entries only), within
    a run as between runs."""
    row = strategy(trader, account, stop_loss=D("1"))
    quote("1500")
    first = entry(trader, account, row)
    stopped_as_the_run_places(monkeypatch, "exit:", stopper(stop, trader, account, row)[0])
    monitor(account)
    assert first.children.get(role="stop_loss").status == Order.Status.OPEN


def waited_for(monkeypatch, table, stop):
    """``stop()`` asked on a thread of its own while the run's placement holds its rows' locks (after
    they are taken, before the order's number): answered before the placement commits (within 2 s),
    it must have come first. Returns the list that says whether it answered so, and a function
    that waits for ``stop()`` to be done (it goes on after the placement commits)."""
    real, first_answered, threads = services._next_number, [], []

    def asked_meanwhile(account, day):
        monkeypatch.setattr(services, "_next_number", real)
        reached = threading.Event()

        def at_the_row(execute, sql, params, many, context):
            if table in sql and ("FOR UPDATE" in sql or sql.lstrip().upper().startswith("UPDATE")):
                reached.set()
            return execute(sql, params, many, context)

        def ask():
            try:
                with connection.execute_wrapper(at_the_row):
                    stop()
            finally:
                reached.set()
                connection.close()

        asking = threading.Thread(target=ask)
        threads.append(asking)
        asking.start()
        assert reached.wait(30)
        asking.join(2)  # a lock held here keeps it waiting: it answers once the order is written
        first_answered.append(not asking.is_alive())
        return real(account, day)

    monkeypatch.setattr(services, "_next_number", asked_meanwhile)

    def done():
        for thread in threads:
            thread.join(30)

    return first_answered, done


def test_a_pause_asked_while_the_run_writes_its_re_entry_waits_for_it(trader, account, monkeypatch):
    """The pause comes while the re-entry's row is being written: it waits for it (its answer comes
    after the order), or else it comes first and no re-entry is placed; never "Paused" then a re-entry."""
    mariadb_only()
    row, first = stopped_out(trader, account)
    first_answered, stopped = waited_for(monkeypatch, "`orders_strategy`", paused(trader, row))
    monitor(account)
    monkeypatch.undo()
    stopped()
    reentered = Order.objects.filter(parent=first, role="entry").exists()
    assert first_answered == [False] and reentered
    assert not Strategy.objects.get(pk=row.pk).is_active


def test_a_deactivation_asked_while_the_run_writes_its_retry_waits_for_it(trader, account, monkeypatch):
    mariadb_only()
    _row, first = refused_entry(trader, account)
    rejecting(account, 0)
    first_answered, stopped = waited_for(monkeypatch, "`accounts_brokeraccount`", deactivated(trader, account))
    monitor(account)
    monkeypatch.undo()
    stopped()
    assert first_answered == [False] and Order.objects.filter(parent=first).exists()
    assert not BrokerAccount.objects.get(pk=account.pk).is_active


def _lock_waiting(connection_id) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = %s AND trx_state = %s",
            [connection_id, "LOCK WAIT"],
        )
        return cursor.fetchone()[0] > 0


def test_a_strategys_entry_and_its_exit_written_at_once_on_one_account_are_both_written(trader, account, monkeypatch):
    """The run writes a stop-loss of a strategy's entry while a signal of the same strategy writes a
    new entry on the same account. Each order's transaction reads the account's and the strategy's
    flags under their locks (``still_open_check``) and its row's foreign keys lock them too: the
    entry comes to the account while the exit holds it, and the exit then comes to the strategy.
    Both are written, one after the other; neither is failed as a deadlock."""
    mariadb_only()
    row = strategy(trader, account, stop_loss=D("1"))
    quote("1500")
    first = entry(trader, account, row)
    real, outcomes, ids, threads = services._next_number, [], [], []

    def new_entry():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT CONNECTION_ID()")
                ids.append(cursor.fetchone()[0])
            outcomes.append(services.order_prepare(**order_of(first), cause="signal", strategy=row)[0])
        except Exception as error:
            outcomes.append(error)
        finally:
            connection.close()

    def entry_meanwhile(account, day):  # the exit's: its flags read, its number and row to write
        monkeypatch.setattr(services, "_next_number", real)
        writing = threading.Thread(target=new_entry)
        threads.append(writing)
        writing.start()
        deadline = time.monotonic() + 30
        while not (ids and _lock_waiting(ids[0])) and writing.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return real(account, day)

    monkeypatch.setattr(services, "_next_number", entry_meanwhile)
    exit_order, _ = services.order_prepare(
        **{**order_of(first), "side": "SELL", "order_type": "LIMIT", "price": D("1600")},
        cause="run",
        role="take_profit",
        parent=first,
        strategy=row,
    )
    threads[0].join(30)
    assert Order.objects.filter(pk=exit_order.pk).exists()
    assert len(outcomes) == 1 and isinstance(outcomes[0], Order), outcomes


def order_of(order: Order) -> dict:
    return {
        "actor": order.placed_by,
        "account": order.account,
        "instrument": order.instrument,
        "side": order.side,
        "quantity": order.quantity,
        "order_type": order.order_type,
        "product": order.product,
        "source": Order.Source.SYSTEM,
    }
