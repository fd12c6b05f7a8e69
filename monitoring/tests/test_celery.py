import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from django.conf import settings as django_settings

from monitoring import services
from monitoring.tasks import heartbeat
from tradingplatform.celery import MAX_COUNTDOWN_S, PERIODIC_TASKS, app
from tradingplatform.testing import requires_redis


def test_reliability_settings():
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_transport_options["visibility_timeout"] > MAX_COUNTDOWN_S
    assert app.conf.task_serializer == "json" and app.conf.accept_content == ["json"]
    assert app.conf.task_time_limit and app.conf.task_soft_time_limit
    from celery.utils.imports import symbol_by_name
    from django_celery_beat.schedulers import DatabaseScheduler

    assert issubclass(symbol_by_name(app.conf.beat_scheduler), DatabaseScheduler)


def test_every_periodic_job_is_a_registered_task():
    app.loader.import_default_modules()
    for job in PERIODIC_TASKS.values():
        assert job["task"] in app.tasks


def test_a_periodic_job_runs_once_per_interval_however_many_beats_send_it(db):
    assert heartbeat.apply().get() is None
    first = services.heartbeat_age_s()
    assert first is not None
    # A second beat (or a redelivery) inside the interval is skipped.
    assert heartbeat.apply().get() == "skipped"
    assert heartbeat.apply().get() == "skipped"


@requires_redis
def test_a_real_worker_runs_a_task_from_redis(db, client, settings):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tradingplatform.settings_test"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tradingplatform", "worker", "--pool", "solo", "--loglevel", "WARNING"],
        env=env,
        cwd=django_settings.BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        heartbeat.delay()
        deadline = time.monotonic() + 60
        while services.heartbeat_age_s() is None and time.monotonic() < deadline:
            assert worker.poll() is None, worker.stdout.read().decode()
            time.sleep(0.2)
        assert services.heartbeat_age_s() is not None, "the worker did not run the task"
        # With a worker up, /readyz's Celery check passes too.
        settings.READYZ_CHECK_CELERY = True
        response = client.get("/readyz")
        assert response.status_code == 200, response.json()
        assert response.json()["checks"]["celery"]["worker"].startswith("celery@")
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()


@requires_redis
def test_readyz_fails_when_no_worker_answers(client, db, settings):
    settings.READYZ_CHECK_CELERY = True
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["celery"]["status"] == "error"


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server on the PATH")
def test_a_worker_survives_a_redis_restart(tmp_path):
    """Redis restarts (a deploy, a crash): the worker reconnects and runs tasks again, it does not exit.

    (Celery 5.7.0 exited here with "Unrecoverable error: AttributeError" while closing the lost
    connection; e2e/faults.py found it.)
    """
    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    redis_cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    start_redis = lambda: subprocess.Popen(redis_cmd, cwd=tmp_path, stdout=subprocess.DEVNULL)  # noqa: E731
    client = redis.Redis.from_url(url, socket_connect_timeout=1)

    def wait(check, what, timeout_s=60):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert worker.poll() is None, f"the worker exited:\n{worker.stdout.read()}"
            with contextlib.suppress(redis.ConnectionError):
                if check():
                    return
            time.sleep(0.2)
        raise AssertionError(f"{what} within {timeout_s} s")

    def heartbeat_ran():
        client.delete(*client.keys("*periodic*") or ["-"])  # a fresh interval each time
        app.send_task("monitoring.tasks.heartbeat", connection=app.connection_for_write(url), queue="restart")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if client.keys("*celery:heartbeat"):
                return True
            time.sleep(0.1)
        return False

    server = start_redis()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tradingplatform.settings_test", "REDIS_URL": url}
    env.update(CELERY_QUEUE="restart", CACHE_KEY_PREFIX="restart", CELERY_TASK_ALWAYS_EAGER="false")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tradingplatform", "worker", "--pool", "threads", "--concurrency", "2"],
        env=env,
        cwd=django_settings.BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait(heartbeat_ran, "a task run before the restart")
        # A task the worker holds unacknowledged (a countdown) when the connection is lost.
        send = {"connection": app.connection_for_write(url), "queue": "restart"}
        app.send_task("monitoring.tasks.heartbeat", countdown=600, **send)
        time.sleep(1)
        server.kill()
        server.wait(10)
        time.sleep(1)  # the worker notices the lost connection while Redis is down
        assert worker.poll() is None, f"the worker exited when Redis went away:\n{worker.stdout.read()}"
        server = start_redis()
        client.connection_pool.disconnect()
        wait(lambda: not client.keys("*celery:heartbeat") and heartbeat_ran(), "a task run after the restart")
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        server.kill()


@pytest.mark.parametrize("every_s", [0.5, 1.5, 1.0, 60.0])
def test_beat_keeps_each_periodic_jobs_interval_as_given(db, every_s):
    """Beat's database scheduler copies PERIODIC_TASKS into its tables: an interval that is not a
    whole number of seconds (PAPER_TICK_INTERVAL_S=0.5, SCHEDULE_DISPATCH_INTERVAL_S=1.5) is sent
    at that interval, not cut to whole seconds (0.5 s was kept as 0: beat sent the job without
    pause; 1.5 s as 1 s, and the periodic lock then skipped every other: every 2 s)."""
    from datetime import timedelta

    from celery.utils.imports import symbol_by_name
    from django_celery_beat.models import PeriodicTask

    scheduler = symbol_by_name(app.conf.beat_scheduler)
    entry = {"task": "monitoring.tasks.heartbeat", "schedule": every_s}
    scheduler.Entry.from_entry("test-interval", app=app, **entry)
    scheduler.Entry.from_entry("test-interval", app=app, **entry)  # beat started again
    interval = PeriodicTask.objects.get(name="test-interval").interval
    assert timedelta(**{interval.period: interval.every}) == timedelta(seconds=every_s)
    assert interval.schedule.run_every == timedelta(seconds=every_s)


def _start_beat():
    """Beat's scheduler as `celery beat` makes it at start: it installs PERIODIC_TASKS in its tables."""
    from celery.utils.imports import symbol_by_name

    return symbol_by_name(app.conf.beat_scheduler)(app=app, lazy=False)


@pytest.mark.django_db(transaction=True)  # beat closes the connection between its reads (close_old_connections)
def test_a_job_staff_re_timed_or_paused_in_admin_stays_so_when_beat_restarts(caplog):
    """Staff re-time the monitoring cycle and pause the scheduled-order dispatch in admin during an
    incident; beat restarts (a deploy). Both stay as staff left them (beat wrote PERIODIC_TASKS
    over the rows at every start: the cycle went back to every 60 s without a word)."""
    from datetime import timedelta

    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    beat = _start_beat()
    assert set(PERIODIC_TASKS) <= set(beat.schedule)
    cycle = PeriodicTask.objects.get(name="monitoring-cycle")
    assert cycle.interval.schedule.run_every == timedelta(seconds=PERIODIC_TASKS["monitoring-cycle"]["schedule"])

    cycle.interval, _ = IntervalSchedule.objects.get_or_create(every=300, period=IntervalSchedule.SECONDS)
    cycle.expire_seconds = 120
    cycle.save()
    dispatch = PeriodicTask.objects.get(name="scheduled-orders-dispatch")
    dispatch.enabled = False
    dispatch.save()

    beat = _start_beat()
    assert "Periodic job monitoring-cycle keeps the schedule set in admin" in caplog.text
    cycle.refresh_from_db()
    dispatch.refresh_from_db()
    assert (cycle.interval.every, cycle.interval.period, cycle.expire_seconds) == (300, "seconds", 120)
    assert beat.schedule["monitoring-cycle"].schedule.run_every == timedelta(seconds=300)
    assert dispatch.enabled is False and "scheduled-orders-dispatch" not in beat.schedule
    # A job with no row (deleted in admin) is installed again as the code gives it.
    PeriodicTask.objects.filter(name="celery-heartbeat").delete()
    beat = _start_beat()
    job, code = PeriodicTask.objects.get(name="celery-heartbeat"), PERIODIC_TASKS["celery-heartbeat"]
    assert job.enabled and job.task == code["task"]
    assert job.interval.schedule.run_every == timedelta(seconds=code["schedule"])


@pytest.mark.django_db(transaction=True)
def test_a_job_staff_sped_up_in_admin_runs_at_staffs_interval():
    """Staff shorten a job's interval in admin (the heartbeat, from the code's 30 s to 1 s): beat sends
    it every second and each delivery runs (the periodic lock judged deliveries by the code's 30 s
    and skipped all but one in 30 s: the change showed as saved and never took)."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    _start_beat()
    job = PeriodicTask.objects.get(name="celery-heartbeat")
    job.interval, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    job.save()
    entry = _start_beat().schedule["celery-heartbeat"]

    def sent_by_beat():  # what beat sends (its entry's options), run here
        return heartbeat.apply(entry.args, entry.kwargs, headers=entry.options["headers"]).get()

    assert sent_by_beat() is None
    assert sent_by_beat() == "skipped"  # a second beat's delivery of the same second
    time.sleep(1.1)  # the next beat, one interval on
    assert sent_by_beat() is None
