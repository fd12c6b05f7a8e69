"""The API keys page in a browser (Debian's Chromium, against a live server on the test database)."""

import pytest
from django.urls import reverse

from accounts.models import ApiKey


@pytest.mark.django_db(transaction=True)
def test_reloading_the_page_that_shows_a_new_key_makes_no_second_key(trader, monkeypatch, browser_page):
    """The page showing a new key's secret answered the POST that made it: a reload (F5, or Back to
    it) sent the form again and made a second live key, one the trader never saw nor revoked."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")  # the ORM beside the browser's driver
    page, _ = browser_page
    page.goto(reverse("accounts:api_keys"))
    page.fill("[name=name]", "bot")
    page.get_by_role("button", name="Create key").click()
    page.wait_for_selector("#api-key-secret")
    assert ApiKey.objects.filter(owner=trader).count() == 1

    page.reload()
    page.wait_for_selector("#api-keys")
    assert ApiKey.objects.filter(owner=trader).count() == 1
    assert page.locator("#api-key-secret").count() == 0  # the secret is not shown again either
