"""The monitoring cycle (DESIGN section 5), step by step, for many accounts at once.

``accounts_monitor`` runs the steps for a batch of accounts (``start_cycle`` sends one task
per batch; the fast path sends a batch of one through ``account_monitor``). Each account is
under its own lock for the run (an account still running elsewhere is skipped, never run
twice at once). Each step is a function of its own that takes one account's context, is
timed, and is idempotent: running a cycle twice, or a task delivered twice, never places a
second stop-loss, re-entry or retry, because every order a step places carries an
idempotency key derived from what caused it. One step's failure is recorded and the next
step still runs, for that account and for every other account of the batch.

What makes a batch cheaper than its accounts one by one (the rules above do not change):

- Broker calls run on a pool of threads per process: an account's three reads at once,
  then its last prices, and many accounts' calls at the same time, since the wait is the
  broker's; the oldest run's jobs first. The pool's threads keep their database connections
  while they are busy.
- The sessions of the batch are read at once; the broker snapshots (one upsert), the new
  fills (one transaction), the positions (one read), the PnL snapshots and the
  ``AccountRun`` rows (one insert each) are written for the whole batch.
- Steps 3 to 9 act only on orders that one query per step finds for the whole batch; an
  account with none of them (most accounts, most of the time) skips those steps, since
  none of them would do anything. An account with any runs all of them in order, as before.
- The dashboard is rendered and pushed only for traders with a page open.
"""

import contextlib
import contextvars
import functools
import itertools
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

from celery.exceptions import SoftTimeLimitExceeded
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import BrokerAccount
from brokers import markets, registry
from brokers import services as broker_services
from brokers.base import (
    MULTIPLIED_EXCHANGES,
    OPTION_EXCHANGES,
    BrokerOrder,
    BrokerPosition,
    BrokerTrade,
    Holding,
    stop_market_allowed,
)
from brokers.base import Status as BrokerStatus
from brokers.client import AccountBroker
from brokers.errors import BrokerError, OrderRejected, RejectKind
from brokers.selectors import broker_prices_known, instrument_by_symbol
from orders import services as orders
from orders.models import Order, OrderEvent, Strategy
from portfolio import openings, reconcile
from portfolio import services as portfolio
from portfolio.broadcast import dashboard_push
from portfolio.models import PnlSnapshot, Position, Trade
from tradingplatform import background, locks, metrics

from . import presence
from .models import AccountRun, BrokerSnapshot

logger = logging.getLogger(__name__)
# Renewed while a batch runs (``locks.kept``), so it only bounds how long a dead worker's
# accounts wait before another worker may monitor them.
ACCOUNT_LOCK_TTL_S = 60


class BatchStepFailed(Exception):
    """A batched step failed as a whole: what each account's run says of it (logged once, in full)."""


EXPECTED_ERRORS = (BrokerError, ValidationError, orders.OrderActionRefused, BatchStepFailed)


@dataclass
class Context:
    account: BrokerAccount
    run_id: int | None = None
    session: broker_services.LiveSession | None = None
    broker_orders: list[BrokerOrder] = field(default_factory=list)
    orders_asked_at: datetime | None = None  # when the order book was asked for
    broker_trades: list[BrokerTrade] = field(default_factory=list)
    broker_positions: list[BrokerPosition] = field(default_factory=list)
    last_prices: dict = field(default_factory=dict)
    # (exchange, symbol) -> (lower, upper) circuit limits, or None where not known; asked for only
    # when an exit that needs them is placed or a stop-loss limit moved (``_circuit``).
    circuits: dict = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)
    fetched: bool = False
    # Broker order ids of fills step 2 recorded with no order of ours (one placed in the broker's
    # app, or ours whose broker id step 3 has yet to learn: its answer was lost, and the fill names
    # no tag): step 3 links them to the orders it gives those ids.
    unlinked_fills: set[str] = field(default_factory=set)
    step_ms: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    _broker: AccountBroker | None = None

    def act(self, text: str) -> None:
        self.actions.append(text)

    @property
    def broker(self) -> AccountBroker:
        """One ``AccountBroker`` for the account's run (its session looked up once)."""
        if self._broker is None:
            self._broker = AccountBroker(self.account, session=self.session)
        return self._broker

    def failed(self, step: str, error: BaseException) -> None:
        if not isinstance(error, EXPECTED_ERRORS):  # one step's bug must not stop the others
            logger.error("monitoring step %s failed for account %s", step, self.account.pk, exc_info=error)
        self.errors.append({"step": step, "error": f"{type(error).__name__}: {error}"[:500]})


def _cause(step: str, why: str) -> str:
    return f"monitoring {step}: {why}"


def _failed_but_listed(ctx: Context, order: Order) -> bool:
    """Whether a FAILED order is in the order book this run read (by its tag): at its broker after
    all, which step 3 could not record (one order it could not reconcile). Placed again, it would be
    there twice; the next run's sync records it."""
    return order.status == Order.Status.FAILED and any(o.tag == order.reference for o in ctx.broker_orders)


# --- Threads for broker calls -------------------------------------------------------------------


# The order in which the pool serves monitoring runs: the oldest run's jobs first. A run that
# has fetched goes on to record its fills at once, instead of queueing them behind the broker
# calls of every run that started beside it, so runs finish one after another and the threads
# never stand idle while all runs are between their broker calls.
_runs = itertools.count()
_run_rank: contextvars.ContextVar[int | None] = contextvars.ContextVar("monitoring_run_rank", default=None)
_pool = background.Pool("MONITORING_THREADS", "monitoring-pool")


def _in_pool(fn, items, *, cut: threading.Event | None = None) -> None:
    """``fn(item)`` for every item on the pool's threads, this run's rank first; returns when all
    are done (a job that fails is logged). Cut short by the task's time limit (raised here, in the
    waiting thread), it still waits for the jobs that have begun, then raises; those not begun do
    nothing, and ``cut`` is set for those that have to stop at their next step."""
    jobs = background.Jobs()
    rank = _run_rank.get()
    cut = cut or threading.Event()

    @functools.wraps(fn)
    def job(item):
        if not cut.is_set():
            fn(item)

    for item in items:
        _pool.submit(jobs, job, item, rank=next(_runs) if rank is None else rank)
    jobs.wait(cut_short=cut.set)


def _insert(model, rows: list, **options) -> dict[int, BaseException]:
    """Insert ``rows`` in one statement; if that fails, one by one, so that a bad row (one
    account's) fails alone. Returns the failures by the row's index."""
    try:
        with transaction.atomic():
            model.objects.bulk_create(rows, **options)
        return {}
    except SoftTimeLimitExceeded:
        raise  # the task's time limit, raised in its thread during the write: not a row's failure
    except Exception:
        failures = {}
        for index, row in enumerate(rows):
            try:
                with transaction.atomic():
                    model.objects.bulk_create([row], **options)
            except SoftTimeLimitExceeded:
                raise
            except Exception as error:
                failures[index] = error
        return failures


# --- 1. Fetch ---------------------------------------------------------------------------------

FETCH_READS = ("orders", "trades", "positions")
HOLDINGS = "holdings"  # read once a trading day (``_holdings_of_day``), kept as a snapshot too
_HOLDING_PRICES = ("average_price", "last_price", "close_price")
PRICES_PER_CALL = 500


def _fetch_many(contexts: list[Context]) -> dict[int, BaseException]:
    """Every account's order book, trades and positions (an account's three at once, many
    accounts at once), then the last prices they need. Returns the failures by ``id(ctx)``."""
    lock = threading.Lock()
    failures: dict[int, BaseException] = {}

    def read(job):
        ctx, name = job
        if name == "orders":
            ctx.orders_asked_at = timezone.now()
        try:
            setattr(ctx, f"broker_{name}", getattr(ctx.broker, name)())
        except Exception as error:
            with lock:
                failures.setdefault(id(ctx), error)

    _in_pool(read, [(ctx, name) for ctx in contexts for name in FETCH_READS])
    unpriced: dict[int, BaseException] = {}
    _prices_many([ctx for ctx in contexts if id(ctx) not in failures], unpriced)
    fetched = [ctx for ctx in contexts if id(ctx) not in failures]
    for ctx in fetched:
        ctx.fetched = True
    # Prices value positions and move orders (a chase, a trail, a stop past its trigger): an account
    # whose prices could not be read (a quote limit, a 5xx) still has its fills recorded and its
    # orders reconciled; the steps that need a price do without this run, and the failure is its error.
    failures.update(unpriced)
    # The snapshots are a copy kept for staff: one the database refuses (an account's book too large
    # for a row) is the run's error, not a reason to leave the fills and orders read unrecorded.
    failures.update(_snapshots_save(fetched))
    return failures


def _prices_many(contexts: list[Context], failures: dict[int, BaseException]) -> None:
    """Last prices of the instruments each account holds or has orders in.

    Prices are market data, the same for every account at a broker, so a batch asks once per
    broker (up to PRICES_PER_CALL instruments a call) through one of its accounts, not once per
    account; if that fails, each account asks for its own (and a failure is that account's). Once
    per broker and trader where a quote is the account's to spend (Kite: the trader's own API app,
    its quote budget): one trader's session never asks for the instruments another trader holds.
    """
    # What the platform holds too: a broker lists only today's orders, and a position carried
    # from an earlier day may be in its holdings rather than its positions (Kite's CNC).
    held = defaultdict(set)
    open_positions = Position.objects.filter(account__in=[ctx.account for ctx in contexts]).exclude(net_quantity=0)
    for account_id, exchange, symbol in open_positions.values_list(
        "account_id", "instrument__exchange", "instrument__tradingsymbol"
    ):
        held[account_id].add(f"{exchange}:{symbol}")
    wanted = {}
    for ctx in contexts:
        symbols = {f"{p.exchange}:{p.tradingsymbol}" for p in ctx.broker_positions if p.quantity}
        symbols |= {f"{o.exchange}:{o.tradingsymbol}" for o in ctx.broker_orders}
        wanted[id(ctx)] = symbols | held[ctx.account.pk]
    by_broker = defaultdict(list)
    for ctx in contexts:
        if wanted[id(ctx)]:
            broker = ctx.account.broker
            shared = registry.get(broker).shared_market_data
            by_broker[broker if shared else (broker, ctx.account.owner_id)].append(ctx)

    def ask(ctx: Context, symbols: list[str]) -> dict:
        prices = {}
        for start in range(0, len(symbols), PRICES_PER_CALL):
            prices.update(ctx.broker.ltp(symbols[start : start + PRICES_PER_CALL]))
        # 0 is no price (an instrument not traded yet, a number missing from the broker's answer):
        # a chase or a trail toward it would move an order or a stop by its whole cap.
        return {key: price for key, price in prices.items() if price > 0}

    def own(ctx: Context) -> None:
        try:
            prices = ask(ctx, sorted(wanted[id(ctx)]))
        except SoftTimeLimitExceeded:
            raise  # the task's time limit, raised in its thread during the call: not the broker's failure
        except Exception as error:
            failures.setdefault(id(ctx), error)
            return
        ctx.last_prices = {tuple(key.split(":", 1)): price for key, price in prices.items()}

    for group in by_broker.values():
        if len(group) == 1:
            own(group[0])
            continue
        try:
            prices = ask(group[0], sorted(set().union(*(wanted[id(ctx)] for ctx in group))))
        except SoftTimeLimitExceeded:
            raise
        except Exception:
            logger.warning("monitoring: one price request for %s accounts failed; each asks itself", len(group))
            _in_pool(own, group)
            continue
        for ctx in group:
            ctx.last_prices = {tuple(key.split(":", 1)): prices[key] for key in wanted[id(ctx)] if key in prices}


def _circuit(ctx: Context, instrument) -> tuple[Decimal, Decimal] | None:
    """The (lower, upper) circuit limits of ``instrument`` today, or None where not known, for an
    exit about to be placed (an option's, or one the exchange refused for its price band) or a
    stop-loss limit moved: the exchange refuses one priced outside them. The run's prices are last
    prices (Kite's LTP, which carries no limits), so the first exit of a run that needs them asks
    one quote, for it and every option-exchange instrument the run priced: a quote call per run
    that places or trails such an exit, never per exit, none in the others. A quote that fails
    leaves them unknown: the exit goes as before, unchecked and unclamped."""
    key = (instrument.exchange, instrument.tradingsymbol)
    if key not in ctx.circuits:
        wanted = sorted({key} | {k for k in ctx.last_prices if k[0] in OPTION_EXCHANGES and k not in ctx.circuits})
        symbols = [f"{exchange}:{symbol}" for exchange, symbol in wanted]
        quotes = {}
        try:
            for start in range(0, len(symbols), PRICES_PER_CALL):
                quotes.update(ctx.broker.quote(symbols[start : start + PRICES_PER_CALL]))
        except BrokerError as error:
            ctx.act(f"circuit limits not known this run ({error}): exits go unchecked, stop-loss limits unclamped")
        for wanted_key, symbol in zip(wanted, symbols, strict=True):
            ctx.circuits[wanted_key] = quotes[symbol].circuit if symbol in quotes else None
    return ctx.circuits[key]


def _snapshots_save(contexts: list[Context]) -> dict[int, BaseException]:
    """The broker's data as it was fetched, one row per account and kind, for all accounts in one upsert."""
    return _snapshots_upsert([(ctx, kind, getattr(ctx, f"broker_{kind}")) for ctx in contexts for kind in FETCH_READS])


def _snapshots_upsert(read: list[tuple[Context, str, list]]) -> dict[int, BaseException]:
    """(account's context, kind, the broker's rows) as snapshots, in one upsert. The failures by ``id(ctx)``."""
    now = timezone.now()
    rows = [
        BrokerSnapshot(account=ctx.account, kind=kind, data=[_plain(row) for row in data], fetched_at=now)
        for ctx, kind, data in read
    ]
    if not rows:
        return {}
    features = connection.features
    unique = {"unique_fields": ["account", "kind"]} if features.supports_update_conflicts_with_target else {}
    failed = _insert(BrokerSnapshot, rows, update_conflicts=True, update_fields=["data", "fetched_at"], **unique)
    return {id(read[index][0]): error for index, error in failed.items()}


@functools.cache
def _snapshot_fields(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(kind) if f.name != "raw")


def _plain(row) -> dict:
    values = ((name, getattr(row, name)) for name in _snapshot_fields(type(row)))
    return {k: v if v is None or isinstance(v, int | str) else str(v) for k, v in values}


def step_fetch(ctx: Context) -> None:
    """Order book, trades, positions and last prices from the broker, concurrently."""
    failure = _fetch_many([ctx]).get(id(ctx))
    if failure is not None:
        raise failure


# --- 2. PnL -------------------------------------------------------------------------------------


def _pnl_many(contexts: list[Context]) -> dict[int, BaseException]:
    """Record new fills, update positions by FIFO, value them at last prices, snapshot PnL.

    First the openings of the accounts met for the first time (``_openings_many``). The batch's
    new fills are recorded together (one transaction; if that fails, account by account, each in
    its own, so one account's bad fill fails alone); the positions are read for all accounts in
    one query, re-valued where a price moved (in one transaction), and the PnL points inserted in
    one statement.
    """
    failures: dict[int, BaseException] = {}
    _openings_many(contexts)
    with_fills = [ctx for ctx in contexts if ctx.broker_trades]
    created, failed = portfolio.trades_record_each([(ctx.account, ctx.broker_trades) for ctx in with_fills])
    for ctx in with_fills:
        if ctx.account.pk in failed:
            failures[id(ctx)] = failed[ctx.account.pk]
        for symbols, why in _unrecordable(ctx.broker_trades):
            # Not recorded, so not in the positions or PnL: the trader must know.
            _run_error(ctx, f"fills in {', '.join(symbols)} are not recorded: {why}", step="2_pnl")
    for ctx in with_fills:
        if created.get(ctx.account.pk):
            ctx.act(f"recorded {len(created[ctx.account.pk])} fill(s)")
            ctx.unlinked_fills = {t.broker_order_id for t in created[ctx.account.pk] if t.order_id is None}
    accounts = [ctx.account for ctx in contexts]
    # Rows are locked in (account, instrument, product) order, the order every fill recorder locks
    # them in (the fast path one account's, a scheduled burst many accounts'), so none deadlock:
    # the accounts too, not in the batch's order.
    ordered = Position.objects.filter(account__in=accounts).order_by("account_id", "instrument_id", "product")
    held = defaultdict(list)
    for position in ordered.select_related("instrument"):
        held[position.account_id].append(position)
    with transaction.atomic():  # one commit for the batch's re-valued positions
        for ctx in sorted(contexts, key=lambda ctx: ctx.account.pk):
            positions = held[ctx.account.pk]
            if id(ctx) in failures or not positions or not ctx.last_prices:
                continue
            try:
                with transaction.atomic():  # a savepoint: one account's failure leaves the others' updates
                    portfolio.positions_mark(account=ctx.account, last_prices=ctx.last_prices, positions=positions)
            except SoftTimeLimitExceeded:
                raise  # the task's time limit, not this account's failure
            except Exception as error:
                failures[id(ctx)] = error
    # The points from the positions as they are now (the fast path may have applied fills meanwhile).
    now_held = defaultdict(list)
    for position in Position.objects.filter(account__in=accounts).only("account_id", "realized_pnl", "unrealized_pnl"):
        now_held[position.account_id].append(position)
    points, owners = [], []
    for ctx in contexts:
        if id(ctx) not in failures:
            points.append(portfolio.pnl_snapshot(account=ctx.account, positions=now_held[ctx.account.pk], save=False))
            owners.append(ctx)
    for index, error in _insert(PnlSnapshot, points).items():
        failures[id(owners[index])] = error
    _positions_compare([ctx for ctx in contexts if id(ctx) not in failures])
    return failures


def _positions_compare(contexts: list[Context]) -> None:
    """Compare the accounts' positions with the broker's book this run read, and report the
    differences seen the same on two runs (``portfolio.reconcile``). Not before the broker's
    trading day has begun (its book can still be the day before's). A failure here is logged: the
    run's PnL stands, and the next run compares again."""
    now = timezone.now()
    if not openings.day_begun(now):
        return
    try:
        held = reconcile.held_by([ctx.account.pk for ctx in contexts])
        compared = [ctx for ctx in contexts if ctx.account.pk in held]
        holdings = _holdings_of_day(compared, since=openings.day_start(now))
        found = {
            ctx.account.pk: reconcile.differences(
                held=held[ctx.account.pk], positions=ctx.broker_positions, holdings=holdings.get(ctx.account.pk)
            )
            for ctx in compared
        }
        differ = reconcile.confirmed(found)
    except SoftTimeLimitExceeded:
        raise
    except Exception:
        logger.exception("monitoring: could not compare positions with the brokers' books")
        return
    for ctx in compared:
        for difference in differ.get(ctx.account.pk, []):
            _run_error(ctx, str(difference), step="2_pnl")


def _holdings_of_day(contexts: list[Context], *, since: datetime) -> dict[int, list[Holding]]:
    """Each account's holdings, by account id: read from the broker once a trading day (what the
    day opened with: today's trading does not change them, ``portfolio.openings``) and kept as its
    ``holdings`` snapshot. An account whose holdings cannot be read is left out (said in its run)."""
    kept = BrokerSnapshot.objects.filter(account__in=[ctx.account for ctx in contexts], kind=HOLDINGS)
    today = {row.account_id: row.data for row in kept if row.fetched_at >= since}
    result = {
        account_id: [
            Holding(r["exchange"], r["tradingsymbol"], int(r["quantity"]), *(Decimal(r[k]) for k in _HOLDING_PRICES))
            for r in rows
        ]
        for account_id, rows in today.items()
    }
    stale = [ctx for ctx in contexts if ctx.account.pk not in today]

    def read(ctx: Context) -> None:
        try:
            result[ctx.account.pk] = ctx.broker.holdings()
        except Exception as error:
            why = f"{type(error).__name__}: {error}"
            ctx.act(f"holdings not read ({why}): delivery positions not compared with the broker's this run")

    _in_pool(read, stale)
    read_now = [(ctx, HOLDINGS, result[ctx.account.pk]) for ctx in stale if ctx.account.pk in result]
    for error in _snapshots_upsert(read_now).values():
        logger.warning("monitoring: could not keep the holdings of a run's account: %s", error)
    return result


def _openings_many(contexts: list[Context]) -> None:
    """Take the opening of each account the platform meets for the first time (what it held at the
    start of the day, ``portfolio.openings``), before the run's fills are recorded, and record the
    lots that waited for their instruments where those are loaded now. One query finds both for
    the batch; an account already opened with nothing waiting (all of them, nearly always) costs
    nothing more. An opening not taken (a broker error, a fill that came in while its book was
    read) is taken by a later run: its lots are at the start of the day the account was first
    met, so they are replayed before the fills recorded meanwhile. Lots recorded here are valued
    at the market in this run (the run's prices were asked for before their positions existed)."""
    try:
        to_open, waiting = openings.openings_due([ctx.account.pk for ctx in contexts])
    except SoftTimeLimitExceeded:
        raise
    except Exception:
        logger.exception("monitoring: could not tell which accounts' openings are taken")
        return
    if waiting:
        _openings_waiting([ctx for ctx in contexts if ctx.account.pk in waiting])
    if not to_open:
        return

    def take(ctx: Context) -> None:
        try:
            # As of when its book was read: a run that read it before midnight takes the day it read.
            opening = openings.opening_take(
                account=ctx.account, broker=ctx.broker, trades_before=ctx.broker_trades, now=ctx.orders_asked_at
            )
        except Exception as error:
            if not isinstance(error, EXPECTED_ERRORS):
                logger.error("monitoring: the opening of account %s failed", ctx.account.pk, exc_info=error)
            why = f"{type(error).__name__}: {error}"
            _run_error(ctx, f"opening positions not taken yet (the next run tries again): {why}", step="2_pnl")
            return
        if opening is None:
            ctx.act("opening positions were taken by another run meanwhile")
            return
        if opening.outcome == opening.Outcome.PENDING:
            why = opening.detail.get("why", "")
            ctx.act(f"opening positions not taken: {why} (the next run takes them)")
            if why == openings.NOT_BEGUN:
                # The broker's fill list can still be the day before's: its fills from before the
                # day the account was first met are in the opening taken later. Recorded now, they
                # would read as fills from before the account was met, and its opening would never
                # be taken. Those of the first-met day (and since) are its own: recorded.
                start = openings.date_start(opening.trading_date)
                ctx.broker_trades = [t for t in ctx.broker_trades if t.filled_at is None or t.filled_at >= start]
            return
        seeded = opening.detail.get("seeded", [])
        if seeded:
            ctx.act(f"recorded {len(seeded)} opening position(s) held at the start of {opening.trading_date}")
        for row in seeded:
            # The book's last price: the run's prices were asked for before these positions existed.
            if Decimal(row.get("last_price") or 0) > 0:
                exchange, symbol = row["instrument"].split(":", 1)
                ctx.last_prices.setdefault((exchange, symbol), Decimal(row["last_price"]))
        _openings_report(ctx, opening.detail.get("waiting", []), opening.detail.get("skipped", []))

    _in_pool(take, [ctx for ctx in contexts if ctx.account.pk in to_open])


def _openings_waiting(contexts: list[Context]) -> None:
    """Record the waiting opening lots of these accounts whose instruments are loaded now."""
    try:
        done = openings.waiting_record([ctx.account for ctx in contexts])
    except SoftTimeLimitExceeded:
        raise
    except Exception:
        logger.exception("monitoring: could not record the opening lots that waited for their instruments")
        return
    for ctx in contexts:
        waited = done.get(ctx.account.pk)
        if waited is None:
            continue
        if waited.retaken:
            names = ", ".join(row["instrument"] for row in waited.waiting)
            ctx.act(f"opening positions in {names}: {openings.RETAKE} (the next run)")
            continue
        if waited.recorded:
            ctx.act(f"recorded {len(waited.recorded)} opening position(s) whose instruments are loaded now")
        if waited.failed:
            names = ", ".join(row["instrument"] for row in waited.failed)
            why = f"{type(waited.error).__name__}: {waited.error}"
            _run_error(
                ctx, f"opening positions in {names} not recorded yet (the next run tries again): {why}", step="2_pnl"
            )
        _openings_report(ctx, waited.waiting, [])


def _openings_report(ctx: Context, waiting: list[dict], skipped: list[dict]) -> None:
    """Opening lots not recorded, so not in the positions or PnL: the trader must know."""
    for row in waiting:
        quantity = row["quantity"] if row["side"] == "BUY" else -row["quantity"]
        text = f"opening position {row['product']} {quantity} {row['instrument']} is not recorded yet"
        _run_error(ctx, f"{text}: {openings.NOT_LOADED}", step="2_pnl")
    for row in skipped:
        text = f"opening position {row['product']} {row['quantity']} {row['instrument']} is not recorded"
        _run_error(ctx, f"{text}: {row['why']}", step="2_pnl")


def _unrecordable(trades: list[BrokerTrade]) -> list[tuple[list[str], str]]:
    """The fills ``portfolio.trades_record`` leaves out, by why: [(symbols, why)]."""
    symbols = sorted({(t.exchange, t.tradingsymbol) for t in trades})
    unknown = [f"{e}:{s}" for e, s in symbols if instrument_by_symbol(e, s) is None]
    multiplied = [f"{e}:{s}" for e, s in symbols if e in MULTIPLIED_EXCHANGES and f"{e}:{s}" not in unknown]
    return [
        (names, why)
        for names, why in (
            (unknown, "the instrument is not loaded (load the broker's instruments)"),
            (multiplied, "their contract multiplier is not kept yet, so their PnL would be wrong"),
        )
        if names
    ]


def step_pnl(ctx: Context) -> None:
    """Record new fills, update positions by FIFO, value them at last prices, snapshot PnL."""
    failure = _pnl_many([ctx]).get(id(ctx))
    if failure is not None:
        raise failure


# --- 3. Orders ----------------------------------------------------------------------------------


def step_orders(ctx: Context) -> None:
    """Bring our orders in line with the broker's order book."""
    try:
        changed = orders.orders_sync_account(
            account=ctx.account,
            cause=_cause("step 3", "reconciled with the broker"),
            broker_orders=ctx.broker_orders,
            asked_at=ctx.orders_asked_at,
        )
    finally:
        # Also when one order could not be reconciled (raised after the others): those were given
        # their broker ids, and their fills must be theirs before step 4 sizes exits from them.
        if ctx.unlinked_fills:
            portfolio.trades_link(account=ctx.account, broker_order_ids=ctx.unlinked_fills)
    if changed:
        ctx.act(f"updated {changed} order(s) from the broker")


# --- 4. Stop-loss and take-profit -----------------------------------------------------------------


def _offset(price: Decimal, amount: Decimal, unit: str) -> Decimal:
    return price * amount / 100 if unit == Strategy.Unit.PERCENT else amount


def _on_tick(price: Decimal, tick: Decimal, rounding: str = ROUND_HALF_UP) -> Decimal:
    return ((price / tick).to_integral_value(rounding=rounding) * tick).quantize(Decimal("0.01"))


EXIT_ROLES = (Order.Role.STOP_LOSS, Order.Role.TAKE_PROFIT)
# Exits of one role for one entry the broker rejected before the cycle stops placing new ones
# and only reports the entry as unprotected. Exits that failed (never reached it: network, rate
# limit, session) do not count: they are placed again, further apart each time.
EXIT_ATTEMPTS = 3
EXIT_RETRY_MAX_S = 60
# Nor do exits refused because the broker's market is closed when the platform's calendar has it
# open (``brokers.markets``: a holiday missing from EXCHANGE_HOLIDAYS, a halt): tried again after
# CLOSED_RETRY_S, twice as long after each refusal in a row, at most CLOSED_RETRY_MAX_S.
CLOSED_RETRY_S = 300
CLOSED_RETRY_MAX_S = 3600
# An entry that can fill no more and holds nothing (its exits filled, or the position was closed
# some other way) is done: a later position in the instrument (a buy by hand) is not its. Done is
# on the entry's row (``Order.exits_done``, in an index with its role and account), told in its
# timeline by this event.
EXITS_DONE = "exits_done"
_EXITS = Q(children__role__in=EXIT_ROLES)
_ENTRY_FILLED = [Order.Status.FILLED, Order.Status.PARTIALLY_FILLED, Order.Status.CANCELLED, Order.Status.REJECTED]


def _filled_entries(**where):
    """Strategy entries whose exits need a look: part of the entry's fill is not yet closed by its
    exits, or an exit of theirs is still live, or they closed more than it filled (both filled:
    said once), and it is not done (``exits_done``). A cancelled entry counts for what filled
    before the cancel.

    Done is read from the entry's index (exits_done, role, account): the entries done, however many
    years of them, are not read at all (``exits_settle`` marks the round trips closed long ago)."""
    return (
        Order.objects.filter(
            **where,
            role=Order.Role.ENTRY,
            exits_done=False,
            strategy__isnull=False,
            filled_quantity__gt=0,
            status__in=_ENTRY_FILLED,
        )
        .annotate(
            exited=Coalesce(Sum("children__filled_quantity", filter=_EXITS), 0),
            live_exits=Count("children", filter=_EXITS & Q(children__status__in=Order.LIVE)),
        )
        .filter(~Q(exited=F("filled_quantity")) | Q(live_exits__gt=0))
    )


def _exits_done_mark(entry: Order, cause: str) -> bool:
    """Mark an entry done, once (a run told twice writes one event); whether this call did."""
    with transaction.atomic():
        if not Order.objects.filter(pk=entry.pk, exits_done=False).update(exits_done=True):
            return False
        orders.order_event_add(entry, EXITS_DONE, cause=cause)
    return True


# Round trips closed for good are marked done when nothing of them changed since the start of the day
# before this one (IST): brokers list the day's orders only (the sync learns nothing more of an
# earlier day's), and a whole day more covers what comes in after midnight (the paper exchange's
# books reach back before it, MCX trades to 23:55, a postback is late).
SETTLED_AFTER_DAYS = 1
SETTLE_BATCH = 1000


def _unsettled_entries(before: datetime):
    """Strategy entries not done that are final and unchanged since ``before``: those whose round
    trip may be closed and settled (``_settled``). Read from their index (done first)."""
    return Order.objects.filter(
        exits_done=False,
        role=Order.Role.ENTRY,
        strategy__isnull=False,
        filled_quantity__gt=0,
        status__in=[s for s in _ENTRY_FILLED if s not in Order.LIVE],
        updated_at__lt=before,
    )


def _settled(entries: dict[int, int], before: datetime) -> list[int]:
    """Of ``entries`` (id: filled quantity), those whose exits are all final, unchanged since
    ``before`` and together filled what the entry filled: read by their parent, these entries' only."""
    exits = (
        Order.objects.filter(parent_id__in=list(entries), role__in=EXIT_ROLES)
        .order_by()
        .values("parent_id")
        .annotate(
            exited=Sum("filled_quantity"),
            unsettled=Count("pk", filter=Q(status__in=Order.LIVE) | Q(updated_at__gte=before)),
        )
    )
    return [row["parent_id"] for row in exits if not row["unsettled"] and row["exited"] == entries[row["parent_id"]]]


def exits_settle(*, now: datetime | None = None) -> int:
    """Mark done the strategy entries whose round trips closed and settled (final, their exits all
    final and together filled what the entry filled, none of them changed since ``before``), every
    account's, with an ``EXITS_DONE`` event each: step 4 stops reading them every minute. A batch at
    a time, each judged again under its entries' locks: safe to run again or side by side (an entry
    is marked once). Never a read of the whole table of orders. Returns how many it marked."""
    before = markets.date_start(markets.trading_date(now) - timedelta(days=SETTLED_AFTER_DAYS))
    pks = list(_unsettled_entries(before).order_by("pk").values_list("pk", flat=True))
    cause = _cause("exits", "its round trip closed and settled")
    marked = 0
    for start in range(0, len(pks), SETTLE_BATCH):
        with transaction.atomic():
            # Locked by primary key: a second marker waits, then finds them done.
            locked = {
                entry.pk: entry
                for entry in _unsettled_entries(before)
                .select_for_update()
                .filter(pk__in=pks[start : start + SETTLE_BATCH])
                .only("pk", "status", "filled_quantity")
            }
            done = _settled({pk: entry.filled_quantity for pk, entry in locked.items()}, before)
            Order.objects.filter(pk__in=done).update(exits_done=True)
            OrderEvent.objects.bulk_create(
                OrderEvent(order=e, kind=EXITS_DONE, from_status=e.status, to_status=e.status, cause=cause)
                for e in (locked[pk] for pk in done)
            )
        marked += len(done)
    return marked


def _recorded_fills():
    """An entry's fills recorded as trades (a fill and its position change commit together)."""
    fills = Trade.objects.filter(order_id=OuterRef("pk")).order_by().values("order_id")
    return Coalesce(Subquery(fills.annotate(total=Sum("quantity")).values("total")), 0)


def _position_of_entry():
    """The net quantity of an entry's account in its instrument and product (0 with no position)."""
    held = Position.objects.filter(
        account_id=OuterRef("account_id"), instrument_id=OuterRef("instrument_id"), product=OuterRef("product")
    )
    return Coalesce(Subquery(held.values("net_quantity")[:1]), 0)


def step_exits(ctx: Context) -> None:
    """Keep each filled strategy entry's SL (SL-M) and TP (LIMIT) at what it still holds.

    What an entry holds is what it filled less what its exits filled, and never more than the
    account holds on its side in the instrument and product (the position, shared by the
    entries in it newest first: a sale by hand closes the oldest first). Each role's live exits
    cover exactly that: a new fill of the entry, or an exit the broker refused, gets a new exit
    for the rest; an exit that filled (wholly or in part) shrinks the other role's exits, down
    to cancelling them when nothing is held (one cancels the other). An exit cancelled other
    than at the platform's own request is not placed again, unless the exchange ended it with
    its day: it goes back at its terms when orders trade again (``_ended_with_its_day``). An
    entry that can fill no more and holds nothing is done. Refusals, and exits cancelled at the
    broker (not by the trader through the platform), are the run's errors: the position is
    unprotected.
    """
    # The entries' recorded fills and their positions in one statement, so that they agree.
    entries = list(
        _filled_entries(account=ctx.account)
        .annotate(recorded=_recorded_fills(), position=_position_of_entry())
        .select_related("strategy", "instrument", "account")
        .order_by("-pk")
    )
    positions = {}
    for entry in entries:
        key = (entry.instrument_id, entry.product)
        positions.setdefault(key, entry.position)
    for entry in entries:
        # A fill the broker's book shows but its fill list has not brought yet (it lags, or the fill
        # came between a run's two reads) is not in the position: counted in as if it were, or a
        # newer entry would take an older one's share and strip its exits.
        unrecorded = entry.filled_quantity - entry.recorded
        if unrecorded > 0 and entry.instrument.exchange not in MULTIPLIED_EXCHANGES:
            key = (entry.instrument_id, entry.product)
            positions[key] += (1 if entry.side == "BUY" else -1) * unrecorded
    children = defaultdict(list)
    # With their recorded fills: an exit's fill the fill list brought (it is in the position) while the
    # book the run read does not show it yet (read before it came) counts as filled, or the position
    # would seem short of the entry's share and an older entry's exits would be taken for nothing held.
    exits_of = Order.objects.filter(parent__in=entries, role__in=EXIT_ROLES).annotate(recorded=_recorded_fills())
    for child in exits_of.order_by("pk"):
        children[child.parent_id].append(child)
    for entry in entries:
        # And the other way: an exit's fill the book shows but the fill list has not brought yet is
        # still in the position; counted out as if it were recorded, or an older entry would take
        # the share it closed and have its exits topped up for what the account no longer holds.
        unrecorded = sum(max(e.filled_quantity - e.recorded, 0) for e in children[entry.pk])
        if unrecorded > 0 and entry.instrument.exchange not in MULTIPLIED_EXCHANGES:
            key = (entry.instrument_id, entry.product)
            positions[key] -= (1 if entry.side == "BUY" else -1) * unrecorded
    for entry in entries:
        exits = children[entry.pk]
        side = 1 if entry.side == "BUY" else -1
        position = (entry.instrument_id, entry.product)
        on_side = max(side * positions.get(position, 0), 0)
        held = min(max(entry.filled_quantity - sum(_exit_filled(e) for e in exits), 0), on_side)
        positions[position] = positions.get(position, 0) - side * held  # what is left for older entries
        if (
            held == 0
            and entry.status in Order.FINAL
            and not any(e.status in Order.LIVE for e in exits)
            and entry.recorded >= entry.filled_quantity  # else its fill is not in the position yet
        ):
            over = sum(_exit_filled(e) for e in exits) - entry.filled_quantity
            if over > 0:  # both exits filled before one could cancel the other
                _run_error(
                    ctx,
                    f"both exits of {entry.reference} filled: {over} more than it held were "
                    f"{'sold' if side > 0 else 'bought'}, the position is reversed; close it by hand",
                )
            _exits_done_mark(entry, _cause("step 4", "nothing of it is held any more"))
            continue
        strategy = entry.strategy
        stopped_out = False  # a stop put back at market (the market opened beyond it): it closes what is held
        for role, amount, unit in (
            (Order.Role.STOP_LOSS, strategy.stop_loss, strategy.stop_loss_unit),
            (Order.Role.TAKE_PROFIT, strategy.take_profit, strategy.take_profit_unit),
        ):
            if stopped_out:
                ctx.act(f"no {role.replace('_', '-')} placed for {entry.reference} this run: its stop went at market")
                continue
            mine = [e for e in exits if e.role == role]
            live = [e for e in mine if e.status in Order.LIVE]
            covering = sum(e.quantity - _exit_filled(e) for e in live)
            if covering > held:
                _exits_shrink(ctx, live, covering - held, held)
            elif covering < held and amount:
                # Exits that ended with their day go back each for what it had (one per part the
                # entry filled in): all of them now, not one a run.
                while (placed := _exit_place(ctx, entry, role, mine, held - covering, amount, unit)) is not None:
                    mine.append(placed)
                    covering += placed.quantity
                    stopped_out = stopped_out or placed.order_type == "MARKET"
                    if covering >= held:
                        break


def _exit_filled(order: Order) -> int:
    """What an exit has filled: as the book says, or as its fills recorded say where they are ahead
    (``step_exits`` reads them with it; an exit placed this run has none)."""
    return max(order.filled_quantity, getattr(order, "recorded", 0))


def _exits_shrink(ctx: Context, live: list[Order], excess: int, held: int) -> None:
    """Take ``excess`` off an entry's live exits of one role, newest first: whole ones cancelled,
    the last one cut down. A failure stops here: the next cycle reads what happened."""
    # Its other exit filled, or the position was closed by hand: either way, this is what is held.
    why = "nothing is held any more" if held == 0 else f"only {held} are held now"
    for order in reversed(live):
        if excess <= 0:
            return
        remaining = order.quantity - _exit_filled(order)
        if remaining <= 0:
            continue  # filled, as its recorded fills say: nothing of it to cancel
        cause = _cause("step 4", why)
        try:
            if remaining <= excess:
                orders.order_cancel(order=order, actor=ctx.account.owner, cause=cause, by_trader=False)
                ctx.act(f"cancelled {order.reference}: {why}")
            else:
                cut_to = order.quantity - excess
                orders.order_modify(
                    order=order,
                    actor=ctx.account.owner,
                    cause=cause,
                    quantity=cut_to,
                    expect={"quantity": order.quantity},
                )
                ctx.act(f"cut {order.reference} to {cut_to}: {why}")
        except orders.OrderActionRefused as refused:
            if not _at_modification_cap(refused):
                _run_error(ctx, f"could not shrink {order.reference} ({why}): {refused.message}")
                return
            _cancel_and_replace(ctx, order, cause, step="4_exits", parent=order.parent, less=excess)
            return  # what the replacement covers is read by the next look
        except ValidationError as error:
            _run_error(ctx, f"could not shrink {order.reference} ({why}): {_refusal(error)}")
            return
        excess -= remaining


def _fill_average(entry: Order) -> Decimal:
    """The entry's average fill price: that of its fills recorded when they are all of them, else the
    broker's, else that of the fills recorded. Kite documents ``average_price`` for complete orders
    only: a partly filled one may say 0, or keep the one of fewer fills (``orders.services``). 0 when
    none is known: an exit priced from 0 would be a stop at 0 and a target that sells at once."""
    fills = list(entry.trades.values_list("quantity", "price"))
    held = sum(quantity for quantity, _ in fills)
    recorded = sum(quantity * price for quantity, price in fills) / held if held else Decimal(0)
    if held == entry.filled_quantity or entry.average_price <= 0:
        return recorded
    return Decimal(entry.average_price)


def _exit_place(ctx, entry: Order, role: str, mine: list[Order], missing: int, amount, unit) -> Order | None:
    """Place what ``entry`` misses of a ``role`` exit (``missing``), as ``step_exits`` says. Returns the
    exit placed, if one was (it may cover less than ``missing``: the replacement of one exit of several
    that ended with their day, another then owed), else None. A stop-loss whose trigger the market is
    already past goes at market (``_at_market_if_passed``)."""
    name = role.replace("_", "-")
    not_ours = [
        e
        for e in mine
        if e.status == Order.Status.CANCELLED and not (orders.cancel_asked_by_platform(e) or _cancelled_by_step_4(e))
    ]
    ended = {e: how for e in not_ours if (how := _ended_with_its_day(ctx, entry, e)) is not None}
    not_ours = [e for e in not_ours if e not in ended]
    # Cancelled by the trader (a page, the API, the broker's app) or the broker: not put back. What
    # they left uncovered is theirs; what the entry holds beyond it is not (another part's exit that
    # ended with its day, what the entry fills after the cancel), and is covered, as after a cut.
    theirs = sum(e.quantity - e.filled_quantity for e in not_ours)
    if not_ours and missing > theirs:
        missing -= theirs
    elif not_ours:
        # Unless the trader asked through the platform, nobody here saw it go: say it is unprotected.
        request = orders.last_cancel_request(not_ours[-1])
        if request is None or request.data.get("by") != "trader":
            _run_error(
                ctx,
                f"{entry.reference} holds {missing} without a {name}: {not_ours[-1].reference} was cancelled at"
                " the broker (in its own app, or by its risk system), not through the platform, so it is not"
                " placed again (place one, or close the position)",
            )
        return
    cut = {e: found for e in mine if (found := _cut_by_hand(e)) is not None}
    owed = _owed_exit(mine, ended)
    if owed is not None and ended.get(owed[0]) == ENDED_FILLS_UNKNOWN:
        _run_error(
            ctx,
            f"{entry.reference} holds {missing} without a {name}: {owed[0].reference} ended with its trading day"
            " while the platform was not reading the broker, and what it filled since our last look is not known"
            " (the broker lists today's orders only), so it is not placed again (check the position at the"
            " broker, then place one or close it)",
        )
        return
    if cut and owed is None:
        # Its quantity cut by the trader: what they left uncovered is theirs, not topped up again
        # (an exit cancelled past the cap to be replaced is still put back, below, for what it had);
        # what the entry fills after the cut is not, and is covered (``_left_by_hand``).
        # Unless they did it through the platform, nobody here saw it: say it is unprotected.
        left = _left_by_hand(entry, role, max(pk for _by, pk in cut.values()), missing)
        if left is not None and missing > left:
            missing -= left
            cut = {}
    if cut and owed is None:
        cut = {e: by for e, (by, _pk) in cut.items()}
        if "broker" in cut.values():
            order = next(e for e, by in cut.items() if by == "broker")
            _run_error(
                ctx,
                f"{entry.reference} holds {missing} without a {name}: {order.reference}'s quantity was cut at the"
                " broker, not through the platform, so it is not topped up (place one, or close the position)",
            )
        return
    closed = list(itertools.takewhile(_refused_as_closed, reversed(mine)))  # the latest tries', newest first
    # The latest tries refused in a row (one refused as closed neither counts nor breaks it): an exit
    # taken since (put back after its day, replaced) starts again, or refusals over a delivery
    # position's weeks would end its exits for good.
    refused = (e for e in reversed(mine) if not _refused_as_closed(e))
    rejected = list(itertools.takewhile(lambda e: e.status == Order.Status.REJECTED, refused))[::-1]
    if closed:
        wait_s = min(CLOSED_RETRY_S * 2 ** (len(closed) - 1), CLOSED_RETRY_MAX_S)
        if (timezone.now() - closed[0].updated_at).total_seconds() < wait_s:
            _run_error(
                ctx,
                f"{entry.reference} holds {missing} without a {name}: the broker refused {closed[0].reference} as its"
                f" market is closed (a holiday missing from EXCHANGE_HOLIDAYS?); placing again within {wait_s} s",
            )
            return
    if len(rejected) >= EXIT_ATTEMPTS:
        last = rejected[-1].reject_reason
        _run_error(ctx, f"{entry.reference} holds {missing} without a {name}: {len(rejected)} rejected (last: {last})")
        return
    failed = [e for e in mine if e.status == Order.Status.FAILED]
    if failed and not ctx.fetched:
        # One that failed may be at the broker after all: only this cycle's sync (which looks
        # for it by its tag) can tell, and it did not run.
        _run_error(ctx, f"{entry.reference} holds {missing} without a {name}: the broker's orders could not be read")
        return
    if listed := next((e for e in failed if _failed_but_listed(ctx, e)), None):
        _run_error(
            ctx,
            f"{listed.reference} ({name} of {entry.reference}) is at the broker after all, but could not be"
            " recorded this run: not placed again (the next run records it)",
        )
        return
    if mine and mine[-1].status == Order.Status.FAILED:
        wait_s = min(2 ** len(failed), EXIT_RETRY_MAX_S)
        if (timezone.now() - mine[-1].updated_at).total_seconds() < wait_s:
            _run_error(ctx, f"{entry.reference} holds {missing} without a {name}: placing again within {wait_s} s")
            return
    if owed is not None:
        # Cancelled past the cap to be replaced (a trail's new trigger), its broker closing it only
        # later, or ended with its day: put back as that replacement, which keeps the trail's
        # distance (``_placed``).
        replaced, owed = owed
        carried = replaced in ended
        if cut or carried:
            # For what it had, not more: the rest was the trader's to leave uncovered, or is another
            # exit's that ended with it (the entry filled in parts), which goes back as its own.
            missing = min(missing, replaced.quantity - replaced.filled_quantity)
        prices = {"order_type": replaced.order_type, "price": replaced.price, "trigger_price": replaced.trigger_price}
        prices.update(owed)
        key = f"{REPLACE_KEY.strip(':')}:{replaced.pk}"
        if tries := sum(_replaced_pk(e) == replaced.pk for e in mine):  # those refused (``_owed_exit``)
            key = f"{key}#{tries + 1}"
    else:
        carried = False
        average = _fill_average(entry)
        if average <= 0:
            _run_error(ctx, f"{entry.reference} holds {missing} without a {name}: its fill price is not known yet")
            return None
        distance = _offset(average, amount, unit)
        protective = (role == Order.Role.STOP_LOSS) == (entry.side == "BUY")
        exact = average - distance if protective else average + distance
        level = _on_tick(exact, entry.instrument.tick_size)
        if (level >= average) if protective else (level <= average):
            # Within half a tick of the entry (a 1 % stop of a 2.35 option on 0.05 ticks), rounded onto
            # its price: the stop would go at market at once, the take-profit sell at no profit. The
            # tick beyond it, on the exit's side.
            level = _on_tick(exact, entry.instrument.tick_size, ROUND_FLOOR if protective else ROUND_CEILING)
        if role == Order.Role.STOP_LOSS:
            prices = {"order_type": "SL-M", "trigger_price": level}  # an SL on an option (below)
        else:
            prices = {"order_type": "LIMIT", "price": level}
        key = f"exit:{entry.pk}:{role}:#{len(mine)}"  # the n-th exit of this role, however often a cycle looks
    what = f"{replaced.reference} ({name} of {entry.reference}) ended with its trading day" if carried else None
    if _exchange_shut(ctx, entry, what or f"a {name} for {entry.reference}"):
        return None
    side = "SELL" if entry.side == "BUY" else "BUY"
    if prices["order_type"] == "SL-M":
        # SL-M where the instrument takes it; on an option (Kite blocks SL-M there) an SL with its
        # limit a protection band beyond the trigger. An SL-M of an option placed before the rule
        # (a trail's replacement, one put back after its day) is put back so too, not refused each run.
        prices = {**prices, **orders.stop_loss_terms(entry.instrument, side, prices["trigger_price"])}
    prices = _at_market_if_passed(ctx, entry.instrument, role, side, f"{name} for {entry.reference}", prices)
    stop_limit = role == Order.Role.STOP_LOSS and prices["order_type"] == "SL" and prices.get("price") is not None
    if prices["order_type"] != "MARKET" and (
        stop_limit or not stop_market_allowed(entry.instrument) or _refused_for_band(mine)
    ):
        # Inside the circuit limits, or the exchange refuses it every run (a target beyond the band,
        # a stop's trigger under a narrow one, a wide stop's protection band under the lower limit,
        # one put back on a day whose limits moved) until step 4 gives up, the exit lost. Asked for
        # an option's exits (its stop asks anyway) and, elsewhere, only once the exchange refused
        # the exit for its band: no quote call before an ordinary exit.
        circuit = _circuit(ctx, entry.instrument)
        try:
            if stop_limit:
                # Its limit held inside them.
                prices["price"] = orders.stop_limit_in_circuit(
                    entry.instrument, side, prices["trigger_price"], prices["price"], circuit
                )
            elif role == Order.Role.TAKE_PROFIT and prices["order_type"] == "LIMIT":
                # One the market has gone past (a long's target under the lower limit) goes at the
                # limit, a better price than the trader's, and trades at the market: not left
                # waiting for limits that may never come back to it.
                level = prices["price"]
                prices["price"] = orders.take_profit_in_circuit(entry.instrument, side, level, circuit)
                if prices["price"] != level:
                    ctx.act(
                        f"{name} for {entry.reference} sent at {prices['price']}, today's circuit limit: the market"
                        f" is already past its level {level}"
                    )
            else:
                orders.exit_in_circuit_check(
                    entry.instrument,
                    price=prices.get("price"),
                    trigger_price=prices.get("trigger_price"),
                    circuit=circuit,
                )
        except ValidationError as error:
            # Its price or trigger outside them: the market cannot trade there while they hold. Kept
            # at the trader's level (not moved to the limit, which would trade at the circuit), not
            # sent (so not another refusal toward giving up), and placed by the run that finds the
            # limits widened to it (intraday, or the next day's).
            _run_error(
                ctx, f"{entry.reference} holds {missing} without a {name}: {_refusal(error)} Placed when they reach it."
            )
            return None
    # A replacement past the cap, or an exit that ended with its day put back, is placed under the
    # replaced exit's change lock, as a trader's cancel of it takes it: one asked since the step read
    # it (the exit closed, not put back yet) means none is.
    replacing = owed is not None
    with orders.order_change_held(replaced) if replacing else contextlib.nullcontext(True) as took:
        if not took:
            ctx.act(f"{replaced.reference} is being changed or cancelled meanwhile: not replaced this run")
            return None
        if replacing and not carried and not orders.replacement_owed(replaced):
            ctx.act(f"{replaced.reference} was cancelled by the trader meanwhile: not replaced")
            return None
        if carried and _ended_with_its_day(ctx, entry, replaced) is None:
            ctx.act(f"{replaced.reference} was cancelled by the trader meanwhile: not put back")
            return None
        try:
            placed = orders.order_place(
                actor=ctx.account.owner,
                account=ctx.account,
                instrument=entry.instrument,
                side=side,
                quantity=missing,
                product=entry.product,
                source=Order.Source.SYSTEM,
                role=role,
                parent=entry,
                strategy=entry.strategy,
                cause=_cause("step 4", f"{name} for {entry.reference}"),
                idempotency_key=key,
                **prices,
            )
        except ValidationError as error:
            _run_error(ctx, f"could not place a {name} for {entry.reference}: {_refusal(error)}")
            return
    if placed.status in (Order.Status.REJECTED, Order.Status.FAILED):
        _run_error(ctx, f"{name} {placed.reference} for {entry.reference} {placed.status}: {placed.reject_reason}")
        return None
    trails = entry.strategy.trailing_step is not None and placed.trigger_price is not None
    if trails and owed is None and not getattr(placed, "replayed", False):
        _trail_distance_keep(placed, average)
    ctx.act(f"placed {name} {placed.reference} for {entry.reference}")
    return placed


def _owed_exit(mine: list[Order], ended: dict[Order, str]) -> tuple[Order, dict] | None:
    """The newest of an entry's exits of one role cancelled past the cap to be replaced, or
    ``ended`` with its trading day, and not replaced yet, with the terms owed (``_owed_terms``;
    an ended one's own). Not only the last one: a newer exit of the role still live (the entry
    filled in parts, one exit per part) must not hide it, or what it covered would go back at the
    first level, loosening what a trail had tightened. Nor does a replacement the broker refused or
    that never reached it: the next is that replacement again (its key counting the tries)."""
    refused = (Order.Status.REJECTED, Order.Status.FAILED)
    replaced = {_replaced_pk(e) for e in mine if e.status not in refused}
    for order in reversed(mine):
        if order.status == Order.Status.CANCELLED and order.pk not in replaced:
            terms = {} if order in ended else _owed_terms(order)
            if terms is not None:
                return order, terms
    return None


# How an exit that was cancelled at the broker ended (``_ended_with_its_day``).
ENDED, ENDED_FILLS_UNKNOWN = "ended", "ended, its last fills unknown"


def _ended_with_its_day(ctx: Context, entry: Order, order: Order) -> str | None:
    """Whether the exchange closed ``order``, a DAY exit of ``entry`` still resting, at its day's end: its broker
    had it cancelled when the DAY orders of the day it was placed end (``Broker.day_orders_end``:
    Kite's at the exchange's close; by the broker's time where it gives one, else when the platform
    saw it), and nobody asked for a cancel through the platform. ``ENDED``; ``ENDED_FILLS_UNKNOWN``
    when the platform closed it itself on a later day, its broker no longer listing it (what it
    filled after the platform's last look is not known); None when it was cancelled some other way
    (in the broker's app, by its risk system: before then). A trader's cancel in the broker's app
    after the close is taken for the day's end. A cancel asked through the platform during the day
    that the broker refused or that failed (a rate limit, a trail's cancel-and-replace) closed
    nothing: the order rested on, and the day's end closed it."""
    if order.validity != "DAY":
        return None
    event = order.events.filter(kind="cancelled").order_by("-pk").first()
    if event is None:
        return None
    data = event.data or {}
    at = datetime.fromisoformat(data[orders.BROKER_AT]) if orders.BROKER_AT in data else event.created_at
    broker = registry.get(ctx.account.broker)
    day_end = broker.day_orders_end(entry.instrument.exchange, markets.trading_date(order.created_at))
    if at < day_end:
        return None
    request = orders.last_cancel_request(order)
    if request is not None and (request.created_at >= day_end or not orders.cancel_did_not_take(order, request)):
        return None  # asked for (after the close too: the trader wants it gone, whatever the answer)
    return ENDED_FILLS_UNKNOWN if data.get(orders.FILLS_UNKNOWN) else ENDED


def _exchange_shut(ctx: Context, entry: Order, what: str) -> bool:
    """Whether the entry's exchange is shut now, as the account's broker trades it (an order sent
    now would be refused, and three refusals end an exit's attempts: an entry filled just before
    the close would go unprotected for good). The run then says when ``what`` is placed."""
    exchange = entry.instrument.exchange
    now = timezone.now()
    at = registry.get(ctx.account.broker).next_open(exchange, now)
    if at <= now:
        return False
    ctx.act(f"{what}: placed at {exchange}'s open, {at.astimezone(markets.IST):%a %d %b %H:%M} IST")
    return True


def _at_market_if_passed(ctx: Context, instrument, role: str, side: str, what: str, prices: dict) -> dict:
    """``prices`` of a stop-loss about to be placed, or MARKET's when the last price is already at or
    beyond its trigger: the market opened beyond a stop carried overnight, fell through a fresh stop's
    level before it was placed, or through a trail's new trigger before its replacement was. A stop
    would have fired there had it rested; sent as a stop, the broker refuses it (a sell's trigger must
    be under the last price), and three refusals leave the position unprotected as it loses."""
    trigger = prices.get("trigger_price")
    last = ctx.last_prices.get((instrument.exchange, instrument.tradingsymbol))
    if role != Order.Role.STOP_LOSS or prices.get("order_type") not in ("SL", "SL-M") or not trigger or not last:
        return prices
    if (last > trigger) if side == "SELL" else (last < trigger):  # a long's stop sells under the market
        return prices
    ctx.act(f"{what} sent at market: the last price {last} is past its trigger {trigger}")
    return {**prices, "order_type": "MARKET", "price": None, "trigger_price": None}


def _changed_by_hand(order: Order, field: str, *, step: str, since_pk: int = 0) -> tuple[str, int] | None:
    """Who last changed the order's ``field`` other than the cycle's ``step`` (after event
    ``since_pk``): "trader" (a page, the API: the platform's modify), "broker" (found changed
    there: the broker's own app), or None; with that change's event id."""
    own = _cause(step, "")
    events = order.events.filter(kind__in=("modified", "modify_unknown"), pk__gt=since_pk).order_by("pk")
    found, lost = None, None  # lost: what the step's latest modify whose answer was lost asked
    for pk, kind, cause, data in events.values_list("pk", "kind", "cause", "data"):
        if cause.startswith(own):
            if kind == "modify_unknown":
                lost = (data or {}).get(field)
            continue
        if kind != "modified":
            continue
        if field in (data or {}):
            found = ("trader", pk)
        elif field in (data or {}).get(orders.CHANGED_AT_BROKER, {}):
            # Found at the broker as the step's own lost modify asked (the order has it now): its own.
            if lost is None or Decimal(str(lost)) != Decimal(str(getattr(order, field))):
                found = ("broker", pk)
    return found


# What step 4 notes on an entry the first time it finds one of its exits cut by hand: how much the
# cut left uncovered. That is the trader's; what the entry fills after it is not, and is covered.
CUT_NOTED = "exit_cut_noted"


def _left_by_hand(entry: Order, role: str, cut_pk: int, missing: int) -> int | None:
    """How much of ``entry``'s position the trader left without a ``role`` exit by the latest cut
    by hand (event ``cut_pk``), as step 4 found it at its first look after that cut (noted then:
    ``missing``, and None returned). Shares the entry fills afterwards are the rest of ``missing``."""
    notes = entry.events.filter(kind=CUT_NOTED, pk__gt=cut_pk).order_by("-pk").values_list("data", flat=True)
    noted = next((data for data in notes if (data or {}).get("role") == role), None)
    if noted is None:
        why = f"a {role.replace('_', '-')} was cut by hand, leaving {missing} uncovered"
        orders.order_event_add(entry, CUT_NOTED, cause=_cause("step 4", why), data={"role": role, "left": missing})
        return None
    return int(noted["left"])


def _cut_by_hand(order: Order) -> tuple[str, int] | None:
    """Who changed an exit's quantity other than step 4 (which keeps it at what is held), and when."""
    return _changed_by_hand(order, "quantity", step="step 4")


def _refusal(error: Exception) -> str:
    """What a ValidationError or an OrderActionRefused says, as one line."""
    return " ".join(getattr(error, "messages", None) or [str(getattr(error, "message", error))])


# Why ``still_open_check`` refused an entry by the trader's doing since the run read its strategy.
STRATEGY_CHANGED_MEANWHILE = {
    "paused": "its strategy was paused meanwhile",
    "off_strategy": "its account was taken off its strategy meanwhile",
}


def _stopped_meanwhile(refused: ValidationError) -> str | None:
    """What the trader did to an entry's strategy since the run read it, refused for it
    (``still_open_check``): their pause, or the account taken off it; None for any other refusal."""
    codes = [error.code for error in getattr(refused, "error_dict", {}).get("strategy", [])]
    return next((STRATEGY_CHANGED_MEANWHILE[code] for code in codes if code in STRATEGY_CHANGED_MEANWHILE), None)


def _cancelled_by_step_4(order: Order) -> bool:
    """An exit step 4 cancelled before cancels were recorded as asked (``cancel_requested``); not one
    the trader asked to cancel since (step 4 cancelled it past the cap, to place it again cut down)."""
    request = orders.last_cancel_request(order)
    if request is not None and request.data.get("by") == "trader":
        return False
    return order.events.filter(kind="cancelled", cause__startswith=_cause("step 4", "")).exists()


def _run_error(ctx: Context, text: str, *, step: str = "4_exits") -> None:
    """What the trader must see (a position left unprotected): the run's error on the monitoring
    page, not just an action."""
    ctx.act(text)
    ctx.errors.append({"step": step, "error": text[:500]})


# --- 5. Chase toward a fair price ----------------------------------------------------------------

BROKER_MODIFICATION_CAP = 25


REPLACE_KEY = ":replace:"
# The end of the cause of a cancel asked so that an order past the cap can be replaced.
CAP_REACHED = "the modification cap is reached"


def _replaced_pk(order: Order) -> int | None:
    """The id of the order ``order`` replaced (its key names it, then maybe ``#<try>``), if it is a replacement."""
    key = order.idempotency_key or ""
    if REPLACE_KEY not in key:
        return None
    return int(key.rsplit(REPLACE_KEY, 1)[1].split("#", 1)[0])


def _replaced(order: Order) -> Order | None:
    """The order ``order`` replaced (``_cancel_and_replace``, ``_owed_exit``), if it is a replacement."""
    pk = _replaced_pk(order)
    return None if pk is None else Order.objects.filter(pk=pk, account_id=order.account_id).first()


def _refused_as_closed(order: Order) -> bool:
    return order.status == Order.Status.REJECTED and order.reject_kind == RejectKind.MARKET_CLOSED


def _refused_for_band(mine: list[Order]) -> bool:
    """Whether the exchange refused the latest try of an entry's exit of one role (``mine``: oldest
    first; one refused as closed, or that never reached the broker, tells nothing of its price) for
    the price band: its price or trigger outside the instrument's circuit limits that day."""
    tried = next((e for e in reversed(mine) if e.status != Order.Status.FAILED and not _refused_as_closed(e)), None)
    return tried is not None and tried.status == Order.Status.REJECTED and tried.reject_kind == RejectKind.PRICE_BAND


def _owed_terms(order: Order) -> dict | None:
    """What the platform meant to place instead of ``order`` when it cancelled it past the cap
    (the terms to change, maybe none), or None when no replacement is owed: it did not cancel it
    so, or the trader asked for a cancel since."""
    request = orders.last_cancel_request(order)
    if request is None or request.data.get("by") != "platform" or "replace" not in request.data:
        return None
    return {name: Decimal(value) for name, value in request.data["replace"].items()}


def _at_modification_cap(refused: Exception) -> bool:
    """A modify the broker refused because the order was modified as often as it allows."""
    cause = refused.__cause__
    return isinstance(cause, OrderRejected) and cause.kind == RejectKind.MODIFICATION_CAP


def _stood_for(order: Order) -> Order | None:
    """The order ``order`` stands for, if any: the one it replaced (``_cancel_and_replace``),
    retried (step 9: its key names the refused order, as a replacement's does) or re-entered
    (step 8: placed at that entry's price, maybe chased already: chased again from there, each
    re-entry would take the entry another cap past the first price)."""
    key = order.idempotency_key or ""
    for named in (RETRY_KEY, REENTRY_KEY):
        if named in key:
            return Order.objects.filter(pk=int(key.rsplit(named, 1)[1]), account_id=order.account_id).first()
    return _replaced(order)


def _placed(order: Order, field: str) -> Decimal:
    """A price as the order was first placed (kept in its "created" event); for a replacement
    (``_cancel_and_replace``), a retry (step 9) or a re-entry (step 8), as the order it stands for
    was, back to the first: a retry of a replacement placed at the chase's cap, or a re-entry of an
    entry chased to it, is chased no further than that cap."""
    while (earlier := _stood_for(order)) is not None:
        order = earlier
    created = order.events.filter(kind="created").first()
    value = (created.data or {}).get(field) if created else None
    return Decimal(value) if value else getattr(order, field)


def _chased(**where):
    return Order.objects.filter(
        **where,
        role=Order.Role.ENTRY,
        order_type="LIMIT",
        status__in=[Order.Status.SUBMITTED, Order.Status.OPEN, Order.Status.PARTIALLY_FILLED],
        broker_order_id__isnull=False,
        strategy__chase_after_s__isnull=False,
        strategy__is_active=True,  # a paused strategy opens nothing new: its entries are not chased
    ).filter(_on_its_strategy("strategy_id"))  # nor one on an account the trader took off it


# How long a chased entry cancelled past the cap stays owed its replacement (``_chase_owed``).
CHASE_OWED_S = 6 * 3600


def _chase_owed(**where):
    """Chased entries cancelled past the modification cap and not replaced yet: the broker had not
    closed them when they were cancelled (a cancel pending at Kite, or its answer lost), so the
    replacement waited (``_cancel_and_replace``), or its replacement never reached the broker
    (FAILED: the platform cancelled the trader's entry, it owes it back, ``_replace_again_due``),
    unless step 9 retried that one (before it was so). Only recent ones: a chase is an intraday matter."""
    retried = Order.objects.filter(parent=OuterRef("pk"))
    replaced = Order.objects.filter(parent=OuterRef("pk"), idempotency_key__contains=REPLACE_KEY).filter(
        ~Q(status=Order.Status.FAILED) | Exists(retried)
    )
    return (
        Order.objects.filter(
            **where,
            role=Order.Role.ENTRY,
            order_type="LIMIT",
            status=Order.Status.CANCELLED,
            filled_quantity__lt=F("quantity"),
            strategy__chase_after_s__isnull=False,
            strategy__is_active=True,  # nor replaced
            updated_at__gte=timezone.now() - timedelta(seconds=CHASE_OWED_S),
            events__kind="cancel_requested",
            events__cause__endswith=CAP_REACHED,
        )
        .exclude(Exists(replaced))
        .filter(_on_its_strategy("strategy_id"))  # nor on an account taken off it
    )


# A chased entry's replacement that never reached the broker is placed again after this long,
# twice as long after each failure, EXIT_ATTEMPTS times at most.
REPLACE_AGAIN_S = 30


def _replace_again_due(ctx: Context, order: Order, failed: list[Order]) -> bool:
    """Whether the replacement of chased ``order`` is placed again now, its earlier ones ``failed``
    (oldest first): by a cycle that could read the broker's orders (its sync looks for them by tag:
    one may be there after all), after the wait. Beyond the attempts, the run says so."""
    if len(failed) >= EXIT_ATTEMPTS:
        _run_error(
            ctx,
            f"{order.reference} was cancelled past the modification cap and its replacement failed"
            f" {len(failed)} times (last: {failed[-1].reject_reason}): it is not placed again",
            step="5_chase",
        )
        return False
    if not ctx.fetched:
        return False
    if any(_failed_but_listed(ctx, replacement) for replacement in failed):
        _run_error(
            ctx,
            f"{order.reference}'s replacement is at the broker after all, but could not be recorded this run:"
            " not placed again (the next run records it)",
            step="5_chase",
        )
        return False
    wait_s = REPLACE_AGAIN_S * 2 ** (len(failed) - 1)
    return (timezone.now() - failed[-1].updated_at).total_seconds() >= wait_s


def _chase_target(ctx: Context, order: Order) -> tuple[Decimal, Decimal | None, Decimal] | None:
    """(the price a chase moves the order to, its cap, the last price), or None with no last price:
    the last price on its tick, no further from the first order's price than the strategy's cap."""
    last = ctx.last_prices.get((order.instrument.exchange, order.instrument.tradingsymbol))
    if last is None:
        return None
    strategy, tick = order.strategy, order.instrument.tick_size
    original = _placed(order, "price")
    caps = []
    if strategy.chase_max_ticks:
        caps.append(strategy.chase_max_ticks * tick)
    if strategy.chase_max_percent:
        caps.append(original * strategy.chase_max_percent / 100)
    cap = min(caps) if caps else None
    target = _on_tick(last, tick)
    if cap is not None:
        # The cap's last price on a tick is the one within it (down for a buy, up for a sell): rounded
        # half up, a percent cap (0.02 % of 1499.00 is 0.2998) would be passed by up to half a tick.
        target = (
            min(target, _on_tick(original + cap, tick, ROUND_FLOOR))
            if order.side == "BUY"
            else max(target, _on_tick(original - cap, tick, ROUND_CEILING))
        )
    return target, cap, last


def step_chase(ctx: Context) -> None:
    """Move open LIMIT entries older than the chase delay toward the last price, within the cap;
    not one the trader re-priced by hand.

    Past the broker's modification cap the order is cancelled and replaced; one whose broker had
    not closed it then is replaced once it has.
    """
    for order in _chase_owed(account=ctx.account).select_related("strategy", "instrument", "account").distinct():
        if _owed_terms(order) is None:  # the trader cancelled it since: nothing is owed
            continue
        chase = _chase_target(ctx, order)
        price = chase[0] if chase else order.price
        failed = list(order.children.filter(idempotency_key__contains=REPLACE_KEY, status=Order.Status.FAILED))
        if failed and not _replace_again_due(ctx, order, failed):
            continue
        cause = _cause("step 5", "replacing an entry cancelled past the cap, now closed at the broker")
        _replace_closed(ctx, order, cause, step="5_chase", parent=order, tries=len(failed), price=price)
    now = timezone.now()
    candidates = _chased(account=ctx.account).select_related("strategy", "instrument", "account")
    for order in candidates:
        if _changed_by_hand(order, "price", step="step 5") is not None:
            # The trader re-priced it (a page, the API, the broker's app): it is theirs now, left
            # at their price, not chased back toward the market (as a stop moved by hand is not
            # pulled back by the trail).
            continue
        last_move = order.events.filter(kind="modified").order_by("-created_at").first()
        since = last_move.created_at if last_move else (order.submitted_at or order.created_at)
        if (now - since).total_seconds() < order.strategy.chase_after_s:
            continue
        chase = _chase_target(ctx, order)
        if chase is None:
            continue
        target, cap, last = chase
        moves_toward = target > order.price if order.side == "BUY" else target < order.price
        if not moves_toward:
            continue
        cause = _cause("step 5", f"chasing toward {last} (cap {cap})")
        if order.chase_count < BROKER_MODIFICATION_CAP - 1:
            try:
                orders.order_modify(
                    order=order,
                    actor=ctx.account.owner,
                    cause=cause,
                    price=target,
                    expect={"price": order.price},
                    opens=True,
                )
            except orders.OrderActionRefused as refused:
                if _at_modification_cap(refused):  # the trader's own modifies used the cap up
                    _cancel_and_replace(ctx, order, cause, step="5_chase", parent=order, price=target)
                else:
                    ctx.act(f"could not chase {order.reference}: {refused.message}")
                continue
            except ValidationError as error:
                if why := _stopped_meanwhile(error):  # by the trader, since the step read it: not the run's error
                    ctx.act(f"{order.reference} is not chased: {why}")
                else:
                    ctx.act(f"could not chase {order.reference}: {_refusal(error)}")
                continue
            Order.objects.filter(pk=order.pk).update(chase_count=order.chase_count + 1)
            ctx.act(f"chased {order.reference} to {target}")
        else:
            _cancel_and_replace(ctx, order, cause, step="5_chase", parent=order, price=target)


def _cancel_and_replace(
    ctx: Context, order: Order, cause: str, *, step: str, parent: Order, less: int = 0, **terms
) -> Order | None:
    """The way past the broker's modification cap: cancel ``order`` and place one like it, with
    ``terms`` (prices) changed, for what it had not filled, ``less`` fewer (``_replace_closed``).
    The replacement is checked first: one that would be refused cancels nothing. Failures are
    the run's errors, but for a cancel refused (it filled meanwhile: the next cycle sees it)."""
    try:
        remaining = order.quantity - order.filled_quantity - less
        # As ``order_place`` will check it: an entry is not put back for a deactivated trader.
        orders.owner_check(ctx.account.owner, order.role)
        orders.order_check(
            actor=ctx.account.owner,
            account=ctx.account,
            instrument=order.instrument,
            side=order.side,
            quantity=max(remaining, 1),
            product=order.product,
            validity=order.validity,
            # An exit's replacement closes what it covered, as the exit did: not held to the limits
            # on what an order may open (a stop trailed up is worth more than the entry was).
            closing=orders.closes_position(order.role, order.parent_id),
            **{"order_type": order.order_type, "price": order.price, "trigger_price": order.trigger_price, **terms},
        )
    except ValidationError as error:
        _run_error(ctx, f"could not replace {order.reference}: {_refusal(error)}", step=step)
        return None
    owed = {"replace": {name: str(value) for name, value in terms.items() if value is not None}}
    # As a step's modify: not sent when the trader changed the order since it was read (a chase or a
    # trail worked out from its old price would cancel and replace the trader's new one).
    as_read = {name: getattr(order, name) for name in ("quantity", "price", "trigger_price", "order_type")}
    try:
        orders.order_cancel(
            order=order,
            actor=ctx.account.owner,
            cause=f"{cause}; {CAP_REACHED}",
            by_trader=False,
            data=owed,
            expect=as_read,
        )
    except orders.OrderActionRefused as refused:
        ctx.act(f"could not replace {order.reference}: {refused.message}")
        return None
    return _replace_closed(ctx, order, cause, step=step, parent=parent, less=less, **terms)


def _replace_closed(
    ctx: Context, order: Order, cause: str, *, step: str, parent: Order, less: int = 0, tries: int = 0, **terms
) -> Order | None:
    """Place the replacement of a cancelled ``order`` once its broker has closed it (else it may
    still fill: nothing now). Its key names the order it replaces (and the try, after ``tries``
    that never reached the broker), so a cycle run twice places one, and ``_placed`` follows it
    back to the first. ``parent``: the replacement's (a chased entry's is the order it replaces,
    an exit's its entry)."""
    # What filled before the cancel took may not be recorded yet: the broker's word on it first.
    try:
        state = ctx.broker.order(order.broker_order_id)
        orders.order_apply_broker_state(order, state, cause=cause)
    except BrokerError as error:
        _run_error(ctx, f"could not replace {order.reference}: its fills are not known ({error})", step=step)
        return None
    if state.status not in BrokerStatus.FINAL:
        # The broker took the request but has not closed the order (a cancel pending at Kite): it
        # may still fill. A cancelled exit is put back by step 4, a chased entry by step 5.
        ctx.act(f"{order.reference}'s cancel is pending at the broker ({state.status}); not replaced yet")
        return None
    order.refresh_from_db()
    quantity = order.quantity - order.filled_quantity - less
    if quantity <= 0:
        return None
    terms = {"order_type": order.order_type, "price": order.price, "trigger_price": order.trigger_price, **terms}
    terms = _at_market_if_passed(
        ctx, order.instrument, order.role, order.side, f"{order.reference}'s replacement", terms
    )
    # Under the order's change lock, as a trader's cancel of it takes it: one asked since the step's
    # (the order already closed, its replacement not placed yet) means nothing is placed for it.
    with orders.order_change_held(order) as took:
        if not took:
            ctx.act(f"{order.reference} is being changed or cancelled meanwhile: not replaced this run")
            return None
        if not orders.replacement_owed(order):
            ctx.act(f"{order.reference} was cancelled by the trader meanwhile: not replaced")
            return None
        return _replacement_place(ctx, order, cause, step=step, parent=parent, quantity=quantity, tries=tries, **terms)


def _replacement_place(
    ctx: Context, order: Order, cause: str, *, step: str, parent: Order, quantity: int, tries: int, **terms
) -> Order | None:
    """Place ``order``'s replacement (``_replace_closed``) for ``quantity``, at ``terms``."""
    try:
        replacement = orders.order_place(
            actor=ctx.account.owner,
            account=ctx.account,
            instrument=order.instrument,
            side=order.side,
            quantity=quantity,
            product=order.product,
            source=Order.Source.SYSTEM,
            role=order.role,
            parent=parent,
            strategy=order.strategy,
            cause=cause,
            idempotency_key=f"{REPLACE_KEY.strip(':')}:{order.pk}" + (f"#{tries + 1}" if tries else ""),
            # It stands for the order it replaces: a retry or a re-entry still, with its count.
            retry_count=order.retry_count,
            reentry_count=order.reentry_count,
            **terms,
        )
    except ValidationError as error:
        if why := _stopped_meanwhile(error):  # by the trader, since the step read it: not the run's error
            ctx.act(f"{order.reference} is not replaced: {why}")
        else:
            _run_error(ctx, f"could not replace {order.reference}: {_refusal(error)}", step=step)
        return None
    if replacement.status in (Order.Status.REJECTED, Order.Status.FAILED):
        _run_error(
            ctx,
            f"{order.reference}'s replacement {replacement.reference} {replacement.status}: "
            f"{replacement.reject_reason}",
            step=step,
        )
    else:
        ctx.act(f"replaced {order.reference} with {replacement.reference}")
    return replacement


# --- 6. Trailing stops ---------------------------------------------------------------------------


def _trailing_stops(**where):
    # Not one that triggered: the broker holds it as the plain order it became, whose trigger can no
    # longer change (``orders.services._modify`` refuses it; tried each minute it was refused each time).
    return Order.objects.filter(
        **where,
        role=Order.Role.STOP_LOSS,
        status__in=Order.AT_BROKER,
        triggered_at__isnull=True,
        broker_order_id__isnull=False,
        strategy__trailing_step__isnull=False,
        parent__isnull=False,
    )


# What step 6 notes on a stop it finds moved by hand: the distance the trail keeps from then on.
TRAIL_DISTANCE = "trail_distance"


def _trail_distance_keep(stop: Order, average: Decimal) -> None:
    """Note how far from its entry's average a trailing stop was placed: the distance it trails at
    (``_trail_distance``). The entry's average moves when it fills more at other prices (a chased
    entry fills higher): measured from that, the stop would trail further behind than it was placed."""
    data = {"distance": str(abs(average - stop.trigger_price)), "trigger_price": str(stop.trigger_price)}
    orders.order_event_add(stop, TRAIL_DISTANCE, cause=_cause("step 4", "the distance it trails at"), data=data)


def _moved_by_hand(stop: Order, since_pk: int) -> bool:
    """Whether the stop's trigger was changed other than by the trail after event ``since_pk``: by
    the trader through the platform (a page, the API) or in the broker's own app (found changed)."""
    return _changed_by_hand(stop, "trigger_price", step="step 6", since_pk=since_pk) is not None


def _trail_distance(ctx: Context, stop: Order, last: Decimal) -> Decimal | None:
    """How far behind the last price a stop trails: as the strategy placed it (the entry's average
    then to the stop's first trigger, noted when it was placed: ``_trail_distance_keep``), or, once
    the trader has moved the stop by hand, as far as they put it from the market. That one is taken
    at the first look after the move (or the next, when the market had passed the stop's new
    trigger since its last price was read), which does not move the stop: measured from the
    strategy's distance, a stop loosened by hand would be pulled straight back, undoing what the
    trader did. ``None``: not trailed this run."""
    chain = [stop]
    while (replaced := _replaced(chain[-1])) is not None:
        chain.append(replaced)
    note = OrderEvent.objects.filter(order__in=chain, kind=TRAIL_DISTANCE).order_by("-pk").first()
    if not _moved_by_hand(stop, note.pk if note else 0):
        if note is not None:
            return Decimal(note.data["distance"])
        return abs(_fill_average(stop.parent) - _placed(stop, "trigger_price"))
    distance = last - stop.trigger_price if stop.side == "SELL" else stop.trigger_price - last
    if distance <= 0:
        # The last price was read before the move and the market has passed it since (a stop at or
        # beyond the market would have fired): no distance to keep. The next run measures it.
        return None
    data = {"distance": str(distance), "trigger_price": str(stop.trigger_price)}
    orders.order_event_add(stop, TRAIL_DISTANCE, cause=_cause("step 6", "the stop was moved by hand"), data=data)
    ctx.act(f"{stop.reference} was moved by hand to {stop.trigger_price}: it trails {distance} from the market now")
    return None


def step_trail(ctx: Context) -> None:
    """Open stop-losses with a trailing step follow favourable moves, a step at a time, never back;
    a stop the trader moved by hand trails on from where they put it (``_trail_distance``)."""
    stops = _trailing_stops(account=ctx.account).select_related("strategy", "instrument", "account", "parent")
    for stop in stops:
        last = ctx.last_prices.get((stop.instrument.exchange, stop.instrument.tradingsymbol))
        if last is None or stop.trigger_price is None:
            continue
        step = stop.strategy.trailing_step
        distance = _trail_distance(ctx, stop, last)
        if distance is None:
            continue
        long_position = stop.side == "SELL"
        wanted = last - distance if long_position else last + distance
        moved = (wanted - stop.trigger_price) if long_position else (stop.trigger_price - wanted)
        steps = int(moved // step)
        if steps < 1:
            continue
        # On the tick toward the stop's own side (down for a long's, up for a short's), as
        # ``_chase_target`` caps a chase: half up could bring it up to half a tick closer than the
        # distance the trader set. A step smaller than a tick may round back to where it is: not sent.
        if long_position:
            new_trigger = _on_tick(stop.trigger_price + steps * step, stop.instrument.tick_size, ROUND_FLOOR)
        else:
            new_trigger = _on_tick(stop.trigger_price - steps * step, stop.instrument.tick_size, ROUND_CEILING)
        if new_trigger == stop.trigger_price:
            continue
        moves = {"trigger_price": new_trigger}
        try:
            if stop.order_type == "SL-M" and not stop_market_allowed(stop.instrument):
                # An option's SL-M placed before the rule (the paper exchange took it then): refused as
                # it is, so trailed as the SL it is put back as (``_exit_place``), its band under it.
                moves = orders.stop_loss_terms(stop.instrument, stop.side, new_trigger, _circuit(ctx, stop.instrument))
            elif stop.order_type == "SL" and stop.price is not None:
                # A stop-loss limit (an option's) moves its limit with its trigger, the band between them
                # kept (left behind, a trailed stop would fill ever further under its trigger), and never
                # narrower than the protection band (``stop_limit_price``): one the circuit limits
                # narrowed when it was placed (its limit at the limit, even at its trigger) widens again
                # once it trails away from them, else a gap through it leaves it unfilled. Inside the
                # circuit limits, as step 4 placed it.
                kept = stop.price + (new_trigger - stop.trigger_price)
                banded = orders.stop_limit_price(stop.instrument, stop.side, new_trigger)
                moves["price"] = orders.stop_limit_in_circuit(
                    stop.instrument,
                    stop.side,
                    new_trigger,
                    min(kept, banded) if long_position else max(kept, banded),
                    _circuit(ctx, stop.instrument),
                )
        except ValidationError as error:  # the new trigger outside the limits: the stop stays where it is
            ctx.act(f"could not trail {stop.reference}: {_refusal(error)}")
            continue
        cause = _cause("step 6", f"trailing: last {last}, step {step}")
        try:
            orders.order_modify(
                order=stop,
                actor=ctx.account.owner,
                cause=cause,
                **moves,
                expect={"trigger_price": stop.trigger_price, "price": stop.price},
            )
        except orders.OrderActionRefused as refused:
            if _at_modification_cap(refused):
                _cancel_and_replace(ctx, stop, cause, step="6_trail", parent=stop.parent, **moves)
            else:
                ctx.act(f"could not trail {stop.reference}: {refused.message}")
            continue
        except ValidationError as error:
            ctx.act(f"could not trail {stop.reference}: {_refusal(error)}")
            continue
        ctx.act(f"trailed {stop.reference} to {new_trigger}")


# --- 7. Rejected orders -------------------------------------------------------------------------


def _dependants_of_rejected(**where):
    """Live orders whose parent was rejected or failed; not its retries (step 9), which replace it,
    nor what hangs on a parent refused after part filled (its exits, its re-entry): what it filled
    is held, and step 4 keeps its exits at that."""
    return Order.objects.filter(
        **where,
        parent__status__in=[Order.Status.REJECTED, Order.Status.FAILED],
        parent__filled_quantity=0,
        status__in=Order.AT_BROKER,
    ).exclude(idempotency_key__contains=RETRY_KEY)


def step_rejections(ctx: Context) -> None:
    """Cancel what depends on a rejected or failed order, and tell the trader why."""
    dependants = _dependants_of_rejected(account=ctx.account).select_related("account", "instrument", "parent")
    for order in dependants:
        try:
            orders.order_cancel(
                order=order,
                actor=ctx.account.owner,
                cause=_cause("step 7", f"{order.parent.reference} was rejected"),
                by_trader=False,
            )
            ctx.act(f"cancelled {order.reference}: its parent was rejected")
        except orders.OrderActionRefused as refused:
            ctx.act(f"could not cancel {order.reference}: {refused.message}")


def _place_again(
    ctx: Context, like: Order, *, role: str, cause: str, key: str, quantity: int | None = None, **counts
) -> Order | None:
    """A new order like ``like`` (its child), placed once per ``key``; None when refused.
    ``quantity``: its own, where not ``like``'s. ``counts``: its ``retry_count`` and
    ``reentry_count`` (written with its row)."""
    try:
        return orders.order_place(
            actor=ctx.account.owner,
            account=ctx.account,
            instrument=like.instrument,
            side=like.side,
            quantity=like.quantity if quantity is None else quantity,
            order_type=like.order_type,
            product=like.product,
            price=like.price,
            trigger_price=like.trigger_price,
            source=Order.Source.SYSTEM,
            role=role,
            parent=like,
            strategy=like.strategy,
            cause=cause,
            idempotency_key=key,
            **counts,
        )
    except ValidationError as error:
        ctx.act(f"could not place again like {like.reference}: {_refusal(error)}")
        return None


# --- 8. Re-entry --------------------------------------------------------------------------------

REENTRY_KEY = ":reentry:"


def _stopped_out(**where):
    """Filled stop-losses of entries that may re-enter: their strategy allows it and is active, the
    entry's re-entries are under its count, and it has not re-entered yet (one re-entry an entry).
    Only today's, by when it filled (its recorded fills), not when we heard of it: a stop-out of an
    earlier day (its strategy paused since, or its account idle) is a stale signal, not re-entered on."""
    reentered = Order.objects.filter(
        parent=OuterRef("parent"), role=Order.Role.ENTRY, idempotency_key__contains=REENTRY_KEY
    )
    filled_today = Trade.objects.filter(order=OuterRef("pk"), filled_at__gte=openings.day_start())
    return (
        Order.objects.filter(
            Exists(filled_today),
            **where,
            role=Order.Role.STOP_LOSS,
            status=Order.Status.FILLED,
            parent__strategy__reentry_enabled=True,
            parent__strategy__is_active=True,  # a paused strategy opens nothing new
            parent__reentry_count__lt=F("parent__strategy__max_reentries"),
        )
        .exclude(Exists(reentered))
        .filter(_on_its_strategy("parent__strategy_id"))
    )


def step_reentry(ctx: Context) -> None:
    """Once an entry is out of the market by a stop-loss (it can fill no more and none of its exits
    is working), place a new entry like it, once, if the strategy allows another. An entry whose
    fills got several stop-losses re-enters once, not once for each.

    The re-entry buys back what its stop-losses closed, not what the entry asked for: an entry
    cancelled part filled, a position cut by hand or a take-profit that closed part of it (at
    the strategy's target: not stopped out) held less, and a re-entry of the whole would open
    more than was ever stopped out. Whole lots only, so never more than that either."""
    stopped = _stopped_out(account=ctx.account).select_related(
        "parent__strategy", "parent__instrument", "parent__account"
    )
    looked_at = set()
    for exit_order in stopped:
        entry = exit_order.parent
        if entry.pk in looked_at:
            continue
        looked_at.add(entry.pk)
        # Out of the market only once it can fill no more and none of its exits is working.
        exits = entry.children.filter(role__in=EXIT_ROLES)
        if entry.status in Order.LIVE or exits.filter(status__in=Order.LIVE).exists():
            continue
        closed = exits.aggregate(
            total=Coalesce(Sum("filled_quantity"), 0),
            stopped=Coalesce(Sum("filled_quantity", filter=Q(role=Order.Role.STOP_LOSS)), 0),
        )
        if closed["total"] > entry.filled_quantity:
            continue  # both exits filled: the position is reversed already (step 4 says so), no more
        quantity = closed["stopped"] - closed["stopped"] % entry.instrument.lot_size
        if quantity <= 0:
            ctx.act(f"no re-entry after {exit_order.reference}: it closed {closed['stopped']}, less than a lot")
            continue

        placed = _place_again(
            ctx,
            entry,
            role=Order.Role.ENTRY,
            cause=_cause("step 8", f"re-entry after {exit_order.reference} stopped out"),
            key=f"{REENTRY_KEY.strip(':')}:{entry.pk}",
            quantity=quantity,
            reentry_count=entry.reentry_count + 1,
        )
        if placed is None:
            continue
        ctx.act(f"re-entered {placed.reference} after {exit_order.reference}")


# --- 9. Retries ---------------------------------------------------------------------------------


RETRY_KEY = ":retry:"


def _rejected_with_retries(**where):
    """Refused strategy entries (a refused exit is placed again by step 4) of an active strategy,
    placed today: one refused on an earlier day (its strategy paused or its account idle since)
    is a stale signal, not retried."""
    return Order.objects.filter(
        **where,
        role=Order.Role.ENTRY,
        created_at__gte=openings.day_start(),
        strategy__is_active=True,  # a paused strategy opens nothing new (step 8 neither)
        status__in=[Order.Status.REJECTED, Order.Status.FAILED],
        strategy__max_retries__gt=0,
    ).filter(
        _on_its_strategy("strategy_id"),
        # A chased entry's replacement that never reached the broker is step 5's to place again.
        ~Q(status=Order.Status.FAILED, idempotency_key__contains=REPLACE_KEY),
    )


def _on_its_strategy(strategy_id: str) -> Exists:
    """The order's account is still one of its strategy's (``strategy_id``: the path to the strategy's
    id): one the trader took off the strategy gets nothing new opened by it, retries, re-entries and
    chases (a resting entry moved toward the market to fill, or put back past the modification cap)
    included, as a paused strategy opens nothing; what it holds keeps its exits (step 4)."""
    on = Strategy.accounts.through.objects.filter(
        strategy_id=OuterRef(strategy_id), brokeraccount_id=OuterRef("account_id")
    )
    return Exists(on)


def step_retries(ctx: Context) -> None:
    """Send again an order rejected for a reason that may pass, with backoff, up to the strategy's limit."""
    now = timezone.now()
    candidates = _rejected_with_retries(account=ctx.account).select_related("strategy", "instrument", "account")
    for failed in candidates:
        strategy = failed.strategy
        kinds = set(strategy.retried_kinds)
        attempt = failed.retry_count + 1
        if failed.reject_kind not in kinds or attempt > strategy.max_retries:
            continue
        if failed.status == Order.Status.FAILED and not ctx.fetched:
            # One that failed may be at the broker after all: only this cycle's sync (which looks
            # for it by its tag) can tell, and it did not run (as step 4 waits for a failed exit).
            ctx.act(f"{failed.reference} is not retried this run: the broker's orders could not be read")
            continue
        if _failed_but_listed(ctx, failed):
            _run_error(
                ctx,
                f"{failed.reference} is at the broker after all, but could not be recorded this run: not retried"
                " (the next run records it)",
                step="9_retries",
            )
            continue
        if Order.objects.filter(Q(parent=failed) & Q(idempotency_key__endswith=f"{RETRY_KEY}{failed.pk}")).exists():
            continue
        if (now - failed.updated_at).total_seconds() < 2 ** (attempt - 1):
            continue  # backoff: 1 s, 2 s, 4 s...
        retried = _place_again(
            ctx,
            failed,
            quantity=failed.quantity - failed.filled_quantity,  # a refusal after part filled: the rest
            role=failed.role,
            cause=_cause("step 9", f"retry {attempt} of {failed.reference} ({failed.reject_kind})"),
            key=f"{RETRY_KEY.strip(':')}:{failed.pk}",
            retry_count=attempt,
            reentry_count=failed.reentry_count,  # a retried re-entry is that re-entry still
        )
        if retried is None:
            continue
        ctx.act(f"retried {failed.reference} as {retried.reference}")


STEPS = [
    ("1_fetch", step_fetch),
    ("2_pnl", step_pnl),
    ("3_orders", step_orders),
    ("4_exits", step_exits),
    ("5_chase", step_chase),
    ("6_trail", step_trail),
    ("7_rejections", step_rejections),
    ("8_reentry", step_reentry),
    ("9_retries", step_retries),
]
NEEDS_FETCH = {"2_pnl", "3_orders"}

# Steps done for a whole batch at once: the step's function for many accounts, returning the
# failures by id(ctx). The step's own function is the same for a batch of one.
BATCHED = {step_fetch: _fetch_many, step_pnl: _pnl_many}

# For the other steps, the orders each acts on (filters taking the accounts): an account with
# none of them for any step has nothing to do in those steps. A step not listed here (a new
# one, or a test's stand-in) runs for every account, and then so do the rest.
ACTS_ON = {
    step_orders: (orders.orders_to_sync,),
    step_exits: (_filled_entries,),
    step_chase: (_chased, _chase_owed),
    step_trail: (_trailing_stops,),
    step_rejections: (_dependants_of_rejected,),
    step_reentry: (_stopped_out,),
    step_retries: (_rejected_with_retries,),
}


def _accounts_with_work(account_ids: list[int], steps) -> set[int]:
    """The accounts for which any of ``steps`` has an order to look at (one query per filter)."""
    if any(step not in ACTS_ON for _name, step in steps):
        return set(account_ids)
    busy: set[int] = set()
    for _name, step in steps:
        for orders_of in ACTS_ON[step]:
            rest = [pk for pk in account_ids if pk not in busy]
            if rest:
                busy.update(orders_of(account_id__in=rest).order_by().values_list("account_id", flat=True).distinct())
    return busy


def _account_steps(job) -> None:
    """One account's run of per-account steps, in order, each timed, each failure recorded; none
    begun once the batch is ``cut`` short by its time limit (``accounts_monitor`` says so)."""
    ctx, steps, cut = job
    # The orders the steps place or move are checked at the prices this run asked the broker for
    # (an order value limit's MARKET or SELL LIMIT on a Kite account), not asked for again each.
    prices = {f"{exchange}:{symbol}": price for (exchange, symbol), price in ctx.last_prices.items()}
    with broker_prices_known(ctx.account.broker, prices):
        for name, step in steps:
            if cut.is_set():
                return
            if name in NEEDS_FETCH and not ctx.fetched:
                ctx.errors.append({"step": name, "error": "skipped: the broker data could not be fetched"})
                continue
            started = time.perf_counter()
            try:
                step(ctx)
            except Exception as error:
                ctx.failed(name, error)
            ctx.step_ms[name] = round((time.perf_counter() - started) * 1000, 1)


def _batch_failure(step: str, error: Exception, accounts: int) -> Exception:
    """What each account's run records of a batched step's failure as a whole. For a batch of
    several accounts, its type only: its text can name another account's rows (a duplicate key, a
    broker order id), and each trader sees their run's errors; the whole of it is logged once."""
    if accounts == 1:
        return error
    logger.error("monitoring step %s failed for a batch of %s accounts", step, accounts, exc_info=error)
    return BatchStepFailed(f"{type(error).__name__} (the whole batch's failure; the details are logged)")


def _run_steps(contexts: list[Context]) -> None:
    """Every step for every account, in order. A batched step's time is shared out among its accounts;
    so is the query that finds which accounts the per-account steps have anything to do for."""
    steps, i = list(STEPS), 0
    while i < len(steps):
        name, step = steps[i]
        if step in BATCHED:
            ready = []
            for ctx in contexts:
                if name in NEEDS_FETCH and not ctx.fetched:
                    ctx.errors.append({"step": name, "error": "skipped: the broker data could not be fetched"})
                else:
                    ready.append(ctx)
            started = time.perf_counter()
            try:
                failures = BATCHED[step](ready) if ready else {}
            except SoftTimeLimitExceeded:
                raise  # not a step's failure: the run stops here (``accounts_monitor`` records it)
            except Exception as error:
                failures = {id(ctx): _batch_failure(name, error, len(ready)) for ctx in ready}
            share = round((time.perf_counter() - started) * 1000 / max(1, len(ready)), 1)
            for ctx in ready:
                ctx.step_ms[name] = share
                if id(ctx) in failures:
                    ctx.failed(name, failures[id(ctx)])
            i += 1
            continue
        run = []
        while i < len(steps) and steps[i][1] not in BATCHED:
            run.append(steps[i])
            i += 1
        started = time.perf_counter()
        try:
            busy = _accounts_with_work([ctx.account.pk for ctx in contexts], run)
        except SoftTimeLimitExceeded:
            raise
        except Exception:
            logger.exception("monitoring: could not tell which accounts have orders to look at")
            busy = {ctx.account.pk for ctx in contexts}
        share = round((time.perf_counter() - started) * 1000 / max(1, len(contexts)) / len(run), 1)
        idle = [ctx for ctx in contexts if ctx.account.pk not in busy]
        for ctx in idle:
            for step_name, _ in run:
                if step_name in NEEDS_FETCH and not ctx.fetched:
                    ctx.errors.append({"step": step_name, "error": "skipped: the broker data could not be fetched"})
                else:
                    ctx.step_ms[step_name] = share
        cut = threading.Event()
        _in_pool(_account_steps, [(ctx, run, cut) for ctx in contexts if ctx.account.pk in busy], cut=cut)


def accounts_monitor(*, accounts: list[BrokerAccount], run_id: int | None = None) -> list[AccountRun]:
    """Run every step for each account, each account once at a time (one running elsewhere is skipped).

    Returns the accounts' ``AccountRun`` rows, in the order of ``accounts``.
    """
    tokens = {}
    ranked = _run_rank.set(next(_runs))
    started = timezone.now()
    try:
        try:
            tokens = locks.acquire_many([f"monitor:{account.pk}" for account in accounts], ttl_s=ACCOUNT_LOCK_TTL_S)
        except Exception as error:  # Redis is down: nothing runs, and each trader's dashboard says so
            logger.warning("monitoring: could not take the account locks: %s", error)
            why = f"not run: the account locks are unavailable ({type(error).__name__}: {error})"[:500]
            results = [
                AccountRun(
                    run_id=run_id,
                    account=account,
                    status=AccountRun.Status.ERRORS,
                    started_at=started,
                    finished_at=timezone.now(),
                    errors=[{"step": "lock", "error": why}],
                )
                for account in accounts
            ]
            AccountRun.objects.bulk_create(results)
            return results
        running = [account for account in accounts if tokens[f"monitor:{account.pk}"]]
        try:
            sessions = broker_services.sessions_live(running)
        except Exception:  # each account then looks its own up (and says why it cannot)
            logger.exception("monitoring: could not read the sessions of %s accounts", len(running))
            sessions = {}
        contexts = {a.pk: Context(account=a, run_id=run_id, session=sessions.get(a.pk)) for a in running}
        # Renewed while the steps run: a batch slower than the TTL (a slow broker) must not let the
        # next cycle run the same accounts beside it (Celery's time limits do not stop threads).
        cut_short = None
        with locks.kept({name: token for name, token in tokens.items() if token}, ttl_s=ACCOUNT_LOCK_TTL_S):
            try:
                _run_steps(list(contexts.values()))
            except SoftTimeLimitExceeded as error:
                # Raised in this thread once the pool's jobs are done (``Jobs.wait``): what the steps
                # did is recorded, and the steps not run are the traders' errors, before it goes on.
                logger.warning("monitoring: a batch of %s accounts reached its time limit", len(contexts))
                cut_short = error
                for ctx in contexts.values():
                    why = "the run reached its time limit: steps it had not begun did not run (the next run does them)"
                    ctx.errors.append({"step": "time_limit", "error": why})
        finished = timezone.now()
        results = []
        for account in accounts:
            ctx = contexts.get(account.pk)
            if ctx is None:  # its account held by another run: this one ended as it began
                skipped = AccountRun.Status.SKIPPED
                results.append(
                    AccountRun(run_id=run_id, account=account, status=skipped, started_at=started, finished_at=started)
                )
                continue
            results.append(
                AccountRun(
                    run_id=run_id,
                    account=account,
                    status=AccountRun.Status.ERRORS if ctx.errors else AccountRun.Status.OK,
                    started_at=started,
                    finished_at=finished,
                    step_ms=ctx.step_ms,
                    actions=ctx.actions,
                    errors=ctx.errors,
                )
            )
        try:
            failed = _insert(AccountRun, results)
        except SoftTimeLimitExceeded as error:
            # The time limit reached while the runs are written (raised once): still written, they
            # are what the traders see of this run; the error goes on once they are.
            cut_short = cut_short or error
            failed = _insert(AccountRun, results)
        for index, error in failed.items():
            account_id = results[index].account_id
            logger.error("monitoring: could not record the run of account %s", account_id, exc_info=error)
        for result in results:
            metrics.account_run_observed(result)
        # The traders' dashboards, coalesced, with this run's errors: only for those with a page open.
        watched = presence.watching(account.owner_id for account in running)
        for account in running:
            if account.owner_id in watched:
                dashboard_push(account)
        if cut_short is not None:
            raise cut_short
        return results
    finally:
        _run_rank.reset(ranked)
        locks.release_many({name: token for name, token in tokens.items() if token})


def account_monitor(*, account: BrokerAccount, run_id: int | None = None) -> AccountRun:
    """Run every step for one account, once at a time (a second caller is skipped)."""
    return accounts_monitor(accounts=[account], run_id=run_id)[0]
