"""Opening positions: what an account held before the platform first met its book.

The portfolio is built only from the fills it records, and a broker lists only today's fills
(Kite's ``trades()``). An account connected holding 100 INFY bought last month (Kite's holdings,
CNC) or an overnight NRML future would show a sale of them as a short position and a wrong PnL.
So the monitoring cycle takes the account's opening once: what the account held at the start of
the trading day (midnight, Asia/Kolkata) the platform first met it, recorded as opening lots at
the broker's average price, once per account (``Opening``), before that run's fills are
recorded. Later fills then net against the lots FIFO.

Which quantities are the start of the day's holding:

* Delivery (CNC) from ``holdings()`` only, ``Holding.quantity``: settled and unsettled (T+1)
  shares (``brokers.kite.adapter.holding_quantity``), bought before today; today's CNC buys are
  not in it, and Kite does not take today's sales out of it either (those are its
  ``used_quantity``), so it is what the day opened with (Kite's ``opening_quantity`` is not
  used: whether it counts T+1 shares is not documented, and a holding that arrives during the
  day would have none). A CNC row of ``positions()`` is today's delivery trading only (Kite
  moves yesterday's to holdings), whose fills come as fills: never counted.
* Every other product (NRML, MIS carried as NRML...) from ``positions()``. Where the broker gives
  the day's figures (``BrokerPosition.day_figures``: Kite and the paper exchange do), its
  ``overnight_quantity`` (negative for a short), at the position's ``average_price`` when it has
  no buy or sell today, else the average of its buys (sells for a short) less today's
  (``buy_value - day_buy_value`` over ``buy_quantity - day_buy_quantity``: Kite carries an
  overnight position as a buy or sell of its overnight quantity at its average). One read of the
  positions decides it: Kite's fill list is another endpoint and can lag them, and a fill the
  positions count but ``trades()`` does not list yet would make a lot too large by that fill, to
  be recorded again when it is listed. A broker without the figures: the net ``quantity`` less
  today's fills in ``trades()``, priced the same way with those fills, and the positions read
  between two reads of the fill list (a fill that came in meanwhile puts the opening off; one
  that both reads lack is that broker's risk). A short overnight position is a SELL lot.
* Less what the broker's own fill list already says about earlier days: a broker whose
  ``trades()`` reaches before today (Kite's before its start-of-day run; the paper exchange lists
  the day's, and ``BOOK_LOOKBACK`` before it) has those fills recorded with their own times, so
  only what they do not explain is an opening. A holding they explain wholly is left to them; one
  they explain only in part is skipped and reported (no honest price for the rest). The start of
  the day's quantity is compared with them, never reduced by them: today's fills are the only ones
  either rule takes out. Fills listed from a pending opening's first-met day on that explain only
  part of a holding (the paper exchange's book reaches ``BOOK_LOOKBACK`` before the day's start)
  are the account's own since: taken out of the book like those recorded (below).

Representation: one synthetic ``Trade`` per instrument and product, recorded through
``trades_record_many`` (so a FIFO rebuild, which replays the trades, keeps it): broker order id
``opening:<YYYY-MM-DD>``, broker trade id ``<product>:<exchange>:<symbol>`` (unique within the
account on its own as well), no order, filled at the start of the trading day, before every fill
of the day (one recorded earlier, by the fill fast path, is replayed after it). Prices are kept
to 4 decimal places (the price columns' and FIFO's), half to even. The lots are valued at the
market at once (the instrument's last price, then the broker's last price in the book read), so
the run that records them shows their unrealized PnL, not a position at its purchase price.

Once per account: the trades' unique key makes a second seed of the same day impossible, and the
``Opening`` row (one per account) says it was taken. The platform first meets an account at its
first monitoring run, or at its first fills recorded if those come first: the fill fast path
records them outside the cycle (an account whose first order filled on a day its monitoring did
not run), and ``services.trades_record_many`` then leaves a ``PENDING`` row dated the day of
those fills, which a later run takes as below. An account with fills recorded from before the day
it was first met (fills recorded before the platform kept that day with them) was met before this
(its holdings include what the platform bought for it): it is marked taken and not seeded. Fills
recorded since (today's, by the fast path before the account's first run, or those of the days
its opening was not taken) do not count as earlier.

It is taken from ``OPENINGS_FROM`` (08:00 IST) on: earlier, a broker's book can still be the day
before's (Kite's start-of-day run comes in the early morning), and the monitoring run then
leaves the fills the broker lists from before the day the account was first met to the opening
(recorded, they would read as fills from before the account was met; those of that day and since
are recorded). A run whose trading day turns while it reads the book (just before midnight)
takes nothing either: the book's figures would be the next day's.

An opening not taken at the first try (a broker error, a fill that came in while the book was
read, the hour or the day as above), or not yet tried (first met through its fills), has a
``PENDING`` row dated the day the account was first met, and a later run takes it. Taken on a
later day, each lot is the book at today's start less the net of the fills the platform recorded
since the first-met day's start (and those the broker still lists, not recorded yet; per
instrument and product), recorded at the first-met day's
start, so those fills are replayed after it. Its price is the broker's average price now, an
approximation where the account bought more of it meanwhile (Kite's holdings keep one average; a
sale does not move it). A lot whose book is flat now, or on the other side, has no price the
broker gives: it is skipped and reported.

Instruments not loaded wait: their lots are kept on the ``Opening`` (``waiting``, with their
figures and day) and reported on every run until the broker's instruments are loaded; the run
after that records them under the same keys and at the same time as if they had been seeded.
Those of the exchanges whose quantities are lots of a multiplier (``MULTIPLIED_EXCHANGES``) are
skipped for good, as their fills are (their PnL cannot be kept), and reported once.
"""

import logging
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from decimal import ROUND_HALF_EVEN, Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import BrokerAccount
from brokers.base import IST, MULTIPLIED_EXCHANGES, BrokerPosition, BrokerTrade, Holding
from brokers.markets import date_start, day_start
from brokers.selectors import instrument_by_symbol

from . import services
from .fifo import PRICE_PLACES
from .models import Opening, Trade

logger = logging.getLogger(__name__)

ORDER_PREFIX = "opening:"
_PLACES = Decimal(1).scaleb(-PRICE_PLACES)
NOT_LOADED = "the instrument is not loaded (load the broker's instruments: the next run records it then)"
MULTIPLIED = "its contract multiplier is not kept yet, so its PnL would be wrong (it stays out of the positions)"
PART_EXPLAINED = "the broker's fills from earlier days explain only part of it"
DISAGREE = "the broker's position figures disagree with its fills of today"
NO_PRICE = "the fills recorded since the day it was first met leave it without a price the broker gives"
RETAKE = "instruments were loaded after the day its lots were held: taken again from the broker's book"
RACED = "a fill came in while the book was read"
DAY_TURNED = "the trading day turned while the book was read"
NOT_BEGUN = "the broker's trading day has not begun (its book can still be the day before's)"


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
    last_price: Decimal | None = None  # the market's, as the broker gave it with the book

    @property
    def signed(self) -> int:
        return self.quantity if self.side == "BUY" else -self.quantity


def day_begun(now: datetime) -> bool:
    """Whether the broker's trading day has begun at ``now`` (``OPENINGS_FROM``, IST): before it, a
    broker's book can still be the day before's."""
    return now.astimezone(IST).time() >= time.fromisoformat(settings.OPENINGS_FROM)


def book_at_day_start(
    *,
    holdings: list[Holding],
    positions: list[BrokerPosition],
    trades: list[BrokerTrade],
    start: datetime,
    met: datetime | None = None,
) -> tuple[list[Lot], list[dict], list[dict]]:
    """What the account held at ``start`` that the broker's fills do not already say (the module's
    rules): (the lots, the skipped ones with why, the holdings the broker's earlier fills explain).
    ``met``: the start of the day the account was first met, where that is before ``start`` (a
    pending opening): the fills listed from it on are the account's own since, not fills from
    before it; where they explain only part of a holding (and none from before ``met`` is listed),
    its lot is the book's, for the caller to take those fills out (``_back_to``)."""
    met = start if met is None else met
    today, earlier, before_met = defaultdict(list), defaultdict(int), set()
    for t in trades:
        key = (t.exchange, t.tradingsymbol, t.product)
        if t.filled_at is None or t.filled_at >= start:
            today[key].append(t)
        else:
            earlier[key] += t.quantity if t.side == "BUY" else -t.quantity
            if t.filled_at < met:
                before_met.add(key)
    held = {}  # key: (signed quantity, price, source, last price)
    skipped = []
    for h in holdings:
        if h.quantity:
            key = (h.exchange, h.tradingsymbol, "CNC")
            quantity, price, _, _ = held.get(key, (0, h.average_price, "holdings", None))
            held[key] = (quantity + h.quantity, price, "holdings", h.last_price)
    for p in positions:
        if p.product == "CNC":
            continue  # today's delivery trading: its fills come as fills
        key = (p.exchange, p.tradingsymbol, p.product)
        if p.day_figures:  # the broker's own start of the day: no need of the fill list, which can lag
            quantity = p.overnight_quantity
            if quantity + p.day_buy_quantity - p.day_sell_quantity != p.quantity:
                skipped.append(_named(key, quantity, DISAGREE))  # one row's figures that do not add up
                continue
            traded = bool(p.day_buy_quantity or p.day_sell_quantity)
            bought, sold = (p.day_buy_quantity, p.day_buy_value), (p.day_sell_quantity, p.day_sell_value)
        else:
            fills = today.get(key, [])
            traded = bool(fills)
            bought = _total(t for t in fills if t.side == "BUY")
            sold = _total(t for t in fills if t.side != "BUY")
            quantity = p.quantity - bought[0] + sold[0]
        if not quantity:
            continue
        if not traded:
            price = p.average_price
        else:
            # The carried part of the day's buys (sells for a short), without today's.
            count, value = (p.buy_quantity, p.buy_value) if quantity > 0 else (p.sell_quantity, p.sell_value)
            today_count, today_value = bought if quantity > 0 else sold
            count, value = count - today_count, value - today_value
            if count <= 0:
                skipped.append(_named(key, quantity, DISAGREE))
                continue
            price = value / count
        held[key] = (quantity, price, "positions", p.last_price)
    lots, explained = [], []
    for key in sorted(set(held) | set(earlier)):
        quantity, price, source, last = held.get(key, (0, Decimal(0), "holdings", None))
        if earlier.get(key):
            if earlier[key] == quantity:
                explained.append(_named(key, quantity, "the broker's fills from earlier days"))
                continue
            if key in before_met:
                skipped.append(_named(key, quantity, PART_EXPLAINED))
                continue
        if not quantity:
            continue  # the broker's earlier fills of it net to nothing, and so does its book
        exchange, symbol, product = key
        side = "BUY" if quantity > 0 else "SELL"
        price = Decimal(price).quantize(_PLACES, rounding=ROUND_HALF_EVEN)
        lots.append(Lot(exchange, symbol, product, side, abs(quantity), price, source, last))
    return lots, skipped, explained


def _key(t: BrokerTrade) -> tuple[str, str, str]:
    return (t.exchange, t.tradingsymbol, t.product)


def _total(fills) -> tuple[int, Decimal]:
    """(quantity, value) of these fills."""
    fills = list(fills)
    return sum(t.quantity for t in fills), sum((t.quantity * t.price for t in fills), Decimal(0))


def _named(key: tuple, quantity: int, why: str) -> dict:
    exchange, symbol, product = key
    return {"instrument": f"{exchange}:{symbol}", "product": product, "quantity": quantity, "why": why}


def openings_due(account_ids) -> tuple[set[int], set[int]]:
    """Of these accounts, (those whose opening is not taken yet, those whose opening has lots waiting
    for their instruments), in one query for a batch (by the account's unique key)."""
    ids = set(account_ids)
    rows = Opening.objects.filter(account_id__in=ids).values_list("account_id", "outcome", "waiting")
    met, pending, waiting = set(), set(), set()
    for account_id, outcome, waits in rows:
        met.add(account_id)
        if outcome == Opening.Outcome.PENDING:
            pending.add(account_id)
        elif waits:
            waiting.add(account_id)
    return (ids - met) | pending, waiting


def _trade_id(lot: Lot, instrument) -> str:
    """``<product>:<exchange>:<symbol>``, or ``<product>:#<instrument id>`` where that is too long."""
    name = f"{lot.product}:{lot.exchange}:{lot.tradingsymbol}"
    return (
        name if len(name) <= Trade._meta.get_field("broker_trade_id").max_length else f"{lot.product}:#{instrument.pk}"
    )


def _fill(lot: Lot, instrument, start: datetime) -> BrokerTrade:
    """The lot as the synthetic fill it is recorded as: its key is the same whenever it is recorded."""
    return BrokerTrade(
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


def _row(lot: Lot) -> dict:
    name = f"{lot.exchange}:{lot.tradingsymbol}"
    row = {"instrument": name, "product": lot.product, "side": lot.side, "quantity": lot.quantity}
    row.update(price=str(lot.price), source=lot.source)
    if lot.last_price:
        row["last_price"] = str(lot.last_price)
    return row


def _lot(row: dict) -> Lot:
    exchange, symbol = row["instrument"].split(":", 1)
    side, quantity, price = row["side"], row["quantity"], Decimal(row["price"])
    return Lot(exchange, symbol, row["product"], side, quantity, price, row["source"])


def opening_take(*, account: BrokerAccount, broker, trades_before: list[BrokerTrade] | None = None, now=None):
    """Take the account's opening, once. Returns its ``Opening`` row: taken (``SEEDED``,
    ``EARLIER_FILLS``), or ``PENDING`` when not taken this time (``detail["why"]``); or None when
    another taker took it first.

    ``broker`` is the account's ``AccountBroker``. Its positions and holdings are read after its
    fills (``trades_before``: the fills the caller read just before, e.g. the monitoring run's; else
    read here first). Where they give the start of the day's quantities (Kite's, the paper
    exchange's), that one read decides. Where they do not, the fills are read again: a fill that
    came in meanwhile would be counted in the position and not among today's fills (or the other
    way round), so then nothing is taken and the next run tries again (its lots, at the first-met
    day's start, are replayed before the fills recorded meanwhile). A broker error is raised,
    nothing taken. Either way the ``PENDING`` row keeps the day the account was first met (the
    module's rules).
    """
    now = now or timezone.now()
    today = day_start(now)
    row = Opening.objects.filter(account=account).first()
    if row is not None and row.outcome != Opening.Outcome.PENDING:
        return None
    first = today if row is None else min(date_start(row.trading_date), today)
    if Trade.objects.filter(account=account, filled_at__lt=first).exists():
        why = "fills were recorded from an earlier day: the platform met it before, and its holdings include them"
        return _mark(account, first, now, Opening.Outcome.EARLIER_FILLS, {"why": why})
    if not day_begun(now):
        return _pending(account, first, NOT_BEGUN)
    try:
        return _take(account, broker, trades_before, first=first, today=today, now=now)
    except Exception as error:  # whatever failed (the broker, the database), the first-met day is kept
        _pending(account, first, f"{type(error).__name__}: {error}"[:500])
        raise


def _take(account: BrokerAccount, broker, trades_before, *, first: datetime, today: datetime, now: datetime):
    if trades_before is None:
        trades_before = broker.trades()
    positions, holdings = broker.positions(), broker.holdings()
    if day_start() != today:  # the book was read on the next day: its day figures are that day's
        return _pending(account, first, DAY_TURNED)
    if all(p.day_figures for p in positions if p.product != "CNC"):
        # The book says what the day opened with: today's fills, however late the fill list lists
        # them, change none of it. The fill list read before serves only for the fills of earlier
        # days it lists (the paper exchange's).
        trades = trades_before
    else:
        trades = broker.trades()
        if {(t.broker_order_id, t.trade_id) for t in trades} != {
            (t.broker_order_id, t.trade_id) for t in trades_before
        }:
            logger.info("opening of account %s: a fill came in while reading its book; next run", account.pk)
            return _pending(account, first, RACED)
    lots, skipped, explained = book_at_day_start(
        holdings=holdings, positions=positions, trades=trades, start=today, met=first
    )
    if first < today:
        lots, more = _back_to(account, lots, trades, since=first, until=today)
        skipped += more
    seeded, waiting, fills = [], [], []
    for lot in lots:
        key = (lot.exchange, lot.tradingsymbol, lot.product)
        if lot.exchange in MULTIPLIED_EXCHANGES:
            skipped.append(_named(key, lot.signed, MULTIPLIED))
            continue
        instrument = instrument_by_symbol(lot.exchange, lot.tradingsymbol)
        if instrument is None:
            waiting.append({**_row(lot), "day": first.date().isoformat()})
            continue
        seeded.append(_row(lot))
        fills.append(_fill(lot, instrument, first))
    if fills:
        # Recorded first: if this dies before the row below, the next run records nothing twice
        # (the same keys), and counts these among the fills recorded since the first-met day.
        # At the market: the run's prices were asked for before these positions existed.
        services.trades_record_many([(account, fills)], at_market=True)
    detail = {"seeded": seeded, "waiting": waiting, "skipped": skipped, "explained_by_fills": explained}
    if first < today:
        detail["book_of"] = today.date().isoformat()
    return _mark(account, first, now, Opening.Outcome.SEEDED, detail)


def _back_to(account: BrokerAccount, lots: list[Lot], trades: list[BrokerTrade], *, since: datetime, until: datetime):
    """The lots at ``since`` (the first-met day's start), from those at ``until`` (today's start):
    less the net of the fills in between, per instrument and product, those recorded and those the
    broker's fill list (``trades``) still lists and that are not recorded yet (the run records them
    after the lots). The ones whose fills of before ``until`` the broker lists are left as they are
    (those fills explained them, ``book_at_day_start``), but for a lot it made from the book with
    only fills of ``since`` on listed (explaining part of it). (lots, skipped)."""
    at_until = {(lot.exchange, lot.tradingsymbol, lot.product): lot for lot in lots}
    before = [t for t in trades if t.filled_at and t.filled_at < until]
    before_met = {_key(t) for t in before if t.filled_at < since}
    listed = {_key(t) for t in before if _key(t) in before_met or _key(t) not in at_until}
    recorded = defaultdict(int)
    since_met = [t for t in before if _key(t) not in listed]
    if since_met:  # (a pending opening only: no query on a run's path otherwise)
        known = Trade.objects.filter(account=account, broker_trade_id__in={t.trade_id for t in since_met})
        known = set(known.values_list("broker_order_id", "broker_trade_id"))
        for t in since_met:
            if (t.broker_order_id, t.trade_id) not in known:
                recorded[_key(t)] += t.quantity if t.side == "BUY" else -t.quantity
    rows = (
        Trade.objects.filter(account=account, filled_at__gte=since, filled_at__lt=until)
        .exclude(broker_order_id__startswith=ORDER_PREFIX)  # lots of this opening recorded before
        .order_by()
        .values_list("instrument__exchange", "instrument__tradingsymbol", "product", "side")
        .annotate(quantity=Sum("quantity"))
    )
    for exchange, symbol, product, side, quantity in rows:
        recorded[(exchange, symbol, product)] += quantity if side == "BUY" else -quantity
    out, skipped = [], []
    for key in sorted(set(at_until) | set(recorded)):
        lot = at_until.get(key)
        if key in listed:
            if lot is not None:
                out.append(lot)
            continue
        quantity = (lot.signed if lot else 0) - recorded.get(key, 0)
        if not quantity:
            continue
        if lot is None or (quantity > 0) != (lot.signed > 0):
            skipped.append(_named(key, quantity, NO_PRICE))
            continue
        out.append(replace(lot, side="BUY" if quantity > 0 else "SELL", quantity=abs(quantity)))
    return out, skipped


def _pending(account: BrokerAccount, first: datetime, why: str) -> Opening | None:
    """The account's ``PENDING`` row, dated the day it was first met (kept if it exists), saying why;
    None when another taker took the opening meanwhile."""
    Opening.objects.bulk_create(
        [Opening(account=account, trading_date=first.date(), taken_at=timezone.now(), outcome=Opening.Outcome.PENDING)],
        ignore_conflicts=True,
    )
    Opening.objects.filter(account=account, outcome=Opening.Outcome.PENDING).update(detail={"why": why})
    row = Opening.objects.get(account=account)
    return row if row.outcome == Opening.Outcome.PENDING else None  # another taker took it meanwhile


def _mark(account: BrokerAccount, first: datetime, now: datetime, outcome: str, detail: dict) -> Opening | None:
    """The account's ``Opening`` row, taken: its ``PENDING`` row updated, or a new one; None when
    another taker wrote it taken first."""
    values = {"taken_at": now, "outcome": outcome, "detail": detail, "waiting": bool(detail.get("waiting"))}
    for _attempt in range(2):
        if Opening.objects.filter(account=account, outcome=Opening.Outcome.PENDING).update(**values):
            return Opening.objects.get(account=account)
        try:
            with transaction.atomic():
                return Opening.objects.create(account=account, trading_date=first.date(), **values)
        except IntegrityError:
            continue  # another taker wrote it meanwhile: pending (updated now) or taken (not ours)
    return None


@dataclass
class Waited:
    """What became of an account's waiting lots in a run (``waiting_record``)."""

    recorded: list[dict]
    waiting: list[dict]  # their instruments still not loaded
    failed: list[dict] = field(default_factory=list)  # loaded, but recording them failed: they wait
    error: BaseException | None = None  # why they failed
    retaken: bool = False  # held on an earlier day: the opening is taken again from the book (next run)


def waiting_record(accounts: list[BrokerAccount], now=None) -> dict[int, Waited]:
    """Record the waiting lots of these accounts' openings whose instruments are loaded now, under
    the keys and at the time they would have had if seeded (at the market, as seeded ones), and keep
    the others waiting. One query finds the openings; by account id. An account whose lots fail to
    record keeps them all waiting (the next run tries again)."""
    now = now or timezone.now()
    by_id = {account.pk: account for account in accounts}
    rows = list(Opening.objects.filter(account_id__in=by_id, waiting=True))
    fills, split, result = [], {}, {}
    for opening in list(rows):
        ready, still, account_fills = [], [], []
        waiting = opening.detail.get("waiting", [])
        instruments = [instrument_by_symbol(*row["instrument"].split(":", 1)) for row in waiting]
        loaded = [row for row, instrument in zip(waiting, instruments, strict=True) if instrument is not None]
        if any(date.fromisoformat(row["day"]) < day_start(now).date() for row in loaded):
            # Held on an earlier day: what was sold or bought of it since could not be recorded (its
            # instrument was not loaded), so its figures are stale. The opening is taken again from
            # the book as it is now (a pending opening; the lots recorded already keep their keys).
            Opening.objects.filter(pk=opening.pk, waiting=True).update(
                outcome=Opening.Outcome.PENDING, waiting=False, detail={**opening.detail, "why": RETAKE}
            )
            result[opening.account_id] = Waited([], waiting, retaken=True)
            rows.remove(opening)
            continue
        for row, instrument in zip(waiting, instruments, strict=True):
            lot = _lot(row)
            if instrument is None:
                still.append(row)
                continue
            ready.append(row)
            account_fills.append(_fill(lot, instrument, date_start(date.fromisoformat(row["day"]))))
        split[opening.account_id] = (ready, still)
        if account_fills:
            fills.append((by_id[opening.account_id], account_fills))
    failed = services.trades_record_each(fills, at_market=True)[1] if fills else {}
    for opening in rows:
        ready, still = split[opening.account_id]
        if opening.account_id in failed:
            result[opening.account_id] = Waited([], still, failed=ready, error=failed[opening.account_id])
            continue
        recorded = [{**row, "recorded_on": day_start(now).date().isoformat()} for row in ready]
        if recorded or not still:  # (nothing waits: the flag goes, so it costs no query again)
            seeded = [*opening.detail.get("seeded", []), *recorded]
            detail = {**opening.detail, "seeded": seeded, "waiting": still}
            Opening.objects.filter(pk=opening.pk).update(detail=detail, waiting=bool(still))
        result[opening.account_id] = Waited(recorded, still)
    return result
