from celery import shared_task

from tradingplatform import locks
from tradingplatform.celery import periodic

from . import sources


@shared_task
@periodic
def dispatch_scheduled():
    """Claim due scheduled orders (once each) and hand each due time to a worker."""
    fires = sources.scheduled_claim_due()
    # Fires a dead worker left pending, re-sent at most every 30 s each.
    fires += [pk for pk in sources.scheduled_pending_stale() if locks.acquire(f"orders:refire:{pk}", ttl_s=30)]
    for fire_id in fires:
        fire_scheduled.delay(fire_id)
    return len(fires)


@shared_task
def fire_scheduled(fire_id: int):
    """Place one claimed due time; a redelivery finds it placed and does nothing."""
    return sources.scheduled_fire(fire_id=fire_id).status
