"""The paper exchange: sessions, orders, fills, funds, the price feed and fault knobs.

It behaves like a broker: orders are validated (lot, tick, price band, funds), MARKET
orders fill at the touch, LIMIT orders that cross on arrival fill at the better price,
resting LIMIT orders fill at their own price when a tick crosses them (price-time
priority, up to the tick's volume, so partial fills happen), SL / SL-M orders wait for
their trigger and then become LIMIT / MARKET, and what an IOC order does not fill the
moment it reaches the book is cancelled. The matching itself is the in-memory
``OrderBook``; this module loads live orders into it for each tick and writes the
fills back, so every process (web, workers, the Kite face) sees one exchange.

Errors are the exchange's own (Kite's error types); the adapters translate them.
"""

import functools
import hashlib
import logging
import math
import random
import secrets
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Context, Decimal

from django.conf import settings
from django.contrib.auth.hashers import check_password
from django.core.cache import cache
from django.db import DatabaseError, IntegrityError, connection, models, transaction
from django.db.backends.base.operations import BaseDatabaseOperations
from django.db.models import Q
from django.utils import timezone

from brokers.base import IST, STOP_MARKET_BLOCKED, instrument_expired, next_morning_expiry, stop_market_allowed
from brokers.markets import day_start, trading_date
from tradingplatform.db import PlainInserts, PlainRows

from .book import BUY, SELL, OrderBook
from .models import PaperCarry, PaperClient, PaperFeedState, PaperInstrument, PaperOrder, PaperToken, PaperTrade

logger = logging.getLogger(__name__)

PRICE_BAND = Decimal("0.20")
MAX_MODIFICATIONS = 25
Status = PaperOrder.Status


# --- Errors (Kite's error types) ---------------------------------------------------------


class ExchangeError(Exception):
    error_type = "GeneralException"
    http_status = 500
    kind = "broker_error"

    def __init__(self, message: str, *, kind: str | None = None):
        super().__init__(message)
        self.message = message
        if kind:
            self.kind = kind


class InputException(ExchangeError):
    error_type = "InputException"
    http_status = 400
    kind = "input"


class TokenException(ExchangeError):
    error_type = "TokenException"
    http_status = 403


class RateLimitExceeded(ExchangeError):
    error_type = "NetworkException"
    http_status = 429
    kind = "rate_limit"


class ServerError(ExchangeError):
    error_type = "NetworkException"
    http_status = 503


class AnswerLost(ExchangeError):
    """The exchange did the work but the answer never reaches the caller (a timeout)."""

    error_type = "NetworkException"
    http_status = 504


# --- Helpers --------------------------------------------------------------------------------


def to_paise(price: Decimal) -> int:
    return int((Decimal(price) * 100).to_integral_value(ROUND_HALF_UP))


def from_paise(paise: int) -> Decimal:
    return (Decimal(paise) / 100).quantize(Decimal("0.01"))


def round_to_tick(price: Decimal, tick: Decimal) -> Decimal:
    return ((price / tick).to_integral_value(ROUND_HALF_UP) * tick).quantize(Decimal("0.01"))


def is_multiple(value: Decimal, step: Decimal) -> bool:
    return (Decimal(value) % Decimal(step)) == 0


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_order_id(now: datetime) -> str:
    return f"{now.astimezone(IST):%y%m%d}{secrets.randbelow(10**9):09d}"


def instrument_key(instrument) -> str:
    return f"{instrument.exchange}:{instrument.tradingsymbol}"


# --- Fault knobs ---------------------------------------------------------------------------


@dataclass
class CallFaults:
    lose_answer: bool = False

    def after(self) -> None:
        """Call once the work is done: a lost answer raises only now, like a real timeout."""
        if self.lose_answer:
            raise AnswerLost("Gateway timed out; the request may have been processed.")


def faults_before(client: PaperClient, *, write: bool = False, rng: random.Random | None = None) -> CallFaults:
    """Apply the client's knobs at the start of a call (latency, 429, 5xx).

    For a write (place, modify, cancel) also decide whether its answer will be lost.
    """
    rng = rng or random
    if client.latency_ms:
        time.sleep(client.latency_ms / 1000)
    if client.rate_limit_per_s:
        window = f"paper:rate:{client.pk}:{int(time.time())}"
        cache.add(window, 0, timeout=5)
        try:
            calls = cache.incr(window)
        except ValueError:
            calls = 1
        if calls > client.rate_limit_per_s:
            raise RateLimitExceeded("Too many requests")
    if client.error_rate and rng.random() < client.error_rate:
        raise ServerError("Service unavailable (error_rate knob)")
    return CallFaults(lose_answer=bool(write and client.timeout_rate and rng.random() < client.timeout_rate))


# --- Clients and sessions -------------------------------------------------------------------


def client_get_or_create(*, user_id: str) -> PaperClient:
    client, _ = PaperClient.objects.get_or_create(user_id=user_id, defaults={"name": user_id})
    return client


def _issue(client: PaperClient, kind: str, expires_at: datetime) -> str:
    raw = secrets.token_urlsafe(24)
    PaperToken.objects.create(client=client, kind=kind, token_hash=_hash(raw), expires_at=expires_at)
    return raw


def session_open(*, client: PaperClient) -> tuple[str, datetime]:
    """A new access token for a client (the in-process adapter's unattended login)."""
    now = timezone.now()
    expires = now + timedelta(seconds=client.session_ttl_s) if client.session_ttl_s else next_morning_expiry(now)
    return _issue(client, PaperToken.Kind.ACCESS, expires), expires


def login_with_password(*, api_key: str, user_id: str, password: str) -> tuple[PaperClient, str]:
    """The Kite-style login page: check the client's password, issue a one-time request token."""
    client = PaperClient.objects.filter(api_key=api_key).first()
    if client is None:
        raise InputException("Invalid `api_key`.")
    if client.user_id != user_id or not client.password or not check_password(password, client.password):
        raise TokenException("Invalid user id or password.")
    return client, _issue(client, PaperToken.Kind.REQUEST, timezone.now() + timedelta(minutes=5))


def session_from_request_token(*, api_key: str, request_token: str, checksum: str) -> tuple[PaperClient, str, datetime]:
    """Kite's /session/token: checksum = SHA-256(api_key + request_token + api_secret); one use only."""
    client = PaperClient.objects.filter(api_key=api_key).first()
    if client is None:
        raise InputException("Invalid `api_key`.")
    expected = hashlib.sha256(f"{api_key}{request_token}{client.api_secret}".encode()).hexdigest()
    if not secrets.compare_digest(expected.encode(), (checksum or "").encode()):  # bytes: any characters
        raise TokenException("Invalid `checksum`.")
    now = timezone.now()
    used = PaperToken.objects.filter(
        client=client,
        kind=PaperToken.Kind.REQUEST,
        token_hash=_hash(request_token),
        used_at__isnull=True,
        expires_at__gt=now,
    ).update(used_at=now)
    if not used:
        raise TokenException("Token is invalid or has expired.")
    token, expires = session_open(client=client)
    return client, token, expires


# Every call of every account starts with this query, so it is written out once: Django
# building it anew each time cost more than running it.
_CLIENTS = PlainRows(PaperClient)


# A client's live access token (parameters: its hash, the kind, now); the last part of a query.
_LIVE_TOKEN = (
    "JOIN paper_papertoken t ON t.client_id = c.id "
    "WHERE t.token_hash = %s AND t.kind = %s AND t.revoked_at IS NULL AND t.expires_at > %s"
)


@functools.cache
def _client_of_token_sql() -> str:
    # Only the model's column names are put in the text; values go as parameters.
    return f"SELECT {_CLIENTS.columns('c')} FROM paper_paperclient c {_LIVE_TOKEN}"  # noqa: S608


def _live_token_params(access_token: str) -> list:
    return [_hash(access_token or ""), PaperToken.Kind.ACCESS, connection.ops.adapt_datetimefield_value(timezone.now())]


def client_for_access_token(*, api_key: str | None, access_token: str) -> PaperClient:
    """The client a live access token belongs to, or TokenException."""
    with connection.cursor() as cursor:
        cursor.execute(_client_of_token_sql(), _live_token_params(access_token))
        row = cursor.fetchone()
    client = _CLIENTS.make(row) if row else None
    if client is None or (api_key is not None and client.api_key != api_key):
        raise TokenException("Incorrect `api_key` or `access_token`.")
    return client


@functools.cache
def _client_and_instrument_sql() -> str:
    return (
        f"SELECT {_CLIENTS.columns('c')}, {_INSTRUMENTS.columns('i')} FROM paper_paperclient c "  # noqa: S608
        f"LEFT JOIN paper_paperinstrument i ON i.exchange = %s AND i.tradingsymbol = %s {_LIVE_TOKEN}"
    )


def client_and_instrument(
    *, access_token: str, exchange: str, tradingsymbol: str
) -> tuple[PaperClient, PaperInstrument | None]:
    """``client_for_access_token`` and ``instrument_lookup`` in one query, for a placement (it needs
    both): the instrument is None when there is no such instrument (``order_place`` then says so)."""
    with connection.cursor() as cursor:
        cursor.execute(_client_and_instrument_sql(), [exchange, tradingsymbol, *_live_token_params(access_token)])
        row = cursor.fetchone()
    if row is None:
        raise TokenException("Incorrect `api_key` or `access_token`.")
    width = _CLIENTS.width
    instrument = _INSTRUMENTS.make(row[width:]) if row[width] is not None else None
    return _CLIENTS.make(row[:width]), instrument


def session_close(*, access_token: str) -> None:
    PaperToken.objects.filter(token_hash=_hash(access_token), revoked_at__isnull=True).update(revoked_at=timezone.now())


def session_expire_now(*, client: PaperClient) -> int:
    """Tests and demos: end every live session of a client as if it had expired."""
    return PaperToken.objects.filter(client=client, kind=PaperToken.Kind.ACCESS, revoked_at__isnull=True).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )


# --- Instruments and quotes -----------------------------------------------------------------


@functools.cache
def _instrument_sql() -> str:
    return (
        f"SELECT {_INSTRUMENTS.columns('i')} FROM paper_paperinstrument i "  # noqa: S608
        "WHERE i.exchange = %s AND i.tradingsymbol = %s"
    )


def instrument_lookup(exchange: str, tradingsymbol: str) -> PaperInstrument:
    # Every placement reads its instrument (the quote it fills at): written out, like the token check.
    with connection.cursor() as cursor:
        cursor.execute(_instrument_sql(), [exchange, tradingsymbol])
        row = cursor.fetchone()
    if row is None:
        raise _no_instrument(exchange, tradingsymbol)
    return _INSTRUMENTS.make(row)


def _no_instrument(exchange: str, tradingsymbol: str) -> InputException:
    return InputException(f"Invalid `tradingsymbol` {exchange}:{tradingsymbol}.", kind="instrument")


def instruments_by_keys(keys) -> dict[str, PaperInstrument]:
    wanted = defaultdict(list)
    for key in keys:
        exchange, _, symbol = str(key).partition(":")
        if symbol:
            wanted[exchange].append(symbol)
    query = Q(pk__in=[])
    for exchange, symbols in wanted.items():
        query |= Q(exchange=exchange, tradingsymbol__in=symbols)
    return {instrument_key(i): i for i in PaperInstrument.objects.filter(query)}


# --- Orders -------------------------------------------------------------------------------


# The funds a client's live orders block (parameters: SELL, the client, the live statuses): each
# order's blocked quantity at its limit (or its SL-M trigger, or a sell SL's: it fills about there,
# at the bid, its limit only says how low it may go). A BUY blocks its whole unfilled
# quantity; a SELL only the part that opens or adds to a short: its ``uncovered_quantity``, at most
# its unfilled quantity (its fills use the long first). A SELL that exits a long blocks nothing.
_BLOCKED_SUM = (
    "SUM("
    "CASE WHEN o.transaction_type = %s AND o.uncovered_quantity < o.quantity - o.filled_quantity "
    "THEN o.uncovered_quantity ELSE o.quantity - o.filled_quantity END * "
    "CASE WHEN o.order_type = 'SL-M' OR (o.order_type = 'SL' AND o.transaction_type = 'SELL') "
    "THEN o.trigger_price ELSE o.price END)"
)
_BLOCKED_FUNDS = f"SELECT {_BLOCKED_SUM} FROM paper_paperorder o WHERE o.client_id = %s AND o.status IN (%s, %s)"  # noqa: S608


def _blocked_funds_params(client_id: int) -> list:
    return [SELL, client_id, *PaperOrder.LIVE]


# SQLite sums decimals as floats; the ORM reads such a sum with 15 significant digits, and so do we.
_FLOAT_SUM = Context(prec=15)


def _summed_decimal(value) -> Decimal:
    if isinstance(value, float | int):
        return _FLOAT_SUM.create_decimal_from_float(value)
    return Decimal(value or 0)


def _blocked_funds(client: PaperClient) -> Decimal:
    """Cash set aside for live orders: what BUYs and short-opening SELLs would pay (``_BLOCKED_FUNDS``)."""
    with connection.cursor() as cursor:
        cursor.execute(_BLOCKED_FUNDS, _blocked_funds_params(client.pk))
        (blocked,) = cursor.fetchone()
    return _summed_decimal(blocked)


# What a SELL may use, in one round trip: the client's blocked funds (``_BLOCKED_FUNDS``, its
# parameters first) and its bought and sold quantity in the instrument and product, all days
# (BUY, SELL, client, instrument, product: the trades' (client, instrument, product) index).
_SELL_COVER = (
    f"SELECT ({_BLOCKED_FUNDS}), "  # noqa: S608 (constant text; values go as parameters)
    "f.bought, f.sold "
    "FROM (SELECT SUM(CASE WHEN t.transaction_type = %s THEN t.quantity ELSE 0 END) AS bought, "
    "SUM(CASE WHEN t.transaction_type = %s THEN t.quantity ELSE 0 END) AS sold "
    "FROM paper_papertrade t WHERE t.client_id = %s AND t.instrument_id = %s AND t.product = %s) f"
)


@dataclass
class SellCover:
    long: int  # the client's net position in the instrument and product (negative: short)
    blocked: Decimal  # the client's blocked funds (``_blocked_funds``)

    @property
    def available(self) -> int:
        """What a SELL can sell out of the long without opening a short. Other open sells of the
        same long are not netted: a strategy's stop-loss and take-profit both sell it, and the
        platform cancels one when the other fills."""
        return max(0, self.long)


def _sell_cover(client_id: int, instrument_id: int, product: str) -> SellCover:
    """The long a SELL may sell from (``_SELL_COVER``): one indexed query, on SELLs only."""
    params = [*_blocked_funds_params(client_id), BUY, SELL, client_id, instrument_id, product]
    with connection.cursor() as cursor:
        cursor.execute(_SELL_COVER, params)
        blocked, bought, sold = cursor.fetchone()
    return SellCover(long=int(bought or 0) - int(sold or 0), blocked=_summed_decimal(blocked))


def _cnc_refusal(instrument: PaperInstrument, quantity: int, cover: SellCover) -> InputException:
    return InputException(
        f"Insufficient holding of {instrument.tradingsymbol} for a CNC sell of {quantity}: "
        f"{max(cover.long, 0)} held. "
        "Delivery (CNC) can only sell shares held; use MIS to sell short intraday.",
        kind="input",
    )


def _blocks(order: PaperOrder) -> Decimal:
    """What ``_BLOCKED_FUNDS`` sets aside for this live order, as it is stored."""
    open_quantity = order.quantity - order.filled_quantity
    if order.transaction_type == SELL:
        open_quantity = min(order.uncovered_quantity, open_quantity)
    return open_quantity * _stop_or_limit_price(order)


def _stop_or_limit_price(order: PaperOrder) -> Decimal:
    """The price a live order blocks funds at (``_BLOCKED_SUM``): its limit; an SL-M's trigger, and a
    sell SL's (its limit is at or below its trigger and it fills at the bid once the price falls there)."""
    if order.order_type == "SL-M" or (order.order_type == "SL" and order.transaction_type == SELL):
        return order.trigger_price
    return order.price


def _reference_price(order) -> Decimal:
    """The price an order's funds are judged at (its own, or the touch it fills at)."""
    if order.order_type == "LIMIT" and order.transaction_type == SELL:
        # A sell limit below the bid fills at once at the bid (``_arrival_fill_price``): the short it
        # opens is worth the bid. (A buy limit above the ask is judged at its limit, which is more.)
        return max(order.price, order.instrument.bid)
    if order.order_type in ("LIMIT", "SL", "SL-M"):
        return _stop_or_limit_price(order)
    return order.instrument.ask if order.transaction_type == BUY else order.instrument.bid


def _fits(name: str, value) -> bool:
    """Whether an order's column can hold the value (else storing it, even REJECTED, fails)."""
    field = PaperOrder._meta.get_field(name)
    if isinstance(field, models.DecimalField):
        return abs(value) < Decimal(10) ** (field.max_digits - field.decimal_places)
    # The portable range (MariaDB's column), not the backend's: SQLite would store any integer.
    return value <= BaseDatabaseOperations.integer_field_ranges[field.get_internal_type()][1]


def _validate(instrument: PaperInstrument, *, side, order_type, product, validity, quantity, price, trigger_price):
    for name, value in (("quantity", quantity), ("price", price), ("trigger_price", trigger_price)):
        if value is not None and not _fits(name, value):
            raise InputException(f"Invalid `{name}`.")
    if instrument_expired(instrument):
        raise InputException(
            f"{instrument.tradingsymbol} expired on {instrument.expiry:%Y-%m-%d}; it can no longer be traded.",
            kind="instrument",
        )
    if side not in (BUY, SELL):
        raise InputException("Invalid `transaction_type`.")
    if order_type not in ("MARKET", "LIMIT", "SL", "SL-M"):
        raise InputException("Invalid `order_type`.")
    if product not in ("CNC", "MIS", "NRML"):
        raise InputException("Invalid `product`.")
    if product == "CNC" and instrument.instrument_type != "EQ":
        raise InputException("CNC is for equity delivery; use NRML or MIS for derivatives.")
    if validity not in ("DAY", "IOC"):
        raise InputException("Invalid `validity`.")
    if quantity <= 0:
        raise InputException("Quantity should be greater than 0.", kind="lot_size")
    if quantity % instrument.lot_size:
        raise InputException(f"Quantity should be a multiple of the lot size {instrument.lot_size}.", kind="lot_size")
    if order_type in ("LIMIT", "SL"):
        if price is None or price <= 0:
            raise InputException("Price should be greater than 0 for a LIMIT or SL order.")
        if not is_multiple(price, instrument.tick_size):
            raise InputException(
                f"Tick size for this script is {instrument.tick_size.normalize()}. "
                "Kindly enter price in the multiple of tick size for this script",
                kind="tick_size",
            )
    if order_type in ("SL", "SL-M"):
        if trigger_price is None or trigger_price <= 0:
            raise InputException("Trigger price should be greater than 0 for an SL or SL-M order.")
        if not is_multiple(trigger_price, instrument.tick_size):
            raise InputException(
                f"Tick size for this script is {instrument.tick_size.normalize()}. "
                "Kindly enter trigger price in the multiple of tick size for this script",
                kind="tick_size",
            )
        if side == BUY and trigger_price <= instrument.last_price:
            raise InputException("Trigger price for stoploss buy orders should be higher than the last traded price.")
        if side == SELL and trigger_price >= instrument.last_price:
            raise InputException("Trigger price for stoploss sell orders should be lower than the last traded price.")
        if order_type == "SL" and ((side == BUY and price < trigger_price) or (side == SELL and price > trigger_price)):
            raise InputException("Trigger price should be on the right side of the limit price.")


def price_band(instrument: PaperInstrument) -> tuple[Decimal, Decimal]:
    """The lowest and highest prices an order may have (its circuit limits): the prices on the tick
    inside 20 % of the previous close (the nearest ticks to the band's edges can lie outside it)."""
    low = instrument.previous_close * (1 - PRICE_BAND)
    high = instrument.previous_close * (1 + PRICE_BAND)
    tick = instrument.tick_size
    lowest = ((low / tick).to_integral_value(ROUND_CEILING) * tick).quantize(Decimal("0.01"))
    highest = ((high / tick).to_integral_value(ROUND_FLOOR) * tick).quantize(Decimal("0.01"))
    return lowest, highest


def _band_violation(instrument: PaperInstrument, *prices) -> str | None:
    lowest, highest = price_band(instrument)
    for price in prices:
        if price is not None and price > 0 and not (lowest <= price <= highest):
            return f"Your order price is outside the price band of {lowest} - {highest} for {instrument.tradingsymbol}."
    return None


@transaction.atomic
def order_place(
    *,
    client: PaperClient,
    exchange: str,
    tradingsymbol: str,
    transaction_type: str,
    order_type: str,
    quantity: int,
    product: str,
    price: Decimal | None = None,
    trigger_price: Decimal | None = None,
    validity: str = "DAY",
    tag: str = "",
    variety: str = "regular",
    rng: random.Random | None = None,
    instrument: PaperInstrument | None = None,
) -> PaperOrder:
    """Validate and accept an order. Input errors raise; RMS refusals give a REJECTED order.

    ``instrument``: the order's instrument as just read (``client_and_instrument``), else it is
    looked up here.
    """
    if instrument is None:
        _checked_tag_and_variety(tag, variety)
        instrument = instrument_lookup(exchange, tradingsymbol)
    order = _arriving(
        client,
        instrument,
        transaction_type=transaction_type,
        order_type=order_type,
        quantity=quantity,
        product=product,
        price=price,
        trigger_price=trigger_price,
        validity=validity,
        tag=tag,
        variety=variety,
    )
    # Serialise this client's placements so two cannot spend the same cash.
    order.client = client = _client_locked(client.pk)
    order.placed_at = order.updated_at = now = timezone.now()
    order.priority = time.time_ns()
    cover = _sell_cover(client.pk, instrument.pk, product) if transaction_type == SELL else None
    touch = _judged(
        order,
        cover=cover,
        available=lambda: client.cash - (cover.blocked if cover is not None else _blocked_funds(client)),
        rng=rng or random,
    )
    _save_new(order, now)
    _changed(order, _book_fill(order, order.quantity, touch, now) if touch is not None else None)
    return order


@dataclass
class Placement:
    """One order of ``orders_place_many``: the session it comes with and its terms (``order_place``'s)."""

    access_token: str
    exchange: str
    tradingsymbol: str
    transaction_type: str
    order_type: str
    quantity: int
    product: str
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    validity: str = "DAY"
    tag: str = ""
    variety: str = "regular"


def orders_place_many(placements: list[Placement], *, rng: random.Random | None = None) -> list:
    """``order_place`` of many orders, of any clients, in one transaction: each client's row locked
    once (in id order), its blocked funds and its longs read once, the orders and their fills written
    by one statement each. Each order is judged as ``order_place`` judges it, one after another in
    the list's order: the funds and longs the earlier ones took or freed count for the later ones.

    Returns, for each placement, its order (REJECTED by the RMS, or accepted), the exchange's error
    (``InputException``, ``TokenException``), or None for an order of a client with call knobs set
    (latency, 429s, 5xx, lost answers): those are placed one by one (``order_place``), where the knobs
    act. A failure of the whole raises, and nothing of it was written (unless the failure is the
    commit's answer lost). Once committed, each order is told (``_changed``) on its own: one telling
    that fails is logged and leaves the others, and the placements, as they are.
    """
    rng = rng or random
    results: list = [None] * len(placements)
    # Read before the transaction, as a single placement reads them: no lock is held meanwhile.
    client_ids = _clients_of_tokens({_hash(p.access_token or "") for p in placements})
    instruments = instruments_by_keys({f"{p.exchange}:{p.tradingsymbol}" for p in placements})
    todo = []
    for index, p in enumerate(placements):
        client_id = client_ids.get(_hash(p.access_token or ""))
        instrument = instruments.get(f"{p.exchange}:{p.tradingsymbol}")
        if client_id is None:
            results[index] = TokenException("Incorrect `api_key` or `access_token`.")
        elif instrument is None:  # a bad tag or variety is told first, as order_place tells it
            try:
                _checked_tag_and_variety(p.tag, p.variety)
                results[index] = _no_instrument(p.exchange, p.tradingsymbol)
            except InputException as error:
                results[index] = error
        else:
            todo.append((index, client_id, instrument))
    if not todo:
        return results
    in_callers_transaction = connection.in_atomic_block  # tests: told when the caller commits
    tellings = []
    with transaction.atomic():
        clients = _clients_locked({client_id for _index, client_id, _instrument in todo})
        todo = [(i, clients[c], instrument) for i, c, instrument in todo if not _has_call_knobs(clients[c])]
        if not todo:
            return results
        ids = sorted({client.pk for _index, client, _instrument in todo})
        blocked = _blocked_funds_of(ids)
        longs = _longs_of(ids, {instrument.pk for _index, _client, instrument in todo})
        cash = {client_id: clients[client_id].cash for client_id in ids}
        now = timezone.now()
        placed = []
        for index, client, instrument in todo:
            p = placements[index]
            key = (client.pk, instrument.pk, p.product)
            try:
                order = _arriving(
                    client,
                    instrument,
                    transaction_type=p.transaction_type,
                    order_type=p.order_type,
                    quantity=p.quantity,
                    product=p.product,
                    price=p.price,
                    trigger_price=p.trigger_price,
                    validity=p.validity,
                    tag=p.tag,
                    variety=p.variety,
                )
                order.placed_at = order.updated_at = now
                order.priority = time.time_ns()
                sell = p.transaction_type == SELL
                touch = _judged(
                    order,
                    cover=SellCover(long=longs[key], blocked=blocked[client.pk]) if sell else None,
                    available=lambda c=client.pk: cash[c] - blocked[c],
                    rng=rng,
                )
            except InputException as error:
                results[index] = error
                continue
            if order.status in PaperOrder.LIVE:
                blocked[client.pk] += _blocks(order)
            if touch is not None:
                bought = -order.quantity if sell else order.quantity
                cash[client.pk] -= bought * touch
                longs[key] += bought
            placed.append((index, order, touch))
        for _index, order, _touch in placed:
            order.order_id = _new_order_id(now)
            order.exchange_order_id = "1" + order.order_id
        PaperOrder.objects.bulk_create([order for _index, order, _touch in placed])
        fills = {
            order.pk: _trade(order, order.quantity, touch, now) for _i, order, touch in placed if touch is not None
        }
        PaperTrade.objects.bulk_create(fills.values())
        _cash_paid({c: clients[c].cash - cash[c] for c in ids if cash[c] != clients[c].cash})
        for index, order, _touch in placed:
            tellings += _tellings(order, fills.get(order.pk), can_wait=True)
            results[index] = order
        if in_callers_transaction:
            for tell in tellings:
                transaction.on_commit(tell)
    if not in_callers_transaction:
        for tell in tellings:
            try:
                tell()
            except Exception:  # the placements stand; the reconciliation tells the platform later
                logger.exception("telling of a paper order placed with others failed")
    return results


def _cash_paid(paid: dict[int, Decimal]) -> None:
    """Each client's cash less what it paid (received, when negative), in one statement."""
    if not paid:
        return
    ids = sorted(paid)
    cases = " ".join(["WHEN %s THEN %s"] * len(ids))
    sql = f"UPDATE paper_paperclient SET cash = cash - CASE id {cases} END WHERE id IN ({_marks(ids)})"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for client_id in ids for value in (client_id, paid[client_id])] + ids)


def _has_call_knobs(client: PaperClient) -> bool:
    return bool(client.latency_ms or client.rate_limit_per_s or client.error_rate or client.timeout_rate)


def _marks(values) -> str:
    return ", ".join(["%s"] * len(values))


def _clients_of_tokens(token_hashes: set[str]) -> dict[str, int]:
    """The client of each live access token, by the token's hash."""
    hashes = sorted(token_hashes)
    sql = (
        "SELECT t.token_hash, t.client_id FROM paper_papertoken t "  # noqa: S608 (placeholders only)
        f"WHERE t.token_hash IN ({_marks(hashes)}) AND t.kind = %s AND t.revoked_at IS NULL AND t.expires_at > %s"
    )
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(sql, [*hashes, PaperToken.Kind.ACCESS, now])
        return dict(cursor.fetchall())


def _clients_locked(client_ids: set[int]) -> dict[int, PaperClient]:
    """The clients' rows, locked in id order until the transaction ends (``_client_locked`` of many)."""
    ids = sorted(client_ids)
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    sql = f"SELECT {_CLIENTS.columns('c')} FROM paper_paperclient c WHERE c.id IN ({_marks(ids)}) ORDER BY c.id{lock}"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, ids)
        clients = [_CLIENTS.make(row) for row in cursor.fetchall()]
    return {client.pk: client for client in clients}


def _blocked_funds_of(client_ids: list[int]) -> dict[int, Decimal]:
    """``_blocked_funds`` of several clients, in one query."""
    sql = (
        f"SELECT o.client_id, {_BLOCKED_SUM} FROM paper_paperorder o "  # noqa: S608 (placeholders only)
        f"WHERE o.client_id IN ({_marks(client_ids)}) AND o.status IN (%s, %s) GROUP BY o.client_id"
    )
    blocked = dict.fromkeys(client_ids, Decimal(0))
    with connection.cursor() as cursor:
        cursor.execute(sql, [SELL, *client_ids, *PaperOrder.LIVE])
        blocked.update({client_id: _summed_decimal(value) for client_id, value in cursor.fetchall()})
    return blocked


def _longs_of(client_ids: list[int], instrument_ids: set[int]) -> defaultdict:
    """Each client's net position by (client, instrument, product), all days, as ``_sell_cover``
    reads it for one; 0 where it has no trade."""
    instruments = sorted(instrument_ids)
    sql = (
        "SELECT t.client_id, t.instrument_id, t.product, "  # noqa: S608 (placeholders only)
        "SUM(CASE WHEN t.transaction_type = %s THEN t.quantity ELSE 0 END), "
        "SUM(CASE WHEN t.transaction_type = %s THEN t.quantity ELSE 0 END) FROM paper_papertrade t "
        f"WHERE t.client_id IN ({_marks(client_ids)}) AND t.instrument_id IN ({_marks(instruments)}) "
        "GROUP BY t.client_id, t.instrument_id, t.product"
    )
    longs = defaultdict(int)
    with connection.cursor() as cursor:
        cursor.execute(sql, [BUY, SELL, *client_ids, *instruments])
        for client_id, instrument_id, product, bought, sold in cursor.fetchall():
            longs[(client_id, instrument_id, product)] = int(bought or 0) - int(sold or 0)
    return longs


def _checked_tag_and_variety(tag: str, variety: str) -> None:
    if variety != "regular":
        raise InputException("Only the `regular` variety is supported by the paper exchange.")
    if tag and len(tag) > 20:  # Kite's limit
        raise InputException("Tag should be at most 20 characters.")


# Kite's answer to a regular order outside market hours.
MARKET_CLOSED = "Markets are closed right now. Use GTT for placing long standing orders instead."


def _arriving(client: PaperClient, instrument: PaperInstrument, *, price, trigger_price, tag, variety, **terms):
    """An order as it arrives (not saved): its input checked (``InputException``), OPEN for now."""
    _checked_tag_and_variety(tag, variety)
    if client.market_closed:
        raise InputException(MARKET_CLOSED, kind="market_closed")
    price = Decimal(price) if price not in (None, "") else None
    trigger_price = Decimal(trigger_price) if trigger_price not in (None, "") else None
    side, order_type = terms["transaction_type"], terms["order_type"]
    _validate(
        instrument,
        side=side,
        order_type=order_type,
        product=terms["product"],
        validity=terms["validity"],
        quantity=terms["quantity"],
        price=price,
        trigger_price=trigger_price,
    )
    return PaperOrder(
        client=client,
        instrument=instrument,
        variety=variety,
        **terms,
        price=price if order_type in ("LIMIT", "SL") else Decimal(0),
        trigger_price=trigger_price if order_type in ("SL", "SL-M") else Decimal(0),
        tag=tag or "",
        status=Status.OPEN,
    )


def _judged(order: PaperOrder, *, cover: SellCover | None, available, rng) -> Decimal | None:
    """The exchange's RMS and its arrival, on the order's fields (not saved): REJECTED with the reason,
    TRIGGER_PENDING, or OPEN, and filled at once when it crosses the touch. ``cover``: a SELL's
    (``_sell_cover``); ``available()``: the client's cash less its blocked funds, asked only when the
    order needs funds. Returns the price it filled at on arrival, or None."""
    # A SELL needs funds only for what the client's long does not cover (it opens a short);
    # delivery cannot go short at all.
    needs_funds = order.quantity
    if order.transaction_type == SELL:
        order.uncovered_quantity = needs_funds = max(0, order.quantity - cover.available)
        if needs_funds and order.product == "CNC":
            raise _cnc_refusal(order.instrument, order.quantity, cover)
    rejection = _band_violation(order.instrument, order.price, order.trigger_price)
    if order.order_type == "SL-M" and not stop_market_allowed(order.instrument):
        rejection = STOP_MARKET_BLOCKED  # as Kite's RMS refuses it: the order is REJECTED, not an input error
    if rejection is None and order.order_type == "MARKET":
        rejection = _no_market_price(order)
    if rejection is None and needs_funds:
        required = needs_funds * _reference_price(order)
        funds = available()
        if required > funds:
            rejection = f"Insufficient funds. Required margin is {required:.2f} but available margin is {funds:.2f}."
    if rejection is None and order.client.rejection_rate and rng.random() < order.client.rejection_rate:
        rejection = "RMS: order rejected by the simulated risk system (rejection_rate knob)."
    if rejection:
        order.status = Status.REJECTED
        order.status_message = rejection
    elif order.order_type in ("SL", "SL-M"):
        order.status = Status.TRIGGER_PENDING
    # An order that fills on arrival is written filled: one insert, no update after it.
    touch = _arrival_fill_price(order, order.instrument) if order.status == Status.OPEN else None
    if touch is not None:
        _apply_fill(order, order.quantity, touch, order.placed_at)
    elif order.status == Status.OPEN and order.validity == "IOC":
        _ioc_cancelled(order)
    return touch


def _no_market_price(order: PaperOrder) -> str | None:
    """Why a MARKET order has no price to fill at, or None. An instrument that has not traded (a last
    price of 0, as a Kite instruments file gives it) has a quote one tick around 0: a sell filled at
    a negative bid, which took money from the seller, and a buy at one tick."""
    instrument = order.instrument
    touch = instrument.ask if order.transaction_type == BUY else instrument.bid
    if instrument.last_price > 0 and touch > 0:
        return None
    return f"There is no market price for {instrument.tradingsymbol} yet: a MARKET order has no price to fill at."


def _ioc_cancelled(order: PaperOrder) -> None:
    """An IOC order's rest, cancelled (not saved): Immediate Or Cancel fills what it can the moment it
    reaches the book and never rests there, so a later tick cannot fill it and it blocks no funds."""
    order.status = Status.CANCELLED
    order.cancelled_quantity = order.quantity - order.filled_quantity


@functools.cache
def _client_locked_sql() -> str:
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    return f"SELECT {_CLIENTS.columns('c')} FROM paper_paperclient c WHERE c.id = %s{lock}"  # noqa: S608


def _client_locked(client_id: int) -> PaperClient:
    """The client row, locked until the transaction ends (``select_for_update().get()``, written out)."""
    with connection.cursor() as cursor:
        cursor.execute(_client_locked_sql(), [client_id])
        row = cursor.fetchone()
    if row is None:
        raise PaperClient.DoesNotExist("PaperClient matching query does not exist.")
    return _CLIENTS.make(row)


def _save_new(order: PaperOrder, now: datetime) -> None:
    # A random 9-digit suffix per day: a clash (about one in a billion) fails the
    # placement with an IntegrityError, which the adapter reports as a busy exchange.
    order.order_id = _new_order_id(now)
    order.exchange_order_id = "1" + order.order_id
    _NEW_ORDERS.insert(order)


def _arrival_fill_price(order: PaperOrder, instrument: PaperInstrument) -> Decimal | None:
    """MARKET at the touch; a LIMIT that crosses fills at the better (touch) price; else None."""
    touch = instrument.ask if order.transaction_type == BUY else instrument.bid
    crosses = order.order_type == "MARKET" or (
        order.price >= touch if order.transaction_type == BUY else order.price <= touch
    )
    return touch if crosses else None


def _fill_on_arrival(order: PaperOrder, instrument: PaperInstrument, now: datetime) -> PaperTrade | None:
    touch = _arrival_fill_price(order, instrument)
    if touch is None:
        return None
    return _record_fill(order, order.quantity - order.filled_quantity, touch, now)


def _apply_fill(order: PaperOrder, quantity: int, price: Decimal, now: datetime) -> None:
    """The order's fields after a fill of ``quantity`` at ``price`` (not saved)."""
    total = order.filled_quantity + quantity
    order.average_price = ((order.average_price * order.filled_quantity) + price * quantity) / total
    order.filled_quantity = total
    order.updated_at = now
    if total == order.quantity:
        order.status = Status.COMPLETE


def _record_fill(order: PaperOrder, quantity: int, price: Decimal, now: datetime) -> PaperTrade:
    _apply_fill(order, quantity, price, now)
    order.save(update_fields=["average_price", "filled_quantity", "status", "updated_at"])
    return _book_fill(order, quantity, price, now)


# Each placement writes its order, and each fill its trade and the client's cash: written out once.
_NEW_ORDERS, _NEW_TRADES = PlainInserts(PaperOrder), PlainInserts(PaperTrade)
_CASH_SQL = {
    True: "UPDATE paper_paperclient SET cash = cash - %s WHERE id = %s",  # a BUY pays
    False: "UPDATE paper_paperclient SET cash = cash + %s WHERE id = %s",
}


_last_trade_us = 0
_trade_numbers_lock = threading.Lock()


def _trade_number() -> str:
    """A trade id that grows as the trades happen, as an exchange's trade numbers do (the platform
    orders fills of one time by it: ``portfolio.services.fifo_order``): the microsecond, never the
    same twice in a process, and 4 random digits that keep two processes' trades apart."""
    global _last_trade_us
    with _trade_numbers_lock:
        _last_trade_us = max(_last_trade_us + 1, time.time_ns() // 1000)
        us = _last_trade_us
    return f"{us:016d}{secrets.randbelow(10**4):04d}"


def _trade(order: PaperOrder, quantity: int, price: Decimal, now: datetime) -> PaperTrade:
    """The trade of a fill of a saved order (not saved)."""
    return PaperTrade(
        trade_id=_trade_number(),
        order=order,
        client_id=order.client_id,
        instrument_id=order.instrument_id,
        transaction_type=order.transaction_type,
        product=order.product,
        quantity=quantity,
        price=price,
        filled_at=now,
    )


def _book_fill(order: PaperOrder, quantity: int, price: Decimal, now: datetime) -> PaperTrade:
    """The trade of a fill already applied to its (saved) order, and the client's cash."""
    # The cash first: its UPDATE takes the client's row exclusively. The trade's insert takes it
    # shared (its foreign key), and a shared lock raised to an exclusive one deadlocks with a
    # placement of the client waiting for the row meanwhile (the tick's fills or the order lost).
    with connection.cursor() as cursor:
        cursor.execute(_CASH_SQL[order.transaction_type == BUY], [quantity * price, order.client_id])
    trade = _trade(order, quantity, price, now)
    _NEW_TRADES.insert(trade)
    # No instrument row update here: the market tick owns those rows (it rewrites them every
    # second), and fills locking them would queue behind it. The feed keeps the day's volume.
    return trade


def _live_order(client: PaperClient, order_id: str) -> PaperOrder:
    # Only the order is locked (MariaDB's FOR UPDATE would lock a joined instrument row too, which
    # the market tick locks for its quotes): its instrument is read beside the lock.
    order = PaperOrder.objects.select_for_update().filter(client=client, order_id=order_id).first()
    if order is None:
        raise InputException("Couldn't find that `order_id`.", kind="input")
    order.instrument = PaperInstrument.objects.get(pk=order.instrument_id)
    order.client = client
    if order.status not in PaperOrder.LIVE:
        raise InputException(f"Order cannot be modified or cancelled as it is {order.status}.", kind="input")
    return order


@transaction.atomic
def order_modify(
    *,
    client: PaperClient,
    order_id: str,
    quantity: int | None = None,
    price: Decimal | None = None,
    trigger_price: Decimal | None = None,
    order_type: str | None = None,
) -> PaperOrder:
    order = _live_order(client, order_id)
    if order.placed_at < day_start():
        # Its day ended: the next tick closes it (``day_orders_close``); a modify must not fill it today.
        raise InputException(
            "Order cannot be modified as its trading day has ended (a DAY order is valid for the day it was placed).",
            kind="input",
        )
    if order.modifications >= MAX_MODIFICATIONS:
        raise InputException(
            f"Maximum allowed order modifications ({MAX_MODIFICATIONS}) exceeded.", kind="modification_cap"
        )
    new_type = order_type or order.order_type
    new_quantity = int(quantity) if quantity not in (None, "") else order.quantity
    new_price = Decimal(price) if price not in (None, "") else order.price
    new_trigger = Decimal(trigger_price) if trigger_price not in (None, "") else order.trigger_price
    if new_quantity <= order.filled_quantity:
        raise InputException("Quantity cannot be less than the filled quantity.")
    if order.status == Status.OPEN and new_type in ("SL", "SL-M"):
        raise InputException("A triggered order cannot become a stop order again.")
    # A stop that triggered is the plain order it became, with the trigger it had: a new trigger
    # would be ignored (the order may fill at once at its limit), so it is refused, not taken quietly.
    triggered = order.status == Status.OPEN and order.trigger_price > 0
    if triggered and trigger_price not in (None, "") and 0 < Decimal(trigger_price) != order.trigger_price:
        raise InputException("Trigger price cannot be modified as the stop order has already triggered.")
    if order.status == Status.TRIGGER_PENDING and new_type not in ("SL", "SL-M"):
        raise InputException("A pending stop order can only be modified as SL or SL-M.")
    if new_type == "SL-M" and not stop_market_allowed(order.instrument):
        raise InputException(STOP_MARKET_BLOCKED)
    _validate(
        order.instrument,
        side=order.transaction_type,
        order_type=new_type,
        product=order.product,
        validity=order.validity,
        quantity=new_quantity,
        price=new_price if new_type in ("LIMIT", "SL") else None,
        trigger_price=new_trigger if new_type in ("SL", "SL-M") else None,
    )
    rejection = _band_violation(
        order.instrument,
        new_price if new_type in ("LIMIT", "SL") else None,
        new_trigger if new_type in ("SL", "SL-M") else None,
    )
    if rejection:
        raise InputException(rejection, kind="price_band")
    if new_type == "MARKET":
        no_price = _no_market_price(order)
        if no_price:
            raise InputException(no_price)
    blocked_before = _blocks(order)
    if order.transaction_type == SELL and new_quantity != order.quantity:
        # What the long covers is worked out again for the new quantity.
        cover = _sell_cover(client.pk, order.instrument_id, order.product)
        order.uncovered_quantity = max(0, new_quantity - order.filled_quantity - cover.available)
        if order.uncovered_quantity and order.product == "CNC":
            raise _cnc_refusal(order.instrument, new_quantity - order.filled_quantity, cover)
    # Exchange rule: a new price or a larger quantity goes to the back of the queue.
    if new_price != order.price or new_trigger != order.trigger_price or new_quantity > order.quantity:
        order.priority = time.time_ns()
    order.order_type = new_type
    order.quantity = new_quantity
    order.price = new_price if new_type in ("LIMIT", "SL") else Decimal(0)
    # A triggered stop keeps its trigger: what says it was one (``adapter.stop_triggered``).
    kept_trigger = order.trigger_price if triggered else Decimal(0)
    order.trigger_price = new_trigger if new_type in ("SL", "SL-M") else kept_trigger
    # A larger quantity or a higher price needs the funds a new order would (this order's own
    # block is freed for it): a modify is no way around the funds check.
    open_quantity = new_quantity - order.filled_quantity
    needs = min(order.uncovered_quantity, open_quantity) if order.transaction_type == SELL else open_quantity
    required = needs * _reference_price(order)
    if required > blocked_before:
        locked = _client_locked(client.pk)
        available = locked.cash - _blocked_funds(locked) + blocked_before
        if required > available:
            raise InputException(
                f"Insufficient funds. Required margin is {required:.2f} but available margin is {available:.2f}.",
                kind="funds",
            )
    order.modifications += 1
    order.updated_at = timezone.now()
    order.save()
    fill = _fill_on_arrival(order, order.instrument, order.updated_at) if order.status == Status.OPEN else None
    _changed(order, fill)
    return order


@transaction.atomic
def order_cancel(*, client: PaperClient, order_id: str) -> PaperOrder:
    order = _live_order(client, order_id)
    order.cancelled_quantity = order.quantity - order.filled_quantity
    order.status = Status.CANCELLED
    order.updated_at = timezone.now()
    order.save(update_fields=["cancelled_quantity", "status", "updated_at"])
    _changed(order)
    return order


def _changed(order: PaperOrder, fill: PaperTrade | None = None) -> None:
    """After commit, tell the platform (in-process, like a postback) and the client's postback URL.

    The platform hears of every change, with the order's state and the change's fill described
    now, from the rows in hand (the announcement reads nothing back), off the committing thread
    (the placing request does not wait for it).
    """
    for tell in _tellings(order, fill):
        transaction.on_commit(tell)


def _tellings(order: PaperOrder, fill: PaperTrade | None, *, can_wait: bool = False) -> list:
    """What ``_changed`` does once the change is committed (``order_announce``'s ``can_wait``)."""
    from .adapter import order_announce, to_broker_order, to_broker_trade

    if fill is not None:
        fill.order, fill.instrument = order, order.instrument
    state, fills = to_broker_order(order), [to_broker_trade(fill)] if fill is not None else []
    user_id = order.client.user_id  # callers load the client with the order
    # The platform's ``paper`` accounts hear of their clients' changes; a client with a login
    # password is a Kite face client (never a paper account's: ``PaperBroker.login``), whose
    # changes are not told to a paper account that names it (another trader's, who would record
    # its fills as theirs): its own trader hears of them through Kite's postbacks and reads.
    tellings = [] if order.client.password else [lambda: order_announce(user_id, state, fills, can_wait=can_wait)]
    # Kite's postbacks: on fills and on closing, not on an order just opened.
    if order.client.postback_url and (order.status != Status.OPEN or order.filled_quantity):
        from .tasks import send_postback

        tellings.append(lambda: send_postback.delay(order.pk))
    return tellings


# --- The market ----------------------------------------------------------------------------


def _feed_step(instrument: PaperInstrument, rng: random.Random) -> None:
    """One step of a geometric random walk, kept inside the price band, bid/ask a tick around it."""
    sigma = settings.PAPER_TICK_SIGMA
    last = Decimal(str(float(instrument.last_price) * math.exp(rng.gauss(0, sigma))))
    low = instrument.previous_close * (1 - PRICE_BAND) * Decimal("1.01")
    high = instrument.previous_close * (1 + PRICE_BAND) * Decimal("0.99")
    last = round_to_tick(min(max(last, low), high), instrument.tick_size)
    _set_quote(instrument, last, tick_volume=instrument.lot_size * rng.randint(1, 200))


def _set_quote(
    instrument: PaperInstrument, last: Decimal, *, bid=None, ask=None, tick_volume: int | None = None
) -> None:
    instrument.last_price = last
    instrument.bid = bid if bid is not None else last - instrument.tick_size
    instrument.ask = ask if ask is not None else last + instrument.tick_size
    instrument.high = max(instrument.high, last)
    instrument.low = min(instrument.low, last)
    if tick_volume is not None:
        instrument.tick_volume = tick_volume
        instrument.volume += tick_volume  # the day's volume: what each tick traded
    instrument.updated_at = timezone.now()


QUOTE_FIELDS = ["last_price", "bid", "ask", "high", "low", "tick_volume", "volume", "updated_at"]
DAY_FIELDS = ["previous_close", "open"]


def _day_open(instrument: PaperInstrument) -> None:
    """A new trading day: the last price closes the day before and opens this one (not saved)."""
    last = instrument.last_price
    instrument.previous_close = instrument.open = instrument.high = instrument.low = last
    instrument.volume = 0


DAY_ENDED = "Order cancelled at the end of its trading day (a DAY order is valid for the day it was placed)"


def day_orders_close(now: datetime | None = None) -> int:
    """Live orders placed on an earlier trading day (IST), closed as the exchange closes them at the
    day's end: CANCELLED, their rest cancelled (so their funds are free), the platform told as of any
    cancel. Without this a resting order of yesterday could fill today. DAY orders, and IOC stops
    still waiting for their trigger (an IOC order is live only then): every regular order ends with
    its day. Returns how many."""
    now = now or timezone.now()
    stale = list(
        PaperOrder.objects.filter(status__in=PaperOrder.LIVE, placed_at__lt=day_start(now))
        .values_list("pk", flat=True)
        .order_by("pk")
    )
    if not stale:
        return 0
    with transaction.atomic():
        # Locked by primary key, as ``match_instrument`` locks them (no deadlock with a tick's match).
        orders = list(PaperOrder.objects.select_for_update().filter(pk__in=stale, status__in=PaperOrder.LIVE))
        # Read beside the lock, not joined to it (MariaDB would lock the joined rows too).
        instruments = PaperInstrument.objects.in_bulk({order.instrument_id for order in orders})
        clients = PaperClient.objects.in_bulk({order.client_id for order in orders})
        for order in orders:
            order.instrument, order.client = instruments[order.instrument_id], clients[order.client_id]
            order.cancelled_quantity = order.quantity - order.filled_quantity
            order.status = Status.CANCELLED
            order.status_message = DAY_ENDED
            order.updated_at = now
            order.save(update_fields=["cancelled_quantity", "status", "status_message", "updated_at"])
            _changed(order)
    return len(orders)


def market_tick(*, rng_seed: int | None = None) -> int:
    """Advance every instrument one step of the random walk and match what crosses, once the
    DAY orders of earlier trading days are closed (``day_orders_close``).

    Repeatable: the walk of each instrument at tick N depends only on the seed and N.
    Returns the number of fills.
    """
    day_orders_close()
    with transaction.atomic():
        state, _ = PaperFeedState.objects.select_for_update().get_or_create(
            pk=1, defaults={"seed": settings.PAPER_FEED_SEED}
        )
        now = timezone.now()
        # The first tick of a new trading day (IST) closes the day before: its last price is the
        # new day's previous close (the price band's and the day change's base), as at an exchange.
        new_day = state.ticked_at is not None and trading_date(state.ticked_at) != trading_date(now)
        state.tick_no += 1
        state.ticked_at = now
        state.save()
        seed = state.seed if rng_seed is None else rng_seed
        instruments = list(PaperInstrument.objects.select_for_update().all())
        for instrument in instruments:
            if new_day:
                _day_open(instrument)
            _feed_step(instrument, random.Random(f"{seed}:{instrument.instrument_token}:{state.tick_no}"))
        PaperInstrument.objects.bulk_update(instruments, QUOTE_FIELDS + (DAY_FIELDS if new_day else []))
    live = set(PaperOrder.objects.filter(status__in=PaperOrder.LIVE).values_list("instrument_id", flat=True))
    fills = 0
    for instrument_id in live:
        try:
            fills += match_instrument(instrument_id=instrument_id)
        except DatabaseError:
            # One instrument's matching failing (a lock wait, a deadlock: rolled back whole) must
            # not leave every instrument after it unmatched; it is matched again at the next tick.
            logger.exception("paper tick: matching instrument %s failed; the next tick matches it", instrument_id)
    return fills


# An instrument's prices: none below 0 (0 is an untraded one's, as a Kite instruments file gives it).
INSTRUMENT_PRICES = ("strike", "previous_close", "open", "high", "low", "last_price", "bid", "ask")


def instrument_check(values: dict) -> None:
    """What an instrument's row must hold, whoever sets it (staff in admin; those given): a tick and
    a lot above 0 (every tick of the market divides by the tick, and every order in it is checked
    in both: a tick of 0 failed every market tick, so no price moved and nothing filled) and no
    price below 0 (a negative ask filled every resting BUY at once). Raises ValidationError naming
    the field."""
    from django.core.exceptions import ValidationError

    errors = {}
    if values.get("tick_size") is not None and values["tick_size"] <= 0:
        errors["tick_size"] = "The tick size must be above 0."
    if values.get("lot_size") is not None and values["lot_size"] < 1:
        errors["lot_size"] = "The lot size must be at least 1."
    for name in INSTRUMENT_PRICES:
        if values.get(name) is not None and values[name] < 0:
            errors[name] = "A price cannot be below 0."
    if errors:
        raise ValidationError(errors)


def market_set(
    *, exchange: str, tradingsymbol: str, last_price: Decimal, bid=None, ask=None, tick_volume: int | None = None
) -> int:
    """Set an instrument's price (tests and demos) and match what crosses. Returns fills."""
    with transaction.atomic():
        instrument = PaperInstrument.objects.select_for_update().get(exchange=exchange, tradingsymbol=tradingsymbol)
        _set_quote(
            instrument,
            Decimal(last_price),
            bid=Decimal(bid) if bid is not None else None,
            ask=Decimal(ask) if ask is not None else None,
            tick_volume=tick_volume if tick_volume is not None else instrument.tick_volume or 10**6,
        )
        instrument.save(update_fields=QUOTE_FIELDS)
    return match_instrument(instrument_id=instrument.pk)


@transaction.atomic
def match_instrument(*, instrument_id: int) -> int:
    """Trigger stops and fill crossing LIMIT orders of one instrument at its current quote."""
    instrument = PaperInstrument.objects.get(pk=instrument_id)
    # Only the orders are locked: MariaDB's FOR UPDATE would lock their joined clients too, which
    # a placement or a modify of one of them holds while it waits for an order locked here (a
    # deadlock). A client's cash changes by one UPDATE per fill, which takes its row then.
    # They are locked by their primary key: a lock taken through the (instrument, status) index
    # holds that index's entry while it waits for the row, and a modify or cancel holding the row
    # needs that entry to change the order's status (a deadlock, which lost the whole tick's fills
    # of the instrument, or the trader's cancel). One that closed meanwhile is left out as read.
    # Orders of an earlier trading day ended with it: they wait for ``day_orders_close`` (the next
    # tick), never filled or triggered by a price set today before it (staff's, a paused tick's).
    live = list(
        PaperOrder.objects.filter(
            instrument_id=instrument_id, status__in=PaperOrder.LIVE, placed_at__gte=day_start()
        ).values_list("pk", flat=True)
    )
    if not live:
        return 0
    orders = {
        order.order_id: order
        for order in PaperOrder.objects.select_for_update()
        .filter(pk__in=live, status__in=PaperOrder.LIVE)
        .order_by("priority", "id")
    }
    if not orders:
        return 0
    clients = PaperClient.objects.in_bulk({order.client_id for order in orders.values()})
    book = OrderBook()
    for order in orders.values():
        remaining = order.quantity - order.filled_quantity
        if order.status == Status.TRIGGER_PENDING:
            limit = to_paise(order.price) if order.order_type == "SL" else None
            book.add_stop(order.order_id, order.transaction_type, to_paise(order.trigger_price), remaining, limit)
        elif order.order_type == "LIMIT":
            book.add_limit(order.order_id, order.transaction_type, to_paise(order.price), remaining)
    for order in orders.values():
        order.instrument, order.client = instrument, clients[order.client_id]
    now = timezone.now()
    # What the tick does is decided first (the book is in memory): the stops it triggers, which of
    # them fill at once, and the resting limits it fills.
    triggered = []
    for order_id, _side, _quantity, limit in book.trigger(to_paise(instrument.last_price)):
        order = orders[order_id]
        order.status = Status.OPEN
        order.order_type = "LIMIT" if limit is not None else "MARKET"
        order.updated_at = now
        # It enters the book now, behind what rests at its price already (as ``add_limit`` puts it in
        # this tick): its time priority is its trigger's, or later ticks would put it first again.
        order.priority = time.time_ns()
        touch = instrument.ask if order.transaction_type == BUY else instrument.bid
        crosses = limit is None or (order.price >= touch if order.transaction_type == BUY else order.price <= touch)
        if not crosses and order.validity == "IOC":  # a triggered IOC stop reaches the book as an IOC
            _ioc_cancelled(order)
        elif not crosses:
            book.add_limit(order.order_id, order.transaction_type, limit, order.quantity - order.filled_quantity)
        triggered.append((order, touch if crosses else None))
    matched = book.match(bid=to_paise(instrument.bid), ask=to_paise(instrument.ask), volume=instrument.tick_volume)
    # The clients to pay, locked in id order before the first is paid, as a batch of placements locks
    # them (``_clients_locked``): paid in the book's order, a client paid first and another wanted next,
    # which a batch held while it waited for the first, was a deadlock.
    paid = {order.client_id for order, touch in triggered if touch is not None}
    paid |= {orders[fill.order_id].client_id for fill in matched}
    if paid:
        _clients_locked(paid)
    fills = 0
    for order, touch in triggered:
        order.save(update_fields=["status", "order_type", "cancelled_quantity", "priority", "updated_at"])
        fill = None
        if touch is not None:
            fill = _record_fill(order, order.quantity - order.filled_quantity, touch, now)
            fills += 1
        _changed(order, fill)
    for fill in matched:
        order = orders[fill.order_id]
        _changed(order, _record_fill(order, fill.quantity, from_paise(fill.price), now))
        fills += 1
    return fills


# --- Reads ----------------------------------------------------------------------------------


def orders_of(client: PaperClient):
    """Every order of the client, of every day (an order's own history, its fills and a look-up by
    tag read it); the order book the client lists is today's (``order_book``)."""
    return PaperOrder.objects.filter(client=client).select_related("instrument").order_by("placed_at", "id")


# The whole-book reads every account makes every monitoring cycle, written out once (each with
# its instruments joined in): Django building these queries anew each time cost more than running them.
_ORDERS, _TRADES, _INSTRUMENTS = PlainRows(PaperOrder), PlainRows(PaperTrade), PlainRows(PaperInstrument)


@functools.cache
def _order_book_sql() -> str:
    """Today's orders (``order_book``): those changed since the day's start (placed today, or an
    earlier day's closed today), then the earlier days' still live, each with its index."""
    select = (
        f"SELECT {_ORDERS.columns('o')}, {_INSTRUMENTS.columns('i')} FROM paper_paperorder o "  # noqa: S608
        "JOIN paper_paperinstrument i ON i.id = o.instrument_id WHERE o.client_id = %s"
    )
    live = ", ".join(["%s"] * len(PaperOrder.LIVE))
    return f"{select} AND o.updated_at >= %s UNION ALL {select} AND o.status IN ({live}) AND o.updated_at < %s"


@functools.cache
def _trade_book_sql(every_day: bool) -> str:
    since = "" if every_day else "AND t.filled_at >= %s "
    return (
        f"SELECT {_TRADES.columns('t')}, o.order_id, o.tag, {_INSTRUMENTS.columns('i')} "  # noqa: S608
        "FROM paper_papertrade t "
        "JOIN paper_paperorder o ON o.id = t.order_id JOIN paper_paperinstrument i ON i.id = t.instrument_id "
        f"WHERE t.client_id = %s {since}ORDER BY t.filled_at, t.id"
    )


def _rows_with_instruments(sql: str, params: list, kind: PlainRows, extra: int) -> list[tuple]:
    """(instance, the ``extra`` values after its columns) per row, each with its instrument (one per id)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        fetched = cursor.fetchall()
    instruments, result = {}, []
    start = kind.width + extra
    for values in fetched:
        item = kind.make(values[: kind.width])
        instrument_id = values[start]
        if instrument_id not in instruments:
            instruments[instrument_id] = _INSTRUMENTS.make(values[start:])
        item.instrument = instruments[instrument_id]
        result.append((item, values[kind.width : start]))
    return result


def _since(moment: datetime):
    return connection.ops.adapt_datetimefield_value(moment)


# The day's books (``order_book``, ``trade_book``) reach this far back before the day's start. The
# paper market trades through midnight (Kite's shuts at 15:30): a fill in the day's last minute
# whose announcement to the platform was lost would otherwise be in no book its next run reads, and
# never recorded (its order closed as "ended with its day, fills unknown"). The platform records a
# fill once by its trade id, so one listed on both sides of midnight is one fill.
BOOK_LOOKBACK = timedelta(minutes=15)


def _book_start() -> datetime:
    return day_start() - BOOK_LOOKBACK


def order_book(client: PaperClient) -> list[PaperOrder]:
    """The client's order book as Kite lists it, the day's orders (Asia/Kolkata), oldest first,
    each with its instrument (in one plain query): those placed today, and those of an earlier day
    still live (until the next tick closes them with their day, ``day_orders_close``) or ended
    today (the close is told in the book of the day it happens, as Kite's at its day's end); and
    those changed in the last ``BOOK_LOOKBACK`` before the day's start."""
    since = _since(_book_start())
    params = [client.pk, since, client.pk, *(status.value for status in PaperOrder.LIVE), since]
    orders = [order for order, _ in _rows_with_instruments(_order_book_sql(), params, _ORDERS, 0)]
    return sorted(orders, key=lambda order: (order.placed_at, order.pk))


def trade_book(client: PaperClient, *, every_day: bool = False) -> list[PaperTrade]:
    """The client's fills with their instruments and their orders' ids and tags, oldest first:
    today's (Asia/Kolkata), as Kite lists them; ``every_day`` for what the exchange itself works
    out from all of them (positions carried in from earlier days)."""
    params = [client.pk] if every_day else [client.pk, _since(_book_start())]
    trades = []
    for trade, (order_ref, order_tag) in _rows_with_instruments(_trade_book_sql(every_day), params, _TRADES, 2):
        trade.order = PaperOrder(pk=trade.order_id, order_id=order_ref, tag=order_tag or "")
        trades.append(trade)
    return trades


def order_of(client: PaperClient, order_id: str) -> PaperOrder:
    order = orders_of(client).filter(order_id=order_id).first()
    if order is None:
        raise InputException("Couldn't find that `order_id`.")
    return order


def trades_of(client: PaperClient, order_id: str | None = None):
    """The client's fills of every day, or one order's (``order_id``)."""
    trades = PaperTrade.objects.filter(client=client).select_related("order", "instrument").order_by("filled_at", "id")
    return trades.filter(order__order_id=order_id) if order_id else trades


def day_trades_of(client: PaperClient):
    """The client's fills of today (Asia/Kolkata), as Kite lists them, and of the last
    ``BOOK_LOOKBACK`` before it (``trade_book``'s)."""
    return trades_of(client).filter(filled_at__gte=_book_start())


@dataclass
class PositionRow:
    instrument: PaperInstrument
    product: str
    buy_quantity: int = 0
    buy_value: Decimal = Decimal(0)
    sell_quantity: int = 0
    sell_value: Decimal = Decimal(0)
    day_buy_quantity: int = 0
    day_buy_value: Decimal = Decimal(0)
    day_sell_quantity: int = 0
    day_sell_value: Decimal = Decimal(0)

    @property
    def quantity(self) -> int:
        return self.buy_quantity - self.sell_quantity

    @property
    def overnight_quantity(self) -> int:
        """Carried into today (Asia/Kolkata): the net of the fills of earlier days (0 for delivery,
        whose earlier days are holdings)."""
        return self.quantity - self.day_buy_quantity + self.day_sell_quantity

    @property
    def buy_price(self) -> Decimal:
        return self.buy_value / self.buy_quantity if self.buy_quantity else Decimal(0)

    @property
    def sell_price(self) -> Decimal:
        return self.sell_value / self.sell_quantity if self.sell_quantity else Decimal(0)

    @property
    def average_price(self) -> Decimal:
        if self.quantity > 0:
            return self.buy_price
        if self.quantity < 0:
            return self.sell_price
        return Decimal(0)

    @property
    def pnl(self) -> Decimal:
        return self.sell_value - self.buy_value + self.quantity * self.instrument.last_price

    @property
    def realised(self) -> Decimal:
        closed = min(self.buy_quantity, self.sell_quantity)
        return closed * (self.sell_price - self.buy_price) if closed else Decimal(0)

    @property
    def unrealised(self) -> Decimal:
        return self.pnl - self.realised


def _carry_folded(carried: dict, fills) -> dict:
    """``carried`` ({(instrument id, product): (net quantity, average)}, in order of first fill)
    moved on by ``fills`` ((instrument id, product, transaction type, quantity, price), oldest
    first), as Kite carries a position into the day. A fill that reduces it keeps its average; one
    that turns it over starts the other side at its own price. Closed ones stay (quantity 0)."""
    for instrument_id, product, transaction_type, fill_quantity, price in fills:
        key = (instrument_id, product)
        quantity, average = carried.get(key, (0, Decimal(0)))
        signed = fill_quantity if transaction_type == BUY else -fill_quantity
        if quantity == 0 or (quantity > 0) == (signed > 0):  # opens or adds: the average moves
            average = (abs(quantity) * average + fill_quantity * price) / (abs(quantity) + fill_quantity)
        elif abs(signed) > abs(quantity):  # turned over: the rest opens at this fill's price
            average = price
        carried[key] = (quantity + signed, average)
    return carried


def _fill_of(trade: PaperTrade) -> tuple:
    return trade.instrument_id, trade.product, trade.transaction_type, trade.quantity, trade.price


def _carried_in(trades: list[PaperTrade]) -> dict[tuple, tuple[PaperInstrument, int, Decimal]]:
    """What the fills of earlier days leave open by (instrument, product), as Kite carries it into
    the day: (instrument, net quantity, negative for a short, its average price) (``_carry_folded``)."""
    instruments = {trade.instrument_id: trade.instrument for trade in trades}
    carried = _carry_folded({}, map(_fill_of, trades))
    return {key: (instruments[key[0]], quantity, average) for key, (quantity, average) in carried.items() if quantity}


def _positions_of_every_fill(client: PaperClient) -> list[PositionRow]:
    """``positions_of``'s net view worked out from every fill the client ever had (what it kept
    before the carry was kept: ``PaperCarry``), for the tests that hold the two equal."""
    start_of_day = day_start()
    rows: dict[tuple, PositionRow] = {}
    trades = trade_book(client, every_day=True)
    earlier = [t for t in trades if t.filled_at < start_of_day and t.product != "CNC"]
    for (instrument_id, product), (instrument, quantity, average) in _carried_in(earlier).items():
        row = rows[(instrument_id, product)] = PositionRow(instrument, product)
        if quantity > 0:
            row.buy_quantity, row.buy_value = quantity, quantity * average
        else:
            row.sell_quantity, row.sell_value = -quantity, -quantity * average
    return _with_days_fills(rows, [t for t in trades if t.filled_at >= start_of_day])


# The client's fills from the cut (``BOOK_LOOKBACK`` before the day's start: the day's trade book),
# and those of before it written since its carry was worked out (``PaperCarry.through_id``), which
# make it stale: one statement, so both are read at one moment.
@functools.cache
def _fills_since_carry_sql() -> str:
    def select(late: int) -> str:
        return (
            f"SELECT {_TRADES.columns('t')}, o.order_id, o.tag, {late}, {_INSTRUMENTS.columns('i')} "  # noqa: S608
            "FROM paper_papertrade t "
            "JOIN paper_paperorder o ON o.id = t.order_id JOIN paper_paperinstrument i ON i.id = t.instrument_id "
        )

    return (
        f"{select(0)}WHERE t.client_id = %s AND t.filled_at >= %s "
        f"UNION ALL {select(1)}WHERE t.client_id = %s AND t.id > %s AND t.filled_at < %s"
    )


@functools.cache
def _carry_fills_sql() -> str:
    return (
        "SELECT t.instrument_id, t.product, t.transaction_type, t.quantity, t.price FROM paper_papertrade t "
        "WHERE t.client_id = %s AND t.filled_at < %s ORDER BY t.filled_at, t.id"
    )


_CARRY_FILLS = PlainRows(PaperTrade, only=("instrument", "product", "transaction_type", "quantity", "price"))


def _carry_worked_out(client: PaperClient, day, cut: datetime) -> tuple[int, dict]:
    """What the client's fills of before ``cut`` (but delivery's) carry into ``day``, from them all,
    kept (``PaperCarry``, in a transaction of its own where the caller has none): (the client's
    last fill then, the carry)."""
    with connection.cursor() as cursor:
        # The last fill first: one written meanwhile is read again (``_fills_since_carry_sql``).
        cursor.execute("SELECT MAX(t.id) FROM paper_papertrade t WHERE t.client_id = %s", [client.pk])
        (through_id,) = cursor.fetchone()
        cursor.execute(_carry_fills_sql(), [client.pk, _since(cut)])
        fills = [_CARRY_FILLS.convert(values) for values in cursor.fetchall()]
    through_id = through_id or 0
    carried = _carry_folded({}, (fill for fill in fills if fill[1] != "CNC"))
    state = [[i, product, quantity, str(average)] for (i, product), (quantity, average) in carried.items()]
    outermost = not connection.in_atomic_block
    try:
        with transaction.atomic():
            PaperCarry.objects.filter(client=client).exclude(day=day).delete()  # other days': read no more
            if not PaperCarry.objects.filter(client=client, day=day).update(through_id=through_id, state=state):
                PaperCarry.objects.create(client=client, day=day, through_id=through_id, state=state)
    except DatabaseError as error:  # kept by another process first (or a lock): ours stands for this read
        if not (outermost or isinstance(error, IntegrityError)):
            raise
        logger.info("paper carry of client %s not kept", client.pk, exc_info=True)
    return through_id, carried


def _kept_carry(client: PaperClient, day) -> tuple[int, dict] | None:
    kept = PaperCarry.objects.filter(client=client, day=day).values_list("through_id", "state").first()
    if kept is None:
        return None
    through_id, state = kept
    return through_id, {(i, product): (quantity, Decimal(average)) for i, product, quantity, average in state}


def _carry_and_fills(client: PaperClient, start_of_day: datetime) -> tuple[dict, list[PaperTrade]]:
    """What the fills of before the cut (``BOOK_LOOKBACK`` before the day's start) carry in (kept:
    ``PaperCarry``), and the fills from the cut, oldest first: a bounded read whatever the
    client's history (the carry is worked out once a day, and again when a fill of before the cut
    is written or any fill edited)."""
    cut = start_of_day - BOOK_LOOKBACK
    day = trading_date(start_of_day)
    kept = _kept_carry(client, day)
    for _attempt in range(3):
        if kept is None:
            kept = _carry_worked_out(client, day, cut)
        through_id, carried = kept
        params = [client.pk, _since(cut), client.pk, through_id, _since(cut)]
        rows = _rows_with_instruments(_fills_since_carry_sql(), params, _TRADES, 3)
        if not any(late for _trade, (_ref, _tag, late) in rows):
            trades = []
            for trade, (order_ref, order_tag, _late) in rows:
                trade.order = PaperOrder(pk=trade.order_id, order_id=order_ref, tag=order_tag or "")
                trades.append(trade)
            trades.sort(key=lambda trade: (trade.filled_at, trade.pk))
            return carried, trades
        kept = None  # a fill of before the cut written since it was worked out: again
    raise DatabaseError("the paper carry went stale three times running")


def positions_of(client: PaperClient, *, day_only: bool = False) -> list[PositionRow]:
    """Positions as Kite lists them: today's fills, and in the net view (not ``day_only``) what the
    fills of earlier days left open, carried in at its average (delivery's is a holding instead).
    A position closed on an earlier day is no position today. The net view reads the fills from
    the day's book only, on what was kept of the earlier days (``_carry_and_fills``)."""
    start_of_day = day_start()
    rows: dict[tuple, PositionRow] = {}
    if day_only:
        return _with_days_fills(rows, [t for t in trade_book(client) if t.filled_at >= start_of_day])
    carried, trades = _carry_and_fills(client, start_of_day)
    earlier = [t for t in trades if t.filled_at < start_of_day and t.product != "CNC"]
    carried = _carry_folded(dict(carried), map(_fill_of, earlier))
    instruments = {trade.instrument_id: trade.instrument for trade in trades}
    missing = {instrument_id for (instrument_id, _p), (quantity, _a) in carried.items() if quantity} - set(instruments)
    if missing:
        instruments.update(PaperInstrument.objects.in_bulk(missing))
    for (instrument_id, product), (quantity, average) in carried.items():
        if not quantity:
            continue
        row = rows[(instrument_id, product)] = PositionRow(instruments[instrument_id], product)
        if quantity > 0:
            row.buy_quantity, row.buy_value = quantity, quantity * average
        else:
            row.sell_quantity, row.sell_value = -quantity, -quantity * average
    return _with_days_fills(rows, [t for t in trades if t.filled_at >= start_of_day])


def _with_days_fills(rows: dict[tuple, PositionRow], trades: list[PaperTrade]) -> list[PositionRow]:
    """``rows`` (what earlier days carried in) with the day's fills ``trades`` on them."""
    for trade in trades:
        row = rows.setdefault((trade.instrument_id, trade.product), PositionRow(trade.instrument, trade.product))
        value = trade.quantity * trade.price
        if trade.transaction_type == BUY:
            row.buy_quantity += trade.quantity
            row.buy_value += value
            row.day_buy_quantity += trade.quantity
            row.day_buy_value += value
        else:
            row.sell_quantity += trade.quantity
            row.sell_value += value
            row.day_sell_quantity += trade.quantity
            row.day_sell_value += value
    return list(rows.values())


def holdings_of(client: PaperClient) -> list[tuple[PaperInstrument, int, Decimal]]:
    """Delivery bought before today and still held: (instrument, quantity, average price)."""
    start_of_day = day_start()
    held = defaultdict(lambda: [0, Decimal(0)])
    trades = PaperTrade.objects.filter(client=client, product="CNC", filled_at__lt=start_of_day)
    for trade in trades.select_related("instrument").order_by("filled_at", "id"):
        entry = held[trade.instrument]
        if trade.transaction_type == BUY:
            entry[1] = (entry[1] * entry[0] + trade.price * trade.quantity) / (entry[0] + trade.quantity)
            entry[0] += trade.quantity
        else:
            entry[0] -= trade.quantity
    return [(instrument, qty, avg) for instrument, (qty, avg) in held.items() if qty > 0]


def margins_of(client: PaperClient) -> dict:
    client.refresh_from_db(fields=["cash", "opening_funds"])
    blocked = _blocked_funds(client)
    realised = sum((row.realised for row in positions_of(client)), Decimal(0))
    return {"cash": client.cash, "opening": client.opening_funds, "blocked": blocked, "realised": realised}


# --- Setup -----------------------------------------------------------------------------------


def instruments_load_csv(path, *, model=PaperInstrument) -> int:
    """Load (or refresh the static fields of) the exchange's instruments from a Kite-format CSV.

    ``last_price`` in the file is taken as the previous close the day's walk starts from.
    Existing instruments keep their live prices. ``model`` lets a migration pass its
    historical model.
    """
    import csv
    from datetime import date

    count = 0
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            close = Decimal(row["last_price"])
            tick = Decimal(row["tick_size"])
            static = {
                "instrument_token": int(row["instrument_token"]),
                "exchange_token": int(row["exchange_token"]),
                "segment": row["segment"],
                "name": row["name"],
                "instrument_type": row["instrument_type"],
                "expiry": date.fromisoformat(row["expiry"]) if row["expiry"] else None,
                "strike": Decimal(row["strike"] or 0),
                "tick_size": tick,
                "lot_size": int(row["lot_size"]),
            }
            model.objects.update_or_create(
                exchange=row["exchange"],
                tradingsymbol=row["tradingsymbol"],
                defaults=static,
                create_defaults={
                    **static,
                    "previous_close": close,
                    "open": close,
                    "high": close,
                    "low": close,
                    "last_price": close,
                    "bid": close - tick,
                    "ask": close + tick,
                    "tick_volume": int(row["lot_size"]) * 100,
                },
            )
            count += 1
    return count
