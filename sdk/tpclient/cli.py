"""``tp``: the platform's API from the command line.

The server and key come from ``TP_URL`` and ``TP_API_KEY`` (or ``--url`` and ``--api-key``).
Output is a table by default, JSON with ``--json``. Exit status: 0 on success, 1 when the
API refuses or fails, or the broker rejects the order placed, or any of a basket's or a signal's
orders is not placed (``error: <message> (field: x)`` on stderr; the orders or results are shown
on stdout as well), 2 on a usage error, 141 when
the output's reader closed it early (``tp orders list | head -1``).

``orders place`` and ``baskets place`` make their idempotency key themselves when ``--key`` is not
given, so that when a call fails after it may have been carried out (no answer, a 5xx, a lost
answer before the last try, Ctrl-C while it waits) they can say which key repeats it safely.
``orders modify`` and ``orders cancel`` failing so (or interrupted) say to look at the order first.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from ._version import __version__
from .client import Client, header_safe
from .errors import AnswerLost, ApiError, TransportError
from .models import Order, Placement, to_json

SIDES = ("BUY", "SELL")
ORDER_TYPES = ("MARKET", "LIMIT", "SL", "SL-M")
PRODUCTS = ("CNC", "MIS", "NRML")
VALIDITIES = ("DAY", "IOC")
STATUSES = ("NEW", "SUBMITTED", "OPEN", "PARTIALLY_FILLED", "FILLED", "CANCELLED", "REJECTED", "FAILED")
ANY_OPEN = "open"  # the API's filter for every order not final; "OPEN" is one status (resting at the broker)


# --- Output ----------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value) or "-"
    return str(value)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain text table: left-aligned columns two spaces apart."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def details(obj: Any, fields: Sequence[str] | None = None) -> str:
    """One object as ``name: value`` lines."""
    data = {name: getattr(obj, name) for name in fields} if fields else vars(obj)
    width = max(len(name) for name in data)
    return "\n".join(f"{name.ljust(width)}  {_cell(value)}" for name, value in data.items() if name != "raw")


ORDER_COLUMNS = (
    ("ID", lambda o: o.id),
    ("REFERENCE", lambda o: o.reference),
    ("ACCOUNT", lambda o: o.account_id),
    ("SYMBOL", lambda o: f"{o.exchange}:{o.tradingsymbol}"),
    ("SIDE", lambda o: o.side),
    ("QTY", lambda o: o.quantity),
    ("TYPE", lambda o: o.order_type),
    ("PRODUCT", lambda o: o.product),
    ("PRICE", lambda o: o.price),
    ("TRIGGER", lambda o: o.trigger_price),
    ("STATUS", lambda o: o.status),
    ("FILLED", lambda o: f"{o.filled_quantity}@{o.average_price}" if o.filled_quantity else "0"),
    ("CREATED", lambda o: o.created_at),
)


def orders_table(orders: Sequence[Order]) -> str:
    return table([[get(o) for _, get in ORDER_COLUMNS] for o in orders], [name for name, _ in ORDER_COLUMNS])


def placements_table(results: Sequence[Placement]) -> str:
    rows = [
        [
            r.account_id,
            r.account,
            r.symbol,
            r.side,
            r.quantity,
            r.order_id,
            r.reference,
            r.status,
            " ".join(filter(None, [r.reason, r.error, f"(field: {r.field})" if r.field else None])),
        ]
        for r in results
    ]
    return table(rows, ["ACCOUNT", "LABEL", "SYMBOL", "SIDE", "QTY", "ORDER", "REFERENCE", "STATUS", "DETAIL"])


# --- Commands --------------------------------------------------------------------------------
# Each returns (data for --json, text for a human).


def _page_footer(page: Any, args) -> str:
    """The line under a list's page: which rows of how many, and the option that shows the next page."""
    if page.items:
        text = f"\n{page.offset + 1}-{page.offset + len(page.items)} of {page.count}"
    else:  # past the end: "101-100 of 5" would read as rows shown
        text = f"\nnone of {page.count}" + (f" from offset {page.offset}" if page.offset else "")
    if args.before_id is not None:
        text += f" below id {args.before_id}"
    if page.has_more:
        text += f" (next: --before-id {page.items[-1].id})"
    return text


def _paging(args) -> dict:
    return {"limit": args.limit, "offset": args.offset, "before_id": args.before_id}


def cmd_me(client: Client, args) -> tuple[Any, str]:
    me = client.me()
    return me, details(me)


def cmd_accounts_list(client: Client, args):
    page = client.accounts_page(**_paging(args))
    rows = [
        [a.id, a.broker, a.client_id, a.label, a.is_active, a.allowed_products, a.copy_multiplier, a.has_credentials]
        for a in page.items
    ]
    # has_credentials says whether the account stores broker credentials, not whether it has a live
    # session (the API does not say that): a connected paper account has none.
    headers = ["ID", "BROKER", "CLIENT ID", "LABEL", "ACTIVE", "PRODUCTS", "MULTIPLIER", "CREDENTIALS"]
    return page, table(rows, headers) + _page_footer(page, args)


def cmd_accounts_get(client: Client, args):
    account = client.account(args.id)
    return account, details(account)


def cmd_instruments_search(client: Client, args):
    page = client.instruments(q=args.query, limit=args.limit)
    rows = [
        [i.id, i.exchange, i.tradingsymbol, i.name, i.instrument_type, i.expiry, i.lot_size, i.tick_size, i.last_price]
        for i in page.items
    ]
    text = table(rows, ["ID", "EXCHANGE", "SYMBOL", "NAME", "TYPE", "EXPIRY", "LOT", "TICK", "LAST"])
    if page.truncated:
        text += f"\n(first {len(page.items)} shown; narrow the search or raise --limit)"
    return page, text


def cmd_orders_list(client: Client, args):
    page = client.orders(
        account_id=args.account,
        status=args.status,
        source=args.source,
        symbol=args.symbol,
        limit=args.limit,
        offset=args.offset,
        before_id=args.before_id,
    )
    return page, orders_table(page.items) + _page_footer(page, args)


def cmd_orders_get(client: Client, args):
    order = client.order(args.id)
    return order, details(order)


def cmd_orders_events(client: Client, args):
    events = client.order_events(args.id)
    rows = [[e.created_at, e.kind, e.from_status, e.to_status, e.cause, e.summary or e.message] for e in events]
    return events, table(rows, ["AT", "KIND", "FROM", "TO", "CAUSE", "DETAIL"])


class OutcomeUnknown(Exception):
    """A placement failed in a way where it may have been carried out all the same; ``advice`` says what to do."""

    def __init__(self, error: ApiError, advice: str):
        super().__init__(error.message)
        self.error = error
        self.advice = advice


# An order answered with one of these was not placed: the broker rejected it, or it failed to be sent.
NOT_PLACED = ("REJECTED", "FAILED")


class NotPlaced(Exception):
    """A command's answer says what was asked was not done (an order the broker rejected): its output
    (``data`` for --json, ``text`` for a human) is shown, ``message`` is the error, and the status is 1."""

    def __init__(self, data: Any, text: str, message: str):
        super().__init__(message)
        self.data, self.text, self.message = data, text, message


class Interrupted(Exception):
    """Ctrl-C during a placement, a modify or a cancel, which may have been carried out all the same;
    ``advice`` says what to do."""

    def __init__(self, advice: str):
        super().__init__(advice)
        self.advice = advice


def _may_have_been_done(error: ApiError) -> bool:
    """Whether the call that raised ``error`` may have been carried out: no answer to a request that
    reached the server, a 5xx, an earlier attempt whose answer was lost, or a success answer that is
    not what was placed (a proxy's own JSON, nothing)."""
    sent = isinstance(error, TransportError) and error.sent
    unreadable = error.code == "unexpected_answer"
    return error.after_lost_answer or sent or unreadable or (error.status or 0) >= 500


def _retry_advice(what: str, check: str, key: str) -> str:
    return (
        f"{what} may have been placed all the same. Check `{check}`, or repeat the command with "
        f"--key {shlex.quote(key)}: with that key a repeat returns what was placed and never places it twice."
    )


def cmd_orders_place(client: Client, args):
    key = args.key or str(uuid.uuid4())
    try:
        order = client.place_order(
            account_id=args.account,
            tradingsymbol=args.symbol,
            side=args.side,
            quantity=args.qty,
            order_type=args.type,
            product=args.product,
            exchange=args.exchange,
            price=args.price,
            trigger_price=args.trigger,
            validity=args.validity,
            idempotency_key=key,
        )
    except ApiError as error:
        if _may_have_been_done(error):
            raise OutcomeUnknown(error, _retry_advice("The order", "tp orders list", key)) from error
        raise
    except KeyboardInterrupt:  # the request may have reached the server
        raise Interrupted(_retry_advice("The order", "tp orders list", key)) from None
    if order.status in NOT_PLACED:
        # Answered (the API took the request), but the broker refused the order or it was never sent:
        # not a success for `tp orders place ... && ...`, and the trader is told why.
        why = order.reject_reason or "no reason given"
        kind = f" ({order.reject_kind})" if order.reject_kind else ""
        what = "was rejected" if order.status == "REJECTED" else "failed"
        raise NotPlaced(order, orders_table([order]), f"order {order.id} {what}{kind}: {why}")
    return order, orders_table([order])


def cmd_orders_modify(client: Client, args):
    if args.qty is None and args.price is None and args.trigger is None and args.type is None:
        raise UsageError("give at least one of --qty, --price, --trigger, --type")
    try:
        order = client.modify_order(
            args.id, quantity=args.qty, price=args.price, trigger_price=args.trigger, order_type=args.type
        )
    except ApiError as error:
        if _may_have_been_made(error):
            raise OutcomeUnknown(error, _look_advice("change", args.id)) from error
        raise
    except KeyboardInterrupt:  # the request may have reached the server, and the broker
        raise Interrupted(_interrupted_advice("change", args.id)) from None
    return order, orders_table([order])


def cmd_orders_cancel(client: Client, args):
    try:
        order = client.cancel_order(args.id)
    except ApiError as error:
        if _may_have_been_made(error):
            raise OutcomeUnknown(error, _look_advice("cancel", args.id)) from error
        raise
    except KeyboardInterrupt:  # the request may have reached the server, and the broker
        raise Interrupted(_interrupted_advice("cancel", args.id)) from None
    return order, orders_table([order])


def _may_have_been_made(error: ApiError) -> bool:
    """Whether a modify or cancel that raised ``error`` may have been made: its broker's answer was
    lost (``AnswerLost``), or no answer came back from a request that reached the server (or a 5xx).
    A refusal (4xx) stays one, even after a lost answer: the client has then read the order and
    found the change not made."""
    refused = 400 <= (error.status or 0) < 500
    return isinstance(error, AnswerLost) or (_may_have_been_done(error) and not refused)


def _look_advice(what: str, order_id: int) -> str:
    return f"The {what} may have been made all the same. Check `tp orders get {order_id}` before repeating it."


def _interrupted_advice(what: str, order_id: int) -> str:
    return f"The {what} may or may not have reached the broker. Check `tp orders get {order_id}` before repeating it."


def cmd_trades_list(client: Client, args):
    page = client.trades(
        account_id=args.account, symbol=args.symbol, limit=args.limit, offset=args.offset, before_id=args.before_id
    )
    rows = [
        [t.id, t.filled_at, t.account_id, f"{t.exchange}:{t.tradingsymbol}", t.side, t.quantity, t.price, t.order_id]
        for t in page.items
    ]
    text = table(rows, ["ID", "FILLED AT", "ACCOUNT", "SYMBOL", "SIDE", "QTY", "PRICE", "ORDER"])
    return page, text + _page_footer(page, args)


def cmd_positions_list(client: Client, args):
    page = client.positions_page(account_id=args.account, open_only=args.open, **_paging(args))
    text = table(
        [
            [
                p.id,
                p.account_id,
                f"{p.exchange}:{p.tradingsymbol}",
                p.product,
                p.net_quantity,
                p.average_price,
                p.last_price,
                p.realized_pnl,
                p.unrealized_pnl,
            ]
            for p in page.items
        ],
        ["ID", "ACCOUNT", "SYMBOL", "PRODUCT", "NET QTY", "AVG PRICE", "LAST", "REALIZED", "UNREALIZED"],
    )
    return page, text + _page_footer(page, args)


def cmd_baskets_list(client: Client, args):
    page = client.baskets_page(**_paging(args))
    rows = [
        [
            b.id,
            b.name,
            b.account_ids,
            "; ".join(f"{i.side} {i.quantity} {i.tradingsymbol} {i.order_type}" for i in b.items),
            b.last_placed_at,
        ]
        for b in page.items
    ]
    return page, table(rows, ["ID", "NAME", "ACCOUNTS", "ITEMS", "LAST PLACED"]) + _page_footer(page, args)


def cmd_baskets_get(client: Client, args):
    basket = client.basket(args.id)
    rows = [
        [i.id, f"{i.exchange}:{i.tradingsymbol}", i.side, i.quantity, i.order_type, i.product, i.price, i.trigger_price]
        for i in basket.items
    ]
    text = f"{basket.name} (#{basket.id}), accounts: {_cell(basket.account_ids)}\n"
    text += table(rows, ["ITEM", "SYMBOL", "SIDE", "QTY", "TYPE", "PRODUCT", "PRICE", "TRIGGER"])
    return basket, text


def cmd_baskets_place(client: Client, args):
    key = args.key or str(uuid.uuid4())
    try:
        results = client.place_basket(args.id, account_ids=args.account, idempotency_key=key)
    except ApiError as error:
        if _may_have_been_done(error):
            advice = _retry_advice("The basket's orders", "tp orders list --source basket", key)
            raise OutcomeUnknown(error, advice) from error
        raise
    except KeyboardInterrupt:  # the request may have reached the server
        raise Interrupted(_retry_advice("The basket's orders", "tp orders list --source basket", key)) from None
    return _placements(results, results, placements_table(results))


def cmd_scheduled_list(client: Client, args):
    page = client.scheduled_page(**_paging(args))
    text = table(
        [
            [
                s.id,
                s.account_id,
                f"{s.exchange}:{s.tradingsymbol}",
                s.side,
                s.quantity,
                s.order_type,
                s.recurrence,
                f"{s.time_of_day} {s.timezone}",
                s.status,
                s.next_run_at,
                s.last_result,
            ]
            for s in page.items
        ],
        ["ID", "ACCOUNT", "SYMBOL", "SIDE", "QTY", "TYPE", "WHEN", "AT", "STATUS", "NEXT RUN", "LAST RESULT"],
    )
    return page, text + _page_footer(page, args)


def cmd_scheduled_cancel(client: Client, args):
    row = client.cancel_scheduled(args.id)
    return row, details(row)


def cmd_strategies_list(client: Client, args):
    page = client.strategies_page(**_paging(args))
    text = table(
        [[s.id, s.name, s.account_ids, s.is_active, s.webhook_secret_prefix, s.webhook_url] for s in page.items],
        ["ID", "NAME", "ACCOUNTS", "ACTIVE", "SECRET", "WEBHOOK"],
    )
    return page, text + _page_footer(page, args)


def _signal_advice(signal_id: str) -> str:
    return (
        f"The signal's orders may have been placed all the same. Check `tp orders list --source strategy`, or "
        f"repeat the command with --signal-id {shlex.quote(signal_id)}: with that id a repeat places nothing twice."
    )


def cmd_strategies_signal(client: Client, args):
    try:
        result = client.signal(
            args.id,
            signal_id=args.signal_id,
            tradingsymbol=args.symbol,
            side=args.side,
            quantity=args.qty,
            exchange=args.exchange,
            order_type=args.type,
            product=args.product,
            price=args.price,
            trigger_price=args.trigger,
        )
    except ApiError as error:
        if _may_have_been_done(error):
            raise OutcomeUnknown(error, _signal_advice(args.signal_id)) from error
        raise
    except KeyboardInterrupt:  # the request may have reached the server
        raise Interrupted(_signal_advice(args.signal_id)) from None
    head = f"signal {result.signal}"
    if result.replayed:
        head += " (a repeat: nothing new was placed)"
    elif result.after_lost_answer:
        head += " (placed by an earlier attempt of this command, whose answer was lost)"
    return _placements(result, result.results, head + "\n" + placements_table(result.results))


def _placements(data, results: Sequence[Placement], text: str):
    """A basket's or a signal's answer: a success only when every one of its orders was placed. One
    refused before it was sent (INVALID), rejected by its broker or failed to be sent is not: the
    results are shown all the same, and the status is 1 (``... && echo done`` does not say done)."""
    missed = [r for r in results if r.status in (*NOT_PLACED, "INVALID")]
    if not missed:
        return data, text
    first = missed[0]
    why = " ".join(filter(None, [first.reason, first.error])) or "no reason given"
    message = (
        f"{len(missed)} of {len(results)} not placed (first: {first.account} {first.symbol} {first.status}: {why})"
    )
    raise NotPlaced(data, text, message)


# --- Parser ----------------------------------------------------------------------------------


class UsageError(Exception):
    pass


def _plain(text: str) -> str:
    """A number's text: Python reads "1_0" as 10 and "1_400" as 1400, no number anyone types here."""
    if "_" in text:
        raise argparse.ArgumentTypeError(f"write the number without '_': {text!r}")
    return text


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(_plain(text))
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(_plain(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
    return value


def _idempotency_key(text: str) -> str:
    if not header_safe(text):
        raise argparse.ArgumentTypeError(f"use visible ASCII characters (spaces only inside), not {text!r}")
    return text


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.upper()
        if value not in choices:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return value

    parse.__name__ = "choice"
    return parse


def _status(text: str) -> str:
    """A status filter: ``open`` (lower case) is the API's "not final"; anything else is one status."""
    if text == ANY_OPEN:
        return ANY_OPEN
    try:
        return _choice(STATUSES)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"choose from {ANY_OPEN}, {', '.join(STATUSES)}") from None


def _common(defaults: bool) -> argparse.ArgumentParser:
    """The global options, accepted before or after the subcommand."""
    parser = argparse.ArgumentParser(add_help=False)
    suppress = {} if defaults else {"default": argparse.SUPPRESS}
    parser.add_argument("--url", help="server URL (default: $TP_URL)", **suppress)
    parser.add_argument("--api-key", help="API key (default: $TP_API_KEY)", **suppress)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table", **suppress)
    parser.add_argument("--timeout", type=float, help="seconds per request (default 10)", **suppress)
    parser.add_argument("--retries", type=_int, help="retries on 429/5xx/network errors (default 3)", **suppress)
    return parser


def _order_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--symbol", required=True, help="trading symbol, e.g. INFY")
    parser.add_argument("--exchange", default="NSE", type=str.upper, help="default NSE")
    parser.add_argument("--side", required=True, type=_choice(SIDES), help="BUY or SELL")
    parser.add_argument("--qty", required=True, type=_positive_int, help="quantity")
    parser.add_argument("--type", default="MARKET", type=_choice(ORDER_TYPES), help="MARKET (default), LIMIT, SL, SL-M")
    parser.add_argument("--price", type=_decimal, help="limit price (LIMIT, SL)")
    parser.add_argument("--trigger", type=_decimal, help="trigger price (SL, SL-M)")
    parser.add_argument("--product", default="MIS", type=_choice(PRODUCTS), help="MIS (default), CNC, NRML")


def _page_options(parser: argparse.ArgumentParser, what: str) -> argparse.ArgumentParser:
    """A list's page: ``--limit`` rows from ``--offset``, or below ``--before-id`` (the next page)."""
    parser.add_argument("--limit", type=_positive_int, default=50, help="rows per page (default 50, at most 500)")
    parser.add_argument("--offset", type=_int, default=0)
    parser.add_argument(
        "--before-id", type=_positive_int, help=f"only {what} with a lower id: the last id shown, for the next page"
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = _common(defaults=False)
    parser = argparse.ArgumentParser(
        prog="tp",
        description="The trading platform's API from the command line.",
        parents=[_common(defaults=True)],
        epilog="Set TP_URL and TP_API_KEY (or pass --url and --api-key).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)

    def command(sub, name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=func)
        return p

    def group(name: str, help: str):
        g = groups.add_parser(name, help=help, description=help)
        return g.add_subparsers(dest="action", metavar="ACTION", required=True)

    command(groups, "me", cmd_me, "who the API key belongs to")

    accounts = group("accounts", "broker accounts")
    _page_options(command(accounts, "list", cmd_accounts_list, "list your broker accounts, newest first"), "accounts")
    command(accounts, "get", cmd_accounts_get, "show one broker account").add_argument("id", type=_int)

    instruments = group("instruments", "instruments")
    p = command(instruments, "search", cmd_instruments_search, "find instruments by symbol or name")
    p.add_argument("query", help="symbol prefix or part of the name")
    p.add_argument("--limit", type=_positive_int, default=50)

    orders = group("orders", "orders")
    p = command(orders, "list", cmd_orders_list, "list your orders, newest first")
    p.add_argument(
        "--status",
        type=_status,
        action="append",
        help=(
            "filter by status (repeatable): open (lower case) for every order not final "
            "(NEW, SUBMITTED, OPEN, PARTIALLY_FILLED), or one of " + ", ".join(STATUSES) + " (OPEN: resting)"
        ),
    )
    p.add_argument("--account", type=_int, help="filter by broker account id")
    p.add_argument("--source", help="manual, basket, scheduled, strategy or system")
    p.add_argument("--symbol", help="symbol prefix")
    p.add_argument("--limit", type=_positive_int, default=50)
    p.add_argument("--offset", type=_int, default=0)
    p.add_argument(
        "--before-id", type=_positive_int, help="only orders with a lower id: the last id shown, for the next page"
    )
    command(orders, "get", cmd_orders_get, "show one order").add_argument("id", type=_int)
    command(orders, "events", cmd_orders_events, "what happened to one order").add_argument("id", type=_int)
    p = command(orders, "place", cmd_orders_place, "place an order")
    p.add_argument("--account", type=_int, required=True, help="broker account id")
    _order_options(p)
    p.add_argument("--validity", default="DAY", type=_choice(VALIDITIES), help="DAY (default) or IOC")
    p.add_argument(
        "--key",
        type=_idempotency_key,
        help="idempotency key: a repeat with the same key returns the same order (default: a new one)",
    )
    p = command(orders, "modify", cmd_orders_modify, "change an open order")
    p.add_argument("id", type=_int)
    p.add_argument("--qty", type=_positive_int)
    p.add_argument("--price", type=_decimal)
    p.add_argument("--trigger", type=_decimal)
    p.add_argument("--type", type=_choice(ORDER_TYPES))
    command(orders, "cancel", cmd_orders_cancel, "cancel an open order").add_argument("id", type=_int)

    trades = group("trades", "your fills")
    p = command(trades, "list", cmd_trades_list, "list your fills, newest first")
    p.add_argument("--account", type=_int, help="filter by broker account id")
    p.add_argument("--symbol", help="symbol prefix")
    p.add_argument("--limit", type=_positive_int, default=50)
    p.add_argument("--offset", type=_int, default=0)
    p.add_argument(
        "--before-id", type=_positive_int, help="only fills with a lower id: the last id shown, for the next page"
    )

    positions = group("positions", "your positions")
    p = command(positions, "list", cmd_positions_list, "list your positions with their PnL, newest first")
    p.add_argument("--account", type=_int, help="filter by broker account id")
    p.add_argument("--open", action="store_true", help="only positions with a net quantity")
    _page_options(p, "positions")

    baskets = group("baskets", "baskets")
    _page_options(command(baskets, "list", cmd_baskets_list, "list your baskets, newest first"), "baskets")
    command(baskets, "get", cmd_baskets_get, "show one basket").add_argument("id", type=_int)
    p = command(baskets, "place", cmd_baskets_place, "place every item of a basket")
    p.add_argument("id", type=_int)
    p.add_argument("--account", type=_int, action="extend", nargs="+", help="account ids (default: the basket's own)")
    p.add_argument(
        "--key",
        type=_idempotency_key,
        help="idempotency key: a repeat with the same key returns the same orders (default: a new one)",
    )

    scheduled = group("scheduled", "scheduled orders")
    p = command(scheduled, "list", cmd_scheduled_list, "list your scheduled orders, newest first")
    _page_options(p, "scheduled orders")
    command(scheduled, "cancel", cmd_scheduled_cancel, "cancel a scheduled order").add_argument("id", type=_int)

    strategies = group("strategies", "strategies")
    p = command(strategies, "list", cmd_strategies_list, "list your strategies, newest first")
    _page_options(p, "strategies")
    p = command(strategies, "signal", cmd_strategies_signal, "send a strategy an entry signal")
    p.add_argument("id", type=_int, help="strategy id")
    p.add_argument("--signal-id", required=True, help="unique per strategy; a repeat places nothing")
    _order_options(p)
    return parser


# The API's name of a field -> the command's option that gives it, where the two differ.
FIELD_OPTIONS = {
    "account_id": "account",
    "account_ids": "account",
    "tradingsymbol": "symbol",
    "quantity": "qty",
    "order_type": "type",
    "trigger_price": "trigger",
    "idempotency_key": "key",
    "id": "signal_id",
}


def _message(error: ApiError, args: argparse.Namespace | None = None) -> str:
    """The error's message and the field at fault, with the option of this command that gives it
    when it is named otherwise (the API's ``tradingsymbol`` is ``--symbol`` here)."""
    if not error.field:
        return error.message
    dest = FIELD_OPTIONS.get(error.field, error.field)
    if args is not None and dest != error.field and dest in vars(args):
        return f"{error.message} (field: {error.field}, option --{dest.replace('_', '-')})"
    return f"{error.message} (field: {error.field})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, --version, or a usage error (already printed)
        return exit.code if isinstance(exit.code, int) else 2
    url = args.url or os.environ.get("TP_URL")
    api_key = args.api_key or os.environ.get("TP_API_KEY")
    if not url or not api_key:
        parser.print_usage(sys.stderr)
        print("tp: error: set TP_URL and TP_API_KEY (or pass --url and --api-key)", file=sys.stderr)
        return 2
    options = {}
    if args.timeout is not None:
        options["timeout"] = args.timeout
    if args.retries is not None:
        options["retries"] = args.retries
    try:
        client = Client(url, api_key, **options)
    except ValueError as error:  # a URL that is not one, a timeout of 0
        print(f"tp: error: {error}", file=sys.stderr)
        return 2
    failure = None
    try:
        with client:
            data, text = args.func(client, args)
    except NotPlaced as not_placed:
        data, text, failure = not_placed.data, not_placed.text, not_placed.message
    except UsageError as error:
        print(f"tp: error: {error}", file=sys.stderr)
        return 2
    except OutcomeUnknown as unknown:
        print(f"error: {_message(unknown.error, args)}", file=sys.stderr)
        print(unknown.advice, file=sys.stderr)
        return 1
    except ApiError as error:
        print(f"error: {_message(error, args)}", file=sys.stderr)
        return 1
    except Interrupted as interrupted:
        print("tp: interrupted", file=sys.stderr)
        print(interrupted.advice, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        return 130
    try:
        print(json.dumps(to_json(data), indent=2) if args.json else text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`tp orders list | head -1`): what it read is what it wanted. Nothing
        # more is written (Python would flush again at exit and report the same error there).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a command ended by SIGPIPE
    if failure is not None:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
