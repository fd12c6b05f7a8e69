"""Recording fills and keeping positions and PnL from them (FIFO, incremental)."""

from collections import defaultdict
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from accounts.models import BrokerAccount
from brokers.base import BrokerTrade
from brokers.models import Instrument
from orders.models import Order

from .fifo import PositionState
from .models import PnlSnapshot, Position, Trade


def trades_record(*, account: BrokerAccount, broker_trades: list[BrokerTrade]) -> list[Trade]:
    """Record the fills not seen before and apply them to positions, in one transaction.

    A fill is recorded once (unique broker trade id per account) and applied once (the
    position remembers the last trade it applied), so a cycle that runs twice, or a task
    delivered twice, changes nothing the second time.
    """
    if not broker_trades:
        return []
    known = set(
        Trade.objects.filter(account=account, broker_trade_id__in=[t.trade_id for t in broker_trades]).values_list(
            "broker_trade_id", flat=True
        )
    )
    fresh = [t for t in broker_trades if t.trade_id not in known]
    if not fresh:
        return []
    instruments = {
        (i.exchange, i.tradingsymbol): i
        for i in Instrument.objects.filter(tradingsymbol__in={t.tradingsymbol for t in fresh})
    }
    orders = dict(
        Order.objects.filter(account=account, broker_order_id__in={t.broker_order_id for t in fresh}).values_list(
            "broker_order_id", "pk"
        )
    )
    rows = [
        Trade(
            account=account,
            order_id=orders.get(t.broker_order_id),
            broker_trade_id=t.trade_id,
            broker_order_id=t.broker_order_id,
            instrument=instruments[(t.exchange, t.tradingsymbol)],
            product=t.product,
            side=t.side,
            quantity=t.quantity,
            price=t.price,
            filled_at=t.filled_at or timezone.now(),
        )
        for t in sorted(fresh, key=lambda t: (t.filled_at or timezone.now(), t.trade_id))
        if (t.exchange, t.tradingsymbol) in instruments
    ]
    with transaction.atomic():
        # ignore_conflicts: a concurrent run that recorded the same fills first wins; we
        # then apply only what this transaction really inserted (re-read by id below).
        Trade.objects.bulk_create(rows, ignore_conflicts=True)
        created = list(
            Trade.objects.filter(account=account, broker_trade_id__in=[row.broker_trade_id for row in rows])
            .select_related("instrument")
            .order_by("filled_at", "id")
        )
        _apply(account, created)
    return created


def _apply(account: BrokerAccount, trades: list[Trade]) -> None:
    by_position = defaultdict(list)
    for trade in trades:
        by_position[(trade.instrument_id, trade.product)].append(trade)
    for (instrument_id, product), fills in by_position.items():
        position, _ = Position.objects.select_for_update().get_or_create(
            account=account, instrument_id=instrument_id, product=product
        )
        state = PositionState.from_dict(position.fifo) if position.fifo else PositionState()
        new = [fill for fill in fills if fill.pk > position.last_trade_id]
        if not new:
            continue
        state.apply_many((fill.side, fill.quantity, fill.price) for fill in new)
        last = position.last_price or new[-1].price
        position.fifo = state.to_dict()
        position.net_quantity = state.net_quantity
        position.average_price = state.average_price
        position.realized_pnl = state.realized_pnl
        position.unrealized_pnl = state.unrealized_pnl(last)
        position.last_price = last
        position.last_trade_id = new[-1].pk
        position.save()


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
        if price is None or price == position.last_price:
            continue
        state = PositionState.from_dict(position.fifo) if position.fifo else PositionState()
        position.last_price, position.unrealized_pnl = price, state.unrealized_pnl(price)
        Position.objects.filter(pk=position.pk).update(
            last_price=price, unrealized_pnl=position.unrealized_pnl, updated_at=timezone.now()
        )
        changed += 1
    return changed


def pnl_snapshot(*, account: BrokerAccount, now=None, positions: list[Position] | None = None, save: bool = True):
    """Today's realized and unrealized PnL of the account, as a point for the chart.

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
