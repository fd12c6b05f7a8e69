"""Dataclasses for what the API returns, and the conversions to and from JSON.

Money and prices become :class:`decimal.Decimal`, datetimes aware :class:`datetime.datetime`,
dates and times :class:`datetime.date` / :class:`datetime.time`. Fields the API adds later are
ignored, so an older client keeps working against a newer server.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any, TypeVar

from .errors import ApiError

__all__ = [
    "Me",
    "Account",
    "AccountPage",
    "Instrument",
    "InstrumentPage",
    "Order",
    "OrderEvent",
    "OrderPage",
    "OrderSpec",
    "Placement",
    "BasketItem",
    "Basket",
    "BasketPage",
    "Scheduled",
    "ScheduledPage",
    "Strategy",
    "StrategyPage",
    "SignalResult",
    "Trade",
    "TradePage",
    "Position",
    "PositionPage",
    "from_json",
    "to_json",
]

T = TypeVar("T")


@dataclass(frozen=True)
class _Page:
    """One page of a list: ``count`` rows in all (matching its filters), ``limit`` a page from
    ``offset``, ``items`` this page."""

    count: int
    limit: int
    offset: int
    items: list

    @property
    def has_more(self) -> bool:
        return self.offset + len(self.items) < self.count


@dataclass(frozen=True)
class Me:
    id: int
    username: str
    timezone: str


@dataclass(frozen=True)
class Account:
    """A broker account (credentials are never part of it)."""

    id: int
    broker: str
    client_id: str
    label: str
    is_active: bool
    max_order_value: Decimal | None
    max_quantity: int | None
    max_open_orders: int | None
    allowed_products: list[str]
    copy_multiplier: Decimal
    has_credentials: bool


@dataclass(frozen=True)
class AccountPage(_Page):
    """One page of broker accounts: ``count`` is the total, ``items`` this page (newest first)."""

    items: list[Account]


@dataclass(frozen=True)
class Instrument:
    id: int
    exchange: str
    tradingsymbol: str
    name: str
    instrument_type: str
    segment: str
    expiry: date | None
    lot_size: int
    tick_size: Decimal
    last_price: Decimal
    previous_close: Decimal


@dataclass(frozen=True)
class InstrumentPage:
    truncated: bool
    items: list[Instrument]


@dataclass(frozen=True)
class Order:
    id: int
    reference: str
    account_id: int
    exchange: str
    tradingsymbol: str
    side: str
    quantity: int
    order_type: str
    product: str
    validity: str
    price: Decimal | None
    trigger_price: Decimal | None
    status: str
    source: str
    role: str
    parent_id: int | None
    strategy_id: int | None
    basket_id: int | None
    scheduled_id: int | None
    broker_order_id: str | None
    filled_quantity: int
    average_price: Decimal
    reject_kind: str
    reject_reason: str
    created_at: datetime
    updated_at: datetime
    # When the broker said this stop order (SL / SL-M) triggered (its trigger can no longer
    # change); None for one not triggered, and from a server older than it.
    triggered_at: datetime | None = None

    FINAL_STATUSES: typing.ClassVar[frozenset[str]] = frozenset({"FILLED", "CANCELLED", "REJECTED", "FAILED"})

    @property
    def is_final(self) -> bool:
        """Whether the order can change no more (filled, cancelled, rejected or failed)."""
        return self.status in self.FINAL_STATUSES


@dataclass(frozen=True)
class OrderEvent:
    """One thing that happened to an order. ``summary``: its message, or what its ``data`` says (a
    modify's changes, who asked for a cancel); both empty from a server older than them."""

    kind: str
    from_status: str
    to_status: str
    cause: str
    message: str
    created_at: datetime
    summary: str = ""
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OrderPage(_Page):
    """One page of orders: ``count`` is the total matching the filters, ``items`` this page."""

    items: list[Order]


@dataclass(frozen=True)
class Trade:
    """One fill of one of your orders, as the broker reported it."""

    id: int
    account_id: int
    order_id: int | None
    broker_trade_id: str
    broker_order_id: str
    exchange: str
    tradingsymbol: str
    product: str
    side: str
    quantity: int
    price: Decimal
    filled_at: datetime


@dataclass(frozen=True)
class TradePage(_Page):
    """One page of fills: ``count`` is the total matching the filters, ``items`` this page."""

    items: list[Trade]


@dataclass(frozen=True)
class Position:
    """Net quantity and FIFO PnL of one instrument and product on one account."""

    account_id: int
    exchange: str
    tradingsymbol: str
    product: str
    net_quantity: int
    average_price: Decimal
    last_price: Decimal
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    updated_at: datetime
    # Last, with a default: a Position built by hand (positionally) before it was sent keeps working.
    id: int | None = None


@dataclass(frozen=True)
class PositionPage(_Page):
    """One page of positions: ``count`` is the total matching the filters, ``items`` this page (newest first)."""

    items: list[Position]


@dataclass(frozen=True)
class OrderSpec:
    """One order to place, as a basket item (``create_basket(items=[OrderSpec(...), ...])``)."""

    tradingsymbol: str
    side: str
    quantity: int
    order_type: str = "MARKET"
    product: str = "MIS"
    exchange: str = "NSE"
    validity: str = "DAY"
    price: Decimal | None = None
    trigger_price: Decimal | None = None


@dataclass(frozen=True)
class Placement:
    """The result of placing one order for one account (baskets and strategy signals).

    ``status`` is the order's status, or ``INVALID`` when it was refused before placing
    (then ``error`` and ``field`` say why and ``order_id`` is None).
    """

    account_id: int
    account: str
    status: str
    symbol: str | None = None
    side: str | None = None
    quantity: int | None = None
    order_id: int | None = None
    reference: str | None = None
    reason: str | None = None
    error: str | None = None
    field: str | None = None
    item: int | None = None  # a basket's row: its item's number in the basket (1: the first)


@dataclass(frozen=True)
class BasketItem:
    id: int
    exchange: str
    tradingsymbol: str
    side: str
    quantity: int
    order_type: str
    product: str
    validity: str
    price: Decimal | None
    trigger_price: Decimal | None

    def spec(self) -> OrderSpec:
        """This item as an :class:`OrderSpec` (to resend it in ``update_basket``)."""
        return OrderSpec(
            tradingsymbol=self.tradingsymbol,
            side=self.side,
            quantity=self.quantity,
            order_type=self.order_type,
            product=self.product,
            exchange=self.exchange,
            validity=self.validity,
            price=self.price,
            trigger_price=self.trigger_price,
        )


@dataclass(frozen=True)
class Basket:
    id: int
    name: str
    account_ids: list[int]
    items: list[BasketItem]
    last_placed_at: datetime | None
    last_results: list[Placement]


@dataclass(frozen=True)
class BasketPage(_Page):
    """One page of baskets: ``count`` is the total, ``items`` this page (newest first)."""

    items: list[Basket]


@dataclass(frozen=True)
class Scheduled:
    id: int
    account_id: int
    exchange: str
    tradingsymbol: str
    side: str
    quantity: int
    order_type: str
    product: str
    validity: str
    price: Decimal | None
    trigger_price: Decimal | None
    recurrence: str
    run_on: date | None
    weekdays: list[int]
    time_of_day: time
    timezone: str
    grace_s: int
    status: str
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_result: str
    # Set on a cancel's answer only: a run already being placed as it was cancelled (it goes out).
    placing_due_at: datetime | None = None


@dataclass(frozen=True)
class ScheduledPage(_Page):
    """One page of scheduled orders: ``count`` is the total, ``items`` this page (newest first)."""

    items: list[Scheduled]


@dataclass(frozen=True)
class Strategy:
    """A strategy. ``webhook_secret`` is set only on the answer that created or rotated it (shown once)."""

    id: int
    name: str
    account_ids: list[int]
    stop_loss: Decimal | None
    stop_loss_unit: str
    take_profit: Decimal | None
    take_profit_unit: str
    trailing_step: Decimal | None
    reentry_enabled: bool
    max_reentries: int
    chase_after_s: int | None
    chase_max_ticks: int | None
    chase_max_percent: Decimal | None
    max_retries: int
    retryable_kinds: list[str]
    is_active: bool
    webhook_url: str
    webhook_secret_prefix: str
    webhook_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class StrategyPage(_Page):
    """One page of strategies: ``count`` is the total, ``items`` this page (newest first)."""

    items: list[Strategy]


@dataclass(frozen=True)
class SignalResult:
    """What a strategy signal did: one placement per account; ``replayed`` when an earlier call had sent
    the id (this one placed nothing).

    ``after_lost_answer``: the client sent the signal again after an attempt whose answer was lost,
    and that repeat was answered "replayed": it found what this call's own earlier attempt placed, so
    ``replayed`` is then False: the orders in ``results`` are new, placed by this call.
    """

    signal: str
    replayed: bool
    results: list[Placement]
    after_lost_answer: bool = False


# --- JSON -> dataclasses ---------------------------------------------------------------------


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, hint: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _convert(value, options[0]) if len(options) == 1 else value
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return [_convert(v, item) for v in value]
    if dataclasses.is_dataclass(hint):
        return from_json(hint, value)
    if hint is Decimal:
        try:
            return Decimal(str(value))
        except InvalidOperation:
            raise ValueError(f"not a decimal: {value!r}") from None
    if hint is datetime:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
        return parsed
    if hint is date:
        return date.fromisoformat(value) if isinstance(value, str) else value
    if hint is time:
        return time.fromisoformat(value) if isinstance(value, str) else value
    if hint is int and isinstance(value, str):
        return int(value)
    return value


def from_json(cls: type[T], data: dict) -> T:
    """Build the dataclass ``cls`` from the API's JSON object (unknown keys are ignored, a field an
    older server does not send is None). An answer that is not such an object (a list, another
    page's JSON behind a proxy, none of its fields) is an ``ApiError`` (code ``unexpected_answer``):
    never an object of Nones taken for, say, an order placed; nor is one with a value that is not of
    its field's type."""
    fields = dataclasses.fields(cls)
    if not isinstance(data, dict) or not any(f.name in data for f in fields):
        shape = (
            type(data).__name__
            if not isinstance(data, dict)
            else f"an object with {', '.join(sorted(data)) or 'nothing'}"
        )
        raise ApiError(f"The server's answer is not a {cls.__name__} ({shape[:200]}).", code="unexpected_answer")
    hints = _hints(cls)
    kwargs = {}
    for f in fields:
        if f.name in data:
            try:
                kwargs[f.name] = _convert(data[f.name], hints[f.name])
            except (ValueError, TypeError) as error:
                # A value not of its type (a time not in ISO 8601, a price that is no number): the
                # answer is not one this client reads, said as such, not a ValueError (a traceback
                # in ``tp``, which then cannot say that what was asked may have been done).
                raise ApiError(
                    f"The server's answer is not a {cls.__name__} its client reads "
                    f"({f.name}: {str(data[f.name])[:100]!r}: {error}).",
                    code="unexpected_answer",
                ) from None
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kwargs[f.name] = None  # a field this server does not send
    return cls(**kwargs)


# --- dataclasses -> JSON ---------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """JSON-ready data for a dataclass (or a list/dict of them): Decimals and times as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return value
