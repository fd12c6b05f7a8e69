"""The order pages in a browser (Debian's Chromium, against a live server on the test database):
what the trader sees when an htmx request fails, which only a browser shows."""

import os
from pathlib import Path

import pytest
from django.urls import reverse

from orders.tests.factories import place

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no browser at {CHROMIUM}")


@pytest.fixture
def resting(trader, account):
    return place(trader, account, order_type="LIMIT", price="1400")


@pytest.fixture(params=["orders:book", "portfolio:dashboard"])
def book(request, resting, browser_page):
    """A page with the trader's order rows (the book, the dashboard's open orders) and one resting
    order, open in Chromium: (page, order)."""
    page, _ = browser_page
    page.answer = True  # the Cancel's confirm
    page.goto(reverse(request.param))
    return page, resting


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


@pytest.mark.django_db(transaction=True)
def test_a_new_webhook_secret_is_made_only_once_the_trader_says_yes(trader, account, monkeypatch, browser_page):
    """One click on "New secret" ended the live webhook secret at once: every alert refused until
    the trader put the new one in TradingView. It asks first; "no" changes nothing."""
    from orders import sources

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")  # the ORM beside the browser's driver
    strategy, _ = sources.strategy_save(owner=trader, name="Swing", account_ids=[account.pk])
    before = strategy.webhook_secret_hash
    page, shown = browser_page
    page.goto(reverse("sources:strategy_detail", args=[strategy.pk]))

    page.answer = False
    page.get_by_role("button", name="New secret").click()
    page.wait_for_timeout(300)
    strategy.refresh_from_db()
    assert len(shown) == 1 and "stops working at once" in shown[0], shown
    assert strategy.webhook_secret_hash == before  # nothing was sent

    page.answer = True
    with page.expect_navigation():
        page.get_by_role("button", name="New secret").click()
    strategy.refresh_from_db()
    assert len(shown) == 2 and strategy.webhook_secret_hash != before
