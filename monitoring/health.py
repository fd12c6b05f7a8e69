"""Liveness and readiness probes, and the Prometheus metrics.

``/healthz`` answers as long as the process serves requests. ``/readyz`` checks what a
request needs: the database, the cache, Redis when configured and, when configured, a
live Celery worker, beat's heartbeat, the scheduled monitoring cycle (started and
finishing) and the scheduled-order dispatch; it answers 503 when any of them is down, with
a status each (and the error's text for staff and the metrics scraper only, except the beat,
cycle and dispatch verdicts, which name no host and which the desk's probe needs to read).
``/metrics`` is Prometheus's text format (``tradingplatform.metrics``), for staff and for
a scraper sending ``Authorization: Bearer <METRICS_TOKEN>``.
"""

import hmac
import time

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import Http404, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from . import services


class NotRunning(Exception):
    """A check's verdict in our own words (no host, user or port in it): shown to anyone."""

    def __init__(self, reason: str, detail: dict | None = None):
        super().__init__(reason)
        self.detail = detail or {}


def _timed(check) -> dict:
    started = time.perf_counter()
    try:
        detail = check() or {}
        result = {"status": "ok", **detail}
    except NotRunning as exc:
        result = {"status": "error", **exc.detail, "error": str(exc), "public": True}
    except Exception as exc:  # a probe reports every failure, it never raises
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def _database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"vendor": connection.vendor}


def _cache():
    key = "readyz:probe"
    cache.set(key, "1", timeout=10)
    if cache.get(key) != "1":
        raise RuntimeError("cache did not return what was written")
    return {"backend": settings.CACHES["default"]["BACKEND"].rsplit(".", 1)[-1]}


def _redis():
    from tradingplatform.locks import redis_client

    redis_client().ping()


def _celery():
    from tradingplatform.celery import app

    # limit=1: answer as soon as one worker replies instead of waiting out the timeout.
    replies = app.control.ping(timeout=1.0, limit=1)
    if not replies:
        raise RuntimeError("no Celery worker answered a ping within 1 s")
    return {"worker": next(iter(replies[0]))}


def _beat():
    age = services.heartbeat_age_s()
    if age is None:
        raise NotRunning("no heartbeat recorded: beat, or every Celery worker, is not running")
    detail = {"age_s": round(age, 1)}
    if age > settings.READYZ_HEARTBEAT_MAX_AGE_S:
        raise NotRunning(f"the last heartbeat is {age:.0f} s old: beat, or every Celery worker, is down", detail)
    return detail


def _verdict(health):
    problem, detail = health()
    if problem:
        raise NotRunning(problem, detail)
    return detail


@require_GET
@never_cache
def healthz(request):
    return JsonResponse({"status": "ok"})


@require_GET
@never_cache
def readyz(request):
    checks = {"database": _timed(_database), "cache": _timed(_cache)}
    if settings.REDIS_URL:
        checks["redis"] = _timed(_redis)
    if settings.READYZ_CHECK_CELERY:
        checks["celery"] = _timed(_celery)
    if settings.READYZ_CHECK_BEAT:
        checks["beat"] = _timed(_beat)
        checks["monitoring_cycle"] = _timed(lambda: _verdict(services.cycle_health))
        checks["scheduled_dispatch"] = _timed(lambda: _verdict(services.dispatch_health))
    ok = all(check["status"] == "ok" for check in checks.values())
    if not (request.user.is_staff or _metrics_token_ok(request)):
        # An exception's text can name a database user, a host or a port: anyone sees which check
        # failed and its type; staff and the metrics scraper see why.
        for check in checks.values():
            if "error" in check and not check.get("public"):
                check["error"] = check["error"].split(":", 1)[0]
    for check in checks.values():
        check.pop("public", None)
    body = {"status": "ok" if ok else "error", "checks": checks}
    try:
        beat = services.heartbeat_age_s()
    except Exception:  # the cache is down: its check above already says so (503), the age is unknown
        beat = None
    body["beat_heartbeat_age_s"] = None if beat is None else round(beat, 1)
    return JsonResponse(body, status=200 if ok else 503)


def _metrics_token_ok(request) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    expected = settings.METRICS_TOKEN
    return bool(expected) and scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), expected.encode())


@require_GET
@never_cache
def metrics(request):
    """Staff or the token: 401 without either (or with a wrong token), 404 for a signed-in trader."""
    from prometheus_client import CONTENT_TYPE_LATEST

    from tradingplatform.metrics import render

    if not _metrics_token_ok(request):
        if not request.user.is_authenticated or "Authorization" in request.headers:
            message = "Send 'Authorization: Bearer <METRICS_TOKEN>' or sign in as staff."
            response = JsonResponse({"error": message}, status=401)
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        if not request.user.is_staff:
            raise Http404
    return HttpResponse(render(), content_type=CONTENT_TYPE_LATEST)
