"""The orders part of the JSON API: orders, baskets, scheduled orders, strategies.

Endpoints parse input, call one service or selector, and return schemas. Another
trader's ids are 404 (the selectors scope every read to the caller).
"""

import hashlib
import secrets
from datetime import date, datetime, time
from decimal import Decimal
from typing import Annotated, Literal

from django.core.exceptions import ValidationError
from ninja import Field, Header, Query, Router, Schema, Status
from pydantic import create_model, field_validator

from accounts.api import account_for
from accounts.selectors import MAX_ID
from brokers.errors import RejectKind
from brokers.selectors import instrument_by_symbol
from tradingplatform.schemas import In, Number, PageFilters, TimeFilter, api_field, page_of, page_schema

from . import selectors, services, sources
from .models import Order, ScheduledOrder

router = Router(tags=["orders"])

Side = Literal["BUY", "SELL"]
OrderType = Literal["MARKET", "LIMIT", "SL", "SL-M"]
Product = Literal["CNC", "MIS", "NRML"]
Validity = Literal["DAY", "IOC"]


# --- Schemas ---------------------------------------------------------------------------------

MAX_QUANTITY, MAX_PRICE = services.MAX_QUANTITY, services.MAX_PRICE
# A whole JSON number: "2", true and 2.5 are refused, not read as 2, 1 and 2 (every whole number
# the API takes is strict so: a weekday of true was Tuesday).
Quantity = Annotated[int, Field(gt=0, le=MAX_QUANTITY, strict=True)]
AccountId = Annotated[int, Field(ge=1, le=MAX_ID, strict=True)]
IDEMPOTENCY_KEY_MAX = 100
# Read here only to be declared in the schema (its length too: ``TradingAPI``); the endpoints check
# its length themselves, so that an over-long key is the 422 naming `idempotency_key` it always was.
IdempotencyKey = Header(
    None,
    alias="Idempotency-Key",
    description=(
        f"Makes a retry safe: a repeat with the same key (at most {IDEMPOTENCY_KEY_MAX} characters) returns what"
        " the first call placed and places nothing again; the same key with another body is a 409. Send a new"
        " key for each new placement and the same one on every retry of it."
    ),
)


def _api_key(idempotency_key: str | None) -> str | None:
    """The caller's ``Idempotency-Key`` (None without one), as the platform keeps it: ``api:<key>``."""
    if idempotency_key and len(idempotency_key) > IDEMPOTENCY_KEY_MAX:
        raise ValidationError({"idempotency_key": f"At most {IDEMPOTENCY_KEY_MAX} characters."})
    return f"api:{idempotency_key}" if idempotency_key else None


class OrderSpecIn(In):
    exchange: str = Field("NSE", max_length=16)
    tradingsymbol: str = Field(..., max_length=64)
    side: Side
    quantity: Quantity
    order_type: OrderType = "MARKET"
    product: Product = "MIS"
    validity: Validity = "DAY"
    price: Number | None = Field(None, lt=MAX_PRICE)
    trigger_price: Number | None = Field(None, lt=MAX_PRICE)

    def spec(self) -> dict:
        return {
            "instrument": instrument_by_symbol(self.exchange, self.tradingsymbol),
            "side": self.side,
            "quantity": self.quantity,
            "order_type": self.order_type,
            "product": self.product,
            "validity": self.validity,
            "price": self.price,
            "trigger_price": self.trigger_price,
        }


def partial_of(schema: type[In]) -> type[In]:
    """A PATCH body: ``schema``'s fields, each optional and checked as it is there. A field left out
    is kept as it is stored; null is taken only where ``schema`` takes it (it clears a stop-loss,
    not a name)."""
    fields = {}
    for name, info in schema.model_fields.items():

        def no_default(field_schema: dict, extra=info.json_schema_extra) -> None:
            if isinstance(extra, dict):
                field_schema.update(extra)
            field_schema.pop("default", None)  # left out means unchanged, not this value

        annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[name] = (annotation, Field(None, description=info.description, json_schema_extra=no_default))
    return create_model(f"{schema.__name__.removesuffix('In')}ChangeIn", __base__=schema, **fields)


class OrderIn(OrderSpecIn):
    account_id: AccountId


class OrderChangeIn(In):
    quantity: Quantity | None = None
    price: Number | None = Field(None, lt=MAX_PRICE)
    trigger_price: Number | None = Field(None, lt=MAX_PRICE)
    order_type: OrderType | None = None


class OrderOut(Schema):
    id: int
    reference: str
    account_id: int
    exchange: str = Field(..., alias="instrument.exchange")
    tradingsymbol: str = Field(..., alias="instrument.tradingsymbol")
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
    triggered_at: datetime | None = Field(
        ..., description="When the broker said this stop order (SL / SL-M) triggered: its trigger can no longer change."
    )
    created_at: datetime
    updated_at: datetime


class OrderEventOut(Schema):
    kind: str
    from_status: str
    to_status: str
    cause: str
    message: str
    summary: str = Field(
        ..., description="The message, or what the event's data says (a modify's changes, who asked for a cancel)."
    )
    data: dict = Field(
        ..., description="What the event recorded, values as text (a modify's changes, the prices placed at)."
    )
    created_at: datetime


OrderPage = page_schema("OrderPage", OrderOut, counted="All the orders matching the filters (and below `before_id`).")


class OrderFilters(PageFilters):
    account_id: int | None = Field(None, ge=1, le=MAX_ID)
    status: list[Literal["open", *Order.Status.values]] | None = Field(  # type: ignore[valid-type]
        None,
        description=(
            "Any of these statuses. `open` (lower case): every order not final (NEW, SUBMITTED, OPEN, "
            "PARTIALLY_FILLED); `OPEN`: only orders resting at the broker."
        ),
    )
    source: Literal[*Order.Source.values] | None = None  # type: ignore[valid-type]
    symbol: str | None = Field(None, max_length=64)
    since: TimeFilter = None


class PlacementOut(Schema):
    account_id: int
    account: str
    symbol: str | None = None
    side: str | None = None
    quantity: int | None = None
    order_id: int | None = None
    reference: str | None = None
    status: str
    reason: str | None = None
    error: str | None = None
    field: str | None = None
    item: int | None = Field(None, description="A basket's row: the number of its item in the basket (1: the first).")

    @staticmethod
    def resolve_field(row) -> str | None:
        return api_field(row.get("field"))


# --- Orders ----------------------------------------------------------------------------------


@router.get("/orders", response=OrderPage)
def order_list(request, filters: Query[OrderFilters]):
    """The caller's orders, newest first (by id). To page through all of them, pass the last id of each page
    as `before_id` for the next: orders placed, or leaving the filter, meanwhile do not shift the pages."""
    account_for(request, filters.account_id)
    orders = selectors.orders_of(
        request.user,
        account=filters.account_id,
        status=filters.status,
        source=filters.source,
        symbol=filters.symbol,
        since=filters.since,
    )
    return page_of(orders, filters)


@router.get("/orders/{order_id}", response=OrderOut)
def order_detail(request, order_id: int):
    return selectors.order_of(request.user, order_id)


@router.get("/orders/{order_id}/events", response=list[OrderEventOut])
def order_events(request, order_id: int):
    return selectors.order_of(request.user, order_id).events.all()


@router.post("/orders", response={201: OrderOut, 200: OrderOut})
def order_create(request, payload: OrderIn, idempotency_key: str | None = IdempotencyKey):
    """Place an order. Send ``Idempotency-Key`` to make retries safe: a repeat returns the same order (200)."""
    key = _api_key(idempotency_key)
    account = account_for(request, payload.account_id)
    order = services.order_place(
        actor=request.user,
        account=account,
        **payload.spec(),
        source=Order.Source.MANUAL,
        cause=f"API by {request.user.username}",
        idempotency_key=key,
    )
    return Status(200 if getattr(order, "replayed", False) else 201, order)


@router.patch("/orders/{order_id}", response=OrderOut)
def order_change(request, order_id: int, payload: OrderChangeIn):
    order = selectors.order_of(request.user, order_id)
    return services.order_modify(
        order=order, actor=request.user, cause=f"API by {request.user.username}", **payload.dict(exclude_none=True)
    )


@router.post("/orders/{order_id}/cancel", response=OrderOut)
def order_cancel(request, order_id: int):
    order = selectors.order_of(request.user, order_id)
    return services.order_cancel(order=order, actor=request.user, cause=f"API by {request.user.username}")


# --- Baskets ---------------------------------------------------------------------------------


class BasketIn(In):
    name: str = Field(..., min_length=1, max_length=100)
    account_ids: list[AccountId] = []
    items: list[OrderSpecIn] = Field(..., min_length=1, max_length=100)


class BasketItemOut(Schema):
    id: int
    exchange: str = Field(..., alias="instrument.exchange")
    tradingsymbol: str = Field(..., alias="instrument.tradingsymbol")
    side: str
    quantity: int
    order_type: str
    product: str
    validity: str
    price: Decimal | None
    trigger_price: Decimal | None


class BasketOut(Schema):
    id: int
    name: str
    account_ids: list[int]
    items: list[BasketItemOut]
    last_placed_at: datetime | None
    last_results: list[PlacementOut]

    @staticmethod
    def resolve_account_ids(basket):
        return [account.pk for account in basket.accounts.all()]

    @staticmethod
    def resolve_items(basket):
        return list(basket.items.all())

    @staticmethod
    def resolve_last_results(basket):
        # Each placed row as its order is now (as the basket's page shows it), not as it was answered.
        if not hasattr(basket, "results_now"):
            basket.results_now = selectors.basket_results(basket)
        return basket.results_now or []


class BasketPlaceIn(In):
    account_ids: list[AccountId] | None = None


def _basket_items(payload: BasketIn) -> list[dict]:
    return [item.spec() for item in payload.items]


BasketPage = page_schema("BasketPage", BasketOut, counted="All your baskets (below `before_id`, when given).")


@router.get("/baskets", response=BasketPage)
def basket_list(request, filters: Query[PageFilters]):
    """Your baskets, newest first (by id). To page through all of them, pass the last id of each page as
    `before_id` for the next: baskets created meanwhile do not shift the pages."""
    page = page_of(selectors.baskets_of(request.user), filters)
    selectors.baskets_results_now(page["items"])  # in one read, not one per basket
    return page


@router.post("/baskets", response={201: BasketOut, 200: BasketOut})
def basket_create(request, payload: BasketIn, idempotency_key: str | None = IdempotencyKey):
    """Create a basket. Send ``Idempotency-Key`` to make retries safe: a repeat returns the same basket
    (200), not "name taken" by it; the same key with another basket is a 409 naming it."""
    basket = sources.basket_save(
        owner=request.user,
        name=payload.name,
        items=_basket_items(payload),
        account_ids=payload.account_ids,
        create_key=_api_key(idempotency_key),
    )
    return Status(200 if getattr(basket, "replayed", False) else 201, selectors.basket_of(request.user, basket.pk))


@router.get("/baskets/{basket_id}", response=BasketOut)
def basket_detail(request, basket_id: int):
    return selectors.basket_of(request.user, basket_id)


@router.put("/baskets/{basket_id}", response=BasketOut)
def basket_update(request, basket_id: int, payload: BasketIn):
    basket = selectors.basket_of(request.user, basket_id)
    sources.basket_save(
        owner=request.user,
        basket=basket,
        name=payload.name,
        items=_basket_items(payload),
        account_ids=payload.account_ids,
    )
    return selectors.basket_of(request.user, basket_id)


BasketChangeIn = partial_of(BasketIn)


@router.patch("/baskets/{basket_id}", response=BasketOut)
def basket_change(request, basket_id: int, payload: BasketChangeIn):
    """Change only the fields sent; the others stay as they are now, whatever another request changed
    meanwhile. `items`, when sent, replace them all."""
    basket = selectors.basket_of(request.user, basket_id)
    sources.basket_change(
        owner=request.user,
        basket=basket,
        name=payload.name,
        items=_basket_items(payload) if payload.items is not None else None,
        account_ids=payload.account_ids,
    )
    return selectors.basket_of(request.user, basket_id)


@router.delete("/baskets/{basket_id}", response={204: None})
def basket_delete(request, basket_id: int):
    selectors.basket_of(request.user, basket_id).delete()
    return Status(204, None)


@router.post("/baskets/{basket_id}/place", response=list[PlacementOut])
def basket_place(
    request, basket_id: int, payload: BasketPlaceIn | None = None, idempotency_key: str | None = IdempotencyKey
):
    """Place every item on each account. ``Idempotency-Key`` makes a retried call return the same orders."""
    basket = selectors.basket_of(request.user, basket_id)
    key = idempotency_key or secrets.token_hex(8)
    if len(key) > 100:
        raise ValidationError({"idempotency_key": "At most 100 characters."})
    run_token = "api:" + hashlib.sha256(key.encode()).hexdigest()[:40]  # fits the order key column, any length
    account_ids = payload.account_ids if payload else None  # no body: the basket's own accounts
    return sources.basket_place(basket=basket, actor=request.user, run_token=run_token, account_ids=account_ids)


# --- Scheduled orders --------------------------------------------------------------------------


class ScheduledIn(OrderSpecIn):
    account_id: AccountId
    recurrence: Literal["once", "trading_days", "weekdays"] = "once"
    run_on: date | None = None
    weekdays: list[Annotated[int, Field(strict=True)]] = []
    time_of_day: time = Field(..., json_schema_extra={"format": "partial-time"})
    timezone: str | None = None
    grace_s: int = Field(0, ge=0, le=86400, strict=True)

    @field_validator("time_of_day")
    @classmethod
    def wall_clock_time(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("Give the time without an offset; `timezone` says where it is.")
        return value


class ScheduledOut(Schema):
    id: int
    account_id: int
    exchange: str = Field(..., alias="instrument.exchange")
    tradingsymbol: str = Field(..., alias="instrument.tradingsymbol")
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
    # A wall-clock time in `timezone`, without an offset: RFC 3339's partial-time, not "time".
    time_of_day: time = Field(..., json_schema_extra={"format": "partial-time"})
    timezone: str
    grace_s: int
    status: str
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_result: str
    placing_due_at: datetime | None = Field(
        None,
        description="On a cancel's answer only: the due time of a run a worker was already placing, too late "
        "to stop; its order goes out as it was (see the orders list).",
    )

    @staticmethod
    def resolve_last_result(scheduled):
        # The run's order as it is now (as the page shows it), not as it was when placed.
        if not hasattr(scheduled, "result_now"):
            selectors.scheduled_results_now([scheduled])
        return scheduled.result_now


def _scheduled_save(
    request, payload: ScheduledIn, scheduled: ScheduledOrder | None = None, idempotency_key: str | None = None
) -> ScheduledOrder:
    spec = payload.spec()
    spec.pop("validity")
    return sources.scheduled_save(
        owner=request.user,
        account=account_for(request, payload.account_id),
        spec={**spec, "validity": payload.validity},
        recurrence=payload.recurrence,
        time_of_day=payload.time_of_day,
        timezone_name=payload.timezone or request.user.timezone,
        run_on=payload.run_on,
        weekdays=payload.weekdays,
        grace_s=payload.grace_s,
        scheduled=scheduled,
        idempotency_key=idempotency_key,
    )


ScheduledPage = page_schema(
    "ScheduledPage",
    ScheduledOut,
    counted="All your scheduled orders (below `before_id`, when given).",
    order="by id, descending; cancelled and done ones too",
)


@router.get("/scheduled", response=ScheduledPage)
def scheduled_list(request, filters: Query[PageFilters]):
    """Your scheduled orders, newest first (by id: a next run changes as rows run, an id does not, so the
    pages stay put). To page through all of them, pass the last id of each page as `before_id` for the next."""
    page = page_of(selectors.scheduled_of(request.user), filters)
    selectors.scheduled_results_now(page["items"])  # in one read, not one per row
    return page


@router.post("/scheduled", response={201: ScheduledOut, 200: ScheduledOut})
def scheduled_create(request, payload: ScheduledIn, idempotency_key: str | None = IdempotencyKey):
    """Schedule an order. Send ``Idempotency-Key`` to make retries safe: a repeat returns the same
    scheduled order (200)."""
    scheduled = _scheduled_save(request, payload, idempotency_key=_api_key(idempotency_key))
    return Status(200 if getattr(scheduled, "replayed", False) else 201, scheduled)


@router.get("/scheduled/{scheduled_id}", response=ScheduledOut)
def scheduled_detail(request, scheduled_id: int):
    return selectors.scheduled_one_of(request.user, scheduled_id)


@router.put("/scheduled/{scheduled_id}", response=ScheduledOut)
def scheduled_update(request, scheduled_id: int, payload: ScheduledIn):
    return _scheduled_save(request, payload, selectors.scheduled_one_of(request.user, scheduled_id))


ScheduledChangeIn = partial_of(ScheduledIn)


@router.patch("/scheduled/{scheduled_id}", response=ScheduledOut)
def scheduled_change(request, scheduled_id: int, payload: ScheduledChangeIn):
    """Change only the fields sent; the others stay as they are now, whatever another request changed
    meanwhile. The result is checked as a whole (a change to MARKET needs `price` null too). `timezone`
    null is yours."""
    scheduled = selectors.scheduled_one_of(request.user, scheduled_id)
    changes = payload.dict(exclude_unset=True)
    if "account_id" in changes:
        changes["account"] = account_for(request, changes.pop("account_id"))
    if "timezone" in changes:
        changes["timezone_name"] = changes.pop("timezone") or request.user.timezone
    return sources.scheduled_change(owner=request.user, scheduled=scheduled, **changes)


@router.delete("/scheduled/{scheduled_id}", response=ScheduledOut)
def scheduled_delete(request, scheduled_id: int):
    """Cancel it (the row stays, with the orders it produced). A run a worker is placing already goes
    out as it was: `placing_due_at` is its due time."""
    scheduled = selectors.scheduled_one_of(request.user, scheduled_id)
    cancelled = sources.scheduled_cancel(scheduled=scheduled, actor=request.user)
    scheduled.refresh_from_db()
    scheduled.placing_due_at = cancelled.placing_due
    return scheduled


# --- Strategies ------------------------------------------------------------------------------


class StrategyIn(In):
    name: str = Field(..., min_length=1, max_length=100)
    account_ids: list[AccountId] = []
    stop_loss: Number | None = Field(None, gt=0)
    stop_loss_unit: Literal["percent", "points"] = "percent"
    take_profit: Number | None = Field(None, gt=0)
    take_profit_unit: Literal["percent", "points"] = "percent"
    trailing_step: Number | None = Field(None, gt=0)
    reentry_enabled: bool = False
    max_reentries: int = Field(0, ge=0, le=sources.MAX_REENTRIES, strict=True)
    chase_after_s: int | None = Field(None, ge=1, strict=True)
    chase_max_ticks: int | None = Field(None, ge=1, strict=True)
    chase_max_percent: Number | None = Field(None, gt=0)
    max_retries: int = Field(0, ge=0, le=sources.MAX_RETRIES, strict=True)
    retryable_kinds: list[str] = Field(
        [], description=f"Rejection kinds an entry is retried for; none: {', '.join(RejectKind.RETRYABLE_BY_NATURE)}."
    )
    is_active: bool = True


class StrategyOut(Schema):
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

    @staticmethod
    def resolve_account_ids(strategy):
        return [account.pk for account in strategy.accounts.all()]

    @staticmethod
    def resolve_webhook_url(strategy, context):
        from django.urls import reverse

        return context["request"].build_absolute_uri(reverse("strategy_webhook", args=[strategy.pk]))


class StrategyCreated(StrategyOut):
    webhook_secret: str = Field(..., description="Shown once; keep it to sign webhook alerts.")


class SignalIn(In):
    id: str = Field(..., min_length=1, max_length=64, description="Unique per strategy; a repeat places nothing.")
    exchange: str = Field("NSE", max_length=16)  # as the ticket's: a bound makes it checked as text too
    tradingsymbol: str = Field(..., max_length=64)
    side: Side
    quantity: Quantity
    order_type: OrderType = "MARKET"
    product: Product = "MIS"
    price: Number | None = Field(None, lt=MAX_PRICE)
    trigger_price: Number | None = Field(None, lt=MAX_PRICE)


class SignalOut(Schema):
    signal: str
    replayed: bool
    results: list[PlacementOut]


def _strategy_params(payload: StrategyIn) -> dict:
    return payload.dict(exclude={"name", "account_ids"})


StrategyPage = page_schema("StrategyPage", StrategyOut, counted="All your strategies (below `before_id`, when given).")


@router.get("/strategies", response=StrategyPage)
def strategy_list(request, filters: Query[PageFilters]):
    """Your strategies, newest first (by id). To page through all of them, pass the last id of each page as
    `before_id` for the next."""
    return page_of(selectors.strategies_of(request.user), filters)


@router.post("/strategies", response={201: StrategyCreated, 200: StrategyCreated})
def strategy_create(request, payload: StrategyIn, idempotency_key: str | None = IdempotencyKey):
    """Create a strategy; its ``webhook_secret`` is in this answer only. Send ``Idempotency-Key`` to
    make retries safe: a repeat returns the same strategy (200) with a new secret (the first answer's
    may never have arrived), and the first answer's secret stops working."""
    created, secret = sources.strategy_save(
        owner=request.user,
        name=payload.name,
        account_ids=payload.account_ids,
        create_key=_api_key(idempotency_key),
        **_strategy_params(payload),
    )
    strategy = selectors.strategy_of(request.user, created.pk)  # as stored: 1E+1 is answered 10.00
    strategy.webhook_secret = secret
    return Status(200 if getattr(created, "replayed", False) else 201, strategy)


@router.get("/strategies/{strategy_id}", response=StrategyOut)
def strategy_detail(request, strategy_id: int):
    return selectors.strategy_of(request.user, strategy_id)


class StrategyPutIn(StrategyIn):
    """A PUT is the whole strategy: whether it is live must be said, not taken as the default (a
    client leaving it out would make a paused strategy trade again)."""

    is_active: bool = Field(..., description="Required in a PUT: left out, a paused strategy would go live.")


@router.put("/strategies/{strategy_id}", response=StrategyOut)
def strategy_update(request, strategy_id: int, payload: StrategyPutIn):
    strategy = selectors.strategy_of(request.user, strategy_id)
    sources.strategy_save(
        owner=request.user,
        strategy=strategy,
        name=payload.name,
        account_ids=payload.account_ids,
        **_strategy_params(payload),
    )
    return selectors.strategy_of(request.user, strategy_id)


StrategyChangeIn = partial_of(StrategyIn)


@router.patch("/strategies/{strategy_id}", response=StrategyOut)
def strategy_change(request, strategy_id: int, payload: StrategyChangeIn):
    """Change only the fields sent; the others stay as they are now, whatever another request changed
    meanwhile. The rules between fields apply to the result (a trailing step needs a stop-loss); null
    clears a setting that may be empty."""
    strategy = selectors.strategy_of(request.user, strategy_id)
    sources.strategy_change(owner=request.user, strategy=strategy, **payload.dict(exclude_unset=True))
    return selectors.strategy_of(request.user, strategy_id)


@router.delete("/strategies/{strategy_id}", response={204: None})
def strategy_delete(request, strategy_id: int):
    sources.strategy_delete(owner=request.user, strategy=selectors.strategy_of(request.user, strategy_id))
    return Status(204, None)


@router.post("/strategies/{strategy_id}/secret", response=StrategyCreated)
def strategy_new_secret(request, strategy_id: int):
    strategy = selectors.strategy_of(request.user, strategy_id)
    secret = sources.strategy_rotate_secret(strategy=strategy)
    strategy = selectors.strategy_of(request.user, strategy_id)
    strategy.webhook_secret = secret
    return strategy


@router.post("/strategies/{strategy_id}/signal", response={201: SignalOut, 200: SignalOut})
def strategy_signal(request, strategy_id: int, payload: SignalIn):
    strategy = selectors.strategy_of(request.user, strategy_id)
    signal, replayed = sources.strategy_signal(
        strategy=strategy,
        actor=request.user,
        signal_id=payload.id,
        via="api",
        instrument=instrument_by_symbol(payload.exchange, payload.tradingsymbol),
        side=payload.side,
        quantity=payload.quantity,
        order_type=payload.order_type,
        product=payload.product,
        price=payload.price,
        trigger_price=payload.trigger_price,
    )
    body = {"signal": signal.signal_id, "replayed": replayed, "results": signal.results}
    return Status(200 if replayed else 201, body)
