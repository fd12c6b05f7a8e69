from itertools import groupby

from celery import shared_task

from tradingplatform.celery import periodic

from . import sources
from .models import ScheduledFire


@shared_task
@periodic
def dispatch_scheduled():
    """Claim due scheduled orders (once each) and hand them to workers, due at their time."""
    return dispatch_due()


def dispatch_due() -> int:
    """The dispatcher's work: each claimed due time sent to a worker once, with those due at the
    same time, the due time as its ETA. Returns how many due times were sent."""
    batches = sources.scheduled_dispatch()
    for fire_ids, eta in batches:
        fire_scheduled.apply_async((fire_ids,), eta=eta)
    return sum(len(fire_ids) for fire_ids, _ in batches)


@shared_task
def fire_scheduled(fire_ids: list[int] | int):
    """Place claimed due times (several due at the same time, or one); a redelivery finds them
    placed and does nothing. Returns their statuses."""
    fires = sources.scheduled_fires(fire_ids=[fire_ids] if isinstance(fire_ids, int) else list(fire_ids))
    early = sorted((fire for fire in fires if fire.status == ScheduledFire.Status.PENDING), key=lambda f: f.due_at)
    for due_at, came_early in groupby(early, key=lambda f: f.due_at):  # far too early: again at their time
        fire_scheduled.apply_async(([fire.pk for fire in came_early],), eta=due_at)
    return [fire.status for fire in fires]
