from celery import shared_task
from django.conf import settings

from tradingplatform import locks
from tradingplatform.celery import periodic

from . import sources


@shared_task
@periodic
def dispatch_scheduled():
    """Claim due scheduled orders (once each) and hand each due time to a worker."""
    # Claimed up to SCHEDULE_LEAD_S ahead and sent with the due time as the ETA: a worker
    # places each at its time, not at the first poll after it.
    fires = sources.scheduled_claim_due(lead_s=settings.SCHEDULE_LEAD_S)
    due = sources.scheduled_due_times(fires)
    for fire_id in fires:
        fire_scheduled.apply_async((fire_id,), eta=due.get(fire_id))
    # Fires a dead worker left pending, re-sent at most every 30 s each.
    stale = [pk for pk in sources.scheduled_pending_stale() if locks.acquire(f"orders:refire:{pk}", ttl_s=30)]
    for fire_id in stale:
        fire_scheduled.delay(fire_id)
    return len(fires) + len(stale)


@shared_task
def fire_scheduled(fire_id: int):
    """Place one claimed due time; a redelivery finds it placed and does nothing."""
    return sources.scheduled_fire(fire_id=fire_id).status
