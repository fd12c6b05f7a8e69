"""Every URL the project serves, walked from the URL configuration, so a new one cannot skip these checks."""

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

# Reachable without signing in, on purpose.
PUBLIC = {
    "/login/",
    "/healthz",
    "/readyz",
    "/api/v1/docs",
    "/api/v1/openapi.json",
    "/api/v1/",
}  # the API root has no data


def all_paths(patterns=None, prefix=""):
    for entry in patterns if patterns is not None else get_resolver().url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from all_paths(entry.url_patterns, route)
        elif isinstance(entry, URLPattern):
            route = route.replace("^", "").replace("$", "").replace("\\Z", "")
            path = "/" + re.sub(r"<[^>]+>|\(\?P<[^>]+>[^)]+\)", "1", route)
            if "(" not in path:  # the admin's regex catch-alls have no single concrete path
                yield path


PATHS = sorted(set(all_paths()))


def test_the_walk_finds_the_urls():
    assert {"/accounts/brokers/", "/accounts/api-keys/1/revoke/", "/api/v1/me", "/login/"} <= set(PATHS)


@pytest.mark.parametrize("path", [p for p in PATHS if p not in PUBLIC])
@pytest.mark.parametrize("method", ["get", "post"])
def test_anonymous_is_sent_to_login_or_refused(client, db, path, method):
    response = getattr(client, method)(path)
    if path.startswith("/api/"):
        assert response.status_code in (401, 405), (path, response.status_code)
    elif path == "/metrics":
        # For Prometheus, not people: a bearer token (or a staff session), else 401.
        assert response.status_code in (401, 405), (path, response.status_code)
    elif path.startswith("/hooks/"):
        # Webhooks carry their own secret instead of a session: without it, refused.
        assert response.status_code in (400, 403, 405), (path, response.status_code)
    else:
        assert response.status_code in (302, 405), (path, response.status_code)
        if response.status_code == 302:
            assert response.url.startswith(("/login/", "/admin/login/")), (path, response.url)
