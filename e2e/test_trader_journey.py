"""A new trader, from sign-in to a filled LIMIT order, modified inline on the order book, seen filling live on
the order book, its own page and the dashboard."""

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
    screenshot,
    wait_for_websocket,
)


def test_new_trader_sees_limit_order_rest_then_fill_live(stack, context, page, trader):
    # Every page gets every push; a page takes only the pieces it shows, with no error for the rest.
    console_errors = []
    context.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    log_in(page, trader)
    connect_paper_account(page, "Paper main")

    # A BUY LIMIT 3 % under the market rests on the exchange's book.
    quote = paper_quote(stack, "INFY")
    limit = price_off_market(quote, "-0.03")
    order_id = place_from_ticket(
        page, account="Paper main", symbol="INFY", side="BUY", quantity=1, order_type="LIMIT", price=limit
    )

    book = page
    book.goto("/orders/")
    row = book.locator(f"#order-{order_id}")
    expect(row.locator(".badge.status")).to_have_text("Open")
    expect(row).to_contain_text("0/1")
    wait_for_websocket(book)
    mark_page(book)
    screenshot(book, "order-book-open")

    # Modified inline on the book: a tick lower, without leaving the page.
    limit -= Decimal(quote["tick"])
    row.get_by_role("link", name="Modify").click()
    # The inline form fits the order type as the ticket does: a LIMIT takes a price, no trigger.
    expect(row.locator("input[name=trigger_price]")).to_be_hidden()
    row.locator("input[name=price]").fill(f"{limit:.2f}")
    screenshot(book, "order-book-modify")
    row.get_by_role("button", name="Save").click()
    expect(book.locator("#notices")).to_contain_text("Modified")
    expect(row.locator("[data-label=Price]")).to_have_text(f"{limit:.2f}")
    expect(row.locator(".badge.status")).to_have_text("Open")

    detail = context.new_page()
    detail.goto(f"/orders/{order_id}/")
    wait_for_websocket(detail)
    expect(detail.locator("#modify")).to_be_visible()
    mark_page(detail)

    dashboard = context.new_page()
    dashboard.goto("/dashboard/")
    wait_for_websocket(dashboard)
    expect(dashboard.locator("#positions")).to_contain_text("No open positions")
    expect(dashboard.locator("#pnl-total")).to_have_text("0.00")
    expect(dashboard.locator("#open-orders")).to_contain_text("INFY")
    mark_page(dashboard)

    # The market falls through the limit: the order fills at its price.
    move_market(stack, "INFY", limit - 5 * Decimal(quote["tick"]))

    expect(row.locator(".badge.status")).to_have_text("Filled")
    expect(row).to_contain_text("1/1")
    expect(row.locator("[data-label=Avg]")).to_have_text(f"{limit:.2f}")

    # The order's own page follows: its details and timeline say filled, and it offers no modify.
    expect(detail.locator("#order-fields .badge.status")).to_have_text("Filled")
    expect(detail.locator("#timeline")).to_contain_text("filled")
    expect(detail.locator("#modify")).to_have_count(0)

    position = dashboard.locator("#positions tbody tr", has_text="INFY")
    expect(position.locator("[data-label='Net qty']")).to_have_text("1")
    expect(position.locator("[data-label=Avg]")).to_have_text(f"{limit:.2f}")
    expect(dashboard.locator("#pnl-total")).not_to_have_text("0.00")
    expect(dashboard.locator("#recent-trades")).to_contain_text("INFY")
    expect(dashboard.locator("#open-orders")).not_to_contain_text("INFY")

    assert_not_reloaded(book)
    assert_not_reloaded(detail)
    assert_not_reloaded(dashboard)
    assert console_errors == []
    screenshot(dashboard, "dashboard")
    screenshot(book, "order-book")
