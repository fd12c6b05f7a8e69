"""Reads of positions, fills, PnL and monitoring results, always scoped to the trader who asks.

Money is summed in Python from ``Decimal`` rows, never with SQL ``SUM`` (SQLite sums
decimals as floats), so every figure shown is exact.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from itertools import groupby
from operator import itemgetter

from django.db.models import OuterRef, QuerySet, Subquery
from django.utils import timezone

from accounts.models import BrokerAccount
from accounts.selectors import broker_accounts_of
from brokers.base import IST
from brokers.markets import day_start
from monitoring.models import AccountRun
from orders.models import Order
from orders.selectors import orders_of

from .fifo import PositionState
from .models import PnlSnapshot, Position, Trade
from .services import fifo_order

ZERO = Decimal("0.0000")
DASHBOARD_TRADES = 20
DASHBOARD_ORDERS = 50
DASHBOARD_ERRORS = 10
ERRORS_WINDOW = timedelta(hours=24)


# --- Positions and the PnL summary ---------------------------------------------------------------


def positions_of(user, *, open_only: bool = False) -> QuerySet[Position]:
    positions = Position.objects.filter(account__owner=user).select_related("account", "instrument")
    if open_only:
        positions = positions.exclude(net_quantity=0)
    return positions.order_by("account__label", "account_id", "instrument__tradingsymbol", "product")


def holds_nrml_equity(user, instrument) -> bool:
    """Whether ``user`` holds a position of NRML on the equity ``instrument`` (long or short), one
    taken before NRML was refused on equity: only an NRML order closes it (``orders.services``
    takes one that closes at most what is held)."""
    return (
        instrument is not None
        and instrument.instrument_type == "EQ"
        and Position.objects.filter(account__owner=user, instrument=instrument, product="NRML")
        .exclude(net_quantity=0)
        .exists()
    )


@dataclass
class AccountPnl:
    account: BrokerAccount
    realized: Decimal = ZERO
    unrealized: Decimal = ZERO

    @property
    def total(self) -> Decimal:
        return self.realized + self.unrealized


@dataclass
class PnlSummary:
    accounts: list[AccountPnl]
    realized: Decimal = ZERO
    unrealized: Decimal = ZERO
    # When its positions were read (what was committed before it is in it): the version the page
    # compares, so a push read earlier that arrives later does not put older figures back.
    read_at: datetime | None = None

    @property
    def total(self) -> Decimal:
        return self.realized + self.unrealized


def pnl_summary(user, *, now: datetime | None = None) -> PnlSummary:
    """Realized, unrealized and total PnL of the user's positions: overall and per account (every account).

    ``now``: when the caller started reading (before this reads anything), kept as ``read_at``.
    """
    read_at = now or timezone.now()
    rows = {account.pk: AccountPnl(account=account) for account in broker_accounts_of(user)}
    for account_id, realized, unrealized in Position.objects.filter(account__owner=user).values_list(
        "account_id", "realized_pnl", "unrealized_pnl"
    ):
        row = rows[account_id]
        row.realized += realized
        row.unrealized += unrealized
    accounts = list(rows.values())
    return PnlSummary(
        accounts=accounts,
        realized=sum((row.realized for row in accounts), ZERO),
        unrealized=sum((row.unrealized for row in accounts), ZERO),
        read_at=read_at,
    )


# --- Fills ---------------------------------------------------------------------------------------


def trades_of(user, *, account=None, symbol=None, since=None, until=None) -> QuerySet[Trade]:
    """The user's fills, newest first. ``since`` is inclusive, ``until`` exclusive; ``symbol`` a prefix."""
    trades = Trade.objects.filter(account__owner=user).select_related("account", "instrument", "order")
    if account:
        trades = trades.filter(account_id=account.pk if isinstance(account, BrokerAccount) else account)
    if symbol:
        trades = trades.filter(instrument__tradingsymbol__istartswith=symbol.strip()[:64])
    if since:
        trades = trades.filter(filled_at__gte=since)
    if until:
        trades = trades.filter(filled_at__lt=until)
    return trades.order_by("-filled_at", "-id")


# --- PnL per symbol and per trading day -----------------------------------------------------------


@dataclass
class SymbolPnl:
    exchange: str
    tradingsymbol: str
    net_quantity: int = 0
    realized: Decimal = ZERO
    unrealized: Decimal = ZERO

    @property
    def total(self) -> Decimal:
        return self.realized + self.unrealized


@dataclass
class DayPnl:
    day: date
    realized: Decimal = ZERO
    fills: int = 0


@dataclass
class PnlBreakdown:
    symbols: list[SymbolPnl] = field(default_factory=list)
    days: list[DayPnl] = field(default_factory=list)


def pnl_by_symbol_and_day(user) -> PnlBreakdown:
    """Realized and unrealized PnL per symbol (all accounts and products), and realized PnL per IST trading day.

    Positions keep only cumulative totals, so the per-day figure comes from the fills: each
    position's fills (per account, instrument and product) are replayed FIFO in the order
    they were filled, and the PnL each fill realizes counts on that fill's IST date.
    """
    symbols: dict[int, SymbolPnl] = {}
    for position in positions_of(user):
        instrument = position.instrument
        row = symbols.get(instrument.pk)
        if row is None:
            row = SymbolPnl(exchange=instrument.exchange, tradingsymbol=instrument.tradingsymbol)
            symbols[instrument.pk] = row
        row.net_quantity += position.net_quantity
        row.realized += position.realized_pnl
        row.unrealized += position.unrealized_pnl

    states: dict[tuple, PositionState] = defaultdict(PositionState)
    days: dict[date, DayPnl] = {}
    fills = (
        Trade.objects.filter(account__owner=user)
        .order_by("filled_at", "id")
        .values_list(
            "filled_at",
            "broker_trade_id",
            "broker_order_id",
            "account_id",
            "instrument_id",
            "product",
            "side",
            "quantity",
            "price",
        )
    )
    for _at, tied in groupby(fills.iterator(chunk_size=2000), key=itemgetter(0)):
        # The fills of one time in the order their positions matched them (``fifo_order``).
        for fill in sorted(tied, key=lambda fill: fifo_order(*fill[:3])):
            filled_at, _trade, _order, account_id, instrument_id, product, side, quantity, price = fill
            realized = states[(account_id, instrument_id, product)].apply(side, quantity, price)
            day = filled_at.astimezone(IST).date()
            row = days.get(day)
            if row is None:
                row = days[day] = DayPnl(day=day)
            row.realized += realized
            row.fills += 1
    return PnlBreakdown(
        symbols=sorted(symbols.values(), key=lambda row: (row.tradingsymbol, row.exchange)),
        days=sorted(days.values(), key=lambda row: row.day, reverse=True),
    )


# --- PnL over time (the chart) -------------------------------------------------------------------


@dataclass(frozen=True)
class PnlPoint:
    taken_at: datetime
    total: Decimal


def pnl_series(user, since: datetime) -> list[PnlPoint]:
    """The user's total PnL at each snapshot time since ``since``, summed across accounts.

    Accounts are snapshotted at different moments, so each point adds every account's
    latest snapshot so far (carried forward), not only the snapshots taken at that instant;
    an account's latest from before ``since`` counts from the first point on (one not
    snapshotted since, deactivated or not connected yet today, is in the total as it is in
    ``pnl_summary``'s), though it makes no point of its own.
    """
    latest = {s.account_id: s.total for s in _latest_snapshots(user, before=since)}
    points: list[PnlPoint] = []
    snapshots = (
        PnlSnapshot.objects.filter(account__owner=user, taken_at__gte=since)
        .order_by("taken_at", "id")
        .values_list("account_id", "taken_at", "realized", "unrealized")
    )
    running = sum(latest.values(), ZERO)
    for account_id, taken_at, realized, unrealized in snapshots.iterator(chunk_size=2000):
        value = realized + unrealized
        running += value - latest.get(account_id, ZERO)
        latest[account_id] = value
        point = PnlPoint(taken_at=taken_at, total=running)
        if points and points[-1].taken_at == taken_at:
            points[-1] = point
        else:
            points.append(point)
    return points


def pnl_latest_point(user, since: datetime) -> PnlPoint | None:
    """The last point ``pnl_series`` would return, from one snapshot per account (for live pushes)."""
    snapshots = _latest_snapshots(user)
    if not any(s.taken_at >= since for s in snapshots):
        return None
    return PnlPoint(
        taken_at=max(s.taken_at for s in snapshots), total=sum((s.realized + s.unrealized for s in snapshots), ZERO)
    )


def _latest_snapshots(user, *, before: datetime | None = None) -> list[PnlSnapshot]:
    """Each of the user's accounts' latest snapshot (taken before ``before``, when given)."""
    snapshots = PnlSnapshot.objects.filter(account=OuterRef("pk"))
    if before is not None:
        snapshots = snapshots.filter(taken_at__lt=before)
    latest_id = snapshots.order_by("-taken_at", "-id").values("id")[:1]
    ids = broker_accounts_of(user).annotate(latest=Subquery(latest_id)).values_list("latest", flat=True)
    return list(PnlSnapshot.objects.filter(pk__in=[pk for pk in ids if pk]))


# --- Monitoring results --------------------------------------------------------------------------


def account_runs_of(user, *, errors_only: bool = False, since=None) -> QuerySet[AccountRun]:
    runs = AccountRun.objects.filter(account__owner=user).select_related("account")
    if errors_only:
        runs = runs.filter(status=AccountRun.Status.ERRORS)
    if since:
        runs = runs.filter(started_at__gte=since)
    return runs.order_by("-started_at", "-id")


# --- The dashboard -------------------------------------------------------------------------------


@dataclass
class Dashboard:
    summary: PnlSummary
    point: PnlPoint | None
    positions: list[Position]
    open_orders: list[Order]
    trades: list[Trade]
    errors: list[AccountRun]
    chart_since: datetime
    # When its state was read, before any of it was: each live part's version on the page (pushes are
    # rendered on different processes and threads, and one read earlier may arrive later).
    read_at: datetime


def dashboard_of(user, *, now: datetime | None = None) -> Dashboard:
    """Everything the dashboard shows; its live pushes and its resync render the same."""
    now = now or timezone.now()
    start = day_start(now)
    return Dashboard(
        summary=pnl_summary(user, now=now),
        point=pnl_latest_point(user, start),
        positions=list(positions_of(user, open_only=True)),
        open_orders=list(orders_of(user, status=list(Order.LIVE))[:DASHBOARD_ORDERS]),
        trades=list(trades_of(user)[:DASHBOARD_TRADES]),
        errors=list(account_runs_of(user, errors_only=True, since=now - ERRORS_WINDOW)[:DASHBOARD_ERRORS]),
        chart_since=start,
        read_at=now,
    )
