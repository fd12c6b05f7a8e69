"""The one order-processing path, for every source (DESIGN section 4).

``order_place``:
1. validates (ownership, active account, instrument, lot and tick multiples, price and
   trigger rules per order type, product, risk limits) and sends nothing on a bad field;
2. in one transaction takes the account's next daily number (one UPDATE, so gap-free and
   unique under concurrent placement), writes the ``Order`` (NEW) and its first event;
3. gets a live broker session (through ``AccountBroker``);
4. calls the broker with the order's reference as its tag; a lost answer is resolved by
   looking the order up by that tag before anything is sent again;
5. records the result (SUBMITTED with the broker's id, REJECTED or FAILED with the mapped
   reason, or an unknown outcome to reconcile) with an event, and pushes the change to the
   trader's pages after commit.

A client idempotency key returns the same order on a repeat. Every status change is a
conditional update (only from the status we read), so two workers cannot both apply one.
"""

import functools
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from types import SimpleNamespace

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import BrokerAccount
from brokers import registry
from brokers.base import (
    IST,
    MULTIPLIED_EXCHANGES,
    STOP_MARKET_BLOCKED,
    BrokerOrder,
    OrderChange,
    OrderRequest,
    PlacedOrder,
    Status,
    stop_market_allowed,
)
from brokers.client import AccountBroker
from brokers.errors import (
    AuthError,
    BrokerError,
    InputError,
    NetworkError,
    OrderRejected,
    OutcomeUnknown,
    RateLimited,
    RejectKind,
    SendTooLate,
)
from brokers.markets import trading_date
from brokers.models import Instrument
from brokers.selectors import instrument_last_price, prices_fed_by
from brokers.services import placed_fills_recorder
from tradingplatform import locks, metrics, numbers
from tradingplatform.db import PlainInserts, PlainUpdate
from tradingplatform.memo import Memo

from .models import ORDER_TYPES, DailyCounter, Order, OrderEvent, ScheduledFire, Strategy

logger = logging.getLogger(__name__)

OrderStatus = Order.Status


class OrderActionRefused(Exception):
    """A modify or cancel that cannot be done; ``field`` names the input at fault, if any.
    ``outcome_unknown``: it was sent and the broker's answer lost, so it may have been done."""

    def __init__(self, message: str, *, field: str | None = None, outcome_unknown: bool = False):
        super().__init__(message)
        self.message = message
        self.field = field
        self.outcome_unknown = outcome_unknown


# --- Validation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checked:
    account: BrokerAccount
    instrument: Instrument
    side: str
    quantity: int
    order_type: str
    product: str
    validity: str
    price: Decimal | None
    trigger_price: Decimal | None


def request_hash(account, instrument, side, quantity, order_type, product, validity, price, trigger_price) -> str:
    """What an order asks for, as a digest: a repeated idempotency key must ask for the same."""

    def norm(value):
        try:
            return str(Decimal(str(value)).normalize()) if value not in (None, "") else None
        except ArithmeticError:
            return str(value)

    body = [
        getattr(account, "pk", None),
        getattr(instrument, "pk", None),
        side,
        norm(quantity),
        order_type,
        product,
        validity,
        norm(price),
        norm(trigger_price),
    ]
    return hashlib.sha256(json.dumps(body).encode()).hexdigest()


# What the order columns hold on every database: a larger value is an error naming the field.
MAX_QUANTITY = 2**31 - 1  # PositiveIntegerField
MAX_PRICE = Decimal(10**12)  # DecimalField(max_digits=14, decimal_places=2)
PRICE_PLACES = Decimal("0.01")


def _decimal(value, field: str) -> Decimal | None:
    if value in (None, ""):
        return None
    if isinstance(value, bool):
        raise ValidationError({field: "Enter a number."})
    if numbers.separated(value):
        raise ValidationError({field: numbers.SEPARATOR_MESSAGE})
    try:
        result = Decimal(str(value))
    except ArithmeticError:
        raise ValidationError({field: "Enter a number."}) from None
    if not result.is_finite():
        raise ValidationError({field: "Enter a number."})
    if result.copy_abs() >= MAX_PRICE:  # not abs(): it rounds, and overflows on 1e999999999
        # A price is above 0 (a large negative one is not "too large" but below 0).
        raise ValidationError({field: f"Must be below {MAX_PRICE:,}." if result > 0 else "Must be above 0."})
    return result


WHOLE_QUANTITY = "Enter the quantity as a whole number in digits, e.g. 75."


def positive_quantity(value) -> int:
    """A quantity as a whole number above 0, or a ValidationError naming ``quantity``: a number
    (75, or 75.0 as TradingView's placeholders can write one), or its digits ("75", "75.0": a
    webhook's text). A fraction, an exponent, a sign or spaces ("75.5", "1E+1", "+75", " 75 ") are
    refused, not read as 75 or 10: 1.9 is not cut to 1."""
    if numbers.separated(value):
        raise ValidationError({"quantity": numbers.SEPARATOR_MESSAGE})
    if isinstance(value, str):
        whole, point, zeros = value.partition(".")
        if not (whole.isascii() and whole.isdigit() and (not point or (zeros and not zeros.strip("0")))):
            raise ValidationError({"quantity": WHOLE_QUANTITY})
        digits = whole.lstrip("0")
        number = int(digits or "0") if len(digits) <= len(str(MAX_QUANTITY)) else MAX_QUANTITY + 1
    elif isinstance(value, Decimal) and value.is_finite() and value.as_tuple().exponent <= 0:
        if abs(value) > MAX_QUANTITY:  # told as such (and never divided: past 28 digits it cannot be)
            number = MAX_QUANTITY + 1 if value > 0 else 0
        elif value % 1:
            raise ValidationError({"quantity": WHOLE_QUANTITY})
        else:
            number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:  # true, None, a JSON 75.0 or 1e1 (read as Decimal("75.0"), Decimal("1E+1")), a list
        raise ValidationError({"quantity": WHOLE_QUANTITY})
    if number <= 0:
        raise ValidationError({"quantity": "Quantity must be greater than 0."})
    if number > MAX_QUANTITY:
        raise ValidationError({"quantity": f"At most {MAX_QUANTITY:,}."})
    return int(number)


NRML_ON_EQUITY = "NRML is for derivatives; use CNC (delivery) or MIS (intraday) for equity."


def spec_check(
    *,
    instrument: Instrument | None,
    side: str,
    quantity,
    order_type: str,
    product: str,
    validity: str = "DAY",
    price=None,
    trigger_price=None,
    equity_nrml: bool = False,
) -> tuple[int, Decimal | None, Decimal | None]:
    """The rules an order's own fields must meet, whatever account it goes to: the choices, the
    quantity in whole lots (a basket item's or a signal's too: only its copies, after an
    account's multiplier, are rounded down to lots), the price and trigger rules of its type,
    the tick size. ``equity_nrml``: NRML on equity is left to the caller (``order_check``: an
    exit of an NRML equity position held from before it was refused is taken).
    Returns (quantity, price, trigger price) as the order stores them. Raises ValidationError
    naming the field."""
    if instrument is None:
        raise ValidationError({"instrument": "No such instrument."})
    if instrument.is_expired:
        raise ValidationError(
            {"instrument": f"{instrument} expired on {instrument.expiry:%Y-%m-%d}; it cannot be traded."}
        )
    if instrument.exchange in MULTIPLIED_EXCHANGES:
        raise ValidationError(
            {
                "instrument": f"{instrument.exchange} contracts are not traded here yet "
                "(their PnL needs the contract multiplier)."
            }
        )
    if side not in ("BUY", "SELL"):
        raise ValidationError({"side": "Choose BUY or SELL."})
    if order_type not in ("MARKET", "LIMIT", "SL", "SL-M"):
        raise ValidationError({"order_type": "Choose MARKET, LIMIT, SL or SL-M."})
    if order_type == "SL-M" and not stop_market_allowed(instrument):
        raise ValidationError({"order_type": f"{instrument.tradingsymbol}: {STOP_MARKET_BLOCKED}"})
    if validity not in ("DAY", "IOC"):
        raise ValidationError({"validity": "Choose DAY or IOC."})
    if product not in ("CNC", "MIS", "NRML"):
        raise ValidationError({"product": "Choose CNC, MIS or NRML."})
    if product == "CNC" and instrument.instrument_type != "EQ":
        raise ValidationError({"product": "CNC is for equity delivery; use NRML or MIS for derivatives."})
    if product == "NRML" and instrument.instrument_type == "EQ" and not equity_nrml:
        # Carry forward is for derivatives (the broker refuses it on equity): an equity NRML sell
        # would be a short carried overnight, which the cash market does not allow.
        raise ValidationError({"product": NRML_ON_EQUITY})
    quantity = positive_quantity(quantity)
    if quantity % instrument.lot_size:
        raise ValidationError({"quantity": f"Quantity must be a multiple of the lot size, {instrument.lot_size}."})
    price = _decimal(price, "price")
    trigger_price = _decimal(trigger_price, "trigger_price")
    tick = instrument.tick_size
    if order_type in ("LIMIT", "SL"):
        if price is None or price <= 0:
            raise ValidationError({"price": f"A {order_type} order needs a price above 0."})
        if price % tick:
            raise ValidationError({"price": f"Price must be a multiple of the tick size, {tick.normalize()}."})
    elif price is not None:
        raise ValidationError({"price": f"A {order_type} order takes no price."})
    if order_type in ("SL", "SL-M"):
        if trigger_price is None or trigger_price <= 0:
            raise ValidationError({"trigger_price": f"A {order_type} order needs a trigger price above 0."})
        if trigger_price % tick:
            raise ValidationError(
                {"trigger_price": f"Trigger price must be a multiple of the tick size, {tick.normalize()}."}
            )
        if order_type == "SL" and side == "BUY" and price < trigger_price:
            raise ValidationError({"price": "A buy stop-loss limit price must be at or above its trigger."})
        if order_type == "SL" and side == "SELL" and price > trigger_price:
            raise ValidationError({"price": "A sell stop-loss limit price must be at or below its trigger."})
    elif trigger_price is not None:
        raise ValidationError({"trigger_price": f"A {order_type} order takes no trigger price."})
    return quantity, _as_stored(price, "price"), _as_stored(trigger_price, "trigger_price")


def stop_loss_terms(
    instrument: Instrument, side: str, trigger: Decimal, circuit: tuple[Decimal, Decimal] | None = None
) -> dict:
    """The terms of a stop-loss at ``trigger`` that the platform places itself (a strategy's exit):
    SL-M where the instrument takes it, else (an option: Kite blocks SL-M there) an SL whose limit
    is ``stop_limit_price``'s, so the stop is placed, not refused at the broker each run while the
    position goes unprotected. ``circuit``: the instrument's (lower, upper) circuit limits where
    known (``stop_limit_in_circuit``)."""
    if stop_market_allowed(instrument):
        return {"order_type": "SL-M", "trigger_price": trigger, "price": None}
    return {"order_type": "SL", "trigger_price": trigger, "price": stop_limit_price(instrument, side, trigger, circuit)}


def stop_limit_price(
    instrument: Instrument, side: str, trigger: Decimal, circuit: tuple[Decimal, Decimal] | None = None
) -> Decimal:
    """The limit of a ``side`` stop-loss limit at ``trigger``: STOP_LIMIT_PROTECTION_PERCENT of the
    trigger beyond it (under a SELL stop's trigger, over a BUY stop's), on the tick away from the
    trigger, at least one tick beyond it, and never under one tick (a price above 0); held inside
    ``circuit`` where known (``stop_limit_in_circuit``)."""
    tick = instrument.tick_size
    band = trigger * settings.STOP_LIMIT_PROTECTION_PERCENT / 100
    if side == "SELL":
        price = ((trigger - band) / tick).to_integral_value(rounding=ROUND_FLOOR) * tick
        price = max(min(price, trigger - tick), tick)
    else:
        price = ((trigger + band) / tick).to_integral_value(rounding=ROUND_CEILING) * tick
        price = max(price, trigger + tick)
    return stop_limit_in_circuit(instrument, side, trigger, price, circuit)


def stop_limit_in_circuit(
    instrument: Instrument, side: str, trigger: Decimal, price: Decimal, circuit: tuple[Decimal, Decimal] | None
) -> Decimal:
    """A ``side`` stop-loss limit's ``price`` held inside the instrument's ``circuit`` limits (lower,
    upper), on the tick: the exchange refuses an order priced outside them. A SELL stop's limit is
    not under the lower limit, a BUY stop's not over the upper one (the band to the trigger
    narrows: the market cannot trade beyond the limit today anyway). ``circuit`` None (not known):
    ``price`` as it is. A trigger outside the limits raises ValidationError on ``trigger_price``:
    the exchange refuses it too, and the market cannot reach it while the limits hold."""
    if circuit is None:
        return price.quantize(PRICE_PLACES)
    exit_in_circuit_check(instrument, trigger_price=trigger, circuit=circuit)
    lowest, highest = _circuit_ticks(instrument, circuit)
    price = max(price, lowest) if side == "SELL" else min(price, highest)
    return price.quantize(PRICE_PLACES)


def _circuit_ticks(instrument: Instrument, circuit: tuple[Decimal, Decimal]) -> tuple[Decimal, Decimal]:
    """The lowest and highest prices on the tick inside the ``circuit`` limits (lower, upper)."""
    tick = instrument.tick_size
    lower, upper = circuit
    lowest = (lower / tick).to_integral_value(rounding=ROUND_CEILING) * tick
    highest = (upper / tick).to_integral_value(rounding=ROUND_FLOOR) * tick
    return lowest, highest


def exit_in_circuit_check(
    instrument: Instrument,
    *,
    price: Decimal | None = None,
    trigger_price: Decimal | None = None,
    circuit: tuple[Decimal, Decimal] | None,
) -> None:
    """Refuse an exit the platform places itself (a strategy's take-profit limit, its stop's
    trigger) whose ``price`` or ``trigger_price`` is outside the instrument's ``circuit`` limits
    (lower, upper) today: the exchange refuses it (a price band rejection), and the market cannot
    trade there while they hold, so it could not fill today anyway. ValidationError on the field;
    it is not moved to the limit, which would trade at a price the trader did not choose.
    ``circuit`` None (not known): nothing is refused."""
    if circuit is None:
        return
    lowest, highest = _circuit_ticks(instrument, circuit)
    lower, upper = circuit
    for field, what, value in (("price", "price", price), ("trigger_price", "trigger", trigger_price)):
        if value is not None and not lowest <= value <= highest:
            raise ValidationError(
                {
                    field: f"{instrument.tradingsymbol}: the {what} {value} is outside today's circuit limits"
                    f" {lower} - {upper}; the exchange refuses it, and the market cannot reach it while they"
                    " hold."
                }
            )


def take_profit_in_circuit(
    instrument: Instrument, side: str, price: Decimal, circuit: tuple[Decimal, Decimal] | None
) -> Decimal:
    """The limit price to send for a take-profit (a ``side`` LIMIT at the trader's ``price``) given the
    instrument's ``circuit`` limits (lower, upper) today. Beyond them on the side the market has gone
    past (a sale under the lower limit, a purchase over the upper one) the market, which trades
    inside them, already fills it at a better price than the trader's: it goes at the limit, which
    the exchange takes and which trades at the market. Beyond them on the other side the market
    cannot reach it while they hold: refused, as ``exit_in_circuit_check``. ``circuit`` None (not
    known): the trader's price."""
    if circuit is None:
        return price
    lowest, highest = _circuit_ticks(instrument, circuit)
    if side == "SELL" and price < lowest:
        return lowest.quantize(PRICE_PLACES)
    if side == "BUY" and price > highest:
        return highest.quantize(PRICE_PLACES)
    exit_in_circuit_check(instrument, price=price, circuit=circuit)
    return price


def as_stored_price(value, field: str) -> Decimal | None:
    """A price as given (a number or its text) as its column holds it, or a ValidationError naming ``field``."""
    return _as_stored(_decimal(value, field), field)


def _as_stored(value: Decimal | None, field: str) -> Decimal | None:
    """A price as its column holds it (two places): "1E+3" is 1000.00 in every answer."""
    if value is None:
        return None
    stored = value.quantize(PRICE_PLACES)
    if stored != value:
        raise ValidationError({field: "At most two decimal places."})
    return stored


def order_check(
    *,
    actor,
    account: BrokerAccount,
    instrument: Instrument | None,
    side: str,
    quantity,
    order_type: str,
    product: str,
    validity: str = "DAY",
    price=None,
    trigger_price=None,
    closing: bool = False,
    as_placed: bool = False,
    modifying: Order | None = None,
) -> Checked:
    """Every rule an order must meet before it may be sent. Raises ValidationError naming the field.
    ``closing``: a strategy's exit of a position (its stop-loss or take-profit, or a trail of it),
    which the quantity and order value limits (and the open orders limit, ``_create``) do not hold
    back: they cap what an order may open, and the position it closes passed them (its exit is
    worth more than the entry was when it is above the entry's price: a target, a short's stop, a
    stop trailed up). ``as_placed``: a modify of an order at its broker that does not raise its
    quantity (its product is as it was placed: NRML on equity from before that was refused).
    ``modifying``: the order a modify changes; the quantity and order value limits refuse only what
    it raises (a cut of an order placed before a limit was lowered opens less than it did)."""
    if account is None or account.owner_id != actor.pk:
        raise ValidationError({"account": "No such broker account."})
    if not account.is_active:
        raise ValidationError({"account": f"{account.label} is deactivated."})
    quantity, price, trigger_price = spec_check(
        instrument=instrument,
        side=side,
        quantity=quantity,
        order_type=order_type,
        product=product,
        validity=validity,
        price=price,
        trigger_price=trigger_price,
        equity_nrml=True,
    )
    if (
        product == "NRML"
        and instrument.instrument_type == "EQ"
        and not (closing or as_placed or _closes_equity_nrml(account, instrument, side, quantity))
    ):
        raise ValidationError({"product": NRML_ON_EQUITY})
    if product not in account.allowed_products:
        raise ValidationError({"product": f"{product} is not allowed on {account.label}."})
    kept = modifying is not None and quantity <= modifying.quantity
    if account.max_quantity is not None and quantity > account.max_quantity and not (closing or kept):
        raise ValidationError({"quantity": f"Above this account's limit of {account.max_quantity}."})
    if account.max_order_value is not None and not closing:
        value = _order_value(account, instrument, side, order_type, quantity, price, trigger_price)
        if value > account.max_order_value and (modifying is None or value > _value_of(modifying)):
            raise ValidationError(
                {"quantity": f"Order value {value:.2f} is above this account's limit of {account.max_order_value}."}
            )
    return Checked(account, instrument, side, quantity, order_type, product, validity, price, trigger_price)


def value_check_asks_broker(account: BrokerAccount, side: str, order_type: str, *, closing: bool = False) -> bool:
    """Whether ``order_check`` values such an order at a price it asks the account's broker for
    (``instrument_last_price``: a quote call, waiting for the account's quote budget, and retried): an
    account with an order value limit, at a broker whose prices are not the instruments' last
    prices, and an order with no price of its own (MARKET) or a SELL LIMIT (valued at the market it
    fills at). A caller holding row locks checks such an order once it has let them go."""
    return (
        account.max_order_value is not None
        and not closing
        and (order_type == "MARKET" or (side == "SELL" and order_type == "LIMIT"))
        and not prices_fed_by(account.broker)
    )


def _order_value(
    account: BrokerAccount, instrument: Instrument, side: str, order_type: str, quantity: int, price, trigger_price
) -> Decimal:
    """What an order is worth against the account's order value limit (a ValidationError naming the
    instrument when it has no last price to value it at), at the last price of the account's own
    broker where it needs one (``instrument_last_price``)."""
    reference_price = price or trigger_price or instrument_last_price(instrument, account=account)
    if not reference_price:
        raise ValidationError({"instrument": "No last price to check this order's value against the limit."})
    if side == "SELL" and order_type == "LIMIT":
        # A sell limit below the market crosses on arrival and fills at the market, not at its
        # limit: valued at its limit, it passed where the same order at MARKET is refused.
        reference_price = max(reference_price, instrument_last_price(instrument, account=account) or 0)
    elif side == "SELL" and order_type == "SL":
        # A sell stop-loss limit's limit is at or below its trigger: once the price falls to the
        # trigger it sells at the market there, as an SL-M does, not at its limit.
        reference_price = trigger_price
    return reference_price * quantity


def _value_of(order: Order) -> Decimal:
    """An order's value against the limit, on its terms as they are (``_order_value``)."""
    terms = (order.order_type, order.quantity, order.price, order.trigger_price)
    return _order_value(order.account, order.instrument, order.side, *terms)


def _closes_equity_nrml(account: BrokerAccount, instrument: Instrument, side: str, quantity: int) -> bool:
    """Whether an NRML order on equity closes (part of) the account's NRML position in it, one held
    from before NRML was refused on equity: a SELL of at most what it holds, a BUY of at most what
    it is short. It opens nothing: refused, the position could not be closed in its product."""
    from portfolio.models import Position

    held = (
        Position.objects.filter(account=account, instrument=instrument, product="NRML")
        .values_list("net_quantity", flat=True)
        .first()
    ) or 0
    return 0 < quantity <= (held if side == "SELL" else -held)


# --- Placement -------------------------------------------------------------------------------


_counters_seen: set = set()  # (account id, day) rows known to exist, in this process


def counters_ready(account_ids, day) -> None:
    """Create the accounts' counter rows for the day, each committed on its own (at value 0).

    Doing this outside the order's transaction matters on MySQL: concurrent first orders
    of the day inserting the same row inside their transactions deadlock on the
    duplicate-key locks. Creating a row at 0 uses no number, so numbers stay gap-free. Call it
    before a transaction that numbers orders of these accounts.
    """
    unseen = {pk for pk in account_ids if (pk, day) not in _counters_seen}
    if not unseen:
        return
    there = set(
        DailyCounter.objects.filter(account_id__in=unseen, trading_date=day).values_list("account_id", flat=True)
    )
    for pk in sorted(unseen - there):
        try:
            with transaction.atomic():
                DailyCounter.objects.create(account_id=pk, trading_date=day, value=0)
        except IntegrityError:
            pass  # another placement created it first
    _counters_seen.update((pk, day) for pk in unseen)


def open_orders_check(account: BrokerAccount, *, besides: Order | None = None) -> None:
    """Refuse one more open order on an account at its open orders limit (``besides``: an order
    already written, not yet sent, that is that one more: not counted)."""
    if account.max_open_orders is None:
        return
    open_orders = Order.objects.filter(account=account, status__in=Order.LIVE)
    if besides is not None:
        open_orders = open_orders.exclude(pk=besides.pk)
    count = open_orders.count()
    if count >= account.max_open_orders:
        raise ValidationError({"account": f"{account.label} already has {count} open orders (its limit)."})


class _CounterMissing(Exception):
    pass


_NEXT_NUMBER_MYSQL = (
    "UPDATE orders_dailycounter SET value = LAST_INSERT_ID(value + 1) WHERE account_id = %s AND trading_date = %s"
)
_NEXT_NUMBER_RETURNING = (
    "UPDATE orders_dailycounter SET value = value + 1 WHERE account_id = %s AND trading_date = %s RETURNING value"
)


def _next_number(account: BrokerAccount, day) -> int:
    """The account's next order number today. Call inside the order's transaction: the
    UPDATE locks the counter row until commit, and a rollback gives the number back.

    One statement: MySQL hands the new value back through ``LAST_INSERT_ID(expr)`` (read
    from the client library, no second query), SQLite and PostgreSQL through ``RETURNING``.
    """
    params = [account.pk, day.isoformat()]
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            cursor.execute(_NEXT_NUMBER_MYSQL, params)
            number = cursor.lastrowid if cursor.rowcount else None
        else:
            cursor.execute(_NEXT_NUMBER_RETURNING, params)
            row = cursor.fetchone()
            number = row[0] if row else None
    if number is None:
        _counters_seen.discard((account.pk, day))
        raise _CounterMissing
    return number


TAG_LENGTH = 20  # Kite's tag rule: at most 20 alphanumerics


def reference_for(account: BrokerAccount, day, number: int) -> str:
    """``YYMMDD`` + ``A<account>`` + ``N<number>``: unique, and at most 20 alphanumerics (Kite's tag rule).

    The number is padded to six digits while the account's id leaves room for them; a longer id
    takes the room of the padding's zeros (the letters keep apart the id and the number, so each
    reference still names one account's one number)."""
    prefix = f"{reference_day(day)}{account.pk}N"
    return f"{prefix}{number:0{min(6, max(1, TAG_LENGTH - len(prefix)))}d}"


def reference_day(day) -> str:
    """How the references of the orders numbered for the trading day ``day`` begin."""
    return f"{day:%y%m%d}A"


_EVENTS = PlainInserts(OrderEvent)


def _event(order: Order, kind: str, *, cause: str, from_status="", message="", data=None) -> OrderEvent:
    return _events(order, [(kind, from_status, order.status, cause, message, data)])[0]


def _note(order: Order, kind: str, *, cause: str, message: str = "", data=None) -> OrderEvent:
    """An event that changes nothing of the order (a request, a refusal, a lost answer, a step's
    note), with the status the order has as it is written, not as ``order`` was read: the broker's
    word may have moved it meanwhile (a modify refused because the order just filled, a cancel
    whose answer was lost after the broker said it was cancelled), and the timeline would then show
    it going back. Its row is locked for the insert, so such a move lands before or after it."""
    with transaction.atomic(savepoint=False):  # within a caller's transaction, part of it
        stored = Order.objects.select_for_update().filter(pk=order.pk).values_list("status", flat=True)
        status = stored.first() or order.status
        return _events(order, [(kind, status, status, cause, message, data)])[0]


def _events(order: Order, steps) -> list[OrderEvent]:
    """The order's events, one per (kind, from, to, cause, message, data) step, in one INSERT."""
    events = [
        OrderEvent(
            order=order,
            kind=kind,
            from_status=from_status,
            to_status=to_status,
            cause=cause[:200],
            message=(message or "")[:500],
            data=data or {},
        )
        for kind, from_status, to_status, cause, message, data in steps
    ]
    _EVENTS.insert(*events)
    return events


# An order's links (its account, instrument, parent, source rows) are set when it is written and
# never change: re-reading it takes only its own fields and keeps the related rows already read
# (``refresh_from_db()`` drops them, and each later use, ``order.account`` first, reads them again).
_OWN_FIELDS = [field.name for field in Order._meta.concrete_fields if not field.is_relation]


def _reread(order: Order) -> None:
    order.refresh_from_db(fields=_OWN_FIELDS)


def _existing_for_key(key: str, request_hash: str) -> Order | None:
    """The order a key already placed (marked ``replayed``), or None. One that its first request is
    still sending is waited for (``REPLAY_WAIT_S`` at most), so a retry answers with the broker's
    word, not NEW."""
    orders = Order.objects.select_related("account", "instrument").filter(idempotency_key=key)
    order = orders.first()
    if order is not None and order.request_hash and order.request_hash != request_hash:
        raise ValidationError(
            {"idempotency_key": ValidationError("This key was already used for a different order.", code="conflict")}
        )
    return order_replayed(order, lambda: orders.first()) if order is not None else None


def order_replayed(order: Order, read=None) -> Order:
    """What a repeat answers of an order its key already placed (marked ``replayed``): one its
    first request is still sending, waited for (``REPLAY_WAIT_S`` at most); one still NEW then,
    looked up at its broker (``_replay_looked_up``). ``read``: the order read again (default: by its id)."""
    read = read or (lambda: Order.objects.select_related("account", "instrument").filter(pk=order.pk).first())
    order = settled(order, read, lambda o: o.status != OrderStatus.NEW)
    if order.status == OrderStatus.NEW and not order.scheduled_id and not connection.in_atomic_block:
        _replay_looked_up(order)
    order.replayed = True
    return order


def _replay_looked_up(order: Order) -> None:
    """A replayed order still NEW after the wait: its sender may have died after the broker took
    it, before recording the answer. Looked up by its tag (a read: nothing is sent), and what the
    broker has applied, so the retry answers with the broker's word, not NEW. Not found, it is left
    NEW while its sender may only be slow (it sends until ``SEND_WITHIN_S``), and the sync closes
    it; written ``UNSENT_STALE_S`` before the look-up, it is closed here as the sync would, so the
    retry answers that it was never sent (place it again), not NEW. One written on an earlier day
    is closed with that day only then too: written just before midnight, it may still be on its way."""
    asked_at = timezone.now()
    try:
        state = AccountBroker(order.account).find_by_tag(order.reference)
    except BrokerError:
        logger.info("replay of %s: its broker could not be asked for it", order.reference, exc_info=True)
        return
    cause = f"{broker_name(order)}'s word, looked up on a retry"
    if state is not None:
        order_apply_broker_state(order, state, cause=cause)
    elif order.created_at >= asked_at - timedelta(seconds=UNSENT_STALE_S):
        return  # its sender may still be sending it
    elif trading_date(order.created_at) < trading_date(asked_at):
        # As the sync closes it: Kite lists today's orders only, so one it took on an earlier day
        # is not found either; that day's history says whether it was.
        _closed_with_its_day(order, cause)
    else:
        _fail(order, RejectKind.NETWORK, NEVER_SENT, cause)


def settled(row, read, done):
    """``row`` once ``done(row)``, read again (``read()``) every 50 ms while its first request is
    still at work, for ``REPLAY_WAIT_S`` at most (then as it is: that request may have died; its
    reconciliation finishes it). Never inside a transaction: its snapshot would not change."""
    deadline = time.monotonic() + settings.REPLAY_WAIT_S
    while not done(row) and not connection.in_atomic_block and time.monotonic() < deadline:
        time.sleep(0.05)
        row = read() or row
    return row


def stored_idempotency_key(actor, idempotency_key: str) -> str:
    """A client's idempotency key as its order stores it: one trader's key never finds another's order."""
    return f"{actor.pk}:{idempotency_key}"


def order_place(*, broker: AccountBroker | None = None, **order) -> Order:
    """Place one order, whoever asks: ``order_prepare`` (steps 1-2), then ``order_submit`` (steps
    3-5). Takes ``order_prepare``'s arguments. Returns the order (a repeat key returns the first
    one, not sent again)."""
    placed, fresh = order_prepare(**order)
    return order_submit(order=placed, cause=order["cause"], broker=broker) if fresh else placed


def order_prepare(
    *,
    actor,
    account: BrokerAccount,
    instrument: Instrument | None,
    side: str,
    quantity,
    order_type: str,
    product: str,
    validity: str = "DAY",
    price=None,
    trigger_price=None,
    source: str,
    cause: str,
    idempotency_key: str | None = None,
    role: str = Order.Role.ENTRY,
    parent: Order | None = None,
    strategy=None,
    basket=None,
    scheduled=None,
    day=None,
    retry_count: int = 0,
    reentry_count: int = 0,
) -> tuple[Order, bool]:
    """Steps 1-2: check an order and write it NEW with its number and first event; nothing is
    sent. Returns (the order, whether this call wrote it: then ``order_submit`` sends it). A
    repeated key returns the first order (False: it is not sent again). ``day``: the trading day
    of its number (default today's; an order written ahead of its time takes the day it is sent
    on). ``retry_count``, ``reentry_count``: a strategy's retry or re-entry counts, written with
    the order's row (never after it: a stop between the two would let it count as none). Within
    a caller's transaction its writes are part of it."""
    digest = request_hash(account, instrument, side, quantity, order_type, product, validity, price, trigger_price)
    key = stored_idempotency_key(actor, idempotency_key) if idempotency_key else None
    # A repeated key is found by the unique index when the order is inserted (no read
    # first: most keys are new); a repeat that no longer validates (account deactivated,
    # limits changed) still returns the first order.
    try:
        owner_check(actor, role)
        checked = order_check(
            actor=actor,
            account=account,
            instrument=instrument,
            side=side,
            quantity=quantity,
            order_type=order_type,
            product=product,
            validity=validity,
            price=price,
            trigger_price=trigger_price,
            closing=closes_position(role, parent),
        )
    except ValidationError:
        if key and (existing := _existing_for_key(key, digest)):
            return existing, False
        raise
    try:
        order = _create(
            checked,
            key,
            digest,
            day=day or trading_date(),
            actor=actor,
            source=source,
            role=role,
            parent=parent,
            strategy=strategy,
            basket=basket,
            scheduled=scheduled,
            cause=cause,
            retry_count=retry_count,
            reentry_count=reentry_count,
        )
    except (IntegrityError, ValidationError):
        # The key's order exists (the unique index refused a second one, waiting for the
        # first request to commit if both came at once) or a limit refused the repeat.
        if key and (existing := _existing_for_key(key, digest)):
            return existing, False
        raise
    return order, True


def owner_check(actor, role: str) -> None:
    """A webhook, a schedule, a re-entry or a retry acting for a deactivated trader opens nothing
    (a ValidationError naming the account); the exits that protect their open positions are still
    placed."""
    if role == Order.Role.ENTRY and not actor.is_active:
        raise ValidationError({"account": OWNER_DEACTIVATED})


OWNER_DEACTIVATED = "This account's owner is deactivated."


def _raised(quantity, current: int) -> bool:
    """Whether a modify's quantity, as given, is above the order's (one that cannot be read is
    taken as raised: ``order_check`` names what is wrong with it)."""
    try:
        return positive_quantity(quantity) > current
    except ValidationError:
        return True


def closes_position(role: str, parent) -> bool:
    """Whether an order of this role and parent is a strategy's exit of its entry's position."""
    return role != Order.Role.ENTRY and parent is not None


def orders_unsent_drop(*, keys, cause: str) -> int:
    """Close orders written ahead of their time and never sent (``order_prepare`` without
    ``order_submit``: a scheduled time changed, cancelled or missed before it came): CANCELLED, with
    an event that says why, and their idempotency keys given back (the same due time claimed again
    writes its order anew). Within the caller's transaction, which holds what decides they are not
    to be sent. Returns how many."""
    unsent = Order.objects.select_related("account", "instrument").filter(
        idempotency_key__in=list(keys), status=OrderStatus.NEW, broker_order_id=None
    )
    return sum(
        _transition(
            order, OrderStatus.CANCELLED, kind="cancelled", cause=cause, message="never sent", idempotency_key=None
        )
        for order in unsent
    )


STRATEGY_PAUSED = "This strategy is paused."
OFF_STRATEGY = "This account is no longer one of this strategy's."


def still_open_check(account: BrokerAccount, role: str, strategy: Strategy | None) -> None:
    """Refuse (a ValidationError) an order on an account deactivated, or an entry of a strategy
    paused or taken off the account or of an owner deactivated (``owner_check``), since the caller
    read them: a monitoring run reads them at its start and places its re-entries, retries and
    chases later. Read under the rows' shared locks, in the order's transaction: a deactivation
    (``broker_account_set_active``'s UPDATE, staff's of the owner in admin), a pause or an
    account taken off (``strategy_change``, under the strategy's lock) committed before is seen, and
    one asked meanwhile waits for the order to be written, so once the trader is told "Paused" nothing
    new is opened. Shared, as the order's row's foreign keys lock them: an exclusive lock here would
    deadlock the orders that take it with those that take only the foreign key's (a strategy's
    entry holding the strategy and waiting for the account that its exit, on the same account,
    holds while it waits for the strategy), and line up every account's entry of one strategy.
    The strategy is read before the account, as ``strategy_change`` locks it before it touches its
    accounts. A paused strategy's exits are placed still, on an account taken off it too, and a
    deactivated owner's (as between runs): a pause stops new exposure, not the protection of what
    is held."""
    if role == Order.Role.ENTRY and strategy is not None:
        found = _shared_read(_strategy_on_account_sql, [account.pk, strategy.pk])
        if found is not None and not found[0]:
            raise ValidationError({"strategy": ValidationError(STRATEGY_PAUSED, code="paused")})
        if found is not None and found[1] is None:
            raise ValidationError({"strategy": ValidationError(OFF_STRATEGY, code="off_strategy")})
    found = _shared_read(_account_sql, [account.pk])
    if found is not None and not found[0]:
        raise ValidationError({"account": f"{account.label} is deactivated."})
    if found is not None and role == Order.Role.ENTRY and not found[1]:
        raise ValidationError({"account": OWNER_DEACTIVATED})


def _shared_read(sql, params: list) -> tuple | None:
    """The row ``sql()`` reads, under shared locks until the transaction ends (None: no such row)."""
    with connection.cursor() as cursor:
        cursor.execute(sql(), params)
        return cursor.fetchone()


def _share_locked(select: str) -> str:
    # Django's ORM locks rows only exclusively (``select_for_update``).
    lock = " LOCK IN SHARE MODE" if connection.vendor == "mysql" else ""
    if not lock and connection.features.has_select_for_update:
        lock = " FOR SHARE"
    return f"{select}{lock}"


@functools.cache
def _account_sql() -> str:
    """The account's ``is_active`` and its owner's (one statement: a manual order reads no more)."""
    quote, owner = connection.ops.quote_name, BrokerAccount._meta.get_field("owner")
    table, users = quote(BrokerAccount._meta.db_table), quote(owner.related_model._meta.db_table)
    return _share_locked(
        f"SELECT a.is_active, u.is_active FROM {table} a INNER JOIN {users} u ON u.id = a.{quote(owner.column)}"  # noqa: S608
        " WHERE a.id = %s"
    )


@functools.cache
def _strategy_on_account_sql() -> str:
    """The strategy's ``is_active`` and its link to the account (None: not one of its accounts)."""
    quote = connection.ops.quote_name
    accounts = Strategy._meta.get_field("accounts")
    table, link = quote(Strategy._meta.db_table), quote(accounts.m2m_db_table())
    strategy_id, account_id = quote(accounts.m2m_column_name()), quote(accounts.m2m_reverse_name())
    return _share_locked(
        f"SELECT s.is_active, l.id FROM {table} s LEFT JOIN {link} l"  # noqa: S608
        f" ON l.{strategy_id} = s.id AND l.{account_id} = %s WHERE s.id = %s"
    )


_ORDERS = PlainInserts(Order)


def _create(checked: Checked, key, request_hash, *, day, actor, cause, **links) -> Order:
    """Step 2: the day's next number, the Order (NEW) and its first event, in one transaction."""
    account = checked.account
    for _attempt in range(2):
        counters_ready([account.pk], day)
        try:
            with transaction.atomic():
                still_open_check(account, links["role"], links["strategy"])
                number = _next_number(account, day)
                # Checked under the counter's row lock, so concurrent placements cannot overshoot.
                # A strategy's exit is not held back: it protects a position already taken.
                if not closes_position(links["role"], links["parent"]):
                    open_orders_check(account)
                order = Order(
                    reference=reference_for(account, day, number),
                    account=account,
                    placed_by=actor,
                    instrument=checked.instrument,
                    side=checked.side,
                    quantity=checked.quantity,
                    order_type=checked.order_type,
                    product=checked.product,
                    validity=checked.validity,
                    price=checked.price,
                    trigger_price=checked.trigger_price,
                    idempotency_key=key,
                    request_hash=request_hash,
                    **links,
                )
                _ORDERS.insert(order)
                # The prices it was placed at: what a chase is capped against, what a trail keeps its distance to.
                placed_at = {"price": order.price, "trigger_price": order.trigger_price}
                _event(order, "created", cause=cause, data={k: str(v) for k, v in placed_at.items() if v is not None})
                return order
        except _CounterMissing:
            continue  # the row this process remembered is gone (a test rollback); make it again
    raise RuntimeError("could not take a daily order number")


class _Answers:
    """The broker's answers this process is waiting for, or has just recorded, by order reference.

    A broker that tells us every change of an order (the paper exchange) tells of a placement
    right after its own commit, usually before the placer has recorded the answer, which says the
    same. An update of an order placed in this process is compared with what its placer recorded
    instead of reading the order again; one that says more (a later fill) is applied as any other.
    The last ``KEEP`` placements are remembered (an update comes within moments of its answer).
    """

    KEEP = 4096

    def __init__(self):
        self._lock = threading.Lock()
        self._by_reference: OrderedDict[str, SimpleNamespace] = OrderedDict()

    def sending(self, order: Order) -> None:
        # Its id is handed out (``placed_order_ids``) only once its row is committed: a caller's
        # transaction may still roll it back.
        order_id = None if connection.in_atomic_block else order.pk
        with self._lock:
            self._by_reference[order.reference] = SimpleNamespace(
                account_id=order.account_id, status=None, order_id=order_id
            )
            while len(self._by_reference) > self.KEEP:
                self._by_reference.popitem(last=False)

    def forget(self, order: Order) -> None:
        """Its updates are read from the database after all."""
        with self._lock:
            self._by_reference.pop(order.reference, None)

    def recorded(self, order: Order) -> None:
        """The placer is done: the order as it left it, committed."""
        with self._lock:
            answer = self._by_reference.get(order.reference)
            if answer is not None:
                answer.quantity, answer.filled_quantity = order.quantity, order.filled_quantity
                answer.broker_order_id, answer.status = order.broker_order_id, order.status
                answer.order_type, answer.triggered_at = order.order_type, order.triggered_at

    def of(self, account: BrokerAccount, reference: str | None) -> SimpleNamespace | None:
        with self._lock:
            answer = self._by_reference.get(reference) if reference else None
        return answer if answer is not None and answer.account_id == account.pk else None

    def order_ids(self, wanted) -> dict[tuple[int, str], int]:
        with self._lock:
            answers = {(account_id, reference): self._by_reference.get(reference) for account_id, reference in wanted}
        return {
            key: answer.order_id
            for key, answer in answers.items()
            if answer is not None and answer.account_id == key[0] and answer.order_id is not None
        }


_answers = _Answers()


def placed_order_ids(wanted) -> dict[tuple[int, str], int]:
    """{(account id, reference): order id} of the ``wanted`` (account id, reference) pairs whose
    orders this process sent (the last ``_Answers.KEEP``) and had committed: what a fill the
    broker announces right after a placement here needs of its order, without reading it."""
    return _answers.order_ids(wanted)


def order_submit(*, order: Order, cause: str, broker: AccountBroker | None = None, first=None) -> Order:
    """Steps 3-5: send a NEW order to its broker and record what happened. ``first``: what the
    broker answered or raised when the order was sent with others (``orders_send_together``)."""
    _answers.sending(order)
    try:
        _submit(order, cause, broker, first)
    except BaseException:
        _answers.forget(order)  # what the order says may not be what was committed
        raise
    if connection.in_atomic_block:
        _answers.forget(order)  # a caller's transaction: not committed yet, it may still roll back
    else:
        _answers.recorded(order)
    metrics.order_outcome(order)
    return order


def order_request(order: Order) -> OrderRequest:
    """What the broker is sent for an order: its terms, its reference as the tag."""
    return OrderRequest(
        exchange=order.instrument.exchange,
        tradingsymbol=order.instrument.tradingsymbol,
        side=order.side,
        quantity=order.quantity,
        order_type=order.order_type,
        product=order.product,
        tag=order.reference,
        price=order.price,
        trigger_price=order.trigger_price,
        validity=order.validity,
    )


def orders_send_together(orders: list[tuple[Order, AccountBroker]]) -> list:
    """Send several NEW orders of any accounts at once, where their brokers can take them together
    (``AccountBroker.place_together``). For each, what its broker answered or raised, or None where
    it was not sent: ``order_submit(..., first=...)`` then records each (and sends the others)."""
    for order, _broker in orders:
        _answers.sending(order)
    return AccountBroker.place_together([(broker, order_request(order)) for order, broker in orders])


# A NEW order its broker does not have ``UNSENT_STALE_S`` after it was written has lost its sender:
# a sync closes it (FAILED, and a strategy may retry it). So its placer sends it only within
# ``SEND_WITHIN_S`` of being written, and a call still in flight then (``KITE_TIMEOUT_S`` at most)
# lands before: an order a sync closed is never sent after all. A scheduled order's is sent at its
# time, and its fire keeps the sync off it meanwhile (``_awaits_its_time``).
UNSENT_STALE_S = 60
SEND_WITHIN_S = 40
NEVER_SENT = "never reached the broker (the sender stopped)"
# How an event says an order's terms were changed at the broker, not through the platform.
BROKER_CHANGED = "found changed at the broker"
# Event data: the terms found changed at the broker ({field: value as text, or None}), when the
# broker says a status move happened (ISO time), and that an order was closed with its day without
# its last fills known (``_closed_with_its_day``).
CHANGED_AT_BROKER, BROKER_AT, FILLS_UNKNOWN = "broker_changed", "broker_at", "fills_unknown"


def _submit(order: Order, cause: str, broker: AccountBroker | None, first=None) -> None:
    broker = broker or AccountBroker(order.account)
    options = {} if first is None else {"first": first}
    if not order.scheduled_id:
        options["send_by"] = order.created_at.timestamp() + SEND_WITHIN_S
    try:
        request = order_request(order)
        placed = broker.place_order(request, **options)
    except OrderRejected as error:
        _transition(
            order,
            OrderStatus.REJECTED,
            kind="rejected",
            cause=f"{broker_name(order)} refused it",
            message=error.message,
            broker_order_id=error.broker_order_id,
            reject_kind=error.kind,
            reject_reason=error.message[:500],
        )
    except InputError as error:
        _transition(
            order,
            OrderStatus.REJECTED,
            kind="rejected",
            cause=f"{broker_name(order)} refused it",
            message=error.message,
            reject_kind=RejectKind.INPUT,
            reject_reason=error.message[:500],
        )
    except OutcomeUnknown as error:
        _unknown_outcome(order, str(error))
    except SendTooLate as error:
        message = f"{error}, waiting for the rate budget, a session or a retry; the broker does not have it"
        _fail(order, RejectKind.NETWORK, message, cause)
    except AuthError as error:
        _fail(order, "auth", f"{error} (reconnect the account)", cause)
    except RateLimited as error:
        _fail(order, RejectKind.RATE_LIMIT, str(error), cause)
    except NetworkError as error:
        _fail(order, RejectKind.NETWORK, f"{error}; the broker does not have it", f"{broker_name(order)} unreachable")
    except BrokerError as error:
        _fail(order, RejectKind.BROKER_ERROR, str(error), cause)
    except Exception as error:  # a bug on our side mid-call: the broker may have it; find out later
        logger.exception("unexpected error placing %s", order.reference)
        _unknown_outcome(order, f"{type(error).__name__} while sending")
    else:
        answered = None
        if placed.state is not None:
            # What the answer says besides (opened, filled on arrival): written by the same UPDATE.
            as_submitted = SimpleNamespace(
                status=OrderStatus.SUBMITTED,
                broker_order_id=placed.broker_order_id,
                **{
                    name: getattr(order, name)
                    for name in (
                        "quantity",
                        "filled_quantity",
                        "average_price",
                        "order_type",
                        "price",
                        "trigger_price",
                        "triggered_at",
                    )
                },
            )
            told_by = f"{broker_name(order)}'s " + ("book, by its tag" if placed.found_by_tag else "answer")
            answered = _state_step(as_submitted, placed.state, cause=told_by)
        # A lost answer, resolved by looking the order up by its tag: the timeline says it was sent once.
        lost = "; its answer was lost, and it was found by its tag" if placed.found_by_tag else ""
        submitted = functools.partial(
            _transition,
            order,
            OrderStatus.SUBMITTED,
            kind="submitted",
            cause=cause,
            message=f"broker order {placed.broker_order_id}{lost}",
            push=False,
            then=answered,
            broker_order_id=placed.broker_order_id,
            submitted_at=timezone.now(),
        )
        if _answer_record(order, placed, submitted):
            _broadcast(order, created=True)  # one push, of the order as the answer left it
        _queue_sync(order)
    if order.status == OrderStatus.NEW:
        # Our transition lost to a reconciliation that found the order at the broker by its tag
        # first (an earlier order's sync, under load): answer with the order as it is now.
        _reread(order)


def _answer_record(order: Order, placed: PlacedOrder, record_answer) -> bool:
    """``record_answer()`` (the answer's move: whether it moved the order). Where the broker held
    its own word on the change back for the answer (``placed.untold``), the fills the answer
    carries are recorded in the same transaction (one commit for both). Unless that commits and
    moves the order, the broker's word is let go, to be applied and recorded as any change of an
    order is (it brings forward an order moved meanwhile, e.g. failed by a sync while it was being
    sent; it records nothing twice); if it fails, the answer is first recorded on its own."""
    if placed.untold is None:
        return record_answer()
    status, recorded = order.status, False
    try:
        try:
            record = placed_fills_recorder(order.account, placed.fills) if placed.fills else None
            if record is not None or not placed.fills:  # else no app records fills: the broker's word carries them
                with transaction.atomic():
                    if record is not None:
                        record()  # first: if it fails, the order is left as it was read
                    moved = record_answer()
                recorded = moved
                return moved
        except Exception:
            logger.warning("%s: its answer and fills together failed; the answer alone", order.reference, exc_info=True)
        if order.status != status:
            # The move was applied to it, then rolled back, or committed with only the commit's
            # answer lost: as the database has it.
            _reread(order)
        return record_answer() if order.status == status else False
    finally:
        if not recorded:
            placed.untold()


def _fail(order: Order, kind: str, message: str, cause: str) -> None:
    """The order is not at the broker: FAILED, with why."""
    _transition(
        order,
        OrderStatus.FAILED,
        kind="failed",
        cause=cause,
        message=message,
        reject_kind=kind,
        reject_reason=message[:500],
    )


def broker_name(order: Order) -> str:
    return order.account.get_broker_display()


def order_outcome_unknown(order: Order, message: str, *, listed: bool = True) -> None:
    """A NEW order that may or may not be at its broker: marked so (SUBMITTED, ``outcome_unknown``),
    and looked up by its tag by its account's reconciliation. ``listed=False``: the broker no
    longer lists its day's orders, so no look can tell: closed (FAILED, with ``message``) for the
    trader to check the broker's own history, not left open for ever."""
    if listed:
        _unknown_outcome(order, message)
    else:
        _fail(order, RejectKind.OTHER, message, "the broker's answer was lost")


def _unknown_outcome(order: Order, message: str) -> None:
    _transition(
        order,
        OrderStatus.SUBMITTED,
        kind="outcome_unknown",
        cause="the broker's answer was lost",
        message=f"{message}; it will be looked up by its tag",
    )
    _queue_sync(order, always=True)


@dataclass(frozen=True)
class _Step:
    """A move of an order's status, with the fields it sets and the event that says why."""

    to_status: str
    kind: str
    cause: str
    message: str
    fields: dict
    data: dict | None = None  # the event's


_ORDER_UPDATE = PlainUpdate(Order)


def _exits_looked_at_again(order: Order) -> None:
    """A broker's late word changed the fills of an order already final (a cancel that had filled
    first, a fill corrected): the strategy entry it is, or is an exit of, is no longer done
    (``Order.exits_done``), so the cycle's exits look at what it holds again."""
    entry_id = order.pk if order.role == Order.Role.ENTRY else order.parent_id
    if entry_id is not None:
        Order.objects.filter(pk=entry_id, exits_done=True).update(exits_done=False)


def _transition(
    order: Order,
    to_status: str,
    *,
    kind: str,
    cause: str,
    message: str = "",
    created: bool = False,
    expect: dict | None = None,
    push: bool = True,
    then: _Step | None = None,
    data: dict | None = None,
    **fields,
) -> bool:
    """Move an order from the status we read (and the ``expect``ed field values) to ``to_status``,
    once, and push its row to the trader's pages (unless the caller pushes once for several).
    ``then``: a further move written by the same UPDATE (the broker's answer that says the order
    is already open or filled), with an event of its own; ``data``, this move's event's. Returns
    whether we did."""
    from_status = order.status
    steps = [(kind, from_status, to_status, cause, message, data)]
    if then is not None:
        steps.append((then.kind, to_status, then.to_status, then.cause, then.message, then.data))
        to_status, fields = then.to_status, {**fields, **then.fields}
    now = timezone.now()
    with transaction.atomic(savepoint=False):  # within a caller's transaction, part of it
        where = {"status": from_status, **(expect or {})}
        updated = _ORDER_UPDATE.update(order.pk, {"status": to_status, "updated_at": now, **fields}, where=where)
        if not updated:
            return False
        _events(order, steps)
        if from_status in Order.FINAL and fields.get("filled_quantity", order.filled_quantity) != order.filled_quantity:
            _exits_looked_at_again(order)
    # Once written (a failed write leaves the order as it was read); its version goes with its row.
    order.status, order.updated_at = to_status, now
    for name, value in fields.items():
        setattr(order, name, value)
    if push:  # a new order's first push is its outcome; it goes on top of the trader's order book
        _broadcast(order, created=created or from_status == OrderStatus.NEW)
    return True


def _queue_sync(order: Order, *, always: bool = False) -> None:
    """Have the order's account reconciled with its broker shortly (its monitoring run, debounced: a
    burst of orders queues one run), unless the broker tells us every change of our orders itself
    (``order_broker_update``) and the order is no strategy's (whose steps may have work at once: its
    answer may say filled). ``always``: the broker may not have the order at all, so it cannot tell
    us of it: only a look by its tag can."""
    from brokers.services import account_touched

    needs_steps = order.strategy_id or order.parent_id or _moves_a_guarded_position(order)
    if always or needs_steps or not registry.get(order.account.broker).tells_order_updates:
        account_id = order.account_id
        transaction.on_commit(lambda: account_touched(account_id))


# The positions (account, instrument, product) strategy exits are live on, read at most once a
# second per process: a burst of the trader's own fills (a scheduled square-off of 500 orders)
# costs one look, not one each. A position guarded less than a second before it is closed by hand
# waits for the next cycle, as every one did before this look.
_guarded = Memo("positions with live strategy exits", ttl_s=1.0)


def _moves_a_guarded_position(order: Order) -> bool:
    """Whether ``order`` (one of the trader's own) filled in a position a strategy's exits are
    working on: closed by hand, its exits must go at once (the account's steps), not at the next
    cycle, or the market reaching one first would open a position the other way."""
    if order.filled_quantity <= 0:
        return False
    return _guarded_position(order.account_id, order.instrument_id, order.product)


def _guarded_position(account_id: int, instrument_id: int, product: str) -> bool:
    """Whether a strategy's exits are live on the account's position in this instrument and product."""
    guarded = _guarded.get(
        "live exits",
        lambda: frozenset(
            Order.objects.filter(role__in=(Order.Role.STOP_LOSS, Order.Role.TAKE_PROFIT), status__in=Order.LIVE)
            .order_by()
            .values_list("account_id", "instrument_id", "product")
        ),
    )
    return (account_id, instrument_id, product) in guarded


def _outside_fill_moves_a_guarded_position(account: BrokerAccount, state: BrokerOrder) -> bool:
    """Whether an order not ours (placed in the broker's own app) filled in a position a strategy's
    exits are working on: closed by hand there, its exits must go at once as well
    (``_moves_a_guarded_position``)."""
    if state.filled_quantity <= 0:
        return False
    from brokers.selectors import instrument_by_symbol

    instrument = instrument_by_symbol(state.exchange, state.tradingsymbol)
    return instrument is not None and _guarded_position(account.pk, instrument.pk, state.product)


def _broadcast(order: Order, *, created: bool = False) -> None:
    from monitoring.broadcast import push_fragment

    from .selectors import orders_of

    owner_id, pk = order.account.owner_id, order.pk

    def context() -> dict | None:
        # The row as stored, read when it is sent (after commit), as the book reads it on a reload:
        # not this copy, whose values are as given before the column rounded them (a broker's
        # average of 1399.954995 shown 1399.95 here, 1399.96 on a reload), and which a push sent late
        # would show after a newer change sent first.
        stored = orders_of(owner_id).filter(pk=pk).first()
        return None if stored is None else {"order": stored, "created": created}

    push_fragment(user_id=owner_id, template="orders/partials/order_push.html", context=context)


# --- Modify and cancel -------------------------------------------------------------------------


# One modify of an order at a time (two tabs, a double click, a retried API call, the cycle's
# chase or trail): each reads the order afresh under the lock and sends only what still differs.
MODIFY_LOCK_TTL_S, MODIFY_LOCK_WAIT_S = 60.0, 15.0


def _change_lock(order: Order) -> str:
    """The one lock a modify and a cancel of an order both hold: a cancel sent while a modify's
    answer is on its way would close the order as it was read before the change (its answer and
    its events: cancelled, then modified), and a modify sent while a cancel is on its way is no
    change of an open order. Each waits for the other and reads the order afresh."""
    return f"orders:change:{order.pk}"


@contextmanager
def order_change_held(order: Order):
    """Hold ``order``'s change lock (``_change_lock``) for the block, as a modify or a cancel of it
    does; yields whether it was taken. A step placing what stands for the order (its replacement
    past the modification cap) holds it while it checks that the order is still owed one, so a
    trader's cancel of the order comes before (nothing placed) or after (it names the replacement)."""
    with locks.held(_change_lock(order), ttl_s=MODIFY_LOCK_TTL_S, wait_s=MODIFY_LOCK_WAIT_S, keep=True) as took:
        yield took


def replacements_of(order: Order):
    """The orders a step placed to replace ``order`` past the broker's modification cap
    (``monitoring.cycle``'s cancel-and-replace: their key names the order, then ``#<try>`` for a try
    after one that never reached the broker), oldest first."""
    key = stored_idempotency_key(order.account.owner, f"replace:{order.pk}")
    by_key = Q(idempotency_key=key) | Q(idempotency_key__startswith=f"{key}#")
    return Order.objects.filter(by_key, account_id=order.account_id).order_by("pk")


def replacement_owed(order: Order) -> bool:
    """Whether the latest cancel asked for ``order`` is a step's that means to replace it (past the
    modification cap): not a trader's asked since."""
    request = last_cancel_request(order)
    return request is not None and request.data.get("by") == "platform" and "replace" in request.data


def order_modify(
    *,
    order: Order,
    actor,
    cause: str,
    quantity=None,
    price=None,
    trigger_price=None,
    order_type=None,
    expect: dict | None = None,
    opens: bool = False,
) -> Order:
    """Change an open order at its broker; the order's fields change only when the broker agrees.
    Values not given (None or "") stay as the order has them when the change is made. ``expect``:
    the order's values the change was worked out from (a step's trail, chase or cut); if another
    change made meanwhile (the trader's, by hand) left others, nothing is sent, as it is no longer
    the change meant (a trail would loosen a stop the trader had just tightened). ``opens``: a
    step's move of a strategy's entry toward the market (a chase), which opens exposure as a new
    entry would: refused as one would be (``still_open_check``: the strategy paused, the account
    taken off it or deactivated, the owner deactivated, since the step read them: checked under
    the order's change lock, just before the move is sent)."""
    if order.account.owner_id != actor.pk:
        raise OrderActionRefused("No such order.")
    with locks.held(_change_lock(order), ttl_s=MODIFY_LOCK_TTL_S, wait_s=MODIFY_LOCK_WAIT_S, keep=True) as took:
        if not took:
            raise OrderActionRefused("Another change of this order is still being made; try again.")
        _reread(order)
        changed = [name for name, value in (expect or {}).items() if getattr(order, name) != value]
        if changed:
            raise OrderActionRefused(f"The order was changed meanwhile ({', '.join(changed)}); nothing was sent.")
        terms = {"quantity": quantity, "price": price, "trigger_price": trigger_price, "order_type": order_type}
        if opens:
            return _modify_still_open(order, actor, cause, **terms)
        return _modify(order, actor, cause, **terms)


def _modify_still_open(order: Order, actor, cause: str, **terms) -> Order:
    """``_modify`` once ``still_open_check`` passes, read under the rows' shared locks in a
    transaction of its own. Not held across the broker call: a transaction open around it would
    keep a session renewed meanwhile uncommitted after its login lock is gone (so another worker
    logs in again), and hold a pause, a deactivation or the owner's sign-in behind the broker's
    retries. A pause that commits after the check is answered with the move on its way, as one
    answered after an entry's row is written sees that entry sent."""
    with transaction.atomic():
        still_open_check(order.account, order.role, order.strategy)
    return _modify(order, actor, cause, **terms)


def modify_refusal(order: Order) -> OrderActionRefused | None:
    """Why ``order``, as read, cannot be modified whatever is asked (not at its broker yet, its
    answer lost, or closed), or None. The book's inline form is not opened for such an order."""
    # Not at its broker yet, as a cancel says it (``_cancel``): "this one is Submitted" reads as open.
    if order.status == OrderStatus.NEW and not order.broker_order_id:
        if _awaits_its_time(order, taken=False):
            return OrderActionRefused(
                f"This order is scheduled order #{order.scheduled_id}'s, to be sent at its time; change that "
                "scheduled order, or change this one once the broker has it."
            )
        return OrderActionRefused("This order is being sent; change it once the broker has it.")
    if order.status in Order.AT_BROKER and not order.broker_order_id:
        return OrderActionRefused(
            "The broker's answer for this order was lost; it is being looked up: change it once it is found."
        )
    if order.status not in Order.AT_BROKER:
        return OrderActionRefused(f"Only an open order can be modified; this one is {order.get_status_display()}.")
    return None


def _modify(order: Order, actor, cause: str, *, quantity, price, trigger_price, order_type) -> Order:
    refusal = modify_refusal(order)
    if refusal is not None:
        raise refusal
    new_type = order_type or order.order_type
    if (new_type in ("SL", "SL-M")) != (order.order_type in ("SL", "SL-M")):
        raise OrderActionRefused("A stop order stays a stop order, a plain one plain.", field="order_type")
    if order.triggered_at is not None and _decimal(trigger_price, "trigger_price") not in (None, order.trigger_price):
        # The broker holds it as the plain order it became: a new trigger would be ignored, and the
        # order may fill at once at a new limit the trader thought of as a stop's.
        raise OrderActionRefused(TRIGGERED_REFUSAL, field="trigger_price")
    if order.triggered_at is not None and new_type != order.order_type:
        # SL to SL-M (or back) is a new trigger's kind: the broker holds the plain order it became.
        raise OrderActionRefused(TRIGGERED_TYPE_REFUSAL, field="order_type")
    keep = lambda value, current: current if value in (None, "") else value  # noqa: E731
    if price not in (None, "") and new_type not in ("LIMIT", "SL"):
        raise ValidationError({"price": f"A {new_type} order takes no price."})
    if trigger_price not in (None, "") and new_type not in ("SL", "SL-M"):
        raise ValidationError({"trigger_price": f"A {new_type} order takes no trigger price."})
    checked = order_check(
        actor=actor,
        account=order.account,
        instrument=order.instrument,
        side=order.side,
        quantity=keep(quantity, order.quantity),
        order_type=new_type,
        product=order.product,
        validity=order.validity,
        price=keep(price, order.price) if new_type in ("LIMIT", "SL") else None,
        trigger_price=keep(trigger_price, order.trigger_price) if new_type in ("SL", "SL-M") else None,
        # An exit raised past its quantity would open more than the position it closes: held to the limits.
        closing=(
            closes_position(order.role, order.parent_id) and not _raised(keep(quantity, order.quantity), order.quantity)
        ),
        as_placed=not _raised(keep(quantity, order.quantity), order.quantity),
        modifying=order,
    )
    if checked.quantity <= order.filled_quantity:
        raise OrderActionRefused(f"{order.filled_quantity} are already filled.", field="quantity")
    change = OrderChange(
        quantity=checked.quantity if checked.quantity != order.quantity else None,
        price=checked.price if checked.price != order.price else None,
        trigger_price=checked.trigger_price if checked.trigger_price != order.trigger_price else None,
        order_type=checked.order_type if checked.order_type != order.order_type else None,
    )
    if change == OrderChange():
        return order
    asked = {name: str(value) for name, value in vars(change).items() if value is not None}
    # Kept while the modify is on its way: the broker's word of what it did (a fill it caused) can
    # come before its answer, and is then no change made at the broker (``_modify_asked``).
    cache.set(_asked_key(order.pk), asked, timeout=MODIFY_LOCK_TTL_S)
    try:
        try:
            AccountBroker(order.account).modify_order(order.broker_order_id, change)
        except (OrderRejected, InputError) as error:
            _note(order, "modify_rejected", cause=cause, message=error.message)
            # The refusal often means the order moved on (filled, cancelled) unheard: catch up soon.
            _queue_sync(order)
            raise OrderActionRefused(f"The broker refused the change: {error.message}") from error
        except BrokerError as error:
            raise _unanswered(order, "modify", error, cause=cause, data=asked) from error
        fields = {name: value for name, value in vars(change).items() if value is not None}
        if change.order_type is not None:  # a price or trigger the new type takes none of goes
            fields.update(price=checked.price, trigger_price=checked.trigger_price)
        with transaction.atomic():
            # The broker took the change, so it holds whatever happened next: a fill it caused (a
            # modify to MARKET, a price moved across the market) may already be recorded, and the
            # order is then filled as changed. Only the changed fields are written, never the status.
            ours = Order.objects.filter(pk=order.pk)
            if change.quantity is not None:
                # Unless fills told meanwhile (a broker that answers once it has the request: Kite)
                # reached the quantity asked: the exchange refuses a cut to no more than what filled
                # (as this modify does before sending, above), so it is not written. Unless the order
                # holds that quantity already: the broker's word of a fill the cut left to finish it
                # (40 of 40 filled) came first, with the terms our modify asked, so the cut took.
                ours = ours.filter(Q(filled_quantity__lt=change.quantity) | Q(quantity=change.quantity))
            taken = ours.update(updated_at=timezone.now(), **fields)
            _reread(order)
            if taken:
                _event(order, "modified", cause=cause, from_status=order.status, data=asked)
        if not taken:
            message = f"{order.filled_quantity} were filled while it was sent; the order is read from the broker"
            _note(order, "modify_rejected", cause=cause, message=message, data=asked)
            _queue_sync(order)
            raise OrderActionRefused(f"The change cannot take: {message}.", field="quantity")
    finally:
        # Once its outcome is committed (an event says what was asked from then on).
        key = _asked_key(order.pk)
        # robust: a cache away for a moment does not make a change the broker took an error (the key expires).
        transaction.on_commit(lambda: cache.delete(key), robust=True)
    _broadcast(order)
    _queue_sync(order)
    return order


def order_cancel(
    *, order: Order, actor, cause: str, by_trader: bool = True, data: dict | None = None, expect: dict | None = None
) -> Order:
    """Cancel an order at its broker. ``by_trader``: the trader asked (a page, the API), not one of
    the platform's own steps; the request is recorded first, whoever's word on the cancel lands
    first, so a strategy's cycle never puts back an exit the trader cancelled. ``data``: kept with
    the request (what a step means to place instead). At a broker that answers before it has
    closed the order, a cancel already with it is not sent again (a second one is refused while
    the first is processed): the request is recorded, and the order read back. One asked more than
    ``CANCEL_PENDING_S`` ago that left the order open did not take (the exchange refused it after
    the broker took it, or it never left): a new one is sent. ``expect``: as ``order_modify``'s (a
    step's cancel to replace the order at terms worked out from these values)."""
    if order.account.owner_id != actor.pk:
        raise OrderActionRefused("No such order.")
    if by_trader and not order.account.is_active:
        # Nothing can be sent for a deactivated account (its sessions are refused): said before a
        # request is recorded, and not as a broker that could not be reached.
        raise OrderActionRefused(
            f"{order.account.label} is deactivated, so the platform sends it nothing: cancel this order at "
            f"{broker_name(order)}, or reactivate the account to cancel it here."
        )
    # One cancel of an order at a time (the trader's and a step's, two tabs), and none while a modify
    # of it is on its way (``_change_lock``): each reads the order afresh under the lock, so the
    # second finds it closed (or its cancel on its way) rather than sending one whose refusal would
    # be taken for the first's, and the first's request for the one that closed it (which decides
    # whether a step puts an exit back).
    with locks.held(_change_lock(order), ttl_s=MODIFY_LOCK_TTL_S, wait_s=MODIFY_LOCK_WAIT_S, keep=True) as took:
        if not took:
            raise OrderActionRefused("Another change or cancel of this order is still being made; try again.")
        _reread(order)
        changed = [name for name, value in (expect or {}).items() if getattr(order, name) != value]
        if changed:
            raise OrderActionRefused(f"The order was changed meanwhile ({', '.join(changed)}); nothing was sent.")
        return _cancel(order, cause, by_trader=by_trader, data=data)


def _kept_closed(order: Order, cause: str, message: str, data: dict | None) -> Order:
    """A trader's cancel of an order closed already, recorded as their word that it stays closed
    (a step that would place it again checks for it under the order's change lock)."""
    _event(
        order,
        "cancel_requested",
        cause=cause,
        from_status=order.status,
        message=message,
        data={"by": "trader", **(data or {})},
    )
    return order


def _cancel(order: Order, cause: str, *, by_trader: bool, data: dict | None) -> Order:
    if order.status == OrderStatus.NEW and not order.broker_order_id:
        if _awaits_its_time(order, taken=False):  # written ahead: stopped by its scheduled order, not here
            raise OrderActionRefused(
                f"This order is scheduled order #{order.scheduled_id}'s, to be sent at its time; cancel that "
                "scheduled order to stop it, or cancel this one once the broker has it."
            )
        raise OrderActionRefused("This order is being sent; cancel it once the broker has it.")
    if by_trader and order.status == OrderStatus.CANCELLED and replacement_owed(order):
        # A step cancelled it past the modification cap to place it again: the trader's cancel is of
        # that order too. Not placed yet (or only refused): recorded, so it never is (the step checks
        # under this lock). Placed: it is the live order now, named, not "nothing to cancel".
        refused = (OrderStatus.REJECTED, OrderStatus.FAILED)
        standing = replacements_of(order).exclude(status__in=refused).last()
        if standing is None:
            return _kept_closed(order, cause, "cancelled by the platform to be replaced; not replaced now", data)
        if standing.status in Order.LIVE:
            raise OrderActionRefused(
                f"The platform cancelled this order past the broker's modification cap and replaced it with "
                f"{standing.reference}: cancel that one."
            )
    if by_trader and order.status == OrderStatus.CANCELLED and closes_position(order.role, order.parent_id):
        request = last_cancel_request(order)
        if request is None or cancel_did_not_take(order, request):
            back = replacements_of(order).filter(status__in=Order.LIVE).last()
            if back is not None:  # put back already (a day's end closed it): that one is live now
                raise OrderActionRefused(
                    f"This order was closed at its broker and the platform placed it again as {back.reference}: "
                    "cancel that one."
                )
            # A strategy's exit its exchange or broker closed, not a cancel of ours (the day's end
            # closes a carried exit, which a step puts back when orders trade again): the trader's
            # word that it stays closed is recorded, as a cancel asked before the close was read is.
            return _kept_closed(order, cause, "closed already, not by the platform; not put back", data)
    if order.status not in Order.AT_BROKER:
        raise OrderActionRefused(f"This order is {order.get_status_display()}; there is nothing to cancel.")
    if not order.broker_order_id:
        raise OrderActionRefused("The broker's answer for this order was lost; it is being looked up.")
    at_once = registry.get(order.account.broker).cancels_at_once
    pending = not at_once and _cancel_pending(order)
    by = "trader" if by_trader else "platform"
    _note(order, "cancel_requested", cause=cause, data={"by": by, **(data or {})})
    if pending:
        _read_back(order, cause)
        _queue_sync(order)
        return order
    try:
        AccountBroker(order.account).cancel_order(order.broker_order_id)
    except InputError as error:
        try:  # the broker's refusal usually means the order moved on (filled, cancelled): catch up
            orders_sync_account(account=order.account, cause="after a refused cancel")
        except BrokerError:
            logger.info("could not reconcile %s after a refused cancel", order.reference)
        except Exception:  # the refusal is the answer; the sync's own failure is logged and retried
            logger.exception("could not reconcile %s after a refused cancel", order.reference)
        _reread(order)
        _note(order, "cancel_refused", cause=cause, message=error.message)
        if by_trader and order.status == OrderStatus.CANCELLED:
            # Cancelled already (the trader's own earlier cancel whose answer was lost, sent again;
            # or the exchange closed it): what the trader asked for is done, and answered so.
            return order
        raise OrderActionRefused(f"The broker refused to cancel: {error.message}") from error
    except BrokerError as error:
        raise _unanswered(order, "cancel", error, cause=cause) from error
    if not at_once:
        # The broker has the request; only its word closes the order (it may still fill).
        _read_back(order, cause)
    else:
        # Closed on the row as read: a reconcile that moved it meanwhile (SUBMITTED -> OPEN, or more
        # filled) has it read again, so it is answered and pushed with what filled before the cancel.
        for _attempt in range(3):
            expect = {"updated_at": order.updated_at}
            if _transition(order, OrderStatus.CANCELLED, kind="cancelled", cause=cause, expect=expect):
                break
            _reread(order)
            if order.status not in Order.AT_BROKER:
                break
    _queue_sync(order)
    return order


def _read_back(order: Order, cause: str) -> None:
    """The order as its broker holds it now, applied (after a cancel; a failed read is the sync's)."""
    try:
        order_apply_broker_state(order, AccountBroker(order.account).order(order.broker_order_id), cause=cause)
    except BrokerError as error:
        logger.info("%s: reading it back after its cancel failed (%s); the sync reads it", order.reference, error)
    _reread(order)


def _last_event(order: Order, *kinds: str) -> OrderEvent | None:
    return order.events.filter(kind__in=kinds).order_by("-pk").first()


# How long a cancel asked at a broker that answers before it closes the order is taken as still
# being processed there (Kite: the exchange closes the order, or refuses, within moments).
CANCEL_PENDING_S = 15


def _cancel_pending(order: Order) -> bool:
    """Whether the order's latest cancel event is a request asked within ``CANCEL_PENDING_S``, not
    answered since as refused, lost (unknown) or failed."""
    last = _last_event(order, "cancel_requested", "cancel_refused", "cancel_unknown", "cancel_failed")
    recent = timezone.now() - timedelta(seconds=CANCEL_PENDING_S)
    return last is not None and last.kind == "cancel_requested" and last.created_at > recent


def last_cancel_request(order: Order) -> OrderEvent | None:
    """The order's latest cancel request (who asked, and what it carried), if any."""
    return _last_event(order, "cancel_requested")


def cancel_did_not_take(order: Order, request: OrderEvent) -> bool:
    """Whether the broker refused ``request`` (not as already cancelled) or it failed before it was
    sent: it closed nothing."""
    after = order.events.filter(pk__gt=request.pk, kind__in=("cancel_refused", "cancel_failed"))
    return after.exclude(kind="cancel_refused", from_status=OrderStatus.CANCELLED).exists()


def _unanswered(
    order: Order, action: str, error: BrokerError, *, cause: str, data: dict | None = None
) -> OrderActionRefused:
    """A modify or cancel the broker did not answer, recorded (``<action>_unknown`` or
    ``<action>_failed``, with what it asked: ``data``), as the refusal to raise. A lost answer
    (the broker may have done it) has the order brought in line with the broker's book at once."""
    if isinstance(error, NetworkError):
        message = f"{error}; looked up next"
        _note(order, f"{action}_unknown", cause=cause, message=message, data=data)
        _queue_sync(order, always=True)
        return OrderActionRefused(
            f"The broker's answer was lost ({error}); the order will show what the broker holds shortly.",
            outcome_unknown=True,
        )
    _note(order, f"{action}_failed", cause=cause, message=str(error), data=data)
    return OrderActionRefused(f"Could not reach the broker: {error}")


def order_event_add(order: Order, kind: str, *, cause: str, message: str = "", data: dict | None = None) -> None:
    """An event that changes nothing of the order: what a step decided about it (``data``: with what)."""
    _note(order, kind, cause=cause, message=message, data=data)


def cancel_asked_by_platform(order: Order) -> bool:
    """Whether the last cancel asked for this order was one of the platform's own steps, and it
    reached the broker, which did not refuse it (not the trader, on a page, through the API or in
    the broker's own app, nor the broker). A request that failed (refused before it was sent: a
    rate limit, a session to renew) closed nothing. One refused because the order was cancelled
    already (its refusal recorded with the order CANCELLED: a step's retry after its first request
    took late, at a broker that answers before it closes the order) closed nothing either: it is
    passed over, with its refusal, and the request before it says who cancelled, if any did."""
    events = order.events.filter(kind__in=("cancel_requested", "cancel_refused", "cancel_failed")).order_by("-pk")
    passing_over = False  # the latest request left was refused as already cancelled
    for kind, from_status, data in events.values_list("kind", "from_status", "data"):
        if kind == "cancel_refused" and from_status == OrderStatus.CANCELLED:
            passing_over = True
        elif kind == "cancel_requested" and passing_over:
            passing_over = False
        else:
            return kind == "cancel_requested" and (data or {}).get("by") == "platform"
    return False


# --- Reconciliation with the broker ------------------------------------------------------------

BROKER_TO_ORDER = {
    Status.SUBMITTED: OrderStatus.SUBMITTED,
    Status.OPEN: OrderStatus.OPEN,
    Status.PARTIALLY_FILLED: OrderStatus.PARTIALLY_FILLED,
    Status.FILLED: OrderStatus.FILLED,
    Status.CANCELLED: OrderStatus.CANCELLED,
    Status.REJECTED: OrderStatus.REJECTED,
}
# How far along each status is: an order never moves back.
PROGRESS = {
    OrderStatus.NEW: 0,
    OrderStatus.FAILED: 0,
    OrderStatus.SUBMITTED: 1,
    OrderStatus.OPEN: 2,
    OrderStatus.PARTIALLY_FILLED: 3,
    OrderStatus.FILLED: 4,
    OrderStatus.CANCELLED: 4,
    OrderStatus.REJECTED: 4,
}
KIND_FOR = {
    OrderStatus.OPEN: "opened",
    OrderStatus.PARTIALLY_FILLED: "partially_filled",
    OrderStatus.FILLED: "filled",
    OrderStatus.CANCELLED: "cancelled",
    OrderStatus.REJECTED: "rejected",
}


def _moves_on(order: Order, target: str) -> bool:
    return PROGRESS[target] > PROGRESS[order.status] or (
        order.status == OrderStatus.CANCELLED and target == OrderStatus.FILLED  # it filled before the cancel
    )


def _tells_more(order: Order, state) -> bool:
    """Whether the broker's state of the order is ahead of ours (never back: updates can arrive out of order)."""
    target = BROKER_TO_ORDER[state.status]
    if target == OrderStatus.SUBMITTED and order.status == OrderStatus.SUBMITTED and order.broker_order_id:
        return False
    return (
        _moves_on(order, target)
        or state.filled_quantity > order.filled_quantity
        or not order.broker_order_id
        or (order.status in Order.LIVE and _newly_triggered(order, state))
    )


def _newly_triggered(order, state) -> bool:
    """Whether the broker says our stop order triggered and we have not recorded that yet."""
    return (
        getattr(state, "triggered", None) is True
        and getattr(order, "order_type", None) in STOPS
        and getattr(order, "triggered_at", None) is None
    )


TRIGGERED_MESSAGE = "its trigger was crossed: it is now a {} order at the broker; its trigger can no longer be changed"
TRIGGERED_REFUSAL = "This stop has triggered; its trigger can no longer be changed (its price and quantity can)."
TRIGGERED_TYPE_REFUSAL = (
    "This stop has triggered; its order type can no longer be changed (its price and quantity can)."
)


ORDER_TYPE_NAMES = frozenset(name for name, _label in ORDER_TYPES)
STOPS = ("SL", "SL-M")


def _asked_key(order_pk: int) -> str:
    return f"orders:modify:{order_pk}:asked"


def _asked_terms(data: dict) -> dict:
    """The terms a modify's request (its event's ``data``: what it changed) leaves the order with."""
    terms = {}
    if "quantity" in data:
        terms["quantity"] = int(data["quantity"])
    for name in ("price", "trigger_price"):
        if name in data:
            terms[name] = Decimal(data[name])
    if data.get("order_type"):  # a price or trigger the new type takes none of goes
        terms["order_type"] = order_type = data["order_type"]
        if order_type not in ("LIMIT", "SL"):
            terms["price"] = None
        if order_type not in STOPS:
            terms["trigger_price"] = None
    return terms


def _lost_modify_asked(order, terms: dict) -> bool:
    """Whether the latest modify of ours that set the order's type or price is one whose answer was
    lost, asking for these ``terms``. A later modify that was answered (recorded as ``modified``)
    supersedes it: the order has that one's terms."""
    if getattr(order, "pk", None) is None:  # a placement's answer: no modify yet
        return False
    events = OrderEvent.objects.filter(order_id=order.pk, kind__in=("modify_unknown", "modified"))
    for kind, data in events.order_by("-pk").values_list("kind", "data"):
        asked = _asked_terms(data or {})
        if "order_type" in asked or "price" in asked:
            return kind == "modify_unknown" and all(asked.get(name) == value for name, value in terms.items())
    return False


def _modify_asked(order, changed: dict) -> bool:
    """Whether the broker's terms that differ from the order's (``changed``) are those of our own
    modify on its way (its answer not recorded yet: the broker told of a fill it caused first), or
    just recorded (the order was read before it). Then they are no change made at the broker."""
    if getattr(order, "pk", None) is None:
        return False
    asked = cache.get(_asked_key(order.pk))
    if asked is None:
        # Just recorded only if the stored order has these terms already: else they were changed
        # since (at the broker, with a fill), and the broker went back to what an old modify asked.
        last = _last_event(order, "modified")
        if last is None or not Order.objects.filter(pk=order.pk, **changed).exists():
            return False
        asked = last.data
    terms = _asked_terms(asked or {})
    return all(name in terms and terms[name] == value for name, value in changed.items())


def _broker_terms(order: Order, state) -> dict:
    """The order's terms as its broker holds them, where they differ from ours: a change the broker
    made whose answer was lost (a modify that timed out)."""
    if state.quantity <= 0:
        return {}
    if not state.terms_settled:  # a change still being validated: the book may show the old terms
        # Unless it has filled past our quantity: a cut of ours that the broker took, overtaken by
        # fills (the exchange refuses it). The quantity it shows, which holds those fills, is then
        # the one the order keeps; its prices may still change, so they are left for a later look.
        if order.quantity < state.filled_quantity <= state.quantity:
            return {"quantity": state.quantity}
        return {}
    terms = {"quantity": state.quantity}
    # A stop order that triggered shows at some brokers as the plain order it became (SL-M as
    # MARKET): it is still our stop, so only a change a modify can make is taken (a stop stays a stop).
    # Kite's market protection shows a MARKET order as the LIMIT at its band it became: still ours,
    # unless our modify whose answer was lost asked for that LIMIT (looked up only then).
    protected = (
        order.order_type == "MARKET"
        and state.order_type == "LIMIT"
        and not _lost_modify_asked(order, {"order_type": "LIMIT", "price": state.price})
    )
    if (
        state.order_type in ORDER_TYPE_NAMES
        and (state.order_type in STOPS) == (order.order_type in STOPS)
        and not protected
    ):
        terms["order_type"] = state.order_type
        terms["price"] = state.price if state.order_type in ("LIMIT", "SL") else None
        terms["trigger_price"] = state.trigger_price if state.order_type in STOPS else None
    return {name: value for name, value in terms.items() if value != getattr(order, name)}


def _state_step(order, state, *, cause: str, terms: bool = False) -> _Step | None:
    """The move the broker's state of an order makes in ours, or None when it says nothing new.
    ``order`` needs only its status, quantities and broker id, unless ``terms``: then the
    broker's quantity, type and prices are taken too where they differ (the caller knows the
    state is newer than the order's last change). They are taken anyway when the broker has
    filled more than our quantity (only a change we did not hear of explains that), and when it
    has filled the order (its terms are final: a modify whose answer was lost, then the fill)."""
    final_terms = state.filled_quantity > order.quantity or state.status == Status.FILLED
    changed = _broker_terms(order, state) if terms or final_terms else {}
    ours = bool(changed) and _modify_asked(order, changed)
    if not _tells_more(order, state) and (not changed or ours):
        return None  # our modify records its own terms
    target = BROKER_TO_ORDER[state.status]
    # Fills are never taken back: a state with fewer than we know (a book read before an update we
    # applied, its status still news: CANCELLED) moves the order on with the fills we know.
    filled, average = state.filled_quantity, state.average_price
    if filled < order.filled_quantity:
        filled, average = order.filled_quantity, order.average_price
    elif filled and not average:
        # Fills without their average (Kite documents ``average_price`` for complete orders only):
        # not a price of 0. The one we know stays until one is told (``monitoring.cycle`` prices
        # an exit from the fills recorded).
        average = order.average_price
    fields = {
        "filled_quantity": filled,
        "average_price": average,
        "broker_order_id": order.broker_order_id or state.broker_order_id,
        **changed,
    }
    triggered = _newly_triggered(order, state)
    if triggered:  # written by the UPDATE the step makes anyway
        fields["triggered_at"] = timezone.now()
    if target == OrderStatus.REJECTED:
        from brokers.errors import classify_rejection

        fields["reject_reason"] = (state.status_message or "")[:500]
        fields["reject_kind"] = classify_rejection(state.status_message)
    new_status = target if _moves_on(order, target) else order.status
    if order.status == OrderStatus.FAILED and state.status:
        cause = f"{cause}: found at the broker after all"
        if target != OrderStatus.REJECTED:
            # The failure it was closed with (never sent, its answer lost) was wrong: not its reason any more.
            fields["reject_kind"], fields["reject_reason"] = "", ""
    quantity = changed.get("quantity", order.quantity)
    message = f"{filled}/{quantity} filled" + (f" at {average}" if average else "") if filled else ""
    message = message or state.status_message or ""
    if new_status != order.status:
        kind = KIND_FOR.get(new_status, "updated")
    else:  # "fill" only when something filled: else only the broker's id is news (an order whose answer was lost)
        kind = "fill" if filled > order.filled_quantity else "updated"
    if changed:
        held = ", ".join(f"{name.replace('_', ' ')} {'-' if v is None else v}" for name, v in changed.items())
        held = f"as our modify asked: {held}" if ours else f"{BROKER_CHANGED}: {held}"
        message = "; ".join(filter(None, [held, message]))
        if new_status == order.status and filled == order.filled_quantity:
            kind = "modified"
    if triggered:
        became = "LIMIT" if order.order_type == "SL" else "MARKET"
        message = "; ".join(filter(None, [TRIGGERED_MESSAGE.format(became), message]))
        if kind == "updated":
            kind = "triggered"
    data = {}
    if changed and not ours:  # who changed what, for the steps that keep what the trader did by hand
        data[CHANGED_AT_BROKER] = {name: None if v is None else str(v) for name, v in changed.items()}
    if state.updated_at and new_status != order.status:
        # When the broker says it happened: an exit the exchange closed at its day's end is told from one
        # the trader cancelled in the broker's app by it (``monitoring.cycle``), not by when we saw it.
        data[BROKER_AT] = state.updated_at.isoformat()
    return _Step(to_status=new_status, kind=kind, cause=cause, message=message, fields=fields, data=data or None)


def order_apply_broker_state(order: Order, state, *, cause: str, push: bool = True, asked_at=None) -> bool:
    """Bring an order in line with what its broker says; returns whether anything changed.
    ``asked_at``: when the state was asked for; the broker's terms of an order not changed here
    since then are taken too."""
    for _attempt in range(3):
        terms = asked_at is not None and order.updated_at < asked_at
        step = _state_step(order, state, cause=cause, terms=terms)
        if step is None:
            return False
        # Written only on the row as read: one changed meanwhile (a modify recorded, its row pushed
        # with a later version than this write's; an older state's terms must not undo it) is read
        # again and the state applied to it, so the stored and pushed version never goes back.
        expect = {"filled_quantity": order.filled_quantity, "updated_at": order.updated_at}
        if _transition(
            order,
            step.to_status,
            kind=step.kind,
            cause=step.cause,
            message=step.message,
            expect=expect,
            push=push,
            data=step.data,
            **step.fields,
        ):
            return True
        _reread(order)
    return False


# How often, and how far apart, an update of an order whose placer is still waiting for the
# broker's answer is looked at again (the placer records what the answer says; a lost answer
# leaves the update to us).
UPDATE_WAITS, UPDATE_WAIT_S = 8, 0.25


def order_broker_update(account: BrokerAccount, state: BrokerOrder, fills_follow: bool, *, waited: int = 0) -> bool:
    """A broker told us the state of one of the account's orders (a paper change, a Kite postback):
    apply it at once. Returns whether our order changed.

    Only what needs more than that queues the account's whole monitoring run: a strategy's order
    (its steps place exits, re-enter, retry, cancel dependants) and fills the broker did not
    hand over (``fills_follow``), which the run fetches. An order not ours (placed elsewhere) is
    left to the cycle's reconciliation, as is an update lost with its process; one that filled in
    a position a strategy's exits guard queues the run too.
    """
    from brokers.services import account_touched
    from tradingplatform import background

    answer = _answers.of(account, state.tag)
    if answer is not None and answer.status is None and waited < UPDATE_WAITS:
        # Its placer, in this process, is still waiting for the broker's answer: look again shortly.
        again = functools.partial(order_broker_update, account, state, fills_follow, waited=waited + 1)
        background.submit(again, delay_s=UPDATE_WAIT_S)
        return False
    if answer is not None and answer.status not in (None, OrderStatus.NEW) and not _tells_more(answer, state):
        return False  # the placer recorded all this says (and an order never moves back): nothing to read
    ours = Order.objects.select_related("instrument").filter(account=account)
    order = ours.filter(reference=state.tag).first() if state.tag else None
    if order is None:
        order = ours.filter(broker_order_id=state.broker_order_id).first()
    if order is None:
        # Not ours: left to the cycle's reconciliation, unless it filled in a position a strategy's
        # exits guard (sold in the broker's app): those must go before the market reaches them.
        if _outside_fill_moves_a_guarded_position(account, state):
            account_touched(account.pk)
        return False
    if order.status == OrderStatus.NEW and waited < UPDATE_WAITS:
        # Its placer has not recorded the broker's answer yet (the update came first): look again
        # shortly rather than race it; by then the answer has usually said it all.
        again = functools.partial(order_broker_update, account, state, fills_follow, waited=waited + 1)
        background.submit(again, delay_s=UPDATE_WAIT_S)
        return False
    order.account = account
    filled_before = order.filled_quantity
    cause = f"{broker_name(order)}'s order update"
    for _attempt in range(3):  # updates of one order applied side by side: the loser re-reads and tries again
        if not _tells_more(order, state):
            return False
        if order_apply_broker_state(order, state, cause=cause):
            break
        _reread(order)
        order.account = account  # the refresh let go of it
    else:
        return False
    filled_more = order.filled_quantity != filled_before
    if order.strategy_id or order.parent_id or (filled_more and (not fills_follow or _moves_a_guarded_position(order))):
        account_touched(account.pk)
    return True


# How long a cancelled order is still read from the broker: a fill can land just before a
# cancel takes, and be told after it.
CANCELLED_SETTLE_S = 600


def orders_to_sync(**where):
    """The orders a sync looks at: live ones of any day (one the broker closed after the last sync
    of its day is closed here too), today's failed ones, and today's cancelled in the last
    ``CANCELLED_SETTLE_S`` (``where`` picks the accounts)."""
    now = timezone.now()
    today_start = now.astimezone(IST).replace(hour=0, minute=0, second=0, microsecond=0)
    return Order.objects.filter(**where).filter(
        Q(status__in=Order.LIVE)
        | Q(created_at__gte=today_start, status=OrderStatus.FAILED)
        | Q(
            created_at__gte=today_start,
            status=OrderStatus.CANCELLED,
            updated_at__gte=now - timedelta(seconds=CANCELLED_SETTLE_S),
        )
    )


def _closed_with_its_day(order: Order, cause: str) -> bool:
    """A live order of an earlier day that its broker no longer lists (Kite lists today's only): a
    day order, closed by its exchange at that day's end. One at the broker is CANCELLED with what
    we knew it had filled; one whose answer never came is not known to have reached it (FAILED).
    Fills after our last look are not known: the message sends the trader to the broker's history."""
    day = trading_date(order.created_at)
    if order.broker_order_id and order.status in Order.AT_BROKER:
        return _transition(
            order,
            OrderStatus.CANCELLED,
            kind="cancelled",
            cause=cause,
            message=(
                f"a day order of {day:%d %b}, closed by the exchange at that day's end; {order.filled_quantity} "
                f"filled when last seen (the broker lists today's orders only: its history has the rest)"
            ),
            data={FILLS_UNKNOWN: True},
        )
    message = f"its answer never came on {day:%d %b}, and the broker lists today's orders only: see its history"
    return _transition(
        order,
        OrderStatus.FAILED,
        kind="failed",
        cause=cause,
        message=message,
        reject_kind=RejectKind.OTHER,
        reject_reason=message[:500],
    )


def _awaits_its_time(order: Order, *, taken: bool = True) -> bool:
    """Whether a NEW order is a scheduled order's, written ahead of its time and still to be sent
    by its due time's worker (PREPARED; ``taken``: or PLACING, being sent or sent again), which
    ends it one way or the other: sent, or closed unsent."""
    if not order.scheduled_id:
        return False
    statuses = [ScheduledFire.Status.PREPARED, *([ScheduledFire.Status.PLACING] if taken else [])]
    return ScheduledFire.objects.filter(scheduled_id=order.scheduled_id, status__in=statuses).exists()


def orders_sync_account(
    *, account: BrokerAccount, cause: str = "reconciled with the broker", broker_orders=None, asked_at=None
) -> int:
    """Read the account's order book at the broker and update our orders from it (by id, else by tag).

    The broker's quantity, type and prices are taken too, for orders not changed here since the
    book was asked for (``asked_at``, with ``broker_orders`` read by the caller): a modify whose
    answer was lost. Orders the broker never got are closed too, so nothing stays in limbo: a
    NEW order whose sender died, or one whose outcome was unknown, that the broker still does
    not have a minute later (when the book was read) becomes FAILED. One order that cannot be
    updated does not stop the others; the first such error is raised after them.
    """
    if broker_orders is None:
        asked_at = timezone.now()
        broker_orders = AccountBroker(account).orders()
    by_id = {o.broker_order_id: o for o in broker_orders}
    by_tag = {o.tag: o for o in broker_orders if o.tag}
    candidates = orders_to_sync(account=account)
    changed, errors = 0, []
    # Judged by when the book was read, not by now: one sent after that read is not in it.
    stale = (asked_at or timezone.now()) - timedelta(seconds=UNSENT_STALE_S)
    today = trading_date()
    for order in candidates.select_related("account", "instrument"):
        state = by_id.get(order.broker_order_id) if order.broker_order_id else by_tag.get(order.reference)
        try:
            if state is not None:
                changed += order_apply_broker_state(order, state, cause=cause, asked_at=asked_at)
            elif trading_date(order.created_at) < today and order.created_at < stale and not _awaits_its_time(order):
                # Only one written over a minute ago: one written just before midnight (a scheduled
                # order prepared for a time just after it) was sent today, and a request of it that
                # is still on its way is waited for here as any lost answer is (below).
                changed += _closed_with_its_day(order, cause)
            elif order.status == OrderStatus.NEW and order.created_at < stale and not _awaits_its_time(order):
                _fail(order, RejectKind.NETWORK, NEVER_SENT, cause)
                changed += 1
            elif order.status == OrderStatus.SUBMITTED and not order.broker_order_id and order.updated_at < stale:
                # Since its answer was lost, not since it was written: a scheduled order's send can
                # come long after it was written (a late one), and its request lands before that.
                _fail(order, RejectKind.NETWORK, "not at the broker: its lost answer was a lost request", cause)
                changed += 1
        except Exception as error:
            logger.exception("could not reconcile %s with the broker", order.reference)
            errors.append(error)
    if errors:
        raise errors[0]
    return changed
