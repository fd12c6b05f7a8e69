"""Order rows pushed over the websocket carry their order's version (``data-version``, its last change in
microseconds), and the book keeps the newest: a row rendered before a later change that arrives after it (a
modify's "Open" after the fill's "Filled") is dropped, a newer one replaces the row, and a row open for an
inline modify keeps its form whatever is pushed meanwhile (static/js/pushes.js).

The order is changed as an API client or the broker would change it, in a process of the stack (its
``manage.py shell``: the platform's services push the new row to the trader's group on the stack's channel
layer, whatever Redis and key prefix the run has). The stale rows are pushed the same way a real push is
sent: ``monitoring.broadcast.push_fragment`` with ``orders/partials/order_push.html`` and the order as it was
read before the change. Each push is followed by a marker fragment on the same sender, so the page has
handled the push (websocket messages are handled in order) before the journey looks at the row.
"""

import re
from decimal import Decimal

from playwright.sync_api import Page, expect

from e2e.stack import Stack
from e2e.steps import (
    Trader,
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

MARKER = "e2e-push-marker"
# An instrument no other journey moves.
SYMBOL = "AXISBANK"

# Shell code: the order read as it is (pickled, so it can be pushed later exactly as it was read) and its
# version as the row renders it.
_SNAPSHOT = (
    "import base64, json, pickle\n"
    "from django.utils.dateformat import format as date_format\n"
    "from orders.models import Order\n"
    "def snapshot(pk):\n"
    "    order = Order.objects.select_related('account', 'instrument').get(pk=pk)\n"
    "    return {'order': base64.b64encode(pickle.dumps(order)).decode(),\n"
    "            'version': date_format(order.updated_at, 'Uu'), 'status': order.status, 'price': str(order.price)}\n"
)


def _marker_code(user_id: int, seen: int) -> str:
    """Shell code: once what this process pushed so far has left, a fragment that marks the page with ``seen``."""
    html = f'<i id="{MARKER}" hidden data-seen="{seen}"></i>'
    return (
        "from monitoring import broadcast\n"
        "from monitoring.consumers import user_group\n"
        "broadcast._sender.flush()\n"
        f"broadcast._sender.group_send(user_group({user_id}), {{'type': 'fragment.push', 'html': {html!r}}})\n"
    )


def add_marker(page: Page) -> None:
    """An element of the page the marker fragments replace (a push whose target a page lacks is dropped)."""
    page.evaluate(f"document.body.append(Object.assign(document.createElement('i'), {{id: {MARKER!r}, hidden: true}}))")


def wait_for_marker(page: Page, seen: int) -> None:
    expect(page.locator(f"#{MARKER}")).to_have_attribute("data-seen", str(seen))


def modify_elsewhere(stack: Stack, trader: Trader, order_id: int, price: Decimal, *, seen: int) -> dict:
    """Move the order's price as the API does (``orders.services.order_modify``); its new row is pushed.
    Returns the order as read before and after the modify (``snapshot``), then marks the page with ``seen``."""
    return stack.shell_json(
        _SNAPSHOT + "from decimal import Decimal\n"
        "from accounts.models import User\n"
        "from orders import services\n"
        "from tradingplatform import background\n"
        f"before = snapshot({order_id})\n"
        f"services.order_modify(order=Order.objects.get(pk={order_id}), actor=User.objects.get(pk={trader.user_id}),"
        f" cause='e2e: a change through the API', price=Decimal({str(price)!r}))\n"
        "background.wait_idle()\n"
        + _marker_code(trader.user_id, seen)
        + f"print(json.dumps({{'before': before, 'after': snapshot({order_id})}}))"
    )


def push_stale_row(stack: Stack, trader: Trader, snapshot: dict, *, seen: int, created: bool = False) -> None:
    """Push the order's row as it was in ``snapshot``, as the platform pushes a changed order (``created``: a
    new one, which goes on top of the book); then mark the page."""
    stack.shell(
        "import base64, pickle\n"
        "from monitoring import broadcast\n"
        f"order = pickle.loads(base64.b64decode({snapshot['order']!r}))\n"
        f"broadcast.push_fragment(user_id={trader.user_id}, template='orders/partials/order_push.html',"
        f" context={{'order': order, 'created': {created}}})\n" + _marker_code(trader.user_id, seen)
    )


def test_book_keeps_the_newest_pushed_row(stack, page, trader):
    log_in(page, trader)
    connect_paper_account(page, "Versions")
    quote = paper_quote(stack, SYMBOL)
    tick = Decimal(quote["tick"])
    placed = price_off_market(quote, "-0.03")
    order_id = place_from_ticket(
        page, account="Versions", symbol=SYMBOL, side="BUY", quantity=1, order_type="LIMIT", price=placed
    )

    page.goto("/orders/")
    row = page.locator(f"#order-{order_id}")
    status, price = row.locator(".badge.status"), row.locator("[data-label=Price]")
    expect(status).to_have_text("Open")
    expect(price).to_have_text(f"{placed:.2f}")
    wait_for_websocket(page)
    mark_page(page)
    add_marker(page)

    # The order is modified elsewhere (the API): its new row is pushed and replaces the one shown.
    moved = placed - tick
    first = modify_elsewhere(stack, trader, order_id, moved, seen=1)
    assert int(first["before"]["version"]) < int(first["after"]["version"]), first
    expect(price).to_have_text(f"{moved:.2f}")
    expect(row).to_have_attribute("data-version", first["after"]["version"])

    # The row as it was before the modify arrives after it: dropped, the page keeps the newer row.
    push_stale_row(stack, trader, first["before"], seen=2)
    wait_for_marker(page, 2)
    expect(price).to_have_text(f"{moved:.2f}")
    expect(status).to_have_text("Open")
    expect(row).to_have_attribute("data-version", first["after"]["version"])
    screenshot(page, "push-versions-stale-dropped")

    # The trader opens the inline modify; a newer row pushed meanwhile does not close the form nor what is typed.
    row.get_by_role("link", name="Modify").click()
    expect(row).to_have_class(re.compile(r"\bediting\b"))
    typed = f"{moved - tick:.2f}"
    row.locator("input[name=price]").fill(typed)
    lower = moved - 2 * tick
    second = modify_elsewhere(stack, trader, order_id, lower, seen=3)
    wait_for_marker(page, 3)
    expect(row).to_have_class(re.compile(r"\bediting\b"))
    expect(row.locator("input[name=price]")).to_have_value(typed)
    screenshot(page, "push-versions-editing")
    # Closing the form shows the order as it now is.
    row.get_by_role("button", name="Close").click()
    expect(price).to_have_text(f"{lower:.2f}")
    expect(row).to_have_attribute("data-version", second["after"]["version"])

    # The market falls through the limit: the fill's newer row is pushed and replaces the "Open" one.
    move_market(stack, SYMBOL, lower - 5 * tick)
    expect(status).to_have_text("Filled")
    expect(row).to_contain_text("1/1")
    filled = row.get_attribute("data-version")
    assert int(filled) > int(second["after"]["version"]), (
        f"the fill's row carries version {filled}, not newer than the modify's {second['after']['version']}: "
        "the modify's Open row arriving after it would replace it"
    )

    # The modify's "Open" row, rendered before the fill, arrives after it: the order stays filled, with no
    # Modify or Cancel.
    push_stale_row(stack, trader, second["after"], seen=4)
    wait_for_marker(page, 4)
    expect(status).to_have_text("Filled")
    expect(row).to_contain_text("1/1")
    expect(row).to_have_attribute("data-version", filled)
    expect(row.get_by_role("link", name="Modify")).to_have_count(0)

    # The push of a new order comes after the page already shows it (the page was read, or read itself
    # again on its socket's opening, after the order was written): the row is not shown twice.
    now = stack.shell_json(_SNAPSHOT + f"print(json.dumps(snapshot({order_id})))")
    push_stale_row(stack, trader, now, seen=5, created=True)
    wait_for_marker(page, 5)
    expect(page.locator(f"#order-{order_id}")).to_have_count(1)
    expect(status).to_have_text("Filled")
    assert_not_reloaded(page)
    screenshot(page, "push-versions-filled")
