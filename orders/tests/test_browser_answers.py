"""The order pages in a browser (Debian's Chromium, against a live server on the test database):
what the trader sees when an htmx request fails, which only a browser shows."""

import os
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from orders.tests.factories import place

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no browser at {CHROMIUM}")


@pytest.fixture(params=["orders:book", "portfolio:dashboard"])
def book(request, live_server, client, trader, account):
    """A page with the trader's order rows (the book, the dashboard's open orders) and one resting
    order, open in Chromium: (page, order)."""
    order = place(trader, account, order_type="LIMIT", price="1400")
    client.force_login(trader)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM)
        context = browser.new_context(base_url=live_server.url)
        context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}])
        page = context.new_page()
        page.on("dialog", lambda dialog: dialog.accept())  # the Cancel's confirm
        page.goto(reverse(request.param))
        yield page, order
        browser.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "answer, said",
    [
        (lambda route: route.fulfill(status=500, body="<h1>Server Error (500)</h1>"), "answered an error (500)"),
        (lambda route: route.fulfill(status=502, body="Bad Gateway"), "answered an error (502)"),
        (lambda route: route.abort(), "could not be reached"),
    ],
)
def test_a_cancel_the_server_fails_or_never_gets_says_so_instead_of_nothing(book, answer, said):
    """Clicking Cancel in the book when the server answered 5xx (a proxy's 502 in a restart) or could
    not be reached changed nothing on the page: the order stayed Open with no word, as if the cancel
    were on its way."""
    page, order = book
    page.route("**/cancel/", answer)
    page.locator(f"#order-{order.pk} button", has_text="Cancel").click()
    notice = page.locator("#notices .notice-error")
    playwright.expect(notice).to_contain_text(said)
    playwright.expect(notice).to_contain_text("may not have been done")
    playwright.expect(page.locator(f"#order-{order.pk}")).to_contain_text("Open")
