"""Monitoring services: cycles across accounts, the fast path after fills, the beat heartbeat."""

import logging
import socket
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import BrokerAccount
from brokers.models import BrokerSession
from tradingplatform import locks

from . import cycle
from .models import MonitoringRun

logger = logging.getLogger(__name__)

HEARTBEAT_KEY = "celery:heartbeat"
FAST_PATH_DEBOUNCE_S = 0.5


def heartbeat_record() -> dict:
    """Note that a periodic job ran; idempotent (a repeat only moves the time)."""
    beat = {"at": timezone.now().timestamp(), "host": socket.gethostname()}
    cache.set(HEARTBEAT_KEY, beat, timeout=24 * 3600)
    return beat


DISPATCH_JOB = "scheduled-orders-dispatch"
DISPATCHED_KEY = "scheduled:dispatched"


def dispatch_record() -> None:
    """Note that the scheduled-order dispatcher ran to its end (``dispatch_health``). Never raises:
    the dispatch is done whatever becomes of its note (the cache away: readiness says so)."""
    try:
        cache.set(DISPATCHED_KEY, timezone.now().timestamp(), timeout=24 * 3600)
    except Exception:
        logger.warning("could not note the scheduled-order dispatch", exc_info=True)


def dispatch_health() -> tuple[str | None, dict]:
    """Whether scheduled orders are dispatched (claimed when due and sent to workers): (what is
    wrong or None, what was seen). Wrong as ``_job_problem`` says: every scheduled order would miss
    its time while the rest of the platform looks well."""
    now = timezone.now()
    job, interval_s = _periodic_job(DISPATCH_JOB)
    at = cache.get(DISPATCHED_KEY)
    last = None if at is None else datetime.fromtimestamp(at, tz=UTC)
    detail = {"interval_s": interval_s, "last_s_ago": None if last is None else round((now - last).total_seconds(), 1)}
    none = "no scheduled orders dispatched (they miss their times)"
    return _job_problem(job, DISPATCH_JOB, none=none, last=last, now=now, interval_s=interval_s), detail


def heartbeat_age_s() -> float | None:
    beat = cache.get(HEARTBEAT_KEY)
    return None if beat is None else timezone.now().timestamp() - beat["at"]


CYCLE_JOB = "monitoring-cycle"  # its name in PERIODIC_TASKS and in django-celery-beat's table
# A cycle is overdue after this many of its intervals (plus beat's slack) without a start.
CYCLE_MISSED_INTERVALS = 3
CYCLE_SLACK_S = 30.0


def _periodic_job(name: str):
    """Beat's row of a periodic job (None before beat installed it) and its interval in seconds
    (as staff may have re-timed it in admin)."""
    from django_celery_beat.models import PeriodicTask

    from tradingplatform.celery import PERIODIC_TASKS

    job = PeriodicTask.objects.select_related("interval").filter(name=name).first()
    interval_s = float(PERIODIC_TASKS[name]["schedule"])
    if job is not None and job.interval is not None:
        interval_s = timedelta(**{job.interval.period: job.interval.every}).total_seconds()
    return job, interval_s


def _job_problem(job, name: str, *, none: str, last: datetime | None, now: datetime, interval_s: float) -> str | None:
    """What is wrong with a periodic job whose last run was at ``last``: not installed, paused in
    admin, or ``none`` (no run) for ``CYCLE_MISSED_INTERVALS`` intervals (beat stopped sending it,
    it fails every time). Counted from the later of its last run and beat's last install or staff's
    last edit of the job (``date_changed``), so a fresh start has its first runs' time."""
    if job is None:
        return f"beat has never installed the {name} job (beat has not run)"
    if not job.enabled:
        return f"the {name} job is paused in admin (Periodic tasks): {none}"
    limit_s = CYCLE_MISSED_INTERVALS * interval_s + CYCLE_SLACK_S
    if (now - max(filter(None, (last, job.date_changed)))).total_seconds() > limit_s:
        return f"{none} in the last {limit_s:.0f} s"
    return None


def cycle_health() -> tuple[str | None, dict]:
    """Whether scheduled monitoring cycles run: (what is wrong or None, what was seen).

    Wrong: as ``_job_problem`` says, no scheduled run having started; or runs start but none
    finished for as long again plus a batch's time limit (their batches never end them).
    """
    from tradingplatform.celery import app

    now = timezone.now()
    job, interval_s = _periodic_job(CYCLE_JOB)
    scheduled = MonitoringRun.objects.filter(trigger=MonitoringRun.Trigger.BEAT)
    started = scheduled.values_list("started_at", flat=True).first()
    finished = scheduled.filter(finished_at__isnull=False).values_list("started_at", flat=True).first()
    detail = {
        "interval_s": interval_s,
        "last_started_s_ago": None if started is None else round((now - started).total_seconds(), 1),
        "last_finished_started_s_ago": None if finished is None else round((now - finished).total_seconds(), 1),
    }
    problem = _job_problem(
        job, CYCLE_JOB, none="no monitoring cycle started", last=started, now=now, interval_s=interval_s
    )
    if problem:
        return problem, detail
    since = job.date_changed
    start_limit_s = CYCLE_MISSED_INTERVALS * interval_s + CYCLE_SLACK_S
    finish_limit_s = start_limit_s + app.conf.task_time_limit
    if (now - max(filter(None, (finished, since)))).total_seconds() > finish_limit_s:
        return f"monitoring cycles start but none finished in the last {finish_limit_s:.0f} s", detail
    return None, detail


def monitored_accounts():
    """Active accounts with a live session: the ones a cycle looks at."""
    live = BrokerSession.objects.filter(status=BrokerSession.Status.ACTIVE, expires_at__gt=timezone.now())
    return BrokerAccount.objects.filter(is_active=True, pk__in=live.values("account_id"))


def cycle_start(*, trigger: str = MonitoringRun.Trigger.BEAT) -> tuple[MonitoringRun, list[int]]:
    """A new run and the accounts it covers; the caller fans out one task per account."""
    account_ids = list(monitored_accounts().values_list("pk", flat=True))
    # With no account to look at, no batch will end it: it ends as it starts.
    finished_at = None if account_ids else timezone.now()
    run = MonitoringRun.objects.create(trigger=trigger, accounts=len(account_ids), finished_at=finished_at)
    return run, account_ids


def cycle_fan_out(*, run: MonitoringRun, account_ids: list[int], send) -> int:
    """Queue the run's batches, ``MONITORING_BATCH`` accounts each (``send(batch, run.pk)``).
    Returns how many were queued.

    Queuing failing (Redis away for a moment) before any batch went out: the run ends at once, as
    one with no account does (no batch would ever end it, so it showed as running for good); the
    error goes on (the task fails, the next cycle covers the accounts). Batches already queued
    end it as usual."""
    size = settings.MONITORING_BATCH
    queued = 0
    try:
        for start in range(0, len(account_ids), size):
            send(account_ids[start : start + size], run.pk)
            queued += 1
    except Exception:
        if not queued:
            MonitoringRun.objects.filter(pk=run.pk, finished_at__isnull=True).update(finished_at=timezone.now())
        raise
    return queued


def batch_monitor(*, account_ids: list[int], run_id: int | None) -> list:
    """One batch of a cycle: every step for each active account of ``account_ids``; the run's
    finish time moves to the batch's end (batches end in any order), however the batch ended (its
    accounts skipped or deactivated, its time limit reached). Returns the AccountRuns."""
    results = []
    try:
        accounts = list(BrokerAccount.objects.select_related("owner").filter(pk__in=account_ids, is_active=True))
        results = cycle.accounts_monitor(accounts=accounts, run_id=run_id) if accounts else []
    finally:
        if run_id is not None:
            finished = max((r.finished_at for r in results if r.finished_at), default=None) or timezone.now()
            later = Q(finished_at__isnull=True) | Q(finished_at__lt=finished)
            MonitoringRun.objects.filter(later, pk=run_id).update(finished_at=finished)
    return results


def account_activity(account_id: int) -> None:
    """The account needs its steps run now: a strategy's order changed (exits, re-entry, retries
    follow from it), a Kite order filled (its fills are fetched), or we placed, modified or
    cancelled at a broker that tells us nothing of what became of it.

    Debounced: a burst within half a second queues one run.

    Never raises: it is called right after a placement, modify or cancel was recorded, which must
    not fail because Redis (the lock, Celery's broker) is out for a moment; the account's next
    cycle runs its steps anyway (the failure is logged).
    """
    from .tasks import monitor_account

    def queue():
        try:
            if locks.acquire(f"monitor:queued:{account_id}", ttl_s=FAST_PATH_DEBOUNCE_S):
                monitor_account.apply_async((account_id, None), countdown=FAST_PATH_DEBOUNCE_S)
        except Exception:
            logger.warning("account %s: its run could not be queued; the next cycle runs it", account_id, exc_info=True)

    transaction.on_commit(queue)
