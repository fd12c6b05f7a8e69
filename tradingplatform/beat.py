"""Beat's scheduler: django-celery-beat's database scheduler, keeping every interval exactly and
every change staff make in admin.

Its own keeps an interval as a whole number of seconds (``IntervalSchedule.from_schedule``): a
job every 0.5 s (``PAPER_TICK_INTERVAL_S``, ``SCHEDULE_DISPATCH_INTERVAL_S``) was kept as every
0 s, which beat sends without pause, flooding the queue; one every 1.5 s as every 1 s, whose
deliveries the periodic lock (``periodic``) then skipped every other time: every 2 s. An interval
with a fraction of a second is kept in microseconds; whole seconds as before.

Its own also writes every job of ``PERIODIC_TASKS`` over the job's row at each start
(``update_or_create``): a monitoring cycle staff had re-timed in admin (Periodic tasks) went back
to the code's interval at beat's next restart, without a word. ``PERIODIC_TASKS`` now gives a
job's fields when beat installs it; after that the row is staff's (its interval, queue, expiry,
start time), and beat only keeps the job running the code's task. Where code and row differ,
beat says so in its log at start. Each delivery of an interval job carries the interval beat
sends it at (``INTERVAL_HEADER``), so the periodic lock (``periodic``) judges it by staff's
interval, not the code's: by the code's, a job staff sped up was skipped back to the code's pace.
"""

import logging

from celery import schedules
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler as BaseDatabaseScheduler
from django_celery_beat.schedulers import ModelEntry

from tradingplatform.celery import INTERVAL_HEADER

logger = logging.getLogger(__name__)


class Entry(ModelEntry):
    def __init__(self, model, app=None):
        super().__init__(model, app=app)
        schedule = getattr(self, "schedule", None)  # none: a row whose schedule was deleted (disabled)
        if type(schedule) is schedules.schedule:
            # The interval staff set reaches the periodic lock, which would skip runs at a shorter one.
            self.options["headers"][INTERVAL_HEADER] = schedule.run_every.total_seconds()

    @classmethod
    def to_model_schedule(cls, schedule):
        schedule = schedules.maybe_schedule(schedule)
        if type(schedule) is schedules.schedule:
            seconds = schedule.run_every.total_seconds()
            if seconds != int(seconds):
                every = round(seconds * 1_000_000)
                period = IntervalSchedule.MICROSECONDS
                interval = IntervalSchedule.objects.filter(every=every, period=period).first()
                return interval or IntervalSchedule.objects.create(every=every, period=period), "interval"
        return super().to_model_schedule(schedule)

    @classmethod
    def from_entry(cls, name, app=None, **entry):
        """Install a job of ``PERIODIC_TASKS`` that has no row yet; keep an existing row as staff left it."""
        fields = cls._unpack_fields(**entry)
        job, created = PeriodicTask._default_manager.update_or_create(
            name=name, defaults={"task": fields["task"]}, create_defaults=fields
        )
        if not created:
            schedule_fields = [field for _, _, field in cls.model_schedules]
            if any(getattr(job, f"{field}_id") != getattr(fields[field], "pk", None) for field in schedule_fields):
                logger.warning(
                    "Periodic job %s keeps the schedule set in admin (%s), not the code's (%s)",
                    name,
                    job.schedule,
                    schedules.maybe_schedule(entry["schedule"]),
                )
        return cls(job, app=app)


class DatabaseScheduler(BaseDatabaseScheduler):
    Entry = Entry
