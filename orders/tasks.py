from celery import shared_task

from tradingplatform.celery import periodic

from . import sources


@shared_task
@periodic
def dispatch_scheduled():
    """Claim due scheduled orders (once each) and hand each to a worker, due at its time."""
    fires = sources.scheduled_dispatch()
    for fire_id, eta in fires:
        fire_scheduled.apply_async((fire_id,), eta=eta)
    return len(fires)


@shared_task
def fire_scheduled(fire_id: int):
    """Place one claimed due time; a redelivery finds it placed and does nothing."""
    fire = sources.scheduled_fire(fire_id=fire_id)
    if fire.status == fire.Status.PENDING:  # it came far too early: again at its time
        fire_scheduled.apply_async((fire_id,), eta=fire.due_at)
    return fire.status
