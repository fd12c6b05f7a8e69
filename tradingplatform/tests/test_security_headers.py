"""The response headers a browser enforces: the Content-Security-Policy and the templates it allows."""

import json
import re
from pathlib import Path

import pytest
from django.conf import settings

UNSAFE = ("'unsafe-inline'", "'unsafe-eval'", "*", "data:", "http:", "https:")


def policy_of(response) -> dict[str, list[str]]:
    header = response.headers.get("Content-Security-Policy", "")
    directives = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0]] = words[1:]
    return directives


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/login/", "/api/v1/orders", "/no-such-page/"])
def test_every_answer_carries_a_strict_content_security_policy(client, path):
    policy = policy_of(client.get(path))
    assert policy.get("default-src") == ["'self'"], f"no strict Content-Security-Policy on {path}: {policy}"
    for directive in ("script-src", "style-src", "connect-src"):
        assert policy.get(directive) == ["'self'"], f"{directive} is not 'self' alone: {policy}"
    assert policy.get("object-src") == ["'none'"]
    assert policy.get("base-uri") == ["'none'"]
    assert policy.get("frame-ancestors") == ["'none'"]
    assert policy.get("form-action") == ["'self'", "https://kite.zerodha.com"]  # connecting a Kite account
    for directive, sources in policy.items():
        if directive != "img-src":  # the favicon is an empty data: URL
            assert not set(sources) & set(UNSAFE), f"{directive} allows {sources}"


@pytest.mark.django_db
def test_htmx_is_told_not_to_inject_styles_or_evaluate_code(client):
    """htmx adds a <style> for its indicators and evaluates hx-on/js: code unless configured not to;
    both would be refused by the policy (a console error on every page)."""
    html = client.get("/login/").content.decode()
    found = re.search(r"<meta name=\"htmx-config\" content='([^']*)'", html)
    assert found, "no htmx-config meta in the base layout"
    config = json.loads(found.group(1))
    assert config.get("includeIndicatorStyles") is False and config.get("allowEval") is False, config


INLINE = [
    (re.compile(r"<script(?![^>]*\ssrc=)[^>]*>", re.IGNORECASE), "an inline <script>"),
    (re.compile(r"<style[\s>]", re.IGNORECASE), "a <style> element"),
    (re.compile(r"\sstyle\s*=", re.IGNORECASE), "a style attribute"),
    (re.compile(r"\son[a-z]+\s*=", re.IGNORECASE), "an on* handler"),
    (re.compile(r"javascript:", re.IGNORECASE), "a javascript: URL"),
]


def test_no_template_holds_code_or_styles_the_policy_refuses():
    """script-src and style-src are 'self': code and styles live in static files."""
    offenders = []
    for path in sorted(Path(settings.BASE_DIR).glob("**/templates/**/*.html")):
        if ".venv" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, what in INLINE:
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(settings.BASE_DIR)}:{number} has {what}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.django_db
def test_the_api_docs_page_loads_its_code_from_this_site(client):
    """Swagger UI from a CDN with an inline script would be refused by the policy (a blank page)."""
    html = client.get("/api/v1/docs").content.decode()
    scripts = re.findall(r"<script[^>]*>", html)
    assert scripts, html
    for tag in scripts:
        source = re.search(r'\ssrc="([^"]*)"', tag)
        assert (source and source.group(1).startswith("/static/")) or 'type="application/json"' in tag, tag


def _kept_by_no_cache(response) -> bool:
    words = {word.strip() for word in response.headers.get("Cache-Control", "").split(",")}
    return {"no-store", "private"} <= words


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/dashboard/", "/orders/", "/orders/new/"])
def test_a_signed_in_traders_pages_are_kept_by_no_cache(trader_client, path):
    """After signing out on a shared computer, Back must not show the trader's pages from the
    browser's cache to the next person."""
    response = trader_client.get(path)
    assert response.status_code == 200, path
    assert _kept_by_no_cache(response), f"{path}: Cache-Control {response.headers.get('Cache-Control')!r}"


@pytest.mark.django_db
def test_api_answers_are_kept_by_no_cache(client, trader):
    from accounts import services as account_services

    _, secret = account_services.api_key_create(owner=trader, name="bot")
    listed = client.get("/api/v1/orders", HTTP_AUTHORIZATION=f"Bearer {secret}")
    refused = client.get("/api/v1/orders")
    assert (listed.status_code, refused.status_code) == (200, 401)
    assert _kept_by_no_cache(listed) and _kept_by_no_cache(refused)


@pytest.mark.django_db
def test_static_files_keep_their_caching(trader_client):
    static = trader_client.get(settings.STATIC_URL + "js/pushes.js")
    assert static.status_code == 200
    assert "no-store" not in static.headers.get("Cache-Control", "")
