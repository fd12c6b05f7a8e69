"""Recording fills and keeping positions and PnL from them (FIFO, incremental)."""

import logging
from collections import defaultdict
from datetime import datetime
from decimal import Decimal

from celery.exceptions import SoftTimeLimitExceeded
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import BrokerAccount
from brokers.base import IST, MULTIPLIED_EXCHANGES, BrokerTrade
from brokers.models import Instrument
from brokers.selectors import instrument_by_symbol, prices_fed_by
from orders.models import Order
from orders.services import placed_order_ids
from tradingplatform import background
from tradingplatform.db import PlainInserts, PlainRows, PlainUpdate
from tradingplatform.memo import Memo

from .fifo import PositionState
from .models import Opening, PnlSnapshot, Position, Trade

logger = logging.getLogger(__name__)

# (account id, instrument id, product) of positions known to exist, in this process: positions
# are never deleted, so a fill of a known position skips the look for its row.
_positions_made = Memo("positions known to exist", ttl_s=3600)
# Accounts known to have an ``Opening`` row, in this process: the row goes only with its account,
# so a fill of a known account costs no statement for it.
_openings_made = Memo("accounts known to have an opening row", ttl_s=3600)
FIRST_MET_BY_FILLS = "its fills were recorded before a monitoring run met its book: the next run takes it"


def trades_record(
    *, account: BrokerAccount, broker_trades: list[BrokerTrade], fresh: bool = False, at_market: bool = False
) -> list[Trade]:
    """Record the fills not seen before and apply them to positions, in one transaction; the ones applied.

    A fill is recorded once (unique broker trade id per account) and applied once (the
    position remembers the last trade it applied), so a cycle that runs twice, a task
    delivered twice, or the fill fast path and a monitoring run seeing the same fill at
    once, change nothing the second time. ``fresh``: the broker just announced these fills
    (the fast path), so they are most likely new: no look for them before inserting them (the
    unique key refuses one recorded meanwhile, and the fills are then recorded looking first).
    ``at_market``: the positions are valued at the market's latest price (the instrument's last
    price), not at the last price they had or the fill's; only an account at the broker whose feed
    writes those prices (the paper exchange): another broker's positions are valued at their own
    broker's prices, never at the paper exchange's.
    """
    return trades_record_many([(account, broker_trades)], fresh=fresh, at_market=at_market).get(account.pk, [])


def trades_record_many(
    fills: list[tuple[BrokerAccount, list[BrokerTrade]]], *, fresh: bool = False, at_market: bool = False
) -> dict[int, list[Trade]]:
    """``trades_record`` for many accounts at once (the monitoring cycle's batch): the same rules,
    in a handful of statements and one transaction for all of them. Returns the fills applied, by
    account id. If the batch fails as a whole, raises; the caller then records account by account.
    """
    rows, keys = _prepared(fills, fresh=fresh)
    if not rows:
        return {}
    for _attempt in range(2):
        _positions_ready(keys)
        try:
            applied = _record(keys, rows, look_first=not fresh, at_market=at_market)
        except IntegrityError:
            if not fresh:
                raise
            # Another recorder got one of these fills in first (the unique key refused it; all of
            # this was rolled back): record them again, leaving out the recorded ones.
            return trades_record_many(fills, at_market=at_market)
        if applied is not None:
            return applied
        _positions_made.clear()  # this process's memo outlived a row (tests): create it again
    raise RuntimeError(f"positions of accounts {sorted({key[0] for key in keys})} could not be locked")


def _rows_of(fills: list[tuple[BrokerAccount, list[BrokerTrade]]], *, fresh: bool) -> list[Trade]:
    """The fills to record, as unsaved ``Trade`` rows in the order they filled: those not recorded
    yet (unless ``fresh``: no look first), of instruments we keep positions of, linked to our orders."""
    accounts = {account.pk: account for account, trades in fills if trades}
    wanted = {(account.pk, t.broker_order_id, t.trade_id): t for account, trades in fills for t in trades}
    if not wanted:
        return []
    if not fresh:
        wanted = _unseen(accounts, wanted)
        if not wanted:
            return []
    orders = _orders_of(wanted)
    rows = []
    now = timezone.now()

    def order(item: tuple) -> tuple:
        (account_id, broker_order_id, trade_id), t = item
        return (*fifo_order(t.filled_at or now, trade_id, broker_order_id), account_id)

    for (account_id, _, _), t in sorted(wanted.items(), key=order):
        instrument = instrument_by_symbol(t.exchange, t.tradingsymbol)
        if instrument is None or instrument.exchange in MULTIPLIED_EXCHANGES:
            continue  # the monitoring run reports it: its fills are in no position
        rows.append(
            Trade(
                account=accounts[account_id],
                order_id=orders.get((account_id, t.broker_order_id))
                or (orders.get((account_id, t.order_tag)) if t.order_tag else None),
                broker_trade_id=t.trade_id,
                broker_order_id=t.broker_order_id,
                instrument=instrument,
                product=t.product,
                side=t.side,
                quantity=t.quantity,
                price=t.price,
                filled_at=t.filled_at or now,
            )
        )
    return rows


def fifo_order(filled_at: datetime, broker_trade_id: str, broker_order_id: str) -> tuple:
    """Where a fill comes in its position's FIFO queue: when it filled, then, among the fills of
    one second (Kite's times are to the second), its trade id, the exchange's trade number, which
    grows as trades happen (the shorter first, so digits compare as numbers), then its order's id.
    Never when it was recorded: the fills of a second reach us in different batches and orders
    (the placement's answer, a lagging trade list), and must match the same way whichever."""
    return (filled_at, len(broker_trade_id), broker_trade_id, broker_order_id)


def _prepared(fills: list[tuple[BrokerAccount, list[BrokerTrade]]], *, fresh: bool) -> tuple[list[Trade], list[tuple]]:
    """The fills to record (``_rows_of``) and their positions' keys (``_keys``), with their
    accounts' opening rows made (``_first_met``): what comes before the fills' transaction."""
    rows = _rows_of(fills, fresh=fresh)
    if rows:
        _first_met(rows)
    return rows, _keys(rows)


def _keys(rows: list[Trade]) -> list[tuple]:
    """The positions of ``rows``, (account id, instrument id, product), in the order they are locked."""
    return sorted({(row.account_id, row.instrument_id, row.product) for row in rows})


def _positions_ready(keys: list[tuple]) -> None:
    """The positions of ``keys`` exist: those this process does not know of are created (on their own)."""
    missing = [key for key in keys if not _positions_made.get(key, lambda: None)]
    if missing:
        _positions_create(missing)


class PositionGone(Exception):
    """A position this process knew of was not there to lock (its memo outlived the row)."""


def fills_with_answer(account: BrokerAccount, broker_trades: list[BrokerTrade]):
    """The fills a broker's answer to a placement carries (``brokers.services.placed_fill_recorders``):
    their positions' and opening rows are made now, before the placer's transaction (as
    ``trades_record_many`` makes them before its own), and the callable returned records and applies
    them inside that transaction, then pushes the trader's dashboard once it commits. Recorded as the
    fast path records a fill (no look first, valued at the market's price); where the fast path would
    try again (the unique key refused a fill recorded meanwhile, a position was gone), it raises
    instead: the placer rolls back and lets the broker's word on the order go, and its fills are
    recorded as any announced fill is."""
    rows, keys = _prepared([(account, broker_trades)], fresh=True)
    if not rows:
        return lambda: None
    _positions_ready(keys)

    def record() -> None:
        applied = _record(keys, rows, look_first=False, at_market=True, savepoint=False)
        if applied is None:
            _positions_made.clear()
            raise PositionGone(f"a position of account {account.pk} was not there to lock")
        if applied:
            # Robust: a push that cannot start (Redis down) is logged, never taken for a failed commit.
            transaction.on_commit(lambda: _dashboards_push([account], soon=True), robust=True)

    return record


def _first_met(rows: list[Trade]) -> None:
    """An account whose fills are recorded before a monitoring run met its book (the fill fast path
    records them outside the cycle, and its workers may be down all that day) is first met the day
    of its earliest fill here: a ``PENDING`` ``Opening`` row dated that day, unless it has a row, so
    a later run takes what it held at that day's start (``portfolio.openings``), instead of taking
    these fills for a sign the platform met it before and never taking it. One statement for the
    batch's accounts not known to have a row, an insert that leaves existing rows as they are,
    before the fills' transaction (as ``_positions_create``, for the same reason). A monitoring
    run takes an account's opening before it records the account's fills, so this changes nothing
    there: the opening's own lots, recorded before it is marked taken, leave the row pending,
    dated their own day, and the marking takes it."""
    first = {}
    for row in rows:
        if _openings_made.get(row.account_id, lambda: None):
            continue
        day = row.filled_at.astimezone(IST).date()
        first[row.account_id] = min(day, first.get(row.account_id, day))
    if not first:
        return
    now = timezone.now()
    Opening.objects.bulk_create(
        [
            Opening(
                account_id=account_id,
                trading_date=day,
                taken_at=now,
                outcome=Opening.Outcome.PENDING,
                detail={"why": FIRST_MET_BY_FILLS},
            )
            for account_id, day in sorted(first.items())
        ],
        ignore_conflicts=True,
    )
    for account_id in first:
        _openings_made.get(account_id, lambda: True)


def _orders_of(wanted: dict[tuple, BrokerTrade]) -> dict[tuple, int]:
    """Our orders of these fills ({(account id, broker order id, trade id): fill}), {(account id,
    broker order id or reference): order id}: by broker id, or by their reference where the fill
    names its order's tag (a fill announced while its placer is still recording the broker's
    answer). Orders this process has just placed are known without a read (``placed_order_ids``);
    the others are read in one statement, written out: this runs for every fill."""
    orders = placed_order_ids({(key[0], t.order_tag) for key, t in wanted.items() if t.order_tag})
    rest = [(key[0], t) for key, t in wanted.items() if (key[0], t.order_tag) not in orders]
    if not rest:
        return orders
    accounts = {account_id for account_id, _t in rest}
    ids, tags = {t.broker_order_id for _a, t in rest}, {t.order_tag for _a, t in rest if t.order_tag}
    marks = lambda values: ", ".join(["%s"] * len(values))  # noqa: E731
    ours = f"broker_order_id IN ({marks(ids)})" + (f" OR reference IN ({marks(tags)})" if tags else "")
    sql = (
        f"SELECT account_id, id, broker_order_id, reference FROM {Order._meta.db_table} "  # noqa: S608
        f"WHERE account_id IN ({marks(accounts)}) AND ({ours})"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*accounts, *ids, *tags])
        for account_id, pk, broker_order_id, reference in cursor.fetchall():
            # An order found by its reference may not have its broker id yet: no key of None, which
            # every fill without a tag would find.
            if broker_order_id:
                orders[(account_id, broker_order_id)] = pk
            orders[(account_id, reference)] = pk
    return orders


def _unseen(accounts: dict, wanted: dict) -> dict:
    """The fills of ``wanted`` not recorded yet (a first look, outside the positions' locks)."""
    known = {tuple(row[:3]): row[3] for row in _recorded(wanted, "order_id")}
    _link_unlinked({(a, broker_order_id) for (a, broker_order_id, _), order_id in known.items() if order_id is None})
    return {key: t for key, t in wanted.items() if key not in known}


def _recorded(keys, *more: str) -> list[tuple]:
    """The recorded fills among ``keys`` (account id, broker order id, broker trade id): their keys,
    then the fields ``more`` names. A broker's trade id is unique only within its order."""
    keys = set(keys)
    fields = ("account_id", "broker_order_id", "broker_trade_id")
    rows = Trade.objects.filter(
        account_id__in={k[0] for k in keys},
        broker_order_id__in={k[1] for k in keys},
        broker_trade_id__in={k[2] for k in keys},
    ).values_list(*fields, *more)
    return [tuple(row) for row in rows if tuple(row[:3]) in keys]


def _record(
    keys: list[tuple], rows: list[Trade], *, look_first: bool, at_market: bool, savepoint: bool = True
) -> dict | None:
    """Insert the fills and apply them to their positions, in one transaction: the applied fills by
    account id, or None if a position of ``keys`` does not exist. ``savepoint=False``: within a
    caller's transaction, as part of it (a failure fails the caller's transaction)."""
    with transaction.atomic(savepoint=savepoint):
        # Lock the positions first (in one order, so two recorders never deadlock): fills of a
        # position are then inserted and applied by one recorder at a time, so what is recorded
        # is also applied, and a position's ``last_trade_id`` never passes over a fill.
        # The instruments' last prices are the paper exchange's ticker's: only its accounts are valued
        # at them; another broker's positions keep their own broker's (marked by the monitoring run).
        market_accounts = {row.account_id for row in rows if prices_fed_by(row.account.broker)} if at_market else set()
        positions = _positions_locked(keys, at_market=market_accounts)
        if any(key not in positions for key in keys):
            return None
        if look_first:
            # Under the locks, the fills another recorder got in first are seen here.
            recorded = set(_recorded(_key(row) for row in rows))
            rows = [row for row in rows if _key(row) not in recorded]
        if len(rows) > _TRADES.KEPT_ROWS:
            Trade.objects.bulk_create(rows)  # a monitoring run's batch: split within the database's limits
        elif rows:
            _TRADES.insert(*rows)  # the fills as they happen: one or a few
        if rows and rows[0].pk is None:  # a database that does not hand back the new ids
            made = set(_recorded((_key(row) for row in rows), "pk"))
            rows = sorted(
                Trade.objects.filter(pk__in=[pk for *_, pk in made]).select_related("instrument"),
                key=lambda row: (row.filled_at, row.pk),
            )
        applied = defaultdict(list)
        for trade in _apply(positions, rows):
            applied[trade.account_id].append(trade)
        return dict(applied)


def _key(trade: Trade) -> tuple:
    return (trade.account_id, trade.broker_order_id, trade.broker_trade_id)


def trades_link(*, account: BrokerAccount, broker_order_ids: set[str]) -> None:
    """Link the account's fills of these broker orders that no order of ours had when they were
    recorded to the orders that have those broker ids now (none: orders not ours, left as they are)."""
    _link_unlinked({(account.pk, broker_order_id) for broker_order_id in broker_order_ids})


def _link_unlinked(pairs: set[tuple[int, str]]) -> None:
    """Link recorded fills to their orders once the orders have their broker ids: the fast path can
    record a fill before its order has it (an order update lost with its process)."""
    if not pairs:
        return
    found = Order.objects.filter(
        account_id__in={a for a, _ in pairs}, broker_order_id__in={b for _, b in pairs}
    ).values_list("account_id", "broker_order_id", "pk")
    for account_id, broker_order_id, order_id in found:
        if (account_id, broker_order_id) in pairs:
            Trade.objects.filter(account_id=account_id, broker_order_id=broker_order_id, order__isnull=True).update(
                order_id=order_id
            )


def _positions_create(keys: list[tuple]) -> None:
    """The missing positions of ``keys`` (account id, instrument id, product), created on their own,
    before the fills' transaction: two recorders creating the same row inside their transactions
    would deadlock on MySQL (both keep a shared lock on the duplicate key, then both want it exclusive).
    The ones that exist are left as they are (an insert that ignores them: one statement, no look first)."""
    _NEW_POSITIONS.insert(*(Position(account_id=a, instrument_id=i, product=p) for a, i, p in keys))
    for key in keys:
        _positions_made.get(key, lambda: True)


_TRADES = PlainInserts(Trade, returning_ids=True)
_NEW_POSITIONS = PlainInserts(Position, ignore_conflicts=True)


_POSITIONS = PlainRows(Position)
_LAST_PRICES = PlainRows(Instrument, only=("last_price",))


def _positions_locked(keys: list[tuple], *, at_market: set[int]) -> dict[tuple, Position]:
    """The positions of the accounts and instruments of ``keys``, locked, in one order (so two
    recorders never deadlock), by (account id, instrument id, product). ``at_market``: the accounts
    whose positions each get ``market_price``, the instrument's last price (None when unknown), read
    with the lock, not locked (FOR UPDATE does not lock a subquery's rows). Written out: this runs
    for every fill."""
    accounts, instruments = sorted({key[0] for key in keys}), sorted({key[1] for key in keys})
    market = (
        f", (SELECT i.last_price FROM {Instrument._meta.db_table} i WHERE i.id = p.instrument_id AND i.last_price > 0)"  # noqa: S608
        if at_market
        else ""
    )
    sql = (
        f"SELECT {_POSITIONS.columns('p')}{market} FROM {Position._meta.db_table} p "  # noqa: S608
        f"WHERE p.account_id IN ({', '.join(['%s'] * len(accounts))}) "
        f"AND p.instrument_id IN ({', '.join(['%s'] * len(instruments))}) "
        "ORDER BY p.account_id, p.instrument_id, p.product"
    )
    if connection.features.has_select_for_update:
        sql += " FOR UPDATE"
    with connection.cursor() as cursor:
        cursor.execute(sql, [*accounts, *instruments])
        fetched = cursor.fetchall()
    positions = {}
    width = _POSITIONS.width
    for values in fetched:
        position = _POSITIONS.make(values[:width])
        if position.account_id in at_market:
            position.market_price = _LAST_PRICES.convert(values[width:])[0]
        positions[(position.account_id, position.instrument_id, position.product)] = position
    return positions


def _position_write(position: Position, fields: list[str]) -> None:
    """UPDATE the position's ``fields`` (and ``updated_at``), values prepared as the ORM prepares them."""
    position.updated_at = timezone.now()
    _POSITION_UPDATE.update(position.pk, {name: getattr(position, name) for name in (*fields, "updated_at")})


_POSITION_UPDATE = PlainUpdate(Position)


# Kept in the position's ``fifo`` beside the lots: when the latest fill applied to it filled.
LAST_FILLED_AT = "last_filled_at"
LAST_FILL = "last_fill"  # the latest applied fill's trade and order ids, beside its time
_APPLIED = ["fifo", "net_quantity", "average_price", "realized_pnl", "unrealized_pnl", "last_price", "last_trade_id"]


def _fifo_key(trade: Trade) -> tuple:
    return fifo_order(trade.filled_at, trade.broker_trade_id, trade.broker_order_id)


def _last_applied(position: Position) -> tuple | None:
    """Where the latest fill applied to the position comes in its FIFO queue (``fifo_order``). A
    position written before the fill's ids were kept has only its time: a fill of that second is
    then taken as coming before it (the position is replayed once)."""
    fifo = position.fifo or {}
    if LAST_FILLED_AT not in fifo:
        return None
    at = datetime.fromisoformat(fifo[LAST_FILLED_AT])
    if LAST_FILL not in fifo:
        return (at, float("inf"), "", "")
    return fifo_order(at, *fifo[LAST_FILL])


def _apply(positions: dict[tuple, Position], trades: list[Trade]) -> list[Trade]:
    by_position = defaultdict(list)
    for trade in trades:
        by_position[(trade.account_id, trade.instrument_id, trade.product)].append(trade)
    applied = []
    for key, fills in by_position.items():
        position = positions[key]
        new = sorted((fill for fill in fills if fill.pk > position.last_trade_id), key=_fifo_key)
        if not new:
            continue
        applied_until = _last_applied(position)
        if applied_until is not None and _fifo_key(new[0]) < applied_until:
            # A fill that comes before one applied already (recorded late: it waited for a retry or
            # its instrument, or the trade list lagged the placement's answer; of the same second, it
            # may come first by its trade number): FIFO matches in the order they filled
            # (``fifo_order``), so all of them again in that order.
            state = PositionState()
            every = Trade.objects.filter(account_id=key[0], instrument_id=key[1], product=key[2]).values_list(
                "filled_at", "broker_trade_id", "broker_order_id", "side", "quantity", "price"
            )
            every = sorted(every, key=lambda fill: fifo_order(*fill[:3]))
            state.apply_many(fill[3:] for fill in every)
            # The latest of them all, with its ids (a position written before they were kept has its
            # second only, which must not be kept: a later fill of that second would not replay it).
            latest = fifo_order(*every[-1][:3])
            latest_price = every[-1][5]
        else:
            state = PositionState.from_dict(position.fifo) if position.fifo else PositionState()
            state.apply_many((fill.side, fill.quantity, fill.price) for fill in new)
            latest = max(applied_until, _fifo_key(new[-1])) if applied_until is not None else _fifo_key(new[-1])
            latest_price = new[-1].price
        last = _valued_at(position, latest[0], latest_price)
        position.fifo = {**state.to_dict(), LAST_FILLED_AT: latest[0].isoformat(), LAST_FILL: list(latest[2:])}
        position.net_quantity = state.net_quantity
        position.average_price = state.average_price
        position.realized_pnl = state.realized_pnl
        position.unrealized_pnl = state.unrealized_pnl(last)
        position.last_price = last
        position.last_trade_id = max(fill.pk for fill in new)
        _position_write(position, _APPLIED)
        applied.extend(new)
    for key, position in positions.items():
        # The instruments' other positions (another product, locked with these) at the market too.
        market = getattr(position, "market_price", None)
        if key not in by_position and market and market != position.last_price:
            state = PositionState.from_dict(position.fifo) if position.fifo else PositionState()
            position.last_price, position.unrealized_pnl = market, state.unrealized_pnl(market)
            _position_write(position, ["last_price", "unrealized_pnl"])
    return sorted(applied, key=lambda trade: (trade.filled_at, trade.pk))


def _valued_at(position: Position, filled_at: datetime, price: Decimal) -> Decimal:
    """The price a position whose latest fill is ``price`` at ``filled_at`` is valued at: the
    market's latest where it was read with the lock (the fast path), else the position's own last
    price, unless the fill is newer than it (the row was last written, so last priced, before the
    fill: a position closed days ago and reopened by a run that could not read prices would be
    valued at its old mark), else the fill's."""
    market = getattr(position, "market_price", None)
    if market:
        return market
    if position.last_price and position.updated_at and position.updated_at >= filled_at:
        return position.last_price
    return price


def trades_record_each(
    fills: list[tuple[BrokerAccount, list[BrokerTrade]]], *, fresh: bool = False, at_market: bool = False
) -> tuple[dict[int, list[Trade]], dict[int, BaseException]]:
    """``trades_record_many``, and if the batch fails as a whole, account by account, each in its
    own transaction, so one account's bad fill fails alone: (the fills applied, the errors), by
    account id."""
    try:
        return trades_record_many(fills, fresh=fresh, at_market=at_market), {}
    except SoftTimeLimitExceeded:
        raise  # a task's time limit (a monitoring batch's), raised in its thread: not the fills' failure
    except Exception:
        logger.warning("recording %s accounts' fills together failed; one by one", len(fills), exc_info=True)
    applied, failures = {}, {}
    for account, broker_trades in fills:
        try:
            applied[account.pk] = trades_record(
                account=account, broker_trades=broker_trades, fresh=fresh, at_market=at_market
            )
        except SoftTimeLimitExceeded:
            raise
        except Exception as error:
            failures[account.pk] = error
    return applied, failures


def fills_fast_path(fills: list[tuple[BrokerAccount, list[BrokerTrade]]]) -> dict[int, list[Trade]]:
    """Fills brokers handed us as they happened (paper fills, right after their commits), by account:
    record them, together, and push each trader's dashboard at once, coalesced. Returns the fills
    applied, by account id.

    Each order's state was applied just before, by its announcement
    (``orders.services.order_broker_update``), so the fills link to it; a strategy's order also
    has its account's monitoring steps run a moment later, which find these fills recorded and
    record nothing twice. An account whose fills fail is logged and left to its next monitoring
    run, which records them.
    """
    # Valued at the market's latest price, not the fill's: the price has often moved on (the fill
    # of a resting order comes from a move through it), and no monitoring run follows a fill.
    applied, failures = trades_record_each(fills, fresh=True, at_market=True)
    for account_id, error in failures.items():
        logger.error("fast path: account %s's fills failed (its next run records them): %r", account_id, error)
    _dashboards_push([account for account, _ in fills if applied.get(account.pk)])
    return applied


def _dashboards_push(accounts: list[BrokerAccount], *, soon: bool = False) -> None:
    """Push the accounts' dashboards to their traders' open pages (none open: nothing is rendered).
    ``soon``: rendered and sent on a background thread (the caller answers a request meanwhile)."""
    from monitoring import presence

    from .broadcast import dashboard_push

    watched = presence.watching([account.owner_id for account in accounts])
    for account in accounts:
        if account.owner_id not in watched:
            continue
        if soon:
            background.submit(dashboard_push, account)
        else:
            dashboard_push(account)


def positions_mark(
    *, account: BrokerAccount, last_prices: dict[tuple[str, str], Decimal], positions: list[Position] | None = None
) -> int:
    """Value open positions at the latest prices ({(exchange, symbol): price}).

    ``positions``: the account's positions with their instruments when the caller already has them
    (the monitoring cycle reads them for many accounts in one query).
    """
    changed = 0
    if positions is None:
        positions = Position.objects.filter(account=account).select_related("instrument")
    for position in positions:
        price = last_prices.get((position.instrument.exchange, position.instrument.tradingsymbol))
        if price is None or price <= 0 or price == position.last_price:  # 0: no trade yet, not a price
            continue
        # Valued from the lots we read, and written only if no fill was applied since (the fill
        # fast path runs beside the cycle); otherwise the current lots are read and valued.
        for _attempt in range(5):  # a fill racing each attempt five times over: the next cycle marks it
            if _mark(position, price):
                changed += 1
                break
            position.refresh_from_db(fields=_MARKED_FROM)
    return changed


_MARKED_FROM = ["fifo", "last_trade_id", "net_quantity", "average_price", "realized_pnl", "last_price"]


def _mark(position: Position, price: Decimal) -> bool:
    state = PositionState.from_dict(position.fifo) if position.fifo else PositionState()
    unrealized = state.unrealized_pnl(price)
    if not Position.objects.filter(pk=position.pk, last_trade_id=position.last_trade_id).update(
        last_price=price, unrealized_pnl=unrealized, updated_at=timezone.now()
    ):
        return False
    position.last_price, position.unrealized_pnl = price, unrealized
    return True


def pnl_snapshot(*, account: BrokerAccount, now=None, positions: list[Position] | None = None, save: bool = True):
    """The account's realized and unrealized PnL now (every position's, since its first fill), as a point
    for the chart ("Total PnL through today").

    ``positions``: the account's positions when the caller already has them; ``save=False``
    returns the row unsaved (the monitoring cycle inserts many at once).
    """
    if positions is None:
        positions = Position.objects.filter(account=account)
    totals = [(p.realized_pnl, p.unrealized_pnl) for p in positions]
    return (PnlSnapshot.objects.create if save else PnlSnapshot)(
        account=account,
        taken_at=now or timezone.now(),
        realized=sum((r for r, _ in totals), Decimal(0)),
        unrealized=sum((u for _, u in totals), Decimal(0)),
    )
