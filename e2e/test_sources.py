"""Orders from the other sources, each seen arriving live in an order book opened beforehand:
a basket across two accounts, a scheduled order due seconds later, and the SDK with a key
created on the API keys page."""

from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from playwright.sync_api import expect
from tpclient import Client

from e2e.steps import (
    assert_not_reloaded,
    book_row,
    choose_account,
    connect_paper_account,
    log_in,
    mark_page,
    paper_quote,
    price_off_market,
    wait_for_websocket,
)


def open_book(context):
    book = context.new_page()
    book.goto("/orders/")
    wait_for_websocket(book)
    mark_page(book)
    return book


def test_basket_places_one_order_per_account(context, page, trader):
    log_in(page, trader)
    connect_paper_account(page, "Desk A")
    connect_paper_account(page, "Desk B")

    page.goto("/baskets/new/")
    page.locator("#id_name").fill("Two desks")
    page.locator("#field-accounts label", has_text="Desk A").click()
    page.locator("#field-accounts label", has_text="Desk B").click()
    item = page.locator("#basket-items tbody tr").first
    item.locator("[name=items-0-instrument]").fill("TCS")
    item.locator("[name=items-0-side]").select_option("BUY")
    item.locator("[name=items-0-quantity]").fill("2")
    item.locator("[name=items-0-order_type]").select_option("MARKET")
    item.locator("[name=items-0-product]").select_option("MIS")
    page.get_by_role("button", name="Add item").click()  # a second row without saving first
    item = page.locator("#basket-items tbody tr").nth(1)
    item.locator("[name=items-1-instrument]").fill("INFY")
    item.locator("[name=items-1-side]").select_option("SELL")
    item.locator("[name=items-1-quantity]").fill("1")
    item.locator("[name=items-1-order_type]").select_option("MARKET")
    item.locator("[name=items-1-product]").select_option("MIS")
    page.get_by_role("button", name="Add item").click()  # an empty row is left out
    page.get_by_role("button", name="Save basket").click()
    expect(page.get_by_role("heading", name="Two desks", level=1)).to_be_visible()

    book = open_book(context)
    page.get_by_role("button", name="Place basket").click()
    results = page.locator("#basket-results tbody tr")
    expect(results).to_have_count(4)
    expect(results.filter(has_text="Desk A").filter(has_text="TCS")).to_have_count(1)
    expect(results.filter(has_text="Desk B").filter(has_text="INFY")).to_have_count(1)

    placed = book_row(book, "TCS", "BUY", "MARKET")
    expect(placed).to_have_count(2)
    expect(placed.filter(has_text="Desk A").locator(".badge.status")).to_have_text("Filled")
    expect(placed.filter(has_text="Desk B").locator(".badge.status")).to_have_text("Filled")
    expect(placed.filter(has_text="Desk A")).to_contain_text("2/2")
    assert_not_reloaded(book)


def test_scheduled_order_fires_seconds_later(context, page, trader):
    log_in(page, trader)
    connect_paper_account(page, "Timer")

    book = open_book(context)
    expect(book_row(book, "WIPRO", "BUY", "MARKET")).to_have_count(0)

    page.goto("/scheduled/")
    form = page.locator("#scheduled-form")
    choose_account(form.locator("#id_account"), "Timer")
    form.locator("#id_instrument").fill("WIPRO")
    form.locator("#id_side").select_option("BUY")
    form.locator("#id_quantity").fill("1")
    form.locator("#id_order_type").select_option("MARKET")
    form.locator("#id_product").select_option("MIS")
    form.locator("#id_recurrence").select_option("once")
    zone = ZoneInfo(form.locator("#id_timezone").input_value())
    due = (datetime.now(zone) + timedelta(seconds=10)).replace(microsecond=0)
    form.locator("#id_run_on").fill(due.date().isoformat())
    form.locator("#id_time_of_day").fill(due.strftime("%H:%M:%S"))
    form.get_by_role("button", name="Schedule").click()
    expect(page.locator("#notices")).to_contain_text("Scheduled #")
    expect(page.locator("#scheduled tbody tr").first.locator("[data-label=Status]")).to_have_text("Active")

    # Beat dispatches due orders every second; the order arrives in the open book by itself.
    fired = book_row(book, "WIPRO", "BUY", "MARKET")
    expect(fired).to_have_count(1)
    expect(fired.locator(".badge.status")).to_have_text("Filled")
    assert datetime.now(zone) >= due
    assert_not_reloaded(book)
    page.reload()
    expect(page.locator("#scheduled tbody tr").first.locator("[data-label=Status]")).to_have_text("Done")


def test_api_key_from_the_page_places_an_order_through_the_sdk(stack, context, page, trader):
    log_in(page, trader)
    connect_paper_account(page, "Algo")

    page.goto("/accounts/api-keys/")
    page.locator("#id_name").fill("my script")
    page.get_by_role("button", name="Create key").click()
    key = page.locator("#api-key-secret").inner_text().strip()
    expect(page.locator("#api-keys")).to_contain_text("my script")

    book = open_book(context)
    client = Client(stack.base_url, key)
    (account,) = client.accounts()
    assert account.label == "Algo"
    limit = price_off_market(paper_quote(stack, "HDFCBANK"), "-0.04")
    order = client.place_order(
        account_id=account.id,
        tradingsymbol="HDFCBANK",
        side="BUY",
        quantity=1,
        order_type="LIMIT",
        price=limit,
        product="MIS",
    )
    assert order.price == Decimal(limit)

    row = book.locator(f"#order-{order.id}")
    expect(row).to_contain_text(order.reference)
    expect(row.locator(".badge.status")).to_have_text("Open")
    expect(row.locator("[data-label=Price]")).to_have_text(f"{limit:.2f}")

    client.cancel_order(order.id)
    expect(row.locator(".badge.status")).to_have_text("Cancelled")
    assert_not_reloaded(book)
