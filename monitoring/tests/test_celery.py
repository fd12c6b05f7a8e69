import os
import subprocess
import sys
import time

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
    assert app.conf.beat_scheduler.startswith("django_celery_beat")


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
