from unittest import mock

from django.core.cache import cache
from django.db import connection
from django.db.utils import OperationalError


def test_healthz_answers_ok(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_checks_each_dependency(client, db, settings):
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["database"]["vendor"] == connection.vendor
    assert body["checks"]["cache"]["status"] == "ok"
    if settings.REDIS_URL:
        assert body["checks"]["redis"]["status"] == "ok"
        assert body["checks"]["cache"]["backend"] == "RedisCache"
    else:
        assert "redis" not in body["checks"]


def test_readyz_is_503_naming_the_failed_dependency(client, db, staff):
    """Anyone (a load balancer) learns which dependency failed; only staff (or a metrics scraper)
    read why: an exception's text can name a database user, a host or a port."""
    failure = OperationalError("(1045, \"Access denied for user 'trading'@'10.0.3.7'\")")
    with mock.patch("monitoring.health._database", side_effect=failure):
        anonymous = client.get("/readyz")
        client.force_login(staff)
        for_staff = client.get("/readyz")
    assert anonymous.status_code == for_staff.status_code == 503
    body = anonymous.json()
    assert body["status"] == "error"
    assert body["checks"]["database"]["status"] == "error"
    assert body["checks"]["database"]["error"] == "OperationalError" and "10.0.3.7" not in anonymous.content.decode()
    assert body["checks"]["cache"]["status"] == "ok"
    assert "Access denied for user 'trading'@'10.0.3.7'" in for_staff.json()["checks"]["database"]["error"]


def test_probes_are_get_only(client, db):
    assert client.post("/healthz").status_code == 405
    assert client.post("/readyz").status_code == 405


def test_readyz_is_503_not_500_when_the_cache_is_down(client, db):
    with mock.patch.object(cache, "get", side_effect=ConnectionError("Error 111 connecting to redis:6379")):
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["cache"]["status"] == "error"
    assert body["checks"]["database"]["status"] == "ok"


# --- beat and the monitoring cycle ------------------------------------------------------------


def dispatch_now():
    """The dispatcher's task as beat's delivery runs it (past its periodic guard, which skips a
    delivery within 80% of a second of the last)."""
    from orders.tasks import dispatch_scheduled

    return dispatch_scheduled.run.__wrapped__()


def _schedule_installed(every_s: int = 60, *, enabled: bool = True, name: str = "monitoring-cycle"):
    """A periodic job (the monitoring cycle's) as beat installs it at start (django-celery-beat's table)."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from tradingplatform.celery import PERIODIC_TASKS

    interval, _ = IntervalSchedule.objects.get_or_create(every=every_s, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.update_or_create(
        name=name, defaults={"task": PERIODIC_TASKS[name]["task"], "interval": interval, "enabled": enabled}
    )[0]


def _age(model, pk, seconds: float, field: str = "started_at"):
    from datetime import timedelta

    from django.utils import timezone

    model.objects.filter(pk=pk).update(**{field: timezone.now() - timedelta(seconds=seconds)})


def _last_cycle_aged(seconds: float):
    """The one run started and finished ``seconds`` ago, the job last changed then (beat's start):
    that run."""
    from django_celery_beat.models import PeriodicTask

    from monitoring.models import MonitoringRun

    run = MonitoringRun.objects.get()
    _age(MonitoringRun, run.pk, seconds)
    _age(MonitoringRun, run.pk, seconds, "finished_at")
    run.refresh_from_db()
    PeriodicTask.objects.filter(name="monitoring-cycle").update(date_changed=run.started_at)
    return run


def _healthy_cycle(settings):
    """Beat on (heartbeat fresh) and a scheduled cycle that started and finished just now."""
    from monitoring import services

    settings.READYZ_CHECK_BEAT = True
    _schedule_installed()
    _schedule_installed(1, name=services.DISPATCH_JOB)
    services.heartbeat_record()
    services.cycle_start()
    dispatch_now()


def test_readyz_is_ok_while_beat_and_the_cycle_run(client, db, settings):
    _healthy_cycle(settings)
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["checks"]["beat"]["status"] == "ok"
    assert body["checks"]["monitoring_cycle"]["status"] == "ok"


def test_readyz_is_503_when_beat_stopped_sending_the_heartbeat(client, db, settings):
    from monitoring import services

    _healthy_cycle(settings)
    beat = cache.get(services.HEARTBEAT_KEY)
    cache.set(services.HEARTBEAT_KEY, {**beat, "at": beat["at"] - 600}, timeout=3600)
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503, body
    assert body["checks"]["beat"]["status"] == "error"
    # A reason anyone (the desk's probe) can read: it names no host or user.
    assert "heartbeat" in body["checks"]["beat"]["error"] and "600 s" in body["checks"]["beat"]["error"]

    cache.delete(services.HEARTBEAT_KEY)
    response = client.get("/readyz")
    assert response.status_code == 503 and "no heartbeat" in response.json()["checks"]["beat"]["error"]


def test_readyz_is_503_when_no_cycle_started_for_several_intervals(client, db, settings):
    """Beat and the workers are up (the heartbeat is fresh) but start_cycle fails every time, or
    the job was re-timed away: the last scheduled run is old, and stop-losses are not placed."""
    _healthy_cycle(settings)
    _last_cycle_aged(600)
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503, body
    check = body["checks"]["monitoring_cycle"]
    assert check["status"] == "error" and "no monitoring cycle started" in check["error"]


def test_readyz_is_503_when_scheduled_orders_are_not_dispatched(client, db, settings):
    """Beat, the workers and the cycle are well, but the dispatcher is paused in admin or fails
    every time: readiness was green while every scheduled order missed its time."""
    from django_celery_beat.models import PeriodicTask

    from monitoring import services

    _healthy_cycle(settings)
    assert client.get("/readyz").json()["checks"]["scheduled_dispatch"]["status"] == "ok"
    job = PeriodicTask.objects.get(name=services.DISPATCH_JOB)
    _age(PeriodicTask, job.pk, 600, "date_changed")  # beat installed it long ago ...
    cache.set(services.DISPATCHED_KEY, cache.get(services.DISPATCHED_KEY) - 600)  # ... and it last ran then
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503, body
    check = body["checks"]["scheduled_dispatch"]
    assert check["error"] == "no scheduled orders dispatched (they miss their times) in the last 33 s"
    assert check["last_s_ago"] >= 600
    dispatch_now()  # it runs again
    assert client.get("/readyz").status_code == 200
    _schedule_installed(1, enabled=False, name=services.DISPATCH_JOB)
    body = client.get("/readyz").json()
    assert "scheduled-orders-dispatch job is paused in admin" in body["checks"]["scheduled_dispatch"]["error"]


def test_readyz_is_503_when_staff_paused_the_cycle_in_admin(client, db, settings):
    _healthy_cycle(settings)
    _schedule_installed(enabled=False)
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503, body
    assert "paused" in body["checks"]["monitoring_cycle"]["error"]


def test_readyz_is_503_when_cycles_start_but_never_finish(client, db, settings):
    """Every run's batches die with their worker: runs keep starting, none ends."""
    from monitoring.models import MonitoringRun

    _healthy_cycle(settings)
    _last_cycle_aged(3600)
    for seconds in (120, 60, 0):
        run = MonitoringRun.objects.create(accounts=3)  # its batches never end it
        _age(MonitoringRun, run.pk, seconds)
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503, body
    assert "finished" in body["checks"]["monitoring_cycle"]["error"]


def test_readyz_waits_for_the_first_cycle_after_beat_starts(client, db, settings):
    """A fresh install: beat just installed its jobs, no cycle has had time to run yet."""
    from monitoring import services

    settings.READYZ_CHECK_BEAT = True
    _schedule_installed()
    _schedule_installed(1, name=services.DISPATCH_JOB)  # beat installs every job
    services.heartbeat_record()
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()

    from django_celery_beat.models import PeriodicTask

    _age(PeriodicTask, PeriodicTask.objects.get(name="monitoring-cycle").pk, 600, "date_changed")
    response = client.get("/readyz")
    assert response.status_code == 503, response.json()
