import logging
from datetime import timedelta
from itertools import groupby

from celery import shared_task
from django.utils import timezone

from tradingplatform import locks
from tradingplatform.celery import periodic

from . import sources
from .models import ScheduledFire

logger = logging.getLogger(__name__)


@shared_task
@periodic
def dispatch_scheduled():
    """Claim due scheduled orders (once each) and hand them to workers, due at their time."""
    from monitoring.services import dispatch_record  # monitoring's cycle imports orders

    sent = dispatch_due()
    dispatch_record()  # for readiness: a dispatcher paused or failing every time is seen
    runs_finish()
    return sent


# Basket placements and strategy signals whose process ended before answering are looked for this
# often (by the dispatcher, the orders' own periodic job, which also sends again the due times a dead
# worker left).
RUNS_FINISH_EVERY_S = 60


def runs_finish() -> int:
    """At most every ``RUNS_FINISH_EVERY_S``, whichever dispatcher comes: the rows of placements
    that ended half-way finished (``sources.basket_runs_finish``, ``sources.signals_finish``); a
    failure in one never stops the other, nor a dispatch."""
    if not locks.acquire("orders:basket-runs-finish", ttl_s=RUNS_FINISH_EVERY_S):
        return 0
    finished = 0
    for finish, what in ((sources.basket_runs_finish, "basket placements"), (sources.signals_finish, "signals")):
        try:
            finished += finish()
        except Exception:
            logger.exception("finishing %s that ended half-way failed", what)
    return finished


def dispatch_due() -> int:
    """The dispatcher's work: each claimed due time sent to a worker once, with those due at the
    same time, at once: the worker prepares their orders ahead of their time and sends them at it.
    Returns how many due times were sent."""
    batches = sources.scheduled_dispatch()
    for fire_ids, _due_at in batches:
        fire_scheduled.apply_async((fire_ids,))
    return sum(len(fire_ids) for fire_ids, _ in batches)


@shared_task
def fire_scheduled(fire_ids: list[int] | int):
    """Claimed due times (several due at the same time, or one): ahead of their time their orders
    are prepared (checked and written, ``scheduled_prepare``) and the task comes again at the time
    to send them; at it they are placed. A redelivery finds them prepared or placed and does
    neither twice. Returns their statuses."""
    fire_ids = [fire_ids] if isinstance(fire_ids, int) else list(fire_ids)
    fires = sources.scheduled_prepare(fire_ids=fire_ids)
    soon = timezone.now() + timedelta(seconds=AHEAD_S)
    ahead = sorted((fire for fire in fires if fire.status in ScheduledFire.WAITING and fire.due_at > soon), key=_due)
    for due_at, later in groupby(ahead, key=_due):  # again at their time
        fire_scheduled.apply_async(([fire.pk for fire in later],), eta=due_at)
    waiting = {fire.pk for fire in ahead}
    now_due = [fire.pk for fire in fires if fire.pk not in waiting]
    placed = {fire.pk: fire for fire in sources.scheduled_fires(fire_ids=now_due)} if now_due else {}
    return [placed.get(fire.pk, fire).status for fire in fires]


# A due time nearer than this is waited for by the task at hand (``scheduled_fires``), not sent again.
AHEAD_S = 0.05


def _due(fire: ScheduledFire):
    return fire.due_at
