"""Reads of orders and their sources, always scoped to the trader who asks."""

from datetime import datetime, time, timedelta

from django.conf import settings
from django.db.models import F, Q, QuerySet
from django.shortcuts import get_object_or_404

from brokers.base import IST

from . import services
from .models import Basket, Order, ScheduledOrder, Strategy, StrategySignal


def orders_of(user, *, account=None, status=None, source=None, symbol=None, since=None, day=None) -> QuerySet[Order]:
    """The user's orders. ``status``: one or several statuses; ``open`` stands for every one not final.
    ``since``: written at or after it. ``day``: the orders of that trading day (IST), as their
    references number them: written that day, or written just before it for a time in it (a
    scheduled order due just after midnight is prepared seconds before, numbered for its time)."""
    orders = Order.objects.filter(account__owner=user).select_related("account", "instrument")
    if account:
        orders = orders.filter(account_id=account)
    if status:
        statuses = status if isinstance(status, list | tuple) else [status]
        orders = orders.filter(status__in=[s for one in statuses for s in (Order.LIVE if one == "open" else [one])])
    if source:
        orders = orders.filter(source=source)
    if symbol:
        orders = orders.filter(instrument__tradingsymbol__istartswith=symbol.strip()[:64])
    if since:
        orders = orders.filter(created_at__gte=since)
    if day:
        start = datetime.combine(day, time.min, tzinfo=IST)
        ahead = start - timedelta(seconds=settings.SCHEDULE_LEAD_S + 1)  # how early one is prepared
        orders = orders.filter(
            Q(created_at__gte=start) | Q(created_at__gte=ahead, reference__startswith=services.reference_day(day))
        )
    return orders


def order_of_key(user, idempotency_key: str) -> Order | None:
    """The user's order placed with this idempotency key (as ``order_place`` was given it), if any."""
    return orders_of(user).filter(idempotency_key=services.stored_idempotency_key(user, idempotency_key)).first()


def live_orders_count(account) -> int:
    """How many of the account's orders are still live at its broker (not final)."""
    return Order.objects.filter(account=account, status__in=Order.LIVE).count()


def order_of(user, pk) -> Order:
    return get_object_or_404(orders_of(user), pk=pk)


def baskets_of(user) -> QuerySet[Basket]:
    return Basket.objects.filter(owner=user).prefetch_related("items__instrument", "accounts")


def basket_of(user, pk) -> Basket:
    return get_object_or_404(baskets_of(user), pk=pk)


def basket_results(basket: Basket, results: list[dict] | None = None) -> list[dict] | None:
    """A placement's result rows (``results``; None: the basket's last, as stored), each placed
    order's with its status and reason as they are now: one its broker refused (or filled, or
    cancelled) since is not shown as it was answered then, OPEN in green, on every later visit."""
    rows = basket.last_results if results is None else results
    return _rows_now(rows, basket.owner_id) if rows else rows


def baskets_results_now(baskets) -> None:
    """Set ``results_now`` on each of ``baskets`` (the user's): its last results as ``basket_results``
    gives them, every basket's orders read at once, not basket by basket."""
    baskets = list(baskets)
    by_owner: dict[int, list[Basket]] = {}
    for basket in baskets:
        by_owner.setdefault(basket.owner_id, []).append(basket)
    for owner_id, owned in by_owner.items():
        rows = _rows_now([row for basket in owned for row in basket.last_results or []], owner_id)
        for basket in owned:
            count = len(basket.last_results or [])
            basket.results_now = rows[:count] if basket.last_results else basket.last_results
            rows = rows[count:]


def _rows_now(rows: list[dict], owner_id: int) -> list[dict]:
    """Placement result rows, each placed order's with its status and reason as they are now. A row
    not known to be placed (its order could not be read, ``key``) shows its order once there is one."""
    ids = {row["order_id"] for row in rows if row.get("order_id")}
    orders = Order.objects.filter(pk__in=ids, account__owner_id=owner_id).in_bulk()
    keys = {row["key"] for row in rows if not row.get("order_id") and row.get("key")}
    by_key = (
        {
            order.idempotency_key: order
            for order in Order.objects.filter(idempotency_key__in=keys, account__owner_id=owner_id)
        }
        if keys
        else {}
    )
    now = []
    for row in rows:
        order = orders.get(row.get("order_id"))
        if order is None and row.get("key") in by_key:
            order = by_key[row["key"]]
            row = {**row, "order_id": order.pk, "reference": order.reference, "error": None}
        now.append(row if order is None else {**row, "status": order.status, "reason": order.outcome_reason})
    return now


def scheduled_of(user) -> QuerySet[ScheduledOrder]:
    """The user's scheduled orders: those still to run first, soonest first; then the done and
    cancelled ones (no next run), newest first. (A NULL sorts first on MariaDB and SQLite.)"""
    rows = ScheduledOrder.objects.filter(owner=user).select_related("account", "instrument")
    return rows.order_by(F("next_run_at").asc(nulls_last=True), "-pk")


def scheduled_one_of(user, pk) -> ScheduledOrder:
    return get_object_or_404(scheduled_of(user), pk=pk)


def scheduled_results_now(rows, fires=()) -> None:
    """Set ``result_now`` on each scheduled order of ``rows`` (its last result) and ``detail_now`` on
    each of its runs in ``fires``: the text as stored, or, where it names a run's order ("<reference>
    <status>..."), that order with its status and reason as they are now. A run's order that rested
    OPEN when it was placed, then filled, was cancelled or was refused by its broker since, is not
    shown OPEN for good (as placement results are not: ``basket_results``)."""
    rows, fires = list(rows), list(fires)
    texts = [(row.pk, row.last_result) for row in rows] + [(fire.scheduled_id, fire.detail) for fire in fires]
    references = {text.split(" ", 1)[0].split(":", 1)[0] for _pk, text in texts if text}
    orders = (
        {
            (order.scheduled_id, order.reference): order
            for order in Order.objects.filter(
                scheduled_id__in={pk for pk, _text in texts}, reference__in=references - {""}
            ).only("scheduled_id", "reference", "status", "reject_reason", "broker_order_id")
        }
        if references
        else {}
    )

    def now(scheduled_id: int, text: str) -> str:
        reference = text.split(" ", 1)[0].split(":", 1)[0]
        order = orders.get((scheduled_id, reference))
        if order is None:
            return text
        return f"{order.reference} {order.status}" + (f": {order.outcome_reason}" if order.outcome_reason else "")

    for row in rows:
        row.result_now = now(row.pk, row.last_result)
    for fire in fires:
        fire.detail_now = now(fire.scheduled_id, fire.detail)


def strategies_of(user) -> QuerySet[Strategy]:
    return Strategy.objects.filter(owner=user).prefetch_related("accounts")


def strategy_of(user, pk) -> Strategy:
    return get_object_or_404(strategies_of(user), pk=pk)


def signal_results(signal: StrategySignal, owner_id: int) -> list[dict]:
    """A signal's result rows, each placed order's with its status and reason as they are now
    (``basket_results``)."""
    return _rows_now(signal.results, owner_id) if signal.results else signal.results


def strategy_signals(strategy: Strategy, limit: int = 20) -> list[StrategySignal]:
    """A strategy's latest signals, each with ``rows``: its results with each placed order as it is
    now (``basket_results``): one its broker refused (or filled) since is not shown as answered then.
    A signal with no results recorded (its request still placing, or stopped before it recorded
    them) has the orders it placed so far as its rows, and ``unrecorded`` set: not "nothing placed"
    while an order of it stands."""
    signals = list(strategy.signals.all()[:limit])
    rows = _rows_now([row for signal in signals for row in signal.results], strategy.owner_id)
    unrecorded = signals_placed([signal for signal in signals if not signal.results], strategy.owner_id)
    for signal in signals:
        signal.rows, rows = rows[: len(signal.results)], rows[len(signal.results) :]
        signal.unrecorded = signal.pk in unrecorded
        for account_pk, order in sorted(unrecorded.get(signal.pk, {}).items()):
            signal.rows.append(
                {
                    "account_id": account_pk,
                    "account": order.account.label,
                    "order_id": order.pk,
                    "reference": order.reference,
                    "status": order.status,
                    "reason": order.outcome_reason,
                }
            )
    return signals


def signals_placed(signals, owner_id: int) -> dict[int, dict[int, Order]]:
    """The orders each of ``signals`` wrote (under ``sources._signal_key``), by signal id and then
    account id (one query; none for no signals). A signal that wrote none is not in it."""
    prefixes = {f"{owner_id}:signal:{signal.pk}:": signal.pk for signal in signals}
    if not prefixes:
        return {}
    keys = Q()
    for prefix in prefixes:
        keys |= Q(idempotency_key__startswith=prefix)
    placed: dict[int, dict[int, Order]] = {}
    for order in Order.objects.filter(keys).select_related("account", "instrument"):
        prefix, _, account_pk = order.idempotency_key.rpartition(":")
        if f"{prefix}:" in prefixes and account_pk.isdigit():
            placed.setdefault(prefixes[f"{prefix}:"], {})[int(account_pk)] = order
    return placed
