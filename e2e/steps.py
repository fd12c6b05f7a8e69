"""Steps a trader takes in the browser, and the market moves a journey needs, shared by the journeys."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from playwright.sync_api import Locator, Page, expect

from e2e.stack import ROOT, Stack

SCREENSHOTS = ROOT / "var" / "e2e-screenshots"
PASSWORD = "Journey-pass-2026!"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}


@dataclass
class Trader:
    username: str
    password: str
    user_id: int


def log_in(page: Page, trader: Trader) -> None:
    page.goto("/login/")
    page.get_by_label("Username").fill(trader.username)
    page.get_by_label("Password").fill(trader.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Dashboard", level=1)).to_be_visible()


def connect_paper_account(page: Page, label: str) -> int:
    """Add a paper account on the broker accounts page and connect it; returns its id."""
    page.goto("/accounts/brokers/")
    page.get_by_role("link", name="Add account").click()
    page.locator("#id_broker").select_option("paper")
    page.locator("#id_client_id").fill(f"PAPER-{secrets.token_hex(4).upper()}")
    page.locator("#id_label").fill(label)
    page.get_by_role("button", name="Add account").click()
    row = page.locator("#broker-accounts tbody tr", has_text=label)
    expect(row).to_be_visible()
    account_id = int(row.get_attribute("id").removeprefix("broker-account-"))
    row.get_by_role("button", name="Connect").click()
    # "Expiring soon" from 05:00 IST: a session made then ends at 06:00 (Kite's rule).
    expect(page.locator(f"#session-{account_id}")).to_contain_text(re.compile("Connected|Expiring soon"))
    return account_id


def mark_page(page: Page) -> None:
    """Leave a marker in the page's JS state: it survives DOM swaps but not a reload or navigation."""
    page.evaluate("window.__e2eNotReloaded = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__e2eNotReloaded === true"), "the page was reloaded or navigated"


def wait_for_websocket(page: Page) -> None:
    """Until the htmx ws extension's socket is open (live pushes before it would be missed)."""
    page.wait_for_function(
        "() => { const s = document.body['htmx-internal-data']?.webSocket?.socket;"
        " return s && s.readyState === WebSocket.OPEN; }"
    )


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    return path


def paper_quote(stack: Stack, symbol: str, exchange: str = "NSE") -> dict:
    """The paper exchange's current quote of an instrument (last, tick, lot) as strings."""
    return stack.shell_json(
        "import json; from brokers.paper.models import PaperInstrument\n"
        f"i = PaperInstrument.objects.get(exchange={exchange!r}, tradingsymbol={symbol!r})\n"
        "print(json.dumps({'last': str(i.last_price), 'tick': str(i.tick_size), 'lot': i.lot_size}))"
    )


def move_market(stack: Stack, symbol: str, last_price, exchange: str = "NSE") -> None:
    """Move the paper market's price, as a sharp move would; what crosses fills (here, or in the
    beat's next tick, whichever takes the instrument first)."""
    stack.shell(
        "from decimal import Decimal; from brokers.paper import engine; from tradingplatform import background\n"
        f"engine.market_set(exchange={exchange!r}, tradingsymbol={symbol!r}, last_price=Decimal({str(last_price)!r}))\n"
        # The fill's after-commit work (recording it, pushing the dashboard) runs on this
        # process's background threads: let it finish before the shell exits.
        "background.wait_idle()"
    )


def choose_account(select: Locator, label: str) -> None:
    """Choose an account in a select whose options read "<label> (<broker> <client id>)"."""
    select.select_option(select.locator("option", has_text=label).first.get_attribute("value"))


def place_from_ticket(
    page: Page,
    *,
    account: str,
    symbol: str,
    side: str = "BUY",
    quantity: int = 1,
    order_type: str = "MARKET",
    price=None,
    product: str = "MIS",
    notice: str = "Placed",
) -> int:
    """Fill in the order ticket as a trader does (search, choose, fields) and place; returns the order id
    (``notice``: what the page then says, e.g. "was rejected")."""
    page.goto("/orders/new/")
    choose_account(page.locator("#id_account"), account)
    page.locator("#instrument-search").fill(symbol)
    page.locator("#instrument-options .option", has_text=symbol).first.click()
    expect(page.locator("#chosen-instrument")).to_contain_text(symbol)
    page.locator(f"#field-side input[value={side}]").check()
    page.locator("#id_order_type").select_option(order_type)
    page.locator("#id_product").select_option(product)
    page.locator("#id_quantity").fill(str(quantity))
    if price is not None:
        page.locator("#id_price").fill(str(price))
    page.get_by_role("button", name="Place order").click()
    expect(page).to_have_url(re.compile(r"/orders/\d+/$"))
    expect(page.locator("#notices")).to_contain_text(notice)
    return int(page.url.rstrip("/").rsplit("/", 1)[1])


def price_off_market(quote: dict, fraction: str) -> Decimal:
    """The last price moved by ``fraction`` (e.g. "-0.03"), on the instrument's tick."""
    tick = Decimal(quote["tick"])
    ticks = (Decimal(quote["last"]) * (1 + Decimal(fraction)) / tick).quantize(Decimal(1))
    return (ticks * tick).quantize(Decimal("0.01"))


def book_row(page: Page, symbol: str, side: str, order_type: str):
    """The order book's (or open orders') row of an order by its symbol, side and type."""
    rows = page.locator("#order-rows tr")
    return (
        rows.filter(has=page.locator("[data-label=Symbol]", has_text=symbol))
        .filter(has=page.locator("[data-label=Side]", has_text=side))
        .filter(has=page.locator("[data-label=Type]", has_text=re.compile(f"^{re.escape(order_type)} ")))
    )
