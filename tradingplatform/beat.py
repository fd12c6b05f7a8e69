"""Beat's scheduler: django-celery-beat's database scheduler, keeping every interval exactly.

Its own keeps an interval as a whole number of seconds (``IntervalSchedule.from_schedule``): a
job every 0.5 s (``PAPER_TICK_INTERVAL_S``, ``SCHEDULE_DISPATCH_INTERVAL_S``) was kept as every
0 s, which beat sends without pause, flooding the queue; one every 1.5 s as every 1 s, whose
deliveries the periodic lock (``periodic``) then skipped every other time: every 2 s. An interval
with a fraction of a second is kept in microseconds; whole seconds as before.
"""

from celery import schedules
from django_celery_beat.models import IntervalSchedule
from django_celery_beat.schedulers import DatabaseScheduler as BaseDatabaseScheduler
from django_celery_beat.schedulers import ModelEntry


class Entry(ModelEntry):
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


class DatabaseScheduler(BaseDatabaseScheduler):
    Entry = Entry
