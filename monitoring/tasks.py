from celery import shared_task

from tradingplatform import locks
from tradingplatform.celery import periodic

from . import cycle, services
from .models import AccountRun

# A fast-path run that finds its account held by another run (a cycle's batch, which may have read
# the broker before what queued this one) is queued again, further apart each time, for as long as
# a run can hold an account (the tasks' hard time limit), then the next cycle covers it.
FAST_PATH_AGAIN_S, FAST_PATH_AGAIN_MAX_S, FAST_PATH_AGAIN_TIMES = 0.5, 8.0, 45


@shared_task
@periodic
def heartbeat():
    services.heartbeat_record()


@shared_task
@periodic
def start_cycle():
    """Every MONITORING_INTERVAL_S: one task per batch of MONITORING_BATCH monitored accounts."""
    run, account_ids = services.cycle_start()
    services.cycle_fan_out(run=run, account_ids=account_ids, send=monitor_accounts.delay)
    return len(account_ids)


@shared_task
@periodic
def exits_settle():
    """Every hour: strategy entries whose round trips closed and settled are marked done."""
    return cycle.exits_settle()


@shared_task(soft_time_limit=240)
def monitor_accounts(account_ids: list[int], run_id: int | None):
    """One batch of a cycle (or the fast path's one account): every step for each active account."""
    results = services.batch_monitor(account_ids=account_ids, run_id=run_id)
    statuses = [r.status for r in results]
    return {status: statuses.count(status) for status in set(statuses)}


@shared_task(soft_time_limit=240)
def monitor_account(account_id: int, run_id: int | None, again: int = 0):
    """The fast path's run of one account (and tasks queued before batches existed)."""
    result = monitor_accounts(account_ids=[account_id], run_id=run_id)
    status = next(iter(result), "inactive")
    if status == AccountRun.Status.SKIPPED and run_id is None and again < FAST_PATH_AGAIN_TIMES:
        delay = min(FAST_PATH_AGAIN_S * 2**again, FAST_PATH_AGAIN_MAX_S)
        # One queued at a time per account (the fast path's debounce key): later ones would find it queued.
        if locks.acquire(f"monitor:queued:{account_id}", ttl_s=delay):
            monitor_account.apply_async((account_id, None, again + 1), countdown=delay)
    return status
