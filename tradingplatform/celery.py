"""The Celery app, its reliability settings, and the one list of periodic jobs.

Reliability choices, each deliberate:

- ``task_acks_late``: a task is acknowledged after it finishes, not when a worker
  takes it, so a worker killed mid-task (deploy, OOM, crash) leaves the message to be
  delivered again. That makes every task run *at least* once, which is only safe
  because every task of ours is idempotent (tasks take ids, services check state
  with conditional updates). ``task_reject_on_worker_lost`` requeues rather than
  acks when the worker process dies, and a prefetch of 1 keeps one slow task from
  holding others hostage.
- ``visibility_timeout``: with Redis as broker, an unacknowledged message is handed
  to another worker after this many seconds. A task scheduled with a countdown or
  ETA sits unacknowledged until it runs, so the timeout must be longer than any
  countdown or ETA we use (``MAX_COUNTDOWN_S``), or Redis would deliver it twice.
- A single-beat guard: Celery's docs warn that two beat processes send every
  periodic job twice. Each periodic job takes a Redis lock for most of its interval
  (``@periodic``), so a second beat started by mistake cannot double a run.
- Time limits: Celery enforces ``task_time_limit`` only in a prefork pool (the scheduled-orders
  bench runs one); the production worker runs ``--pool threads`` (Procfile), where
  nothing stops a task. There every broker call carries its own timeout (``KITE_TIMEOUT_S``
  for the whole call, ``brokers.http.Deadline``; the paper postbacks' 5 s per read) and Redis's
  and the channel layer's sockets theirs, so a stuck broker ends the call, not the worker.
"""

import functools
import os

from celery import Celery
from celery.signals import worker_init, worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradingplatform.settings")

# The longest countdown/ETA any task may be given; the visibility timeout is above it.
MAX_COUNTDOWN_S = 15 * 60
VISIBILITY_TIMEOUT_S = 60 * 60
assert VISIBILITY_TIMEOUT_S > MAX_COUNTDOWN_S
# Fault drills only (e2e/faults.py kills a worker mid-task and waits for the redelivery):
# a short timeout. Tasks we delay by a few seconds may then run twice, which they survive.
VISIBILITY_TIMEOUT_S = int(os.environ.get("CELERY_VISIBILITY_TIMEOUT_S", VISIBILITY_TIMEOUT_S))
# ...and then look for such messages every second, not every 100 s (kombu's default sweep).
DRILL_RESTORE = {"unacked_restore_interval": 1, "unacked_restore_throttle": 1}

# Every periodic job, in one place. Beat's database scheduler installs each one missing from
# its tables at start, where staff can see, pause and re-time them; staff's changes stay across
# restarts (``tradingplatform.beat``), so an interval here changes a job beat installs.
PERIODIC_TASKS = {
    "celery-heartbeat": {"task": "monitoring.tasks.heartbeat", "schedule": 30.0},
    "paper-market-tick": {
        "task": "brokers.paper.tasks.market_tick",
        "schedule": float(os.environ.get("PAPER_TICK_INTERVAL_S", "1")),
    },
    "broker-sessions-expire": {"task": "brokers.tasks.sessions_expire", "schedule": 60.0},
    "monitoring-cycle": {
        "task": "monitoring.tasks.start_cycle",
        "schedule": float(os.environ.get("MONITORING_INTERVAL_S", "60")),
    },
    # Marks the round trips closed and settled done, so the cycle's exits stop reading them: once an
    # hour, though a day's are done the day after the next (each pass reads the entries not done only).
    "monitoring-exits-settle": {"task": "monitoring.tasks.exits_settle", "schedule": 3600.0},
    "scheduled-orders-dispatch": {
        "task": "orders.tasks.dispatch_scheduled",
        "schedule": float(os.environ.get("SCHEDULE_DISPATCH_INTERVAL_S", "1")),
    },
}

app = Celery("tradingplatform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_time_limit=300,
    task_soft_time_limit=240,
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        **(DRILL_RESTORE if "CELERY_VISIBILITY_TIMEOUT_S" in os.environ else {}),
    },
    broker_connection_retry_on_startup=True,
    beat_schedule=PERIODIC_TASKS,
    beat_scheduler="tradingplatform.beat:DatabaseScheduler",  # django-celery-beat's, intervals kept exactly
    worker_hijack_root_logger=False,
)
app.autodiscover_tasks()


@worker_init.connect  # the worker's main process (before a prefork pool forks: its children share the frozen pages)
@worker_process_init.connect  # each prefork child, for what it made after the fork
def _app_loaded(**_kwargs):
    from tradingplatform import startup

    startup.app_loaded()


# The interval beat sends a periodic job at (as staff may have re-timed it in admin), in seconds:
# a header of each delivery (``tradingplatform.beat.Entry``), read by ``periodic``.
INTERVAL_HEADER = "periodic_interval_s"


def periodic(func):
    """Run a periodic job at most once per beat of its interval, however many beats send it.

    A delivery within 80% of the job's interval of the beat last served (a second beat, a
    redelivery after a crash) is skipped and returns ``"skipped"``; one held up in the queue
    serves its own beat and does not push the next one out (``locks.claim_beat``). The interval
    is the one beat sent the delivery at (``INTERVAL_HEADER``: staff's, where they re-timed the
    job in admin), else the code's (``PERIODIC_TASKS``).
    """
    name = f"{func.__module__}.{func.__name__}"
    interval = next((job["schedule"] for job in PERIODIC_TASKS.values() if job["task"] == name), None)
    if interval is None:
        raise LookupError(f"{name} is not in PERIODIC_TASKS")

    @functools.wraps(func)
    def guarded(*args, **kwargs):
        from celery import current_task

        from tradingplatform import locks

        headers = (current_task.request.headers if current_task else None) or {}
        interval_s = float(headers.get(INTERVAL_HEADER) or interval)
        if not locks.claim_beat(f"periodic:{name}", interval_s=interval_s):
            return "skipped"
        return func(*args, **kwargs)

    return guarded
