"""Opening positions: what an account held before the platform first met its book.

The portfolio is built only from the fills it records, and a broker lists only today's fills
(Kite's ``trades()``). An account connected holding 100 INFY bought last month (Kite's holdings,
CNC) or an overnight NRML future would show a sale of them as a short position and a wrong PnL.
So the first time the monitoring cycle meets an account's book, it takes the account's opening:
what the account held at the start of that trading day (midnight, Asia/Kolkata), recorded as
opening lots at the broker's average price, once per account (``Opening``), before that run's
fills are recorded. Later fills then net against the lots FIFO.

Which quantities are the start of the day's holding:

* Delivery (CNC) from ``holdings()`` only, ``Holding.quantity``: Kite's ``quantity`` is the
  demat plus T+1 quantity, bought before today; today's CNC buys are not in it, and Kite does not
  take today's sales out of it either (those are its ``used_quantity``), so it is what the day
  opened with (Kite's ``opening_quantity``, which the adapter does not parse). A CNC row of
  ``positions()`` is today's delivery trading only (Kite moves yesterday's to holdings), whose
  fills come as fills: never counted.
* Every other product (NRML, MIS carried as NRML...) from ``positions()``: its net ``quantity``
  less today's fills in it (Kite's ``overnight_quantity``, which the adapter does not parse either),
  at the position's ``average_price`` when it has no fill today, else the average of its buys
  (sells for a short) less today's (Kite carries an overnight position as a buy or sell of its
  overnight quantity at its average). A short overnight position is a SELL lot.
* Less what the broker's own fill list already says about earlier days: a broker whose
  ``trades()`` reaches before today (the paper exchange lists every day's fills) has those fills
  recorded with their own times, so only what they do not explain is an opening. A holding they
  explain wholly is left to them; one they explain only in part is skipped and reported (no
  honest price for the rest).

Representation: one synthetic ``Trade`` per instrument and product, recorded through
``trades_record_many`` (so a FIFO rebuild, which replays the trades, keeps it): broker order id
``opening:<YYYY-MM-DD>``, broker trade id ``<product>:<exchange>:<symbol>`` (unique within the
account on its own as well), no order, filled at the start of the trading day, before every fill
of the day (one recorded earlier, by the fill fast path, is replayed after it). Prices are kept
to 4 decimal places (the price columns' and FIFO's), half to even.

Once per account: the trades' unique key makes a second seed of the same day impossible, and the
``Opening`` row (one per account) says it was taken. An account with fills recorded from an
earlier day was met before this (its holdings include what the platform bought for it): it is
marked taken and not seeded. Today's fills (the fast path's, before the account's first run) do
not count as earlier. Instruments not loaded, and those of the exchanges whose quantities are lots
of a multiplier (``MULTIPLIED_EXCHANGES``), are skipped as their fills are, and reported.
"""

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from django.utils import timezone

from accounts.models import BrokerAccount
from brokers.base import IST, MULTIPLIED_EXCHANGES, BrokerPosition, BrokerTrade, Holding
from brokers.selectors import instrument_by_symbol

from . import services
from .fifo import PRICE_PLACES
from .models import Opening, Trade

logger = logging.getLogger(__name__)

ORDER_PREFIX = "opening:"
_PLACES = Decimal(1).scaleb(-PRICE_PLACES)
NOT_LOADED = "the instrument is not loaded (load the broker's instruments)"
MULTIPLIED = "its contract multiplier is not kept yet, so its PnL would be wrong"
PART_EXPLAINED = "the broker's fills from earlier days explain only part of it"
DISAGREE = "the broker's position figures disagree with its fills of today"


@dataclass(frozen=True)
class Lot:
    """One opening lot: what the account held in an instrument and product at the day's start."""

    exchange: str
    tradingsymbol: str
    product: str
    side: str
    quantity: int
    price: Decimal
    source: str  # "holdings" or "positions"


def day_start(now: datetime | None = None) -> datetime:
    """The start of the trading day (midnight, Asia/Kolkata) at ``now``."""
    return (now or timezone.now()).astimezone(IST).replace(hour=0, minute=0, second=0, microsecond=0)


def is_opening(trade: Trade) -> bool:
    return trade.broker_order_id.startswith(ORDER_PREFIX)


def book_at_day_start(
    *, holdings: list[Holding], positions: list[BrokerPosition], trades: list[BrokerTrade], start: datetime
) -> tuple[list[Lot], list[dict], list[dict]]:
    """What the account held at ``start`` that the broker's fills do not already say (the module's
    rules): (the lots, the skipped ones with why, the holdings the broker's earlier fills explain)."""
    today, earlier = defaultdict(list), defaultdict(int)
    for t in trades:
        key = (t.exchange, t.tradingsymbol, t.product)
        if t.filled_at is None or t.filled_at >= start:
            today[key].append(t)
        else:
            earlier[key] += t.quantity if t.side == "BUY" else -t.quantity
    held = {}  # key: (signed quantity, price, source)
    skipped = []
    for h in holdings:
        if h.quantity:
            key = (h.exchange, h.tradingsymbol, "CNC")
            quantity, price, _ = held.get(key, (0, h.average_price, "holdings"))
            held[key] = (quantity + h.quantity, price, "holdings")
    for p in positions:
        if p.product == "CNC":
            continue  # today's delivery trading: its fills come as fills
        key = (p.exchange, p.tradingsymbol, p.product)
        fills = today.get(key, [])
        bought = [(t.quantity, t.quantity * t.price) for t in fills if t.side == "BUY"]
        sold = [(t.quantity, t.quantity * t.price) for t in fills if t.side != "BUY"]
        quantity = p.quantity - sum(q for q, _ in bought) + sum(q for q, _ in sold)
        if not quantity:
            continue
        if not fills:
            price = p.average_price
        else:
            # The carried part of the day's buys (sells for a short), without today's.
            count, value, side_fills = (
                (p.buy_quantity, p.buy_value, bought) if quantity > 0 else (p.sell_quantity, p.sell_value, sold)
            )
            count -= sum(q for q, _ in side_fills)
            value -= sum((v for _, v in side_fills), Decimal(0))
            if count <= 0:
                skipped.append(_named(key, quantity, DISAGREE))
                continue
            price = value / count
        held[key] = (quantity, price, "positions")
    lots, explained = [], []
    for key in sorted(set(held) | set(earlier)):
        quantity, price, source = held.get(key, (0, Decimal(0), "holdings"))
        if earlier.get(key):
            if earlier[key] == quantity:
                explained.append(_named(key, quantity, "the broker's fills from earlier days"))
            else:
                skipped.append(_named(key, quantity, PART_EXPLAINED))
            continue
        if not quantity:
            continue  # the broker's earlier fills of it net to nothing, and so does its book
        exchange, symbol, product = key
        side = "BUY" if quantity > 0 else "SELL"
        price = Decimal(price).quantize(_PLACES, rounding=ROUND_HALF_EVEN)
        lots.append(Lot(exchange, symbol, product, side, abs(quantity), price, source))
    return lots, skipped, explained


def _named(key: tuple, quantity: int, why: str) -> dict:
    exchange, symbol, product = key
    return {"instrument": f"{exchange}:{symbol}", "product": product, "quantity": quantity, "why": why}


def accounts_to_open(account_ids) -> set[int]:
    """Of these accounts, those whose opening is not taken yet (one query for a batch)."""
    ids = set(account_ids)
    return ids - set(Opening.objects.filter(account_id__in=ids).values_list("account_id", flat=True))


def _trade_id(lot: Lot, instrument) -> str:
    """``<product>:<exchange>:<symbol>``, or ``<product>:#<instrument id>`` where that is too long."""
    name = f"{lot.product}:{lot.exchange}:{lot.tradingsymbol}"
    return (
        name if len(name) <= Trade._meta.get_field("broker_trade_id").max_length else f"{lot.product}:#{instrument.pk}"
    )


def opening_take(*, account: BrokerAccount, broker, trades_before: list[BrokerTrade] | None = None, now=None):
    """Take the account's opening, once: the ``Opening`` row, or None when not taken this time.

    ``broker`` is the account's ``AccountBroker``. Its positions and holdings are read between two
    reads of its fills (``trades_before``: the fills the caller read just before, e.g. the
    monitoring run's; else read here first): a fill that came in meanwhile would be counted in the
    position and not among today's fills (or the other way round), so then nothing is taken and
    the next run tries again (its lots, at the day's start, are replayed before the fills recorded
    meanwhile). A broker error is raised, nothing taken.
    """
    now = now or timezone.now()
    start = day_start(now)
    if Opening.objects.filter(account=account).exists():
        return None
    if Trade.objects.filter(account=account, filled_at__lt=start).exists():
        why = "fills were recorded from an earlier day: the platform met it before, and its holdings include them"
        return _mark(account, start, now, Opening.Outcome.EARLIER_FILLS, {"why": why})
    if trades_before is None:
        trades_before = broker.trades()
    positions, holdings, trades = broker.positions(), broker.holdings(), broker.trades()
    if {(t.broker_order_id, t.trade_id) for t in trades} != {(t.broker_order_id, t.trade_id) for t in trades_before}:
        logger.info("opening of account %s: a fill came in while reading its book; next run", account.pk)
        return None
    lots, skipped, explained = book_at_day_start(holdings=holdings, positions=positions, trades=trades, start=start)
    seeded, fills = [], []
    for lot in lots:
        instrument = instrument_by_symbol(lot.exchange, lot.tradingsymbol)
        if instrument is None or instrument.exchange in MULTIPLIED_EXCHANGES:
            quantity = lot.quantity if lot.side == "BUY" else -lot.quantity
            why = NOT_LOADED if instrument is None else MULTIPLIED
            skipped.append(_named((lot.exchange, lot.tradingsymbol, lot.product), quantity, why))
            continue
        name = f"{lot.exchange}:{lot.tradingsymbol}"
        seeded.append({"instrument": name, "product": lot.product, "side": lot.side, "quantity": lot.quantity})
        seeded[-1].update(price=str(lot.price), source=lot.source)
        fills.append(
            BrokerTrade(
                trade_id=_trade_id(lot, instrument),
                broker_order_id=f"{ORDER_PREFIX}{start.date().isoformat()}",
                exchange=lot.exchange,
                tradingsymbol=lot.tradingsymbol,
                side=lot.side,
                product=lot.product,
                quantity=lot.quantity,
                price=lot.price,
                filled_at=start,
            )
        )
    if fills:
        # Recorded first: if this dies before the row below, the next run records nothing twice
        # (the same day's keys), and the next day's finds these as earlier fills.
        services.trades_record_many([(account, fills)])
    detail = {"seeded": seeded, "skipped": skipped, "explained_by_fills": explained}
    return _mark(account, start, now, Opening.Outcome.SEEDED, detail)


def _mark(account: BrokerAccount, start: datetime, now: datetime, outcome: str, detail: dict) -> Opening:
    """The account's ``Opening`` row: this one, or the one another taker wrote first."""
    row = Opening(account=account, trading_date=start.date(), taken_at=now, outcome=outcome, detail=detail)
    Opening.objects.bulk_create([row], ignore_conflicts=True)
    return Opening.objects.get(account=account)
