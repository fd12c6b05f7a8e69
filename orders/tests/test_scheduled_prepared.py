"""Scheduled orders prepared ahead of their time (checked and written NEW, numbered) and only sent
at it: what a cancel, an edit, a late worker, a failed check and a race with the send do to them."""

import threading
import time as clock
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from accounts.models import BrokerAccount
from accounts.services import broker_account_update
from brokers.base import IST
from brokers.client import AccountBroker
from brokers.errors import BrokerUnavailable, OutcomeUnknown
from brokers.paper.models import PaperOrder
from orders import services, sources
from orders.models import Order, ScheduledFire, ScheduledOrder
from orders.tests.factories import place, sent_while_locked
from tradingplatform import background, locks

from .test_source_races import _zone_away_from_midnight, mariadb_only
from .test_sources import _due_soon, make_scheduled, spec


def _prepared(row, seconds: float = 2.0):
    """``row`` due in ``seconds``, claimed and prepared: (its fire, its due time, its order)."""
    due_at = _due_soon(row, seconds)
    [fire_id] = sources.scheduled_claim_due(lead_s=seconds + 1)
    [fire] = sources.scheduled_prepare(fire_ids=[fire_id])
    assert fire.status == ScheduledFire.Status.PREPARED
    order = Order.objects.get(scheduled=row)
    assert order.status == Order.Status.NEW and not order.broker_order_id
    return fire, due_at, order


def _at(due_at):
    clock.sleep(max(0, (due_at - timezone.now()).total_seconds()) + 0.01)


def _unsent(order, why: str):
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED and order.idempotency_key is None  # its key given back
    assert list(order.events.values_list("kind", "message")) == [("created", ""), ("cancelled", "never sent")]
    assert why in order.events.get(kind="cancelled").cause
    assert not PaperOrder.objects.filter(tag=order.reference).exists()


def test_the_send_at_the_time_is_urgent_work_that_fill_bookkeeping_yields_to(trader, account, monkeypatch):
    row = make_scheduled(trader, account)
    fire, due_at, order = _prepared(row)
    assert not background.urgent.running  # preparing ahead is not
    submit, sent_urgently = services.order_submit, []

    def order_submit(**kwargs):
        sent_urgently.append(background.urgent.running)
        return submit(**kwargs)

    monkeypatch.setattr(services, "order_submit", order_submit)
    _at(due_at)
    assert sources.scheduled_fire(fire_id=fire.pk).status == ScheduledFire.Status.PLACED
    assert sent_urgently == [True] and not background.urgent.running


def test_a_cancel_before_the_time_drops_a_prepared_due_time_and_its_order_is_never_sent(trader, account):
    row = make_scheduled(trader, account)
    fire, due_at, order = _prepared(row)
    assert sources.scheduled_cancel(scheduled=row, actor=trader).live is True
    _unsent(order, "cancelled before it was placed")
    _at(due_at)
    assert sources.scheduled_fire(fire_id=fire.pk).status == ScheduledFire.Status.CANCELLED  # the task at the time
    assert not PaperOrder.objects.exists()


def test_an_edit_before_the_time_replaces_a_prepared_due_time_and_one_made_again_is_placed_once(
    trader, account, settings
):
    settings.SCHEDULE_LEAD_S = 5
    due = (timezone.now() + timedelta(seconds=4)).astimezone(IST).replace(microsecond=0)
    if due.date() != (due + timedelta(minutes=10)).date():
        pytest.skip("too close to midnight IST for a time ten minutes later today")
    row = make_scheduled(trader, account, time_of_day=due.time(), run_on=due.date())
    [fire_id] = sources.scheduled_claim_due(lead_s=5)
    [fire] = sources.scheduled_prepare(fire_ids=[fire_id])
    first = Order.objects.get(scheduled=row)
    assert fire.status == ScheduledFire.Status.PREPARED and first.reference.endswith("N000001")

    # Moved later: the prepared due time and its order are dropped, not sent ...
    row = sources.scheduled_change(owner=trader, scheduled=row, time_of_day=(due + timedelta(minutes=10)).time())
    assert ScheduledFire.objects.get(pk=fire_id).status == ScheduledFire.Status.CANCELLED
    _unsent(first, "cancelled before it was placed")
    # ... and moved back: the same due time is claimed again and its order written anew, under the same key.
    sources.scheduled_change(owner=trader, scheduled=row, time_of_day=due.time())
    assert sources.scheduled_claim_due(lead_s=5) == [fire_id]
    assert [f.status for f in sources.scheduled_prepare(fire_ids=[fire_id])] == [ScheduledFire.Status.PREPARED]
    second = Order.objects.get(scheduled=row, status=Order.Status.NEW)
    assert second.reference.endswith("N000002")  # numbers stay gap-free: the first keeps its own

    _at(due)
    assert sources.scheduled_fire(fire_id=fire_id).status == ScheduledFire.Status.PLACED
    assert sources.scheduled_fire(fire_id=fire_id).status == ScheduledFire.Status.PLACED  # a redelivery
    second.refresh_from_db()
    assert second.status in Order.AT_BROKER + (Order.Status.FILLED,)
    assert list(PaperOrder.objects.values_list("tag", flat=True)) == [second.reference]


def test_a_prepared_due_time_a_worker_gets_to_too_late_is_missed_and_its_order_never_sent(trader, account, settings):
    settings.SCHEDULE_ON_TIME_S = 0
    row = make_scheduled(trader, account)
    fire, due_at, order = _prepared(row, seconds=0.5)
    _at(due_at + timedelta(seconds=1))
    fire = sources.scheduled_fire(fire_id=fire.pk)
    assert fire.status == ScheduledFire.Status.MISSED and "1s late" in fire.detail
    _unsent(order, "missed")


def test_a_check_that_fails_ahead_of_the_time_is_the_due_times_outcome_at_once(trader, account):
    row = make_scheduled(trader, account)
    BrokerAccount.objects.filter(pk=account.pk).update(is_active=False)  # deactivated after it was saved
    _due_soon(row, 2)
    [fire_id] = sources.scheduled_claim_due(lead_s=3)
    [fire] = sources.scheduled_prepare(fire_ids=[fire_id])
    assert fire.status == ScheduledFire.Status.FAILED and "deactivated" in fire.detail
    row.refresh_from_db()
    assert row.last_result == fire.detail
    assert not Order.objects.exists()
    assert sources.scheduled_fire(fire_id=fire_id).status == ScheduledFire.Status.FAILED  # the time: nothing more


def test_a_redelivered_prepare_writes_one_order(trader, account):
    row = make_scheduled(trader, account)
    fire, due_at, order = _prepared(row)
    assert [f.status for f in sources.scheduled_prepare(fire_ids=[fire.pk])] == [ScheduledFire.Status.PREPARED]
    assert list(Order.objects.values_list("pk", flat=True)) == [order.pk]
    _at(due_at)
    assert sources.scheduled_fire(fire_id=fire.pk).status == ScheduledFire.Status.PLACED
    assert PaperOrder.objects.filter(tag=order.reference).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_cancel_that_locks_the_row_first_leaves_the_send_nothing_to_send(trader, account):
    mariadb_only()
    row = make_scheduled(trader, account)
    fire, due_at, order = _prepared(row, seconds=1)
    _at(due_at)
    with sent_while_locked(ScheduledOrder, lambda: sources.scheduled_fires(fire_ids=[fire.pk])) as (sent, start):
        assert sources.scheduled_cancel(scheduled=row, actor=trader).live is True
        start()
    assert [f.status for f in sent[0]] == [ScheduledFire.Status.CANCELLED]
    _unsent(order, "cancelled before it was placed")


@pytest.mark.django_db(transaction=True)
def test_a_cancel_that_comes_once_the_send_took_the_due_time_is_too_late_for_it(trader, account):
    mariadb_only()
    row = make_scheduled(trader, account)
    fire, due_at, order = _prepared(row, seconds=1)
    _at(due_at)
    cancel = lambda: sources.scheduled_cancel(scheduled=row, actor=trader)  # noqa: E731
    with sent_while_locked(ScheduledOrder, cancel) as (cancelled, start):
        taken, tokens = sources._fires_take([fire.pk], {row.pk})  # the worker takes it to send ...
        start()
    # ... so the cancel (of its later times) drops nothing of it: that due time is being placed.
    assert [c.live for c in cancelled] == [True] and [f.status for f in taken] == [ScheduledFire.Status.PLACING]
    assert cancelled[0].placing_due == due_at  # and says so: that run goes out
    assert ScheduledFire.objects.get(pk=fire.pk).status == ScheduledFire.Status.PLACING
    order.refresh_from_db()
    assert order.status == Order.Status.NEW and order.idempotency_key  # still to be sent, as taken
    sources._fires_ready(taken)
    sources._fires_record([(f, sources._fire_place(f)) for f in taken])
    assert ScheduledFire.objects.get(pk=fire.pk).status == ScheduledFire.Status.PLACED
    assert PaperOrder.objects.filter(tag=order.reference).count() == 1


def test_a_prepared_due_time_sent_late_within_its_grace_is_placed_whatever_the_reconciliation_did_meanwhile(
    trader, account, settings
):
    settings.SCHEDULE_ON_TIME_S = 0
    row = make_scheduled(trader, account)
    ScheduledOrder.objects.filter(pk=row.pk).update(grace_s=600)  # a late send is still wanted
    fire, due_at, order = _prepared(row, seconds=0.5)
    # The send at the time comes 70 s late (a busy worker); the account's run came meanwhile and
    # left the order to its due time.
    Order.objects.filter(pk=order.pk).update(created_at=timezone.now() - timedelta(seconds=70))
    assert services.orders_sync_account(account=account) == 0
    _at(due_at)
    fire = sources.scheduled_fire(fire_id=fire.pk)
    assert fire.status == ScheduledFire.Status.PLACED, f"{fire.status}: {fire.detail}"
    assert PaperOrder.objects.filter(tag=order.reference).count() == 1


def test_a_prepared_order_closed_unsent_meanwhile_is_not_reported_placed(trader, account):
    row = make_scheduled(trader, account)
    fire, due_at, order = _prepared(row, seconds=0.5)
    Order.objects.filter(pk=order.pk).update(status=Order.Status.FAILED, reject_reason="closed by staff")
    _at(due_at)
    fire = sources.scheduled_fire(fire_id=fire.pk)
    assert fire.status == ScheduledFire.Status.FAILED and "closed by staff" in fire.detail
    assert not PaperOrder.objects.exists()


def _daily_prepared_and_come(trader, account) -> tuple:
    """A daily order's due time prepared (quantity 1), come, and not taken by a worker yet (a
    burst, a late ETA): (the order, its fire's id)."""
    zone = ZoneInfo(_zone_away_from_midnight())
    due = (timezone.now() + timedelta(seconds=2)).astimezone(zone).replace(microsecond=0) + timedelta(seconds=1)
    row = sources.scheduled_save(
        owner=trader, account=account, spec=spec(), recurrence="weekdays", weekdays=list(range(7)),
        time_of_day=due.time(), timezone_name=str(zone),
    )  # fmt: skip
    assert row.next_run_at == due
    [fire_id] = sources.scheduled_claim_due(lead_s=4)
    assert [f.status for f in sources.scheduled_prepare(fire_ids=[fire_id])] == ["prepared"]
    _at(due)
    return row, fire_id


def test_an_edit_after_a_prepared_daily_time_came_places_the_new_settings_as_it_answered(trader, account):
    """The edit keeps the due time that came as today's run "with the new settings"
    (``_not_again_today``) and answers quantity 2: the order sent is of 2."""
    row, fire_id = _daily_prepared_and_come(trader, account)
    edited = sources.scheduled_change(owner=trader, scheduled=row, quantity=2)
    assert edited.quantity == 2
    assert ScheduledFire.objects.get(pk=fire_id).status in ScheduledFire.WAITING  # kept: today's run

    assert sources.scheduled_fire(fire_id=fire_id).status == ScheduledFire.Status.PLACED
    sent = list(PaperOrder.objects.values_list("quantity", flat=True))
    assert sent == [2], f"sent {sent} after the edit answered quantity 2"


def test_a_prepared_due_time_whose_send_stopped_after_the_take_is_sent_by_the_next_delivery(
    trader, account, settings, monkeypatch
):
    """The worker took the prepared due time (PLACING) and stopped before sending it (here: reading
    the sessions failed; a killed worker alike). The next delivery, still on time, must send the
    order: it found the prepared order by its key, did not send it, and reported the run placed."""
    settings.REPLAY_WAIT_S = 0.2
    row = make_scheduled(trader, account)
    due_at = _due_soon(row, 1.5)
    [fire_id] = sources.scheduled_claim_due(lead_s=3)
    [fire] = sources.scheduled_prepare(fire_ids=[fire_id])
    assert fire.status == ScheduledFire.Status.PREPARED
    order = Order.objects.get(scheduled=row)

    ready = sources._fires_ready
    calls = []

    def stops_once(fires):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("the worker stopped here")
        return ready(fires)

    monkeypatch.setattr(sources, "_fires_ready", stops_once)
    _at(due_at)
    with pytest.raises(ConnectionError):
        sources.scheduled_fires(fire_ids=[fire_id])
    assert ScheduledFire.objects.get(pk=fire_id).status == ScheduledFire.Status.PLACING

    fire = sources.scheduled_fire(fire_id=fire_id)  # a redelivery, a second after the time
    order.refresh_from_db()
    assert PaperOrder.objects.filter(tag=order.reference).count() == 1, (
        f"fire {fire.status} ({fire.detail}) but order {order.status}, never sent"
    )
    assert fire.status == ScheduledFire.Status.PLACED and order.status != Order.Status.NEW


def _taken_then_stopped(row, seconds: float = 1.0):
    """``row``'s due time prepared, then taken to send by a worker that stopped before sending it
    (its placing lock let go): (the fire, its due time, its order)."""
    fire, due_at, order = _prepared(row, seconds=seconds)
    _at(due_at)
    taken, tokens = sources._fires_take([fire.pk], {row.pk})
    assert [f.status for f in taken] == [ScheduledFire.Status.PLACING]
    locks.release_many(tokens)
    return fire, due_at, order


def test_a_due_time_whose_worker_stopped_after_sending_is_not_sent_again(trader, account):
    row = make_scheduled(trader, account)
    fire, _due_at, order = _taken_then_stopped(row)
    # It had sent the order; recording the answer is what it did not get to.
    placed = AccountBroker(account).place_order(services.order_request(order))
    assert PaperOrder.objects.filter(tag=order.reference).count() == 1
    fire = sources.scheduled_fire(fire_id=fire.pk)  # the re-send
    order.refresh_from_db()
    assert fire.status == ScheduledFire.Status.PLACED and order.broker_order_id == placed.broker_order_id
    assert order.status != Order.Status.NEW
    assert PaperOrder.objects.filter(tag=order.reference).count() == 1  # asked by its tag, not sent again


def test_a_due_time_whose_worker_stopped_before_sending_is_missed_when_the_resend_is_late(trader, account, settings):
    row = make_scheduled(trader, account)
    fire, _due_at, order = _taken_then_stopped(row)
    settings.SCHEDULE_ON_TIME_S = 0  # the re-send comes after its time (and grace) went by
    clock.sleep(1)
    fire = sources.scheduled_fire(fire_id=fire.pk)
    assert fire.status == ScheduledFire.Status.MISSED and "stopped before sending" in fire.detail
    _unsent(order, "missed")


def test_an_owner_deactivated_between_the_prepare_and_the_time_gets_nothing_sent(trader, account):
    row = make_scheduled(trader, account)
    fire, due_at, order = _prepared(row, seconds=1)
    type(trader).objects.filter(pk=trader.pk).update(is_active=False)
    _at(due_at)
    fire = sources.scheduled_fire(fire_id=fire.pk)
    assert fire.status == ScheduledFire.Status.FAILED and "deactivated" in fire.detail
    _unsent(order, "deactivated")


def test_a_prepared_order_is_stopped_through_its_scheduled_order_not_from_the_book(trader, account):
    row = make_scheduled(trader, account)
    _fire, _due_at, order = _prepared(row, seconds=2)
    with pytest.raises(services.OrderActionRefused) as refused:
        services.order_cancel(order=order, actor=trader, cause="test")
    assert f"scheduled order #{row.pk}" in str(refused.value)


def test_an_edit_after_the_time_came_that_leaves_the_order_as_it_was_keeps_its_prepared_order(trader, account):
    row, fire_id = _daily_prepared_and_come(trader, account)
    order = Order.objects.get(scheduled=row)
    sources.scheduled_change(owner=trader, scheduled=row, grace_s=30)
    assert ScheduledFire.objects.get(pk=fire_id).status == ScheduledFire.Status.PREPARED
    assert sources.scheduled_fire(fire_id=fire_id).status == ScheduledFire.Status.PLACED
    assert list(Order.objects.values_list("pk", flat=True)) == [order.pk]
    assert PaperOrder.objects.filter(tag=order.reference).count() == 1


def test_a_resent_due_time_whose_order_the_stopped_worker_sent_is_not_closed_on_a_deactivation(trader, account):
    row = make_scheduled(trader, account)
    fire, _due_at, order = _taken_then_stopped(row)
    placed = AccountBroker(account).place_order(services.order_request(order))  # sent, answer not recorded
    type(trader).objects.filter(pk=trader.pk).update(is_active=False)
    fire = sources.scheduled_fire(fire_id=fire.pk)  # the re-send
    order.refresh_from_db()
    assert fire.status == ScheduledFire.Status.PLACED and order.broker_order_id == placed.broker_order_id
    assert order.status != Order.Status.CANCELLED
    assert PaperOrder.objects.filter(tag=order.reference).count() == 1


def test_a_due_time_that_failed_its_check_ahead_and_was_corrected_before_its_time_runs(trader, account, settings):
    settings.SCHEDULE_LEAD_S = 5
    due = (timezone.now() + timedelta(seconds=4)).astimezone(IST).replace(microsecond=0)
    if due.date() != (due + timedelta(seconds=10)).date():
        pytest.skip("too close to midnight IST")
    row = sources.scheduled_save(
        owner=trader, account=account, spec=spec(quantity=5), recurrence="once",
        time_of_day=due.time(), run_on=due.date(), timezone_name="Asia/Kolkata",
    )  # fmt: skip
    BrokerAccount.objects.filter(pk=account.pk).update(max_quantity=2)  # staff lowered the limit since
    [fire_id] = sources.scheduled_claim_due(lead_s=5)
    [fire] = sources.scheduled_prepare(fire_ids=[fire_id])
    assert fire.status == ScheduledFire.Status.FAILED and "limit of 2" in fire.detail  # reported to the trader

    # The trader corrects it before its time; the answer says it runs then, and it does.
    edited = sources.scheduled_change(owner=trader, scheduled=row, quantity=2)
    assert edited.status == ScheduledOrder.Status.ACTIVE and edited.next_run_at == due
    assert sources.scheduled_claim_due(lead_s=5) == [fire_id]  # the same due time, claimed again
    assert [f.status for f in sources.scheduled_prepare(fire_ids=[fire_id])] == [ScheduledFire.Status.PREPARED]
    _at(due)
    assert sources.scheduled_fire(fire_id=fire_id).status == ScheduledFire.Status.PLACED
    assert list(PaperOrder.objects.values_list("quantity", flat=True)) == [2]


def test_one_fire_failing_unexpectedly_ahead_of_its_time_leaves_the_others_prepared_and_all_sent_at_it(
    trader, account, monkeypatch
):
    from orders import tasks

    sent = []
    monkeypatch.setattr(tasks.fire_scheduled, "apply_async", lambda args, eta=None: sent.append((args[0], eta)))
    rows = [make_scheduled(trader, account) for _ in range(3)]
    due_at = timezone.now() + timedelta(seconds=2)
    ScheduledOrder.objects.filter(pk__in=[r.pk for r in rows]).update(next_run_at=due_at)
    assert tasks.dispatch_scheduled() == 3
    [(fire_ids, _eta)] = sent
    prepare = services.order_prepare

    def order_prepare(**kwargs):
        if kwargs["scheduled"].pk == rows[1].pk:
            raise RuntimeError("an unexpected error preparing one order")
        return prepare(**kwargs)

    monkeypatch.setattr(services, "order_prepare", order_prepare)
    tasks.fire_scheduled(fire_ids)
    statuses = dict(ScheduledFire.objects.values_list("scheduled_id", "status"))
    assert [statuses[r.pk] for r in rows] == ["prepared", "pending", "prepared"]  # that one: placed whole at its time
    assert [(sorted(ids), eta) for ids, eta in sent[1:]] == [(sorted(fire_ids), due_at)]


def test_a_cancel_refusal_sends_the_trader_to_the_scheduled_order_only_while_that_stops_it(trader, account):
    row = make_scheduled(trader, account, recurrence="weekdays", weekdays=list(range(7)), run_on=None)
    fire, _due_at, order = _taken_then_stopped(row)  # taken: cancelling the scheduled order no longer stops it
    with pytest.raises(services.OrderActionRefused) as refused:
        services.order_cancel(order=order, actor=trader, cause="order book")
    assert "being sent" in str(refused.value) and "scheduled order" not in str(refused.value)


def test_a_resent_due_time_of_an_account_deactivated_meanwhile_is_resolved_not_left_placing(trader, account):
    row = make_scheduled(trader, account, recurrence="weekdays", weekdays=list(range(7)), run_on=None)
    fire, _due_at, order = _taken_then_stopped(row)  # taken to send; its worker stopped
    BrokerAccount.objects.filter(pk=account.pk).update(is_active=False)  # staff deactivate the account

    for _resend in range(3):  # the dispatcher's re-sends (every 30 s, with no end)
        fire = sources.scheduled_fire(fire_id=fire.pk)
    order.refresh_from_db()
    assert not PaperOrder.objects.exists()
    assert fire.status != ScheduledFire.Status.PLACING, (
        f"fire still {fire.status} after 3 re-sends; order {order.reference} {order.status}"
    )
    assert order.status != Order.Status.NEW  # not "being sent" in the order book for ever
    try:  # the trader's edit may be refused for the deactivated account, not as "being placed now" for ever
        sources.scheduled_change(owner=trader, scheduled=row, quantity=2)
    except ValidationError as error:
        assert "being placed now" not in " ".join(error.messages)


def test_a_due_time_whose_send_the_broker_never_got_is_reported_alike_prepared_or_placed_whole(
    trader, account, monkeypatch
):
    """The broker is down at the time: both orders end FAILED ("the broker does not have it"). The
    due time placed whole is reported not placed (FAILED, with a notice); the one prepared ahead
    (the usual way now) is recorded PLACED, without a notice."""
    prepared_row, whole_row = make_scheduled(trader, account), make_scheduled(trader, account)
    due_at = timezone.now() + timedelta(seconds=1)
    ScheduledOrder.objects.filter(pk__in=[prepared_row.pk, whole_row.pk]).update(next_run_at=due_at)
    claimed = sources.scheduled_claim_due(lead_s=2)
    fire_ids = dict(ScheduledFire.objects.filter(pk__in=claimed).values_list("scheduled_id", "pk"))
    assert [f.status for f in sources.scheduled_prepare(fire_ids=[fire_ids[prepared_row.pk]])] == ["prepared"]

    notices = []
    monkeypatch.setattr(sources, "_notify", lambda scheduled, text: notices.append(scheduled.pk))

    def down(self, request):
        raise BrokerUnavailable("503 from the broker")

    monkeypatch.setattr(AccountBroker, "place_order", down)
    _at(due_at)
    fires = {f.scheduled_id: f for f in sources.scheduled_fires(fire_ids=claimed)}
    assert set(Order.objects.values_list("status", flat=True)) == {Order.Status.FAILED}  # neither reached it
    outcome = {pk: (fires[pk].status, pk in notices) for pk in (prepared_row.pk, whole_row.pk)}
    assert outcome[whole_row.pk] == (ScheduledFire.Status.FAILED, True)
    assert outcome[prepared_row.pk] == outcome[whole_row.pk], f"prepared: {fires[prepared_row.pk].detail}"


def test_a_resent_due_time_of_an_earlier_day_is_closed_for_the_trader_to_check_not_left_open(trader, account, settings):
    row = make_scheduled(trader, account)
    fire, due_at, order = _taken_then_stopped(row)
    settings.SCHEDULE_ON_TIME_S = 0
    # Its re-sends failed until the next day: the broker lists that day's orders only, so neither
    # a look now nor a reconciliation can tell whether it got it.
    ScheduledFire.objects.filter(pk=fire.pk).update(due_at=due_at - timedelta(days=1))
    Order.objects.filter(pk=order.pk).update(created_at=due_at - timedelta(days=1, seconds=2))
    clock.sleep(1)
    fire = sources.scheduled_fire(fire_id=fire.pk)
    order.refresh_from_db()
    assert fire.status == ScheduledFire.Status.FAILED and "check the broker's order history" in fire.detail
    assert order.status == Order.Status.FAILED and "check the broker's order history" in order.reject_reason
    assert not PaperOrder.objects.filter(tag=order.reference).exists()


def test_a_resent_due_time_of_an_earlier_day_still_within_its_grace_is_not_sent_a_second_time(
    trader, account, monkeypatch
):
    """A grace of days: its worker sent the order yesterday and stopped before recording the
    answer, and its re-sends failed until today. A broker that lists today's orders only (Kite)
    does not find it by its tag: it was sent again, a second order for one run. As for a late
    re-send, whether the broker got it is not known: the trader is told to check."""
    row = make_scheduled(trader, account)
    fire, due_at, order = _taken_then_stopped(row)
    AccountBroker(account).place_order(services.order_request(order))  # sent; its answer never recorded
    ScheduledOrder.objects.filter(pk=row.pk).update(grace_s=3 * 86400)  # still within its grace today
    ScheduledFire.objects.filter(pk=fire.pk).update(due_at=due_at - timedelta(days=1))
    Order.objects.filter(pk=order.pk).update(created_at=due_at - timedelta(days=1, seconds=2))
    monkeypatch.setattr(AccountBroker, "find_by_tag", lambda self, tag: None)  # today's book: not in it
    fire = sources.scheduled_fire(fire_id=fire.pk)
    order.refresh_from_db()
    assert PaperOrder.objects.filter(tag=order.reference).count() == 1, f"{fire.status}: {fire.detail}"
    assert fire.status == ScheduledFire.Status.FAILED and "check the broker's order history" in fire.detail
    assert order.status == Order.Status.FAILED and "check the broker's order history" in order.reject_reason


def test_a_due_time_just_after_midnight_prepared_just_before_it_is_missed_not_unknown(trader, account, settings):
    now = timezone.now().astimezone(IST)
    if (now.hour, now.minute) in ((0, 0),) or (now.hour == 23 and now.minute > 58):
        pytest.skip("too close to midnight IST")
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    row = make_scheduled(trader, account)
    fire, _due_at, order = _taken_then_stopped(row)
    ScheduledFire.objects.filter(pk=fire.pk).update(due_at=midnight)  # today's first moment, IST
    Order.objects.filter(pk=order.pk).update(created_at=midnight - timedelta(seconds=2))  # prepared the day before
    settings.SCHEDULE_ON_TIME_S = 0
    fire = sources.scheduled_fire(fire_id=fire.pk)
    assert fire.status == ScheduledFire.Status.MISSED, f"{fire.status}: {fire.detail}"
    _unsent(order, "missed")


def test_a_due_time_whose_send_answer_was_lost_is_reported_with_a_notice(trader, account, monkeypatch):
    row = make_scheduled(trader, account)
    fire, due_at, order = _prepared(row, seconds=1)
    notices = []
    monkeypatch.setattr(sources, "_notify", lambda scheduled, text: notices.append(text))

    def lost(self, request):
        raise OutcomeUnknown("timed out reading the answer")

    monkeypatch.setattr(AccountBroker, "place_order", lost)
    _at(due_at)
    fire = sources.scheduled_fire(fire_id=fire.pk)
    order.refresh_from_db()
    assert order.status == Order.Status.SUBMITTED and order.events.filter(kind="outcome_unknown").exists()
    assert fire.status == ScheduledFire.Status.PLACED and "answer lost" in fire.detail
    assert notices and "looked up by its tag" in notices[0]


# --- Sent together: a task's prepared orders go to the paper exchange in one transaction ----------


def _burst(trader, accounts, seconds: float = 1.5):
    """One scheduled order per account, due together, claimed and prepared: (fire ids, due time)."""
    rows = [make_scheduled(trader, account) for account in accounts]
    due_at = timezone.now() + timedelta(seconds=seconds)
    ScheduledOrder.objects.filter(pk__in=[row.pk for row in rows]).update(next_run_at=due_at)
    fire_ids = sources.scheduled_claim_due(lead_s=seconds + 1)
    assert {f.status for f in sources.scheduled_prepare(fire_ids=fire_ids)} == {ScheduledFire.Status.PREPARED}
    return fire_ids, due_at


@pytest.fixture
def accounts(trader, account):
    from accounts.tests.factories import make_broker_account

    return [account] + [make_broker_account(trader, broker="paper", client_id=f"PAPER-T{i}") for i in range(3)]


def _placed_once_each(fires, statuses=(Order.Status.FILLED,)):
    assert {fire.status for fire in fires} == {ScheduledFire.Status.PLACED}, [fire.detail for fire in fires]
    orders = Order.objects.filter(scheduled__in=[fire.scheduled_id for fire in fires])
    assert orders.count() == len(fires)
    for order in orders:
        assert order.broker_order_id and order.status in statuses
        assert list(PaperOrder.objects.filter(tag=order.reference).values_list("order_id", flat=True)) == [
            order.broker_order_id
        ]
        assert [e.kind for e in order.events.order_by("pk")][:2] == ["created", "submitted"]


def test_a_bursts_prepared_orders_reach_the_exchange_together_and_are_recorded_as_if_sent_alone(
    trader, accounts, monkeypatch
):
    from brokers.paper import engine

    fire_ids, due_at = _burst(trader, accounts)
    calls = []
    place_many = engine.orders_place_many
    monkeypatch.setattr(
        engine, "orders_place_many", lambda placements: calls.append(len(placements)) or place_many(placements)
    )
    _at(due_at)
    _placed_once_each(sources.scheduled_fires(fire_ids=fire_ids))
    assert calls == [len(accounts)]  # one transaction of the exchange for the task's orders


def test_a_refused_fire_and_a_client_with_call_knobs_are_not_sent_with_the_others(trader, accounts, monkeypatch):
    from brokers.paper import engine
    from brokers.paper.models import PaperClient

    fire_ids, due_at = _burst(trader, accounts)
    BrokerAccount.objects.filter(pk=accounts[1].pk).update(is_active=False)
    engine.client_get_or_create(user_id=accounts[2].client_id)  # made at the account's first login, else
    assert PaperClient.objects.filter(user_id=accounts[2].client_id).update(latency_ms=1) == 1  # placed alone
    placed_alone = []
    order_place = engine.order_place
    monkeypatch.setattr(
        engine, "order_place", lambda **kw: placed_alone.append(kw["client"].user_id) or order_place(**kw)
    )
    _at(due_at)
    fires = {fire.scheduled.account_id: fire for fire in sources.scheduled_fires(fire_ids=fire_ids)}
    refused = fires.pop(accounts[1].pk)
    assert refused.status == ScheduledFire.Status.FAILED and "deactivated" in refused.detail
    assert not PaperOrder.objects.filter(client__user_id=accounts[1].client_id).exists()
    _placed_once_each(list(fires.values()))
    assert placed_alone == [accounts[2].client_id]


def test_when_the_exchanges_transaction_fails_each_order_is_looked_up_then_sent_alone_once(
    trader, accounts, monkeypatch
):
    from django.db import OperationalError

    from brokers.paper import engine

    fire_ids, due_at = _burst(trader, accounts)

    def deadlocked(placements):
        raise OperationalError(1213, "Deadlock found when trying to get lock")

    monkeypatch.setattr(engine, "orders_place_many", deadlocked)
    _at(due_at)
    _placed_once_each(sources.scheduled_fires(fire_ids=fire_ids))


def test_an_unexpected_failure_after_the_exchange_took_them_sends_nothing_twice(trader, accounts, monkeypatch):
    fire_ids, due_at = _burst(trader, accounts)
    send_together = services.orders_send_together

    def sent_then_failed(orders):
        send_together(orders)
        raise RuntimeError("a bug after the exchange's commit")

    monkeypatch.setattr(services, "orders_send_together", sent_then_failed)
    _at(due_at)
    # Whether the broker got each is not known: each is looked up by its tag, found (filled on
    # arrival, as the look-up says), never sent again.
    _placed_once_each(sources.scheduled_fires(fire_ids=fire_ids))


def test_a_burst_whose_accounts_all_have_call_knobs_is_placed_alone(trader, accounts):
    from brokers.paper import engine
    from brokers.paper.models import PaperClient

    fire_ids, due_at = _burst(trader, accounts)
    for account in accounts:
        engine.client_get_or_create(user_id=account.client_id)
    assert PaperClient.objects.update(latency_ms=1) == len(accounts)
    _at(due_at)
    _placed_once_each(sources.scheduled_fires(fire_ids=fire_ids))


@pytest.mark.django_db(transaction=True)
def test_an_account_waiting_for_its_rate_budget_does_not_hold_back_other_accounts_orders(trader, accounts):
    """The paper broker takes 10 orders a second an account: 13 of account A and one of account B are
    due together. B's goes out at once; A's last ones wait for A's budget, sent alone."""
    a, b = accounts[0], accounts[1]
    fire_ids, due_at = _burst(trader, [a] * 13 + [b])
    _at(due_at)
    assert {f.status for f in sources.scheduled_fires(fire_ids=fire_ids)} == {ScheduledFire.Status.PLACED}
    b_order = Order.objects.get(account=b)
    late_s = (PaperOrder.objects.get(tag=b_order.reference).placed_at - due_at).total_seconds()
    assert late_s < 0.5, f"account B's order reached the exchange {late_s:.2f} s after its time"
    assert PaperOrder.objects.filter(client__user_id=a.client_id).count() == 13


@pytest.mark.django_db(transaction=True)
def test_one_clients_postback_failing_after_the_commit_leaves_the_other_answers_as_they_are(
    trader, accounts, monkeypatch
):
    from brokers.paper import engine, tasks
    from brokers.paper.models import PaperClient

    fire_ids, due_at = _burst(trader, accounts)
    engine.client_get_or_create(user_id=accounts[0].client_id)
    PaperClient.objects.filter(user_id=accounts[0].client_id).update(postback_url="http://127.0.0.1:9/hook")

    def broker_down(*args, **kwargs):
        raise ConnectionResetError("the task broker dropped the connection")

    monkeypatch.setattr(tasks.send_postback, "delay", broker_down)
    _at(due_at)
    _placed_once_each(sources.scheduled_fires(fire_ids=fire_ids))


def _late_s(account, due_at) -> list[float]:
    """How long after their time the account's orders reached the exchange."""
    refs = list(Order.objects.filter(account=account).values_list("reference", flat=True))
    return sorted((o.placed_at - due_at).total_seconds() for o in PaperOrder.objects.filter(tag__in=refs))


@pytest.mark.django_db(transaction=True)
def test_an_account_whose_session_is_being_renewed_does_not_hold_back_other_accounts_orders(trader, accounts):
    """Only accounts with a live session at hand are sent together: one to log in (another worker
    holds its login lock) is sent alone, on its own thread."""
    from django.core.cache import cache

    from brokers import services as broker_services
    from brokers.models import BrokerSession

    a, b = accounts[0], accounts[1]
    fire_ids, due_at = _burst(trader, [a, a, b])
    broker_services.session_live(a)
    BrokerSession.objects.filter(account=b).update(status=BrokerSession.Status.EXPIRED, active_for=None)
    cache.delete(broker_services._cache_key(b.pk))
    token = locks.acquire(f"broker-login:{b.pk}", ttl_s=60)
    assert token
    threading.Timer(3.0, lambda: locks.release(f"broker-login:{b.pk}", token)).start()
    _at(due_at)
    fires = sources.scheduled_fires(fire_ids=fire_ids)
    assert {f.status for f in fires} == {ScheduledFire.Status.PLACED}, [f.detail for f in fires]
    late = _late_s(a, due_at)
    assert len(late) == 2 and max(late) < 0.5, f"account A's orders reached the exchange {late} s after their time"


@pytest.mark.django_db(transaction=True)
def test_an_order_left_to_be_sent_alone_does_not_pay_its_rate_budget_twice(trader, accounts):
    """An exchange client with call knobs is left to be sent alone: the slot taken for it then is its."""
    from brokers.paper import engine
    from brokers.paper.models import PaperClient

    a, b = accounts[0], accounts[1]
    fire_ids, due_at = _burst(trader, [a] * 10 + [b])
    engine.client_get_or_create(user_id=a.client_id)
    assert PaperClient.objects.filter(user_id=a.client_id).update(latency_ms=1) == 1
    _at(due_at)
    fires = sources.scheduled_fires(fire_ids=fire_ids)
    assert {f.status for f in fires} == {ScheduledFire.Status.PLACED}, [f.detail for f in fires]
    late = _late_s(a, due_at)
    assert len(late) == 10 and max(late) < 0.5, f"account A's orders reached the exchange up to {max(late):.2f} s late"


@pytest.mark.django_db(transaction=True)
def test_a_kite_order_due_with_paper_ones_is_not_held_back_by_the_paper_exchanges_transaction(
    trader, accounts, kite_on_face
):
    """A paper client's row held by another transaction holds the paper batch; a Kite order of the
    same task is on its way meanwhile."""
    mariadb_only()  # row locks
    from django.db import connection, transaction

    from brokers.paper import engine
    from brokers.paper.models import PaperClient

    a, b = accounts[0], accounts[1]
    fire_ids, due_at = _burst(trader, [a, b, kite_on_face])
    engine.client_get_or_create(user_id=a.client_id)
    locked, done = threading.Event(), threading.Event()

    def hold_row():
        try:
            with transaction.atomic():
                PaperClient.objects.select_for_update().filter(user_id=a.client_id).get()
                locked.set()
                done.wait(2.0)
        finally:
            connection.close()

    _at(due_at)
    holder = threading.Thread(target=hold_row)
    holder.start()
    assert locked.wait(5)
    fires = sources.scheduled_fires(fire_ids=fire_ids)
    holder.join()
    assert {f.status for f in fires} == {ScheduledFire.Status.PLACED}, [f.detail for f in fires]
    [kite_late] = _late_s(kite_on_face, due_at)
    assert kite_late < 0.5, f"the Kite order reached its broker {kite_late:.2f} s after its time"


def _products_narrowed(trader, account):
    broker_account_update(account=account, actor=trader, allowed_products=["CNC"])


def _open_orders_limit_met(trader, account):
    # A LIMIT order placed meanwhile stays open; then the limit is lowered to 1.
    assert place(trader, account, order_type="LIMIT", price="1400").status == Order.Status.OPEN
    broker_account_update(account=account, actor=trader, max_open_orders=1)


@pytest.mark.parametrize(
    ("lowered", "refusal"), [(_products_narrowed, "MIS is not allowed"), (_open_orders_limit_met, "open orders")]
)
def test_a_prepared_order_whose_accounts_limits_were_lowered_before_its_time_is_not_sent(
    trader, account, lowered, refusal
):
    """The limits were met when the order was written ahead; the trader lowered them before its
    time (the products allowed, the open orders limit). An order placed whole at its time is
    checked then: a prepared one must be too."""
    row = make_scheduled(trader, account)
    fire, due_at, order = _prepared(row, seconds=1.5)
    lowered(trader, account)
    _at(due_at)
    fire = sources.scheduled_fire(fire_id=fire.pk)
    assert fire.status == ScheduledFire.Status.FAILED and refusal in fire.detail, fire.detail
    _unsent(order, refusal)


def test_a_lost_answer_of_an_order_prepared_before_midnight_is_not_closed_as_the_days_before(
    trader, account, monkeypatch
):
    """Prepared at 23:59:58 IST, sent at midnight, its answer lost: the request may still land. The
    sync that the lost answer asks for runs at once, on the new trading day, while the order was
    written on the day before: it must wait for the request as for any lost answer (a minute), not
    close it as a day order of the day before (FAILED: a Kite account, whose sync no longer reads
    an earlier day's failed orders, keeps it failed while it fills)."""
    row = make_scheduled(trader, account)
    fire, due_at, order = _prepared(row, seconds=1)
    monkeypatch.setattr(
        AccountBroker, "place_order", lambda self, request, **_: (_ for _ in ()).throw(OutcomeUnknown("timed out"))
    )
    _at(due_at)
    sources.scheduled_fire(fire_id=fire.pk)
    order.refresh_from_db()
    assert order.status == Order.Status.SUBMITTED and not order.broker_order_id
    real = services.trading_date
    monkeypatch.setattr(services, "trading_date", lambda now=None: real(now) + timedelta(days=now is None))
    services.orders_sync_account(account=account)  # just after midnight; the request still on its way
    order.refresh_from_db()
    assert order.status == Order.Status.SUBMITTED, f"{order.status}: {order.reject_reason}"


def test_a_prepared_due_time_whose_task_was_lost_is_sent_again_while_still_on_time(trader, account):
    """The worker prepared the due time and was killed before its time (the task it sent for the
    time went with it, or waits out the broker's visibility timeout, an hour). The dispatcher must
    send it again while it can still be placed on time, not only once it is sure to be missed."""
    row = make_scheduled(trader, account)
    fire, due_at, order = _prepared(row, seconds=1)
    _at(due_at + timedelta(seconds=2.5))  # no task came at its time
    resent = [pk for fire_ids, _due_at in sources.scheduled_dispatch() for pk in fire_ids]
    assert resent == [fire.pk]
    fire = sources.scheduled_fire(fire_id=fire.pk)
    order.refresh_from_db()
    assert fire.status == ScheduledFire.Status.PLACED, fire.detail
    assert PaperOrder.objects.filter(tag=order.reference).count() == 1


def test_a_late_send_whose_answer_was_lost_is_not_failed_from_a_book_read_before_it(
    trader, account, settings, monkeypatch
):
    """A prepared order sent 70 s late (a busy worker), its answer lost though the exchange took it.
    The account's run read the book just before the send: the order is not in it, yet it was sent
    moments ago, not a minute before that read. It stays to be looked up by its tag (failed, a
    strategy would place it again), and the next read finds it."""
    settings.SCHEDULE_ON_TIME_S = 0
    row = make_scheduled(trader, account)
    ScheduledOrder.objects.filter(pk=row.pk).update(grace_s=600)
    fire, due_at, order = _prepared(row, seconds=0.5)
    Order.objects.filter(pk=order.pk).update(created_at=timezone.now() - timedelta(seconds=70))
    read = {}
    send = AccountBroker.place_order

    def taken_then_lost(self, request, **kwargs):
        read["book"], read["asked_at"] = AccountBroker(account).orders(), timezone.now()  # step 1, before the send
        send(self, request, **kwargs)
        raise OutcomeUnknown("timed out reading the answer")

    monkeypatch.setattr(AccountBroker, "place_order", taken_then_lost)
    _at(due_at)
    sources.scheduled_fire(fire_id=fire.pk)
    order.refresh_from_db()
    assert order.status == Order.Status.SUBMITTED and not order.broker_order_id
    services.orders_sync_account(account=account, broker_orders=read["book"], asked_at=read["asked_at"])  # step 3
    order.refresh_from_db()
    assert order.status == Order.Status.SUBMITTED and not order.events.filter(kind="failed").exists()
    services.orders_sync_account(account=account)  # the next run's read has it
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED and order.broker_order_id
    assert not order.events.filter(kind="failed").exists()


def test_a_due_time_a_worker_gets_to_too_late_shows_missed_as_its_orders_last_result(trader, account, settings):
    """A daily order placed its order yesterday; today's due time is taken too late (missed). Its
    page must say today's run was missed, not yesterday's order as its last result."""
    settings.SCHEDULE_ON_TIME_S = 0
    row = make_scheduled(trader, account)
    ScheduledOrder.objects.filter(pk=row.pk).update(
        last_run_at=timezone.now() - timedelta(days=1), last_result="20260101-PAPER-N000001 FILLED"
    )
    fire, due_at, _order = _prepared(row, seconds=0.5)
    _at(due_at + timedelta(seconds=1))
    assert sources.scheduled_fire(fire_id=fire.pk).status == ScheduledFire.Status.MISSED
    row.refresh_from_db()
    assert "missed" in row.last_result and row.last_run_at > due_at, (row.last_run_at, row.last_result)


def test_prepared_orders_sent_together_are_not_closed_unsent_when_the_price_moves_as_they_are_sent(
    trader, accounts, monkeypatch
):
    """Each account's order value limit is just met at the last price when the burst is sent
    together; the price ticks up as the exchange takes them. The orders are at the exchange: they
    must be recorded placed, not checked again and closed as never sent."""
    from brokers.models import Instrument

    instrument = spec()["instrument"]
    price = Instrument.objects.get(pk=instrument.pk).last_price
    BrokerAccount.objects.filter(pk__in=[a.pk for a in accounts]).update(max_order_value=price)
    fire_ids, due_at = _burst(trader, accounts)
    send_together = services.orders_send_together

    def sent_then_ticked(orders):
        answers = send_together(orders)
        Instrument.objects.filter(pk=instrument.pk).update(last_price=price + 1)
        return answers

    monkeypatch.setattr(services, "orders_send_together", sent_then_ticked)
    _at(due_at)
    _placed_once_each(sources.scheduled_fires(fire_ids=fire_ids))


def test_a_kite_market_order_under_a_value_limit_asks_kites_price_with_no_rows_locked(
    trader, kite_on_face, monkeypatch
):
    """A Kite account's MARKET order is valued at Kite's price, asked with a quote call that waits
    for the account's quote budget (one a second) and is retried. Prepared ahead, it was asked
    inside the prepare's transaction: the scheduled rows and the account's daily counter (every
    other order of the account) held locked meanwhile. It is placed whole at its time instead, its
    price asked outside any transaction, and its value still checked."""
    from decimal import Decimal

    from django.db import connection

    from brokers.paper import engine
    from tradingplatform import memo

    account = kite_on_face
    broker_account_update(account=account, actor=trader, max_order_value=Decimal("100000"))
    account.refresh_from_db()
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=Decimal("1500"))
    row = make_scheduled(trader, account)
    memo.clear_all()  # its price as the save asked it is gone by its time
    asked_in_transaction, ltp = [], AccountBroker.ltp

    def asking(broker, keys):
        asked_in_transaction.append(connection.in_atomic_block)
        return ltp(broker, keys)

    monkeypatch.setattr(AccountBroker, "ltp", asking)
    due_at = _due_soon(row, 1.5)
    [fire_id] = sources.scheduled_claim_due(lead_s=2.5)
    [fire] = sources.scheduled_prepare(fire_ids=[fire_id])
    assert True not in asked_in_transaction  # not asked under the prepare's locks
    assert fire.status == ScheduledFire.Status.PENDING and not Order.objects.filter(scheduled=row).exists()
    _at(due_at)
    fire = sources.scheduled_fire(fire_id=fire_id)
    assert fire.status == ScheduledFire.Status.PLACED, fire.detail
    assert asked_in_transaction == [False]  # asked once, at its time, outside any transaction
    assert Order.objects.get(scheduled=row).status in Order.AT_BROKER + (Order.Status.FILLED,)


def test_a_change_of_a_kite_market_order_under_a_value_limit_asks_kites_price_before_locking_its_row(
    trader, kite_on_face, monkeypatch
):
    """A change is checked under the scheduled order's row lock, which the due time's send waits for
    (and the dispatcher skips): the check's quote call to Kite (a wait for the quote budget, retries)
    was made with the row held. Asked before the lock; the change still checked at Kite's price."""
    from decimal import Decimal

    from django.db import connection

    from brokers.paper import engine
    from tradingplatform import memo

    account = kite_on_face
    broker_account_update(account=account, actor=trader, max_order_value=Decimal("4000"))
    account.refresh_from_db()
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=Decimal("1500"))
    row = make_scheduled(trader, account)
    memo.clear_all()
    asked_in_transaction, ltp = [], AccountBroker.ltp

    def asking(broker, keys):
        asked_in_transaction.append(connection.in_atomic_block)
        return ltp(broker, keys)

    monkeypatch.setattr(AccountBroker, "ltp", asking)
    assert sources.scheduled_change(owner=trader, scheduled=row, quantity=2).quantity == 2
    assert asked_in_transaction == [False]
    with pytest.raises(ValidationError, match="Order value 4500.00"):  # 3 at Kite's 1500
        sources.scheduled_change(owner=trader, scheduled=row, quantity=3)
    assert ScheduledOrder.objects.get(pk=row.pk).quantity == 2


def test_kite_market_orders_of_one_time_under_a_value_limit_ask_kites_prices_in_one_call_at_it(
    trader, kite_on_face, monkeypatch
):
    """A time's Kite MARKET orders under an order value limit are each valued at Kite's price, asked
    at the time. Each asked for its own instrument's, one a second (the account's quote budget):
    three orders due together went out about 0, 1 and 2 s after their time. The prices are asked in
    one call; each order is still checked at its own (one over the limit is not placed)."""
    from decimal import Decimal

    from brokers.paper import engine
    from tradingplatform import memo

    account = kite_on_face
    broker_account_update(account=account, actor=trader, max_order_value=Decimal("2000"))
    account.refresh_from_db()
    rows = {}
    for symbol, price in (("INFY", "1500"), ("TCS", "2500"), ("RELIANCE", "1300")):
        engine.market_set(exchange="NSE", tradingsymbol=symbol, last_price=Decimal(price))
        rows[symbol] = make_scheduled(trader, account)  # saved as INFY's (1500, under the limit) ...
        ScheduledOrder.objects.filter(pk=rows[symbol].pk).update(instrument=spec(symbol)["instrument"])
    memo.clear_all()
    asked, ltp = [], AccountBroker.ltp

    def asking(broker, keys):
        asked.append(sorted(keys))
        return ltp(broker, keys)

    monkeypatch.setattr(AccountBroker, "ltp", asking)
    due_at = _due_soon(rows["INFY"], 1.5)
    ScheduledOrder.objects.filter(pk__in=[row.pk for row in rows.values()]).update(next_run_at=due_at)
    fire_ids = sources.scheduled_claim_due(lead_s=2.5)
    assert [fire.status for fire in sources.scheduled_prepare(fire_ids=fire_ids)] == [ScheduledFire.Status.PENDING] * 3
    _at(due_at)
    fires = {fire.scheduled_id: fire for fire in sources.scheduled_fires(fire_ids=fire_ids)}
    assert asked == [["NSE:INFY", "NSE:RELIANCE", "NSE:TCS"]]
    for symbol in ("INFY", "RELIANCE"):
        assert fires[rows[symbol].pk].status == ScheduledFire.Status.PLACED, fires[rows[symbol].pk].detail
        assert Order.objects.get(scheduled=rows[symbol]).status in Order.AT_BROKER + (Order.Status.FILLED,)
    # ... and TCS's 2500 at Kite is over it: checked at its time, not placed.
    tcs = fires[rows["TCS"].pk]
    assert tcs.status == ScheduledFire.Status.FAILED and "Order value 2500.00" in tcs.detail
    assert not Order.objects.filter(scheduled=rows["TCS"]).exists()
