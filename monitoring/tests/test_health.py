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
