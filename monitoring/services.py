"""Monitoring services: cycles across accounts, the fast path after fills, the beat heartbeat."""

import logging
import socket

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


def heartbeat_age_s() -> float | None:
    beat = cache.get(HEARTBEAT_KEY)
    return None if beat is None else timezone.now().timestamp() - beat["at"]


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
