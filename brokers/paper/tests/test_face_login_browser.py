"""The face's Kite-style login page in a browser (Debian's Chromium): what its security policy lets
the login form do, which only a browser enforces."""

import os
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.hashers import make_password

from brokers.paper.models import PaperClient

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
FACE_URLCONF = "brokers.paper.face_urls"


def form_action(response) -> list[str]:
    for directive in response["Content-Security-Policy"].split(";"):
        words = directive.split()
        if words and words[0] == "form-action":
            return words[1:]
    return []


@pytest.mark.django_db
def test_the_login_page_lets_its_form_end_at_the_apps_redirect_url_only(client, settings):
    settings.ROOT_URLCONF = FACE_URLCONF
    exchange_client = PaperClient.objects.create(
        user_id="AB1234", password=make_password("pw-123456"), redirect_url="http://platform.example:8000/cb/"
    )
    page = client.get("/connect/login", {"api_key": exchange_client.api_key, "v": "3"})
    assert page.status_code == 200
    assert "http://platform.example:8000" in form_action(page)
    assert set(form_action(page)) <= {"'self'", "https://kite.zerodha.com", "http://platform.example:8000"}
    wrong = client.post(
        f"/connect/login?api_key={exchange_client.api_key}",
        {"api_key": exchange_client.api_key, "user_id": "AB1234", "password": "wrong"},
    )
    assert wrong.status_code == 400 and "http://platform.example:8000" in form_action(wrong)  # tried again
    # An unknown app: the site's own policy, nothing added.
    unknown = client.get("/connect/login", {"api_key": "nope", "v": "3"})
    assert form_action(unknown) == ["'self'", "https://kite.zerodha.com"]
    for directive in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"):
        assert directive in page["Content-Security-Policy"]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no browser at {CHROMIUM}")
@pytest.mark.django_db(transaction=True)
def test_signing_in_on_the_login_page_reaches_the_apps_redirect_url(face_url, live_server):
    """A trader connecting a kite account to the paper exchange signed in on its login page and
    stayed there, with no word: the page's form-action ('self') refused the redirect to the
    platform's callback, another origin."""
    playwright = pytest.importorskip("playwright.sync_api")
    callback = f"{live_server.url}/healthz"
    exchange_client = PaperClient.objects.create(
        user_id="AB1234", password=make_password("pw-123456"), redirect_url=callback
    )
    refused = []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page()
        page.on("console", lambda message: refused.append(message.text) if "Content Security" in message.text else None)
        page.goto(f"{face_url}/connect/login?api_key={exchange_client.api_key}&v=3")
        page.fill("#user_id", "AB1234")
        page.fill("#password", "pw-123456")
        with page.expect_navigation(url=f"{callback}?**", timeout=10_000):
            page.click("button[type=submit]")
        assert "request_token=" in page.url and "status=success" in page.url
        browser.close()
    assert not refused, refused
    assert settings.CONTENT_SECURITY_POLICY  # the policy was on, and let the redirect go
