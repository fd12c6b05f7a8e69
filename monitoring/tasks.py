from celery import shared_task
from django.conf import settings

from tradingplatform.celery import periodic

from . import services


@shared_task
@periodic
def heartbeat():
    services.heartbeat_record()


@shared_task
@periodic
def start_cycle():
    """Every MONITORING_INTERVAL_S: one task per batch of MONITORING_BATCH monitored accounts."""
    run, account_ids = services.cycle_start()
    size = settings.MONITORING_BATCH
    for start in range(0, len(account_ids), size):
        monitor_accounts.delay(account_ids[start : start + size], run.pk)
    return len(account_ids)


@shared_task(soft_time_limit=240)
def monitor_accounts(account_ids: list[int], run_id: int | None):
    """One batch of a cycle (or the fast path's one account): every step for each active account."""
    results = services.batch_monitor(account_ids=account_ids, run_id=run_id)
    statuses = [r.status for r in results]
    return {status: statuses.count(status) for status in set(statuses)}


@shared_task(soft_time_limit=240)
def monitor_account(account_id: int, run_id: int | None):
    """The fast path's run of one account (and tasks queued before batches existed)."""
    result = monitor_accounts(account_ids=[account_id], run_id=run_id)
    return next(iter(result), "inactive")
