"""A strategy's signal: the entry fills, stop-loss and take-profit appear, the market rises
through the take-profit, which exits, and the stop-loss is cancelled (one cancels the other)."""

import json
import re
import secrets
import time
import urllib.request
from decimal import Decimal

from playwright.sync_api import expect

from e2e.steps import (
    assert_not_reloaded,
    book_row,
    connect_paper_account,
    log_in,
    mark_page,
    move_market,
    paper_quote,
    wait_for_websocket,
)

LIVE = re.compile("^(Submitted|Open)$")


def send_alert(url: str, secret: str, **fields) -> dict:
    """POST a TradingView-style alert to the strategy's webhook, as TradingView would."""
    body = {"secret": secret, "id": secrets.token_hex(8), "timestamp": int(time.time()), **fields}
    request = urllib.request.Request(  # noqa: S310  (the stack's own http URL)
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        assert response.status == 201
        return json.loads(response.read())


def test_strategy_take_profit_exits_and_cancels_the_stop_loss(stack, context, page, trader):
    log_in(page, trader)
    connect_paper_account(page, "Swing")

    page.goto("/strategies/new/")
    page.locator("#id_name").fill("Breakout")
    page.locator("#field-accounts label", has_text="Swing").click()
    page.locator("#id_stop_loss").fill("1")
    page.locator("#id_stop_loss_unit").select_option("percent")
    page.locator("#id_take_profit").fill("1")
    page.locator("#id_take_profit_unit").select_option("percent")
    page.get_by_role("button", name="Save").click()
    secret = page.locator("#webhook-secret .secret-value").inner_text().strip()
    webhook_url = page.locator("#webhook-url").inner_text().strip()
    assert secret and webhook_url.endswith("/")
    # Shown once: the address is the strategy's own, and a reload shows it without the secret
    # (it does not send the form again).
    expect(page).to_have_url(re.compile(r"/strategies/\d+/$"))
    page.reload()
    expect(page.get_by_role("heading", name="Breakout", level=1)).to_be_visible()
    expect(page.locator("#webhook-secret")).to_have_count(0)

    book = context.new_page()
    book.goto("/orders/")
    wait_for_websocket(book)
    mark_page(book)

    result = send_alert(webhook_url, secret, symbol="NSE:RELIANCE", side="BUY", quantity=1)
    assert [row["status"] for row in result["results"]] in (["SUBMITTED"], ["FILLED"]), result

    # The MARKET entry fills on arrival; the monitoring fast path then places both exits.
    entry = book_row(book, "RELIANCE", "BUY", "MARKET")
    expect(entry.locator(".badge.status")).to_have_text("Filled")
    stop_loss = book_row(book, "RELIANCE", "SELL", "SL-M")
    take_profit = book_row(book, "RELIANCE", "SELL", "LIMIT")
    expect(stop_loss.locator(".badge.status")).to_have_text(LIVE)
    expect(take_profit.locator(".badge.status")).to_have_text(LIVE)
    fill_price = Decimal(entry.locator("[data-label=Avg]").inner_text())
    take_profit_price = Decimal(take_profit.locator("[data-label=Price]").inner_text())
    stop_trigger = Decimal(stop_loss.locator("[data-label=Price]").inner_text().lstrip("@"))
    assert stop_trigger < fill_price < take_profit_price

    dashboard = context.new_page()
    dashboard.goto("/dashboard/")
    wait_for_websocket(dashboard)
    expect(dashboard.locator("#positions tbody tr", has_text="RELIANCE")).to_be_visible()
    mark_page(dashboard)

    # The market rises through the take-profit: it exits, and the stop-loss is cancelled.
    tick = Decimal(paper_quote(stack, "RELIANCE")["tick"])
    move_market(stack, "RELIANCE", take_profit_price + 5 * tick)
    expect(take_profit.locator(".badge.status")).to_have_text("Filled")
    expect(stop_loss.locator(".badge.status")).to_have_text("Cancelled")
    expect(entry.locator(".badge.status")).to_have_text("Filled")
    expect(dashboard.locator("#positions")).not_to_contain_text("RELIANCE")
    expect(dashboard.locator("#pnl-realized .num")).to_have_class(re.compile(r"\bup\b"))

    assert_not_reloaded(book)
    assert_not_reloaded(dashboard)
