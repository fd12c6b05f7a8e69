"""The web process restarts (a deploy, a crash) while a trader has the order book and an order's page open:
their websockets drop and reconnect by themselves, and what changed meanwhile (a fill whose push went to no
page) shows without a reload."""

from decimal import Decimal

from playwright.sync_api import expect

from e2e.steps import (
    assert_not_reloaded,
    connect_paper_account,
    log_in,
    mark_page,
    move_market,
    paper_quote,
    place_from_ticket,
    price_off_market,
    wait_for_websocket,
)

# An instrument no other journey moves.
SYMBOL = "KOTAKBANK"


def test_book_and_order_page_catch_up_after_the_websocket_reconnects(stack, context, page, trader):
    log_in(page, trader)
    connect_paper_account(page, "Reconnect")
    quote = paper_quote(stack, SYMBOL)
    limit = price_off_market(quote, "-0.03")
    order_id = place_from_ticket(
        page, account="Reconnect", symbol=SYMBOL, side="BUY", quantity=1, order_type="LIMIT", price=limit
    )

    book = context.new_page()
    book.goto("/orders/")
    row = book.locator(f"#order-{order_id}")
    expect(row.locator(".badge.status")).to_have_text("Open")
    wait_for_websocket(book)
    mark_page(book)
    detail = page
    detail.goto(f"/orders/{order_id}/")
    expect(detail.locator("#order-fields .badge.status")).to_have_text("Open")
    wait_for_websocket(detail)
    mark_page(detail)

    # However many tries failed while the server was down, the next comes within 5 s of the last (htmx's
    # default waits up to 2^n s after the n-th: a page could stay without pushes for a minute).
    waits = book.evaluate("() => [0, 3, 6, 20].map((n) => htmx.config.wsReconnectDelay(n))")
    assert all(0 < wait <= 5000 for wait in waits), waits

    # The web process goes down; the order fills while no page is connected (its push reaches nobody).
    stack.stop("web")
    move_market(stack, SYMBOL, limit - 5 * Decimal(quote["tick"]))
    stack.start("web")
    stack.wait_ready()

    # The pages reconnect by themselves and show the order as it now is.
    wait_for_websocket(book)
    wait_for_websocket(detail)
    expect(row.locator(".badge.status")).to_have_text("Filled")
    expect(row).to_contain_text("1/1")
    expect(row.get_by_role("link", name="Modify")).to_have_count(0)
    expect(detail.locator("#order-summary .badge.status")).to_have_text("Filled")
    expect(detail.locator("#order-fields .badge.status")).to_have_text("Filled")
    expect(detail.locator("#modify")).to_have_count(0)
    assert_not_reloaded(book)
    assert_not_reloaded(detail)
