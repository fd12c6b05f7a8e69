"""The dashboard, order book and ticket at desktop and phone width (375 px): screenshots for
review (var/e2e-screenshots/, a CI artifact) and a page that fits the phone's width."""

from playwright.sync_api import expect

from e2e.steps import (
    DESKTOP,
    PHONE,
    connect_paper_account,
    log_in,
    paper_quote,
    place_from_ticket,
    price_off_market,
    screenshot,
)

PAGES = {
    "dashboard": ("/dashboard/", ["#pnl-total", "#positions", "#open-orders", "main a.button:has-text('New order')"]),
    "order-book": ("/orders/", ["#orders", "form.filters button[type=submit]", "main a.button:has-text('New order')"]),
    "ticket": ("/orders/new/", ["#id_account", "#instrument-search", "#id_quantity", "button:has-text('Place order')"]),
}


def overflow(page) -> int:
    """How far the document is wider than the viewport (0 when nothing scrolls sideways)."""
    return page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")


def test_pages_fit_a_phone_and_show_their_controls(stack, page, trader):
    # A trader with a position, a filled order and an open order, so every page has rows.
    log_in(page, trader)
    connect_paper_account(page, "Phone desk")
    place_from_ticket(page, account="Phone desk", symbol="SBIN", side="BUY", quantity=5)
    limit = price_off_market(paper_quote(stack, "ITC"), "-0.05")
    place_from_ticket(page, account="Phone desk", symbol="ITC", side="BUY", order_type="LIMIT", price=limit)
    # And one the exchange refuses, whose long reason must not push the book's actions out of view.
    place_from_ticket(page, account="Phone desk", symbol="SBIN", side="BUY", quantity=5_000_000, notice="was rejected")

    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        for name, (path, controls) in PAGES.items():
            page.goto(path)
            if name == "dashboard":
                expect(page.locator("#positions")).to_contain_text("SBIN")
            if name == "order-book":
                expect(page.locator("#order-rows")).to_contain_text("ITC")
                expect(page.locator("#order-rows")).to_contain_text("Insufficient funds")
                if width == "desktop":  # the book fits: its actions are in view without scrolling it
                    wrap = page.locator(".table-wrap").first
                    assert wrap.evaluate("e => e.scrollWidth - e.clientWidth") <= 0, "the book scrolls sideways"
                    expect(page.locator("#order-rows button", has_text="Cancel").first).to_be_in_viewport()
            if name == "ticket":
                page.locator("#instrument-search").fill("SBIN")
                page.locator("#instrument-options .option", has_text="SBIN").first.click()
                expect(page.locator("#chosen-instrument")).to_contain_text("SBIN")
            for selector in controls:
                control = page.locator(selector).first
                expect(control).to_be_visible()
                # In the page in one step: a live push may swap the element between two calls.
                left, right = control.evaluate("e => [e.getBoundingClientRect().left, e.getBoundingClientRect().right]")
                assert left >= 0 and right <= viewport["width"] + 1, f"{selector} on {name} spans {left}-{right} px"
            assert overflow(page) <= 0, f"{name} scrolls sideways by {overflow(page)} px at {width} width"
            screenshot(page, f"{name}-{width}")

    # At phone width the navigation folds behind its menu button and opens on a tap.
    expect(page.locator("nav.nav a", has_text="Orders")).to_be_hidden()
    page.locator(".nav-toggle-label").click()
    expect(page.locator("nav.nav a", has_text="Orders")).to_be_visible()
    assert overflow(page) <= 0
    screenshot(page, "menu-phone")
