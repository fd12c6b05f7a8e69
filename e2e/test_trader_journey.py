"""A new trader, from sign-in to a filled LIMIT order seen live on the order book and dashboard."""

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

    position = dashboard.locator("#positions tbody tr", has_text="INFY")
    expect(position.locator("[data-label='Net qty']")).to_have_text("1")
    expect(position.locator("[data-label=Avg]")).to_have_text(f"{limit:.2f}")
    expect(dashboard.locator("#pnl-total")).not_to_have_text("0.00")
    expect(dashboard.locator("#recent-trades")).to_contain_text("INFY")
    expect(dashboard.locator("#open-orders")).not_to_contain_text("INFY")

    assert_not_reloaded(book)
    assert_not_reloaded(dashboard)
    screenshot(dashboard, "dashboard")
    screenshot(book, "order-book")
