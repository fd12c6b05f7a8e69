"""Order rows pushed over the websocket, in a browser (Debian's Chromium, against a live server on the
test database, its websocket replaced by one the test pushes through): which push a page keeps."""

import os
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from orders import services
from orders.models import Order
from orders.tests.factories import broker_state, place

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no browser at {CHROMIUM}"),
    pytest.mark.django_db(transaction=True),
]

# The page's websocket: opens at once, and takes what the test hands it as the server's messages.
FAKE_SOCKET = """
window.pushedSockets = [];
window.WebSocket = class extends EventTarget {
  constructor(url) {
    super();
    this.url = url; this.readyState = 0; this.OPEN = 1;
    window.pushedSockets.push(this);
    setTimeout(() => { this.readyState = 1; if (this.onopen) this.onopen(new Event("open")); }, 0);
  }
  send() {}
  close() { this.readyState = 3; }
};
"""
PUSH = "html => window.pushedSockets.at(-1).dispatchEvent(new MessageEvent('message', {data: html}))"


@pytest.fixture
def in_browser(live_server, client, trader):
    """Opens a page of the trader's in Chromium, once the test has written what it shows (the
    browser's driver runs an event loop in this thread, where the ORM refuses to run)."""
    client.force_login(trader)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    driver = None

    def open_page(url):
        nonlocal driver
        driver = playwright.sync_playwright().start()
        browser = driver.chromium.launch(executable_path=CHROMIUM)
        context = browser.new_context(base_url=live_server.url)
        context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}])
        context.add_init_script(FAKE_SOCKET)
        page = context.new_page()
        page.goto(url)
        page.wait_for_load_state("networkidle")  # its socket opened and the page read itself again
        return page

    yield open_page
    if driver is not None:
        driver.stop()


@pytest.fixture(params=["orders:book", "portfolio:dashboard"])
def rows_page(request, in_browser):
    """Opens a page with the trader's order rows (the book, the dashboard's open orders)."""
    return lambda: in_browser(reverse(request.param))


@pytest.mark.parametrize(
    "change, shown",
    [
        ({"status": Order.Status.CANCELLED}, "Cancelled"),
        ({"status": Order.Status.PARTIALLY_FILLED, "filled_quantity": 1, "average_price": Decimal("1400")}, "1/2"),
    ],
)
def test_a_pushed_fill_or_final_state_is_shown_even_when_its_version_reads_older(
    rows_page, trader, account, change, shown
):
    """An order's row written on a host whose clock is a little ahead (the web's modify), then its
    cancel or fill written on another (a worker's): the push carried a lower version than the row
    shown, and the page kept showing the order open and unfilled, although an order never leaves a
    final state nor fills less."""
    order = place(trader, account, order_type="LIMIT", price="1400", quantity=2)
    ahead = timezone.now() + timedelta(seconds=2)
    Order.objects.filter(pk=order.pk).update(updated_at=ahead)
    for name, value in {**change, "updated_at": ahead - timedelta(milliseconds=50)}.items():
        setattr(order, name, value)
    pushed = render_to_string("orders/partials/order_push.html", {"order": order})

    page = rows_page()
    row = page.locator(f"#order-{order.pk}")
    playwright.expect(row).to_contain_text("Open")
    page.evaluate(PUSH, pushed)
    playwright.expect(row).to_contain_text(shown)


BOOK, DETAIL = (lambda order: reverse("orders:book")), (lambda order: reverse("orders:detail", args=[order.pk]))


@pytest.mark.parametrize("page_of", [BOOK, DETAIL], ids=["book", "detail"])
def test_an_order_failed_then_found_at_its_broker_is_shown_open_when_pushed(
    in_browser, trader, account, monkeypatch, page_of
):
    """An order closed as FAILED (its answer lost, a sync did not find it in time) and later found
    at its broker moves on to OPEN: its push was dropped as if it left a final state, so the page
    kept saying Failed for an order resting at the broker (placed again by hand, it fills twice)."""
    order = place(trader, account, order_type="LIMIT", price="1400")
    assert order.status == Order.Status.OPEN
    Order.objects.filter(pk=order.pk).update(status=Order.Status.FAILED, reject_reason="lost answer")
    order.refresh_from_db()
    page = in_browser(page_of(order))
    row = page.locator(f"#order-{order.pk}")
    playwright.expect(row).to_contain_text("Failed")

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")  # the ORM beside the browser's driver
    state = broker_state(order)  # the broker's word: resting there all along
    assert services.order_apply_broker_state(order, state, cause="found at the broker")
    assert order.status == Order.Status.OPEN
    page.evaluate(PUSH, render_to_string("orders/partials/order_push.html", {"order": order}))
    playwright.expect(row).to_contain_text("Open")


@pytest.mark.parametrize("where", ["orders:book", "portfolio:dashboard"])
def test_a_new_order_refused_at_once_goes_on_top_of_the_book_and_not_into_open_orders(
    in_browser, trader, account, where
):
    """The dashboard's open orders took every new order pushed, as the book does: an order the broker
    refused at once sat under "Open orders" as Rejected (and took their "No open orders." line away)
    until the dashboard was next pushed, a minute later or not at all."""
    order = place(trader, account, quantity=5_000_000)
    assert order.status == Order.Status.REJECTED
    pushed = render_to_string("orders/partials/order_push.html", {"order": order, "created": True})

    page = in_browser(reverse(where))
    page.evaluate(PUSH, pushed)
    page.evaluate(PUSH, '<div id="notices" hx-swap-oob="beforeend"><i id="seen"></i></div>')  # handled after it
    playwright.expect(page.locator("#seen")).to_have_count(1)
    if where == "orders:book":
        playwright.expect(page.locator("#order-rows tr").first).to_have_id(f"order-{order.pk}")
    else:
        playwright.expect(page.locator(f"#order-{order.pk}")).to_have_count(0)
        playwright.expect(page.locator("#open-orders")).to_contain_text("No open orders.")


@pytest.mark.parametrize("code", [1000, 1001, 1006])
def test_a_page_whose_socket_the_server_closes_connects_again_and_catches_up(
    in_browser, trader, account, monkeypatch, code
):
    """daphne closes every websocket a day after it opened (its websocket_timeout, a normal close: 1000),
    and a server or proxy going away closes with 1001. htmx's ws extension connects again only after an
    abnormal close (a dropped connection: 1006), so a trading screen left open overnight stopped getting
    pushes, showing an order cancelled meanwhile as Open, with no sign of it."""
    order = place(trader, account, order_type="LIMIT", price="1400")
    page = in_browser(reverse("orders:book"))
    row = page.locator(f"#order-{order.pk}")
    playwright.expect(row).to_contain_text("Open")

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")  # the ORM beside the browser's driver
    Order.objects.filter(pk=order.pk).update(status=Order.Status.CANCELLED, updated_at=timezone.now())
    page.evaluate(f"window.pushedSockets.at(-1).onclose(new CloseEvent('close', {{code: {code}, wasClean: true}}))")

    deadline = time.monotonic() + 15
    while page.evaluate("window.pushedSockets.length") < 2:  # wait_for_function: refused by the CSP
        assert time.monotonic() < deadline, "the page did not connect again"
        page.wait_for_timeout(100)
    playwright.expect(row).to_contain_text("Cancelled")  # read again once connected


@pytest.mark.parametrize("where", ["orders:book", "portfolio:dashboard"])
def test_a_new_orders_push_arriving_after_its_fills_push_does_not_show_it_open(
    in_browser, trader, account, monkeypatch, where
):
    """A new order's push (sent by the process that placed it, after its commit) and its fill's (sent by
    the process that recorded the fill) come from different processes and may arrive the other way
    round. The fill's row had no row to replace yet and was dropped; the new order's row then went in
    as it was placed: the page showed a filled order as Open until it was loaded again."""
    page = in_browser(reverse(where))
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")  # the ORM beside the browser's driver
    order = place(trader, account, order_type="LIMIT", price="1400")
    assert order.status == Order.Status.OPEN
    created = render_to_string("orders/partials/order_push.html", {"order": order, "created": True})
    order.status, order.filled_quantity, order.average_price = Order.Status.FILLED, 1, Decimal("1400")
    order.updated_at += timedelta(milliseconds=5)
    filled = render_to_string("orders/partials/order_push.html", {"order": order})

    page.evaluate(PUSH, filled)
    page.evaluate(PUSH, created)
    page.evaluate(PUSH, '<div id="notices" hx-swap-oob="beforeend"><i id="seen"></i></div>')  # handled after it
    playwright.expect(page.locator("#seen")).to_have_count(1)
    playwright.expect(page.locator(f"#order-{order.pk} .badge")).to_have_text("Filled")


def test_a_page_whose_socket_is_closed_for_its_sign_in_says_it_is_no_longer_live(in_browser, trader, account):
    """A password change closes every socket of the user (4401), the other tabs of the browser that made
    it too, and so do a sign-out and an expired session: the page is not connected again (its session
    is gone), and it went on showing its orders and PnL as if live, frozen, with no sign of it."""
    order = place(trader, account, order_type="LIMIT", price="1400")
    page = in_browser(reverse("portfolio:dashboard"))
    playwright.expect(page.locator(f"#order-{order.pk}")).to_contain_text("Open")
    playwright.expect(page.locator("#notices")).not_to_contain_text("Live updates stopped")

    page.evaluate("window.pushedSockets.at(-1).onclose(new CloseEvent('close', {code: 4401, wasClean: true}))")

    playwright.expect(page.locator("#notices")).to_contain_text("Live updates stopped")
    assert page.evaluate("window.pushedSockets.length") == 1  # not connected again


def test_a_dashboard_push_read_before_a_new_order_does_not_take_that_order_out_of_open_orders(
    in_browser, trader, account, monkeypatch
):
    """A dashboard push (a fill's, read just before) and a new order's push come from different processes:
    the dashboard's, arriving second, replaced the open orders with what it read, without the new order.
    The order was resting at its broker, and the dashboard said there were no open orders until its next
    push (a monitoring run, a minute later)."""
    from portfolio.selectors import dashboard_of

    page = in_browser(reverse("portfolio:dashboard"))
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")  # the ORM beside the browser's driver
    read_before = render_to_string("portfolio/partials/dashboard_push.html", {"dashboard": dashboard_of(trader)})
    order = place(trader, account, order_type="LIMIT", price="1400")
    assert order.status == Order.Status.OPEN
    created = render_to_string("orders/partials/order_push.html", {"order": order, "created": True})

    page.evaluate(PUSH, created)
    page.evaluate(PUSH, read_before)
    page.evaluate(PUSH, '<div id="notices" hx-swap-oob="beforeend"><i id="seen"></i></div>')  # handled after it
    playwright.expect(page.locator("#seen")).to_have_count(1)
    playwright.expect(page.locator(f"#open-orders #order-{order.pk}")).to_contain_text("Open")
    playwright.expect(page.locator("#open-orders")).not_to_contain_text("No open orders.")


def test_an_orders_page_shows_its_exits_placed_and_closed_since_it_was_opened(in_browser, trader, account, monkeypatch):
    """A strategy's entry fills and its stop-loss and take-profit are placed a moment later; when one
    exits, the other is cancelled. The entry's page, open meanwhile, showed no child orders at all (or
    showed them Open after they had filled or been cancelled) until it was loaded again: it read its
    children again only when the entry's own row changed, and a child's push has no row on it."""
    entry = place(trader, account)
    assert entry.status == Order.Status.FILLED
    page = in_browser(reverse("orders:detail", args=[entry.pk]))
    playwright.expect(page.locator("#order-fields")).to_contain_text("Filled")
    playwright.expect(page.locator("#children")).to_have_count(0)

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")  # the ORM beside the browser's driver
    exit_ = place(
        trader, account, side="SELL", order_type="LIMIT", price="1700", role=Order.Role.TAKE_PROFIT, parent=entry
    )
    assert exit_.status == Order.Status.OPEN
    page.evaluate(PUSH, render_to_string("orders/partials/order_push.html", {"order": exit_, "created": True}))
    children = page.locator("#children")
    playwright.expect(children).to_contain_text(exit_.reference)
    playwright.expect(children).to_contain_text("Open")

    services.order_cancel(order=exit_, actor=trader, cause="test")
    exit_.refresh_from_db()
    assert exit_.status == Order.Status.CANCELLED
    page.evaluate(PUSH, render_to_string("orders/partials/order_push.html", {"order": exit_}))
    playwright.expect(children).to_contain_text("Cancelled")


def test_a_filtered_book_whose_socket_connects_again_shows_what_its_rows_became_meanwhile(
    in_browser, trader, account, monkeypatch
):
    """The book filtered to open orders (the dashboard's "Order book →"): its socket down a moment (a
    server restart), an order on it filled or was cancelled meanwhile. The page read itself again when
    the socket opened, but the order was no longer in the filtered answer, so its row was left as it
    was: the page said Open for an order that was no longer at the broker."""
    order = place(trader, account, order_type="LIMIT", price="1400")
    page = in_browser(reverse("orders:book") + "?status=open&date=all")
    row = page.locator(f"#order-{order.pk}")
    playwright.expect(row).to_contain_text("Open")

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")  # the ORM beside the browser's driver
    services.order_cancel(order=order, actor=trader, cause="test")
    assert Order.objects.get(pk=order.pk).status == Order.Status.CANCELLED
    page.evaluate("window.pushedSockets.at(-1).onclose(new CloseEvent('close', {code: 1006}))")

    deadline = time.monotonic() + 15
    while page.evaluate("window.pushedSockets.length") < 2:  # wait_for_function: refused by the CSP
        assert time.monotonic() < deadline, "the page did not connect again"
        page.wait_for_timeout(100)
    playwright.expect(row).to_contain_text("Cancelled")
