"""The monitoring cycle for one account (DESIGN section 5), step by step.

``account_monitor`` runs the steps in order under a per-account lock (a slow account is
skipped, never run twice at once). Each step is a function of its own that takes the
cycle's context, is timed, and is idempotent: running a cycle twice, or a task delivered
twice, never places a second stop-loss, re-entry or retry, because every order a step
places carries an idempotency key derived from what caused it. One step's failure is
recorded and the next step still runs.
"""

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from django.core.exceptions import ValidationError
from django.db import close_old_connections, connection
from django.db.models import Q, Sum
from django.utils import timezone

from accounts.models import BrokerAccount
from brokers.base import BrokerOrder, BrokerPosition, BrokerTrade
from brokers.client import AccountBroker
from brokers.errors import BrokerError, RejectKind
from orders import services as orders
from orders.models import Order, Strategy
from portfolio import services as portfolio
from portfolio.broadcast import dashboard_push
from tradingplatform import locks, metrics

from .models import AccountRun, BrokerSnapshot

logger = logging.getLogger(__name__)
ACCOUNT_LOCK_TTL_S = 300


@dataclass
class Context:
    account: BrokerAccount
    run_id: int | None = None
    broker_orders: list[BrokerOrder] = field(default_factory=list)
    broker_trades: list[BrokerTrade] = field(default_factory=list)
    broker_positions: list[BrokerPosition] = field(default_factory=list)
    last_prices: dict = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)
    fetched: bool = False

    def act(self, text: str) -> None:
        self.actions.append(text)


def _cause(step: str, why: str) -> str:
    return f"monitoring {step}: {why}"


# --- 1. Fetch ---------------------------------------------------------------------------------


def _in_thread(account: BrokerAccount, method: str, *args):
    try:
        return getattr(AccountBroker(account), method)(*args)
    finally:
        close_old_connections()
        if not connection.in_atomic_block:
            connection.close()


def step_fetch(ctx: Context) -> None:
    """Order book, trades, positions and last prices from the broker, concurrently."""
    account = ctx.account
    if connection.in_atomic_block:  # a test's transaction: other threads could not see its rows
        broker = AccountBroker(account)
        ctx.broker_orders, ctx.broker_trades, ctx.broker_positions = (
            broker.orders(),
            broker.trades(),
            broker.positions(),
        )
    else:
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = [pool.submit(_in_thread, account, name) for name in ("orders", "trades", "positions")]
            ctx.broker_orders, ctx.broker_trades, ctx.broker_positions = (f.result() for f in futures)
    symbols = {f"{p.exchange}:{p.tradingsymbol}" for p in ctx.broker_positions if p.quantity}
    symbols |= {f"{o.exchange}:{o.tradingsymbol}" for o in ctx.broker_orders}
    if symbols:
        prices = AccountBroker(account).ltp(sorted(symbols))
        ctx.last_prices = {tuple(key.split(":", 1)): price for key, price in prices.items()}
    now = timezone.now()
    for kind, rows in (
        ("orders", ctx.broker_orders),
        ("trades", ctx.broker_trades),
        ("positions", ctx.broker_positions),
    ):
        BrokerSnapshot.objects.update_or_create(
            account=account, kind=kind, defaults={"data": [_plain(row) for row in rows], "fetched_at": now}
        )
    ctx.fetched = True


def _plain(row) -> dict:
    from dataclasses import asdict

    return {
        k: (str(v) if not isinstance(v, int | str | type(None)) else v) for k, v in asdict(row).items() if k != "raw"
    }


# --- 2. PnL -------------------------------------------------------------------------------------


def step_pnl(ctx: Context) -> None:
    """Record new fills, update positions by FIFO, value them at last prices, snapshot PnL."""
    created = portfolio.trades_record(account=ctx.account, broker_trades=ctx.broker_trades)
    if created:
        ctx.act(f"recorded {len(created)} fill(s)")
    portfolio.positions_mark(account=ctx.account, last_prices=ctx.last_prices)
    portfolio.pnl_snapshot(account=ctx.account)


# --- 3. Orders ----------------------------------------------------------------------------------


def step_orders(ctx: Context) -> None:
    """Bring our orders in line with the broker's order book."""
    changed = orders.orders_sync_account(
        account=ctx.account, cause=_cause("step 3", "reconciled with the broker"), broker_orders=ctx.broker_orders
    )
    if changed:
        ctx.act(f"updated {changed} order(s) from the broker")


# --- 4. Stop-loss and take-profit -----------------------------------------------------------------


def _offset(price: Decimal, amount: Decimal, unit: str) -> Decimal:
    return price * amount / 100 if unit == Strategy.Unit.PERCENT else amount


def _on_tick(price: Decimal, tick: Decimal) -> Decimal:
    return ((price / tick).to_integral_value(rounding=ROUND_HALF_UP) * tick).quantize(Decimal("0.01"))


def step_exits(ctx: Context) -> None:
    """Place SL (SL-M) and TP (LIMIT) for filled strategy entries not yet covered; one cancels the other."""
    entries = Order.objects.filter(
        account=ctx.account,
        role=Order.Role.ENTRY,
        strategy__isnull=False,
        filled_quantity__gt=0,
        status__in=[Order.Status.FILLED, Order.Status.PARTIALLY_FILLED],
    ).select_related("strategy", "instrument", "account")
    for entry in entries:
        strategy = entry.strategy
        exit_side = "SELL" if entry.side == "BUY" else "BUY"
        tick = entry.instrument.tick_size
        average = Decimal(entry.average_price)
        for role, amount, unit in (
            (Order.Role.STOP_LOSS, strategy.stop_loss, strategy.stop_loss_unit),
            (Order.Role.TAKE_PROFIT, strategy.take_profit, strategy.take_profit_unit),
        ):
            if not amount:
                continue
            covered = (
                entry.children.filter(role=role)
                .exclude(status__in=[Order.Status.CANCELLED, Order.Status.REJECTED, Order.Status.FAILED])
                .aggregate(total=Sum("quantity"))["total"]
                or 0
            )
            missing = entry.filled_quantity - covered
            if missing <= 0:
                continue
            distance = _offset(average, amount, unit)
            protective = (role == Order.Role.STOP_LOSS) == (entry.side == "BUY")
            level = _on_tick(average - distance if protective else average + distance, tick)
            kwargs = (
                {"order_type": "SL-M", "trigger_price": level}
                if role == Order.Role.STOP_LOSS
                else {"order_type": "LIMIT", "price": level}
            )
            try:
                placed = orders.order_place(
                    actor=ctx.account.owner,
                    account=ctx.account,
                    instrument=entry.instrument,
                    side=exit_side,
                    quantity=missing,
                    product=entry.product,
                    source=Order.Source.SYSTEM,
                    role=role,
                    parent=entry,
                    strategy=strategy,
                    cause=_cause("step 4", f"{role.replace('_', '-')} for {entry.reference}"),
                    idempotency_key=f"exit:{entry.pk}:{role}:{entry.filled_quantity}",
                    **kwargs,
                )
            except ValidationError as error:
                ctx.act(f"could not place {role} for {entry.reference}: {' '.join(error.messages)}")
                continue
            ctx.act(f"placed {role.replace('_', '-')} {placed.reference} for {entry.reference}")
    _one_cancels_other(ctx)


def _one_cancels_other(ctx: Context) -> None:
    filled_exits = Order.objects.filter(
        account=ctx.account,
        role__in=[Order.Role.STOP_LOSS, Order.Role.TAKE_PROFIT],
        status=Order.Status.FILLED,
        parent__isnull=False,
    )
    siblings = Order.objects.filter(
        parent_id__in=filled_exits.values("parent_id"),
        role__in=[Order.Role.STOP_LOSS, Order.Role.TAKE_PROFIT],
        status__in=Order.AT_BROKER,
    ).select_related("account", "instrument")
    for sibling in siblings:
        try:
            orders.order_cancel(order=sibling, actor=ctx.account.owner, cause=_cause("step 4", "its other exit filled"))
            ctx.act(f"cancelled {sibling.reference}: the other exit filled")
        except orders.OrderActionRefused as refused:
            ctx.act(f"could not cancel {sibling.reference}: {refused.message}")


# --- 5. Chase toward a fair price ----------------------------------------------------------------

BROKER_MODIFICATION_CAP = 25


def _placed(order: Order, field: str) -> Decimal:
    """A price as the order was first placed (kept in its "created" event)."""
    created = order.events.filter(kind="created").first()
    value = (created.data or {}).get(field) if created else None
    return Decimal(value) if value else getattr(order, field)


def step_chase(ctx: Context) -> None:
    """Move open LIMIT entries older than the chase delay toward the last price, within the cap.

    Past the broker's modification cap the order is cancelled and replaced.
    """
    now = timezone.now()
    candidates = Order.objects.filter(
        account=ctx.account,
        role=Order.Role.ENTRY,
        order_type="LIMIT",
        status__in=[Order.Status.SUBMITTED, Order.Status.OPEN, Order.Status.PARTIALLY_FILLED],
        broker_order_id__isnull=False,
        strategy__chase_after_s__isnull=False,
    ).select_related("strategy", "instrument", "account")
    for order in candidates:
        strategy = order.strategy
        last_move = order.events.filter(kind="modified").order_by("-created_at").first()
        since = last_move.created_at if last_move else (order.submitted_at or order.created_at)
        if (now - since).total_seconds() < strategy.chase_after_s:
            continue
        last = ctx.last_prices.get((order.instrument.exchange, order.instrument.tradingsymbol))
        if last is None:
            continue
        tick = order.instrument.tick_size
        original = _placed(order, "price")
        caps = []
        if strategy.chase_max_ticks:
            caps.append(strategy.chase_max_ticks * tick)
        if strategy.chase_max_percent:
            caps.append(original * strategy.chase_max_percent / 100)
        cap = min(caps) if caps else None
        target = _on_tick(last, tick)
        if cap is not None:
            target = (
                min(target, _on_tick(original + cap, tick))
                if order.side == "BUY"
                else max(target, _on_tick(original - cap, tick))
            )
        moves_toward = target > order.price if order.side == "BUY" else target < order.price
        if not moves_toward:
            continue
        cause = _cause("step 5", f"chasing toward {last} (cap {cap})")
        if order.chase_count < BROKER_MODIFICATION_CAP - 1:
            try:
                orders.order_modify(order=order, actor=ctx.account.owner, cause=cause, price=target)
            except (ValidationError, orders.OrderActionRefused) as error:
                ctx.act(f"could not chase {order.reference}: {error}")
                continue
            Order.objects.filter(pk=order.pk).update(chase_count=order.chase_count + 1)
            ctx.act(f"chased {order.reference} to {target}")
        else:
            _cancel_and_replace(ctx, order, target, cause)


def _cancel_and_replace(ctx: Context, order: Order, price: Decimal, cause: str) -> None:
    try:
        orders.order_cancel(order=order, actor=ctx.account.owner, cause=f"{cause}; the modification cap is reached")
    except orders.OrderActionRefused as refused:
        ctx.act(f"could not replace {order.reference}: {refused.message}")
        return
    order.refresh_from_db()
    remaining = order.quantity - order.filled_quantity
    if remaining <= 0:
        return
    replacement = orders.order_place(
        actor=ctx.account.owner,
        account=ctx.account,
        instrument=order.instrument,
        side=order.side,
        quantity=remaining,
        order_type="LIMIT",
        product=order.product,
        price=price,
        source=Order.Source.SYSTEM,
        role=order.role,
        parent=order,
        strategy=order.strategy,
        cause=cause,
        idempotency_key=f"replace:{order.pk}",
    )
    ctx.act(f"replaced {order.reference} with {replacement.reference} at {price}")


# --- 6. Trailing stops ---------------------------------------------------------------------------


def step_trail(ctx: Context) -> None:
    """Open stop-losses with a trailing step follow favourable moves, a step at a time, never back."""
    stops = Order.objects.filter(
        account=ctx.account,
        role=Order.Role.STOP_LOSS,
        status__in=Order.AT_BROKER,
        broker_order_id__isnull=False,
        strategy__trailing_step__isnull=False,
        parent__isnull=False,
    ).select_related("strategy", "instrument", "account", "parent")
    for stop in stops:
        last = ctx.last_prices.get((stop.instrument.exchange, stop.instrument.tradingsymbol))
        if last is None or stop.trigger_price is None:
            continue
        step = stop.strategy.trailing_step
        entry_price = Decimal(stop.parent.average_price)
        distance = abs(entry_price - _placed(stop, "trigger_price"))
        long_position = stop.side == "SELL"
        wanted = last - distance if long_position else last + distance
        moved = (wanted - stop.trigger_price) if long_position else (stop.trigger_price - wanted)
        steps = int(moved // step)
        if steps < 1:
            continue
        new_trigger = _on_tick(
            stop.trigger_price + steps * step if long_position else stop.trigger_price - steps * step,
            stop.instrument.tick_size,
        )
        try:
            orders.order_modify(
                order=stop,
                actor=ctx.account.owner,
                cause=_cause("step 6", f"trailing: last {last}, step {step}"),
                trigger_price=new_trigger,
            )
        except (ValidationError, orders.OrderActionRefused) as error:
            ctx.act(f"could not trail {stop.reference}: {error}")
            continue
        ctx.act(f"trailed {stop.reference} to {new_trigger}")


# --- 7. Rejected orders -------------------------------------------------------------------------


def step_rejections(ctx: Context) -> None:
    """Cancel what depends on a rejected or failed order, and tell the trader why."""
    dependants = Order.objects.filter(
        account=ctx.account,
        parent__status__in=[Order.Status.REJECTED, Order.Status.FAILED],
        status__in=Order.AT_BROKER,
    ).select_related("account", "instrument", "parent")
    for order in dependants:
        try:
            orders.order_cancel(
                order=order, actor=ctx.account.owner, cause=_cause("step 7", f"{order.parent.reference} was rejected")
            )
            ctx.act(f"cancelled {order.reference}: its parent was rejected")
        except orders.OrderActionRefused as refused:
            ctx.act(f"could not cancel {order.reference}: {refused.message}")


def _place_again(ctx: Context, like: Order, *, role: str, cause: str, key: str) -> Order | None:
    """A new order like ``like`` (its child), placed once per ``key``; None when refused."""
    try:
        return orders.order_place(
            actor=ctx.account.owner,
            account=ctx.account,
            instrument=like.instrument,
            side=like.side,
            quantity=like.quantity,
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
        )
    except ValidationError as error:
        ctx.act(f"could not place again like {like.reference}: {' '.join(error.messages)}")
        return None


# --- 8. Re-entry --------------------------------------------------------------------------------


def step_reentry(ctx: Context) -> None:
    """After a stop-loss exit, place a new entry like the first, if the strategy allows another."""
    stopped = Order.objects.filter(
        account=ctx.account,
        role=Order.Role.STOP_LOSS,
        status=Order.Status.FILLED,
        parent__strategy__reentry_enabled=True,
    ).select_related("parent__strategy", "parent__instrument", "parent__account")
    for exit_order in stopped:
        entry = exit_order.parent
        strategy = entry.strategy
        if (
            entry.reentry_count >= strategy.max_reentries
            or Order.objects.filter(idempotency_key=f"{ctx.account.owner_id}:reentry:{exit_order.pk}").exists()
        ):
            continue
        placed = _place_again(
            ctx,
            entry,
            role=Order.Role.ENTRY,
            cause=_cause("step 8", f"re-entry after {exit_order.reference} stopped out"),
            key=f"reentry:{exit_order.pk}",
        )
        if placed is None:
            continue
        Order.objects.filter(pk=placed.pk).update(reentry_count=entry.reentry_count + 1)
        ctx.act(f"re-entered {placed.reference} after {exit_order.reference}")


# --- 9. Retries ---------------------------------------------------------------------------------


def step_retries(ctx: Context) -> None:
    """Send again an order rejected for a reason that may pass, with backoff, up to the strategy's limit."""
    now = timezone.now()
    candidates = Order.objects.filter(
        account=ctx.account,
        strategy__isnull=False,
        status__in=[Order.Status.REJECTED, Order.Status.FAILED],
        strategy__max_retries__gt=0,
    ).select_related("strategy", "instrument", "account")
    for failed in candidates:
        strategy = failed.strategy
        kinds = set(strategy.retryable_kinds or RejectKind.RETRYABLE_BY_NATURE)
        attempt = failed.retry_count + 1
        if failed.reject_kind not in kinds or attempt > strategy.max_retries:
            continue
        if Order.objects.filter(Q(parent=failed) & Q(idempotency_key__endswith=f":retry:{failed.pk}")).exists():
            continue
        if (now - failed.updated_at).total_seconds() < 2 ** (attempt - 1):
            continue  # backoff: 1 s, 2 s, 4 s...
        retried = _place_again(
            ctx,
            failed,
            role=failed.role,
            cause=_cause("step 9", f"retry {attempt} of {failed.reference} ({failed.reject_kind})"),
            key=f"retry:{failed.pk}",
        )
        if retried is None:
            continue
        Order.objects.filter(pk=retried.pk).update(retry_count=attempt)
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


def account_monitor(*, account: BrokerAccount, run_id: int | None = None) -> AccountRun:
    """Run every step for one account, once at a time (a second caller is skipped)."""
    token = locks.acquire(f"monitor:{account.pk}", ttl_s=ACCOUNT_LOCK_TTL_S)
    if token is None:
        skipped = AccountRun.objects.create(run_id=run_id, account=account, status=AccountRun.Status.SKIPPED)
        return metrics.account_run_observed(skipped)
    try:
        ctx = Context(account=account, run_id=run_id)
        step_ms, errors = {}, []
        for name, step in STEPS:
            if name in NEEDS_FETCH and not ctx.fetched:
                errors.append({"step": name, "error": "skipped: the broker data could not be fetched"})
                continue
            started = time.perf_counter()
            try:
                step(ctx)
            except (BrokerError, ValidationError, orders.OrderActionRefused) as error:
                errors.append({"step": name, "error": f"{type(error).__name__}: {error}"[:500]})
            except Exception as error:  # one step's bug must not stop the others
                logger.exception("monitoring step %s failed for account %s", name, account.pk)
                errors.append({"step": name, "error": f"{type(error).__name__}: {error}"[:500]})
            step_ms[name] = round((time.perf_counter() - started) * 1000, 1)
        result = AccountRun.objects.create(
            run_id=run_id,
            account=account,
            status=AccountRun.Status.ERRORS if errors else AccountRun.Status.OK,
            finished_at=timezone.now(),
            step_ms=step_ms,
            actions=ctx.actions,
            errors=errors,
        )
        metrics.account_run_observed(result)
        dashboard_push(account)  # the trader's dashboard, coalesced, with this run's errors
        return result
    finally:
        locks.release(f"monitor:{account.pk}", token)
