"""Where orders come from besides the ticket: baskets, scheduled orders and strategy signals.

Each source ends in ``services.order_place``, with an idempotency key that makes a repeat
(a double click, a redelivered task, a replayed signal) return the same order.
"""

import copy
import functools
import hashlib
import logging
import secrets
import time as time_module
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_FLOOR, Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import redis
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.shortcuts import get_object_or_404
from django.utils import timezone

from accounts.models import NOT_ZONES, BrokerAccount
from brokers import markets
from brokers.base import IST, instrument_expired, ist_today
from brokers.errors import AuthError, BrokerError, OutcomeUnknown
from brokers.models import Instrument
from brokers.selectors import (
    broker_prices_known,
    instrument_by_symbol,
    instrument_last_price,
    instruments_last_prices_asked,
)
from brokers.services import sessions_live, sessions_ready
from tradingplatform import background, locks
from tradingplatform.db import PlainUpdates

from . import selectors, services
from .models import Basket, BasketItem, BasketRun, Order, ScheduledFire, ScheduledOrder, Strategy, StrategySignal

logger = logging.getLogger(__name__)


def _copy_quantity(quantity: int, account: BrokerAccount, instrument: Instrument) -> int:
    """The quantity for one account of a copied order: times its multiplier, down to whole lots."""
    scaled = Decimal(quantity) * account.copy_multiplier
    lots = (scaled / instrument.lot_size).to_integral_value(ROUND_FLOOR)
    return int(lots) * instrument.lot_size


def _result(account: BrokerAccount, *, order: Order | None = None, error: ValidationError | None = None, **extra):
    row = {"account_id": account.pk, "account": account.label, **extra}
    if order is not None:
        row.update(
            order_id=order.pk,
            reference=order.reference,
            status=order.status,
            reason=order.outcome_reason,
        )
    if error is not None:
        field, messages = (
            next(iter(error.message_dict.items())) if hasattr(error, "error_dict") else (None, error.messages)
        )
        row.update(status="INVALID", error=" ".join(messages), field=None if field == "__all__" else field)
    return row


def _place_for(actor, account: BrokerAccount, spec: dict, quantity: int, **kwargs) -> dict:
    extra = {"symbol": spec["instrument"].tradingsymbol, "side": spec["side"], "quantity": quantity}
    if "quantity" in spec:
        # A basket item's own rules first: an item off its lot (a row from before its rules, a lot
        # size revised since) is its fault on every account, not cut to a lot the trader never asked
        # for (100 of a 75-lot placed as 75), nor blamed on a multiplier.
        try:
            services.spec_check(**spec)
        except ValidationError as refused:
            # Shown with the item's own quantity, the one at fault: not the copy's, cut to whole
            # lots ("BUY 75" beside "must be a multiple of the lot size, 75").
            return _result(account, error=refused, **{**extra, "quantity": spec["quantity"]})
    if quantity <= 0:
        return _below_one_lot(account, **extra)
    try:
        order = services.order_place(actor=actor, account=account, **{**spec, "quantity": quantity}, **kwargs)
    except ValidationError as error:
        return _result(account, error=error, **extra)
    return _result(account, order=order, **extra)


def _below_one_lot(account: BrokerAccount, **extra) -> dict:
    """The result of a copy whose quantity is under one lot after the account's multiplier: never placed."""
    multiplier = f"multiplier of {account.copy_multiplier}"
    error = ValidationError({"quantity": f"Below one lot on {account.label} after its {multiplier}."})
    return _result(account, error=error, **extra)


# Placements run side by side (each account's rate budget paces its own), on threads that keep
# their database connections while there is work: baskets' items and strategies' copies on one
# pool, scheduled orders on another (``SCHEDULE_FIRE_PARALLELISM`` at once per process, however
# many fire tasks a threads-pool worker runs side by side).
_copies = background.Pool("BASKET_PARALLELISM", "placing-copies")
_fires = background.Pool("SCHEDULE_FIRE_PARALLELISM", "placing-scheduled")


def _call(job):
    return job()


# --- Baskets ---------------------------------------------------------------------------------


def _place_item(actor, account: BrokerAccount, spec: dict, quantity: int, *, idempotency_key: str, **kwargs) -> dict:
    """``_place_for`` for one basket item: an unexpected error in it (a bug, a lost connection) is
    its own result, so the other items, placed or not, are still answered and recorded. The order
    its key wrote, if it got that far; else FAILED, which a repeat of the run places again. When
    that cannot be read either, it may have been sent: UNKNOWN, never "not placed"."""
    try:
        return _place_for(actor, _as_it_is_now(account), spec, quantity, idempotency_key=idempotency_key, **kwargs)
    except Exception as error:
        logger.exception("placing %s on %s failed", spec["instrument"].tradingsymbol, account.label)
        extra = {"symbol": spec["instrument"].tradingsymbol, "side": spec["side"], "quantity": quantity}
        try:
            order = Order.objects.filter(idempotency_key=f"{actor.pk}:{idempotency_key}").first()
        except DatabaseError:
            # Its key, for its order to be shown as it is once it can be read (``selectors._rows_now``).
            unknown = _result(account, status="UNKNOWN", key=f"{actor.pk}:{idempotency_key}", **extra)
            message = f"Not known whether it was placed ({type(error).__name__} on our side): see the order book"
            return {**unknown, "error": f"{message}; a repeat of this placement never places it twice."}
        if order is not None:  # as far as it got (a sync finishes it)
            return _result(account, order=order, **extra)
        failed = _result(account, status="FAILED", **extra)
        return {**failed, "error": f"Not placed: {type(error).__name__} on our side; place it again."}


def _as_it_is_now(account: BrokerAccount) -> BrokerAccount:
    """The account with whether it is active as it is now, not as the placement read it: one
    deactivated while its basket is placed (many items, a rate budget) gets none of the items not
    yet sent (``order_check`` names it)."""
    active = BrokerAccount.objects.filter(pk=account.pk).values_list("is_active", flat=True).first()
    if active is None or active == account.is_active:
        return account
    now = copy.copy(account)  # the placement's other items share the one it read
    now.is_active = active
    return now


def _clean_items(items: list[dict]) -> list[dict]:
    if not items:
        raise ValidationError({"items": "Add at least one item."})
    cleaned = []
    for index, item in enumerate(items):
        instrument = item.get("instrument")
        if not isinstance(instrument, Instrument):
            raise ValidationError({f"items.{index}.instrument": "No such instrument."})
        spec = {
            "side": item.get("side", ""),
            "order_type": item.get("order_type", "MARKET"),
            "product": item.get("product", "MIS"),
            "validity": item.get("validity", "DAY"),
        }
        try:  # the rules of the item's own fields now, not first when it is placed
            quantity, price, trigger_price = services.spec_check(
                instrument=instrument,
                quantity=item.get("quantity"),
                price=item.get("price"),
                trigger_price=item.get("trigger_price"),
                **spec,
            )
            row = BasketItem(
                instrument=instrument,
                quantity=quantity,
                price=price,
                trigger_price=trigger_price,
                position=index,
                **spec,
            )
            row.full_clean(exclude=["basket"])
        except ValidationError as error:
            field, messages = next(iter(error.message_dict.items()))
            raise ValidationError({f"items.{index}.{field}": messages}) from None
        cleaned.append(row)
    return cleaned


def _owned_accounts(owner, account_ids, *, kept=None) -> list[BrokerAccount]:
    """The owner's accounts of these ids. With ``kept`` (what a basket or strategy being saved
    has now), a deactivated account is refused unless it is one of them: it could place nothing."""
    ids = list(dict.fromkeys(int(i) for i in account_ids or []))
    accounts = list(BrokerAccount.objects.filter(owner=owner, pk__in=ids))
    if len(accounts) != len(ids):
        raise ValidationError({"account_ids": "No such broker account."})
    if kept is not None:
        kept_ids = set(kept.accounts.values_list("pk", flat=True)) if kept.pk else set()
        for account in accounts:
            if not account.is_active and account.pk not in kept_ids:
                raise ValidationError({"account_ids": f"{account.label} is deactivated; reactivate it first."})
    return accounts


BASKET_NAME_TAKEN = "You already have a basket with this name."


def _basket_name(owner, name: str, basket: Basket | None) -> str:
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "Give the basket a name."})
    if Basket.objects.filter(owner=owner, name=name).exclude(pk=basket.pk if basket else None).exists():
        raise ValidationError({"name": BASKET_NAME_TAKEN})
    return name


@contextmanager
def _name_written(model, owner, name: str, row, taken: str):
    """Around the write of a row's name: a name another request took after it was checked (two
    creates or renames to one name at the same moment, stopped by the unique constraint) is the
    check's own refusal naming ``name``, not a 500. Everything the save wrote is rolled back."""
    try:
        with transaction.atomic():
            yield
    except IntegrityError:
        if model.objects.filter(owner=owner, name=name).exclude(pk=row.pk if row else None).exists():
            raise ValidationError({"name": taken}) from None
        raise


def basket_save(
    *,
    owner,
    name: str,
    items: list[dict],
    account_ids,
    basket: Basket | None = None,
    create_key: str | None = None,
) -> Basket:
    """Create a basket, or replace its name, accounts and items: ``basket_change`` with every field,
    under the basket's row lock, so two saves at the same time are made one after the other (the
    basket ends as one of them left it, never with the items of both).

    ``create_key`` (a create's one-time form token): a repeat of the create (a double click, a
    reload) returns the basket the first made, ``replayed`` set, rather than "name taken" by it.
    The same key asking for another basket (another name, accounts or items) is refused on
    ``idempotency_key``."""
    if basket is not None:
        return basket_change(
            owner=owner, basket=basket, name=name or "", items=items or [], account_ids=account_ids or []
        )
    key = f"{owner.pk}:{create_key}" if create_key else None
    try:
        with transaction.atomic():
            return _basket_repeat(owner, key, name, items, account_ids) or _basket_create(
                owner, key, name, items, account_ids
            )
    except (ValidationError, IntegrityError):
        # The first request committed its basket while this one was written (the unique index waited for it).
        made = _basket_repeat(owner, key, name, items, account_ids)
        if made is None:
            raise
        return made


def _basket_create(owner, key: str | None, name: str, items: list[dict], account_ids) -> Basket:
    name = _basket_name(owner, name, None)
    rows = _clean_items(items)
    accounts = _owned_accounts(owner, account_ids, kept=Basket())
    with _name_written(Basket, owner, name, None, BASKET_NAME_TAKEN):
        basket = Basket.objects.create(owner=owner, name=name, create_key=key)
    _items_write(basket, rows)
    basket.accounts.set(accounts)
    return basket


def _basket_repeat(owner, key: str | None, name: str, items: list[dict], account_ids) -> Basket | None:
    """The basket a create with this key made (None if none has), if it is what this one asks for."""
    first = Basket.objects.filter(owner=owner, create_key=key).first() if key else None
    if first is None:
        return None
    rows = _clean_items(items)
    asked = ((name or "").strip(), {int(pk) for pk in account_ids or []}, [_item_terms(row) for row in rows])
    made = (first.name, set(first.accounts.values_list("pk", flat=True)), [_item_terms(i) for i in first.items.all()])
    if asked != made:
        text = "This form was already used for a different basket; check it and submit again."
        raise ValidationError({"idempotency_key": ValidationError(text, code="conflict")})
    first.replayed = True
    return first


def _item_terms(item: BasketItem) -> tuple:
    return (item.instrument_id, *(getattr(item, name) for name in (*_ITEM_TERMS, *_ITEM_PRICES)))


def _items_write(basket: Basket, rows: list[BasketItem]) -> None:
    """The basket's items, all replaced by ``rows`` (checked)."""
    basket.items.all().delete()
    for row in rows:
        row.basket = basket
    BasketItem.objects.bulk_create(rows)


@transaction.atomic
def basket_change(
    *, owner, basket: Basket, name: str | None = None, items: list[dict] | None = None, account_ids=None
) -> Basket:
    """Change what is given of a basket (None: kept), checked as ``basket_save`` checks it.

    Under the basket's row lock, taken before anything is read: edits of different fields made at
    the same time all stay, and each is checked against what the one before it left. Items given
    replace them all; items not given keep their rows.
    """
    basket = _locked(Basket, basket, owner)
    if name is None and items is None and account_ids is None:
        return basket
    if name is not None:
        basket.name = _basket_name(owner, name, basket)
    rows = _clean_items(items) if items is not None else None
    accounts = _owned_accounts(owner, account_ids, kept=basket) if account_ids is not None else None
    with _name_written(Basket, owner, basket.name, basket, BASKET_NAME_TAKEN):
        basket.save(update_fields=["name", "updated_at"])
    if rows is not None:
        _items_write(basket, rows)
    if accounts is not None:
        basket.accounts.set(accounts)
    return basket


def _locked(model, row, owner):
    """``row`` read again under its row lock (in the caller's transaction): the values another
    edit committed meanwhile, and none committed until this one is. Gone meanwhile: 404."""
    return get_object_or_404(model.objects.select_for_update(), pk=row.pk, owner=owner)


def _basket_key(basket: Basket, run_token: str, account_pk: int, number: int) -> str:
    """The idempotency key of a run's order of the basket's ``number``-th item on an account."""
    return f"basket:{basket.pk}:{run_token}:{account_pk}:#{number}"


def _placed_by_run(actor, basket: Basket, run_token: str, accounts) -> dict[tuple[int, int], Order]:
    """The orders a run of the basket wrote on these accounts, by (account id, item number): every
    one, an item taken off the basket since included (one query)."""
    prefix = f"{actor.pk}:basket:{basket.pk}:{run_token}:"  # ``_basket_key``'s, before the account
    wanted = {account.pk for account in accounts}
    placed = {}
    for order in Order.objects.filter(idempotency_key__startswith=prefix).select_related("account", "instrument"):
        account_pk, _, number = order.idempotency_key.removeprefix(prefix).partition(":#")
        # Another run's token that starts as this one does ("t1:5...") is not of this run.
        if account_pk.isdigit() and number.isdigit() and int(account_pk) in wanted:
            placed[int(account_pk), int(number)] = order
    return placed


def _replayed_item(account: BrokerAccount, order: Order) -> dict:
    """A repeat's answer of an order its run already wrote, as ``order_place`` answers a repeat
    of its key (``services.order_replayed``); an unexpected error in that, the order as read."""
    try:
        order = services.order_replayed(order)
    except Exception:
        logger.exception("answering %s again failed", order.reference)
    return _result(account, order=order, **_terms(order))


def _terms(order: Order) -> dict:
    return {"symbol": order.instrument.tradingsymbol, "side": order.side, "quantity": order.quantity}


def _basket_run(
    basket: Basket, actor, run_token: str, account_ids, accounts: list[BrokerAccount], items: list[BasketItem]
) -> tuple[list[BasketItem], bool, BasketRun]:
    """Record what a run token asks for, the accounts it places on and the items it places, the
    first time it is sent; returns the run's items (as they were then), whether this was it, and the run.
    Sent again asking for other accounts or another basket, it is a conflict (its orders' keys
    would place the new ask)."""
    asked = sorted({int(pk) for pk in account_ids}) if account_ids is not None else None
    run, created = BasketRun.objects.get_or_create(
        owner=actor,
        token=run_token,
        defaults={
            "basket": basket,
            "account_ids": asked,
            "placed_on": [account.pk for account in accounts],
            "items": [_item_record(item) for item in items],
            "placing": True,
        },
    )
    if run.basket_id != basket.pk or run.account_ids != asked:
        message = (
            "This placement was already made for other accounts or another basket; start a new one "
            "to place this (the API: a new Idempotency-Key; the page: Place again)."
        )
        raise ValidationError({"idempotency_key": ValidationError(message, code="conflict")})
    return (items if created or run.items is None else _recorded_items(run.items)), created, run


_ITEM_TERMS = ("side", "quantity", "order_type", "product", "validity")
_ITEM_PRICES = ("price", "trigger_price")


def _item_record(item: BasketItem) -> dict:
    """What a run keeps of one of its items (prices as text: JSON has no decimals)."""
    prices = {name: None if getattr(item, name) is None else str(getattr(item, name)) for name in _ITEM_PRICES}
    return {"instrument_id": item.instrument_id, **{name: getattr(item, name) for name in _ITEM_TERMS}, **prices}


def _recorded_items(records: list[dict]) -> list[BasketItem]:
    """A run's items as ``_item_record`` kept them (not saved: what a repeat of the run places)."""
    instruments = Instrument.objects.in_bulk({record["instrument_id"] for record in records})
    return [
        BasketItem(
            instrument=instruments[record["instrument_id"]],
            **{name: record[name] for name in _ITEM_TERMS},
            **{name: None if record[name] is None else Decimal(record[name]) for name in _ITEM_PRICES},
        )
        for record in records
    ]


def _run_accounts(actor, placed_on: list[int]) -> list[BrokerAccount]:
    """The accounts a run placed on (``BasketRun.placed_on``), in its order, those still there."""
    owned = BrokerAccount.objects.filter(owner=actor, pk__in=placed_on).in_bulk()
    return [owned[pk] for pk in placed_on if pk in owned]


def basket_copies(basket: Basket) -> list[dict]:
    """What a Place on the basket's own accounts sends each of them: per account (``account``,
    ``active``) its items, each with the quantity it becomes there (``_copy_quantity``; 0: under one
    lot, not placed) and why the item itself is refused on every account, if it is (``_place_for``):
    ``(item, quantity, refusal)``. The basket's items and accounts prefetched are read as they are."""
    items = [(item, _spec_refusal(item.spec())) for item in basket.items.all()]
    return [
        {
            "account": account,
            "active": account.is_active,
            "items": [
                (item, _copy_quantity(item.quantity, account, item.instrument), refusal) for item, refusal in items
            ],
        }
        for account in basket.accounts.all()
    ]


def _spec_refusal(spec: dict) -> str | None:
    """Why an item's own terms are refused, whatever the account (``services.spec_check``), or None."""
    try:
        services.spec_check(**spec)
    except ValidationError as refused:
        return " ".join(refused.messages)
    return None


BEING_PLACED = "Being placed, or its placement stopped before it answered: see the order book before placing it again."


# A placement holds its run's lock while it places (renewed: however long its items take, their
# broker calls and rate-budget waits); it expires this long after the process placing it ended.
PLACING_LOCK_TTL_S = 60
# A run's rows are judged only this long after it began, however free its lock: Redis restarted
# (its locks lost) while it places must not make it look ended. Well past one item's placement
# (3 attempts, each up to 10 s for a budget slot, ``KITE_TIMEOUT_S`` for the call and a look by tag).
PLACEMENT_STALE_S = 600

NOT_SENT = (
    "Not placed: its placement stopped (the process placing it ended) before sending it, and nothing was sent "
    "to the broker. Place it again."
)


def _run_lock(owner_id: int, run_token: str) -> str:
    return f"orders:placing-basket:{owner_id}:{run_token}"


@contextmanager
def _placing(lock: str):
    """Hold a placement's lock (a basket run's, a signal's) while the block places, renewed however
    long it takes: the sweeps (``basket_runs_finish``, ``signals_finish``) tell a placement whose
    process ended from one still placing by it. Placed without it when another request of the same
    placement holds it (its keys place each order once) or when Redis cannot be asked: each order
    is then refused for its rate budget, as an order placed alone is, not the whole request failed
    with nothing said; and a sweep cannot take the lock either."""
    try:
        token = locks.acquire(lock, ttl_s=PLACING_LOCK_TTL_S)
    except redis.RedisError:
        logger.warning("placing without its lock %s: Redis cannot be asked", lock, exc_info=True)
        token = None
    try:
        with locks.kept({lock: token}, ttl_s=PLACING_LOCK_TTL_S) if token else nullcontext():
            yield
    finally:
        if token:
            locks.release(lock, token)


def basket_place(*, basket: Basket, actor, run_token: str, account_ids=None) -> list[dict]:
    """Place every item on every chosen account, concurrently; one result per item and account,
    ``item`` its number in the basket (1: the first).

    One failure does not undo the others. ``run_token`` makes a repeat of the same
    placement (a double click) return the same orders instead of placing them again. Its run's
    lock is held while it places: a run whose rows were left "being placed" by a process that
    ended is told from one still placing by it (``basket_runs_finish``).
    """
    if basket.owner_id != actor.pk:
        raise ValidationError({"basket": "No such basket."})
    with _placing(_run_lock(actor.pk, run_token)):
        return _basket_place(basket, actor, run_token, account_ids)


def _basket_place(basket: Basket, actor, run_token: str, account_ids) -> list[dict]:
    # None: the basket's own accounts; an empty choice places nothing (not on every account).
    accounts = _owned_accounts(actor, account_ids) if account_ids is not None else list(basket.accounts.all())
    if account_ids is None:
        # A repeat of a run on the basket's own accounts is on those it placed on then, whatever
        # the basket's list is now: a retry never places on an account added since.
        placed_on = BasketRun.objects.filter(owner=actor, token=run_token).values_list("placed_on", flat=True).first()
        if placed_on is not None:
            accounts = _run_accounts(actor, placed_on)
    if not accounts:
        raise ValidationError({"account_ids": "Choose at least one account."})
    # A repeat places the items its placement asked for (as it does on the accounts it placed on),
    # whatever the basket has now: an item put in front since moved the others down a place, and
    # the last of them, already placed, was placed again.
    current = list(basket.items.select_related("instrument"))
    if not current and not BasketRun.objects.filter(owner=actor, token=run_token).exists():
        # Its items all taken off (in the admin): nothing to place, not an empty placement.
        raise ValidationError({"items": "This basket has no items; add one first."})
    items, first, run = _basket_run(basket, actor, run_token, account_ids, accounts, current)
    if not first and account_ids is None and run.placed_on not in (None, [account.pk for account in accounts]):
        # Its first request recorded the run after this one read the accounts (both sent at once, the
        # basket's accounts edited in between): the run's, not what this one read.
        accounts = _run_accounts(actor, run.placed_on)
    # An item's key is its place in the basket, not its row: items saved again (a rename that
    # sends them, a PUT) are new rows, and a repeat of the placement must still find its orders.
    # A repeat answers what the placement placed, as it was placed: an item or a copy multiplier
    # changed since would make it "a different order", read as not placed (and placed again); an
    # item taken off the basket since is still answered (else read as never placed).
    placed = {} if first else _placed_by_run(actor, basket, run_token, accounts)
    jobs = []  # (account's place, item number, job)
    sending = []  # the first request's rows until they are answered, in the jobs' order
    for place, account in enumerate(accounts):
        numbers = [number for pk, number in placed if pk == account.pk]
        for number in range(1, max([len(items), *numbers]) + 1):
            if (account.pk, number) in placed:
                # As order_place answers a repeat of its key: one still being sent is waited for, one
                # left NEW by a request that died is looked up at its broker (not answered NEW: read
                # as on its way, though it may never have been sent).
                order = placed[account.pk, number]
                jobs.append((place, number, lambda account=account, order=order: _replayed_item(account, order)))
                continue
            if number > len(items):
                continue  # a number of an item taken off since that placed nothing: nothing to answer
            item = items[number - 1]
            quantity = _copy_quantity(item.quantity, account, item.instrument)
            key = _basket_key(basket, run_token, account.pk, number)
            jobs.append(
                (
                    place,
                    number,
                    lambda account=account, item=item, quantity=quantity, key=key: _place_item(
                        actor,
                        account,
                        item.spec(),
                        quantity,
                        source=Order.Source.BASKET,
                        basket=basket,
                        cause=f"basket {basket.name}",
                        idempotency_key=key,
                    ),
                )
            )
            terms = {"symbol": item.instrument.tradingsymbol, "side": item.side, "quantity": quantity}
            unknown = _result(account, status="UNKNOWN", key=f"{actor.pk}:{key}", **terms)
            sending.append({**unknown, "item": number, "error": BEING_PLACED})
    newer = BasketRun.objects.filter(basket=OuterRef("pk"), pk__gt=run.pk)
    if first:
        # Its rows before anything is sent, each showing its order once its key wrote one
        # (``selectors.basket_results``): a page read while it is placed, or after the request
        # stopped half-way (its worker killed, the database lost), shows what it placed, not the
        # placement before it, whose results read as though none of it had been (placed again).
        Basket.objects.filter(~Exists(newer), pk=basket.pk).update(last_placed_at=timezone.now(), last_results=sending)
    # Sent item by item across the accounts, not account by account: a slow or rate-limited
    # account's items must not take every sending thread while the other accounts' wait. The
    # results keep the accounts' order.
    turns = sorted(range(len(jobs)), key=lambda index: (jobs[index][1], jobs[index][0]))
    results = [None] * len(jobs)
    for index, result in zip(turns, _copies.map(_call, [jobs[index][2] for index in turns]), strict=True):
        # Which item it is: two of one symbol, side and quantity (a ladder of limits, MIS beside
        # CNC) were rows alike, a refusal of either told of neither.
        results[index] = {**result, "item": jobs[index][1]}
    # The basket's last results are its latest placement's: a repeat of an earlier one (its key
    # sent again after the basket was placed anew) answers its own orders, and leaves them be.
    Basket.objects.filter(~Exists(newer), pk=basket.pk).update(last_placed_at=timezone.now(), last_results=results)
    BasketRun.objects.filter(pk=run.pk, placing=True).update(placing=False)
    return results


def basket_runs_finish(*, now: datetime | None = None, limit: int = 100) -> int:
    """Finish the result rows of basket placements whose process ended before answering (its worker
    killed, a deploy): a row still "being placed" (UNKNOWN) whose order was never written was never
    sent (an order is written, with its key and tag, before it goes to its broker), and is shown
    not placed (FAILED, ``NOT_SENT``), which a repeat of the run places. A row whose order exists is
    that order, whatever its status: the order's own path (its sync, its look-up by tag) settles it.

    A row is judged only once its run's lock is free (no request of the run is placing) and the run
    began ``PLACEMENT_STALE_S`` ago. Idempotent, and safe with two workers at it: each run is taken
    under its lock, each basket under its row lock. Returns how many rows it finished."""
    cutoff = (now or timezone.now()) - timedelta(seconds=PLACEMENT_STALE_S)
    finished = 0
    for run in BasketRun.objects.filter(placing=True, created_at__lt=cutoff).order_by("pk")[:limit]:
        lock = _run_lock(run.owner_id, run.token)
        token = locks.acquire(lock, ttl_s=PLACING_LOCK_TTL_S)
        if token is None:
            continue  # a request of it is placing: its answer records its rows
        try:
            finished += _basket_run_finish(run)
        finally:
            locks.release(lock, token)
    return finished


def _basket_run_finish(run: BasketRun) -> int:
    with transaction.atomic():
        basket = Basket.objects.select_for_update().filter(pk=run.basket_id).first()
        latest = not BasketRun.objects.filter(basket_id=run.basket_id, pk__gt=run.pk).exists()
        rows, finished = list(basket.last_results or []) if basket is not None and latest else [], 0
        prefix = f"{run.owner_id}:basket:{run.basket_id}:{run.token}:"  # this run's keys (``_placed_by_run``)
        keys = {
            row["key"]
            for row in rows
            if row.get("status") == "UNKNOWN" and not row.get("order_id") and str(row.get("key", "")).startswith(prefix)
        }
        written = set(Order.objects.filter(idempotency_key__in=keys).values_list("idempotency_key", flat=True))
        for index, row in enumerate(rows):
            if row.get("key") in keys and row["key"] not in written:
                # Its key kept: an order written under it after all (a repeat of the run) is shown.
                rows[index] = {**row, "status": "FAILED", "error": NOT_SENT}
                finished += 1
        if finished:
            Basket.objects.filter(pk=basket.pk).update(last_results=rows)
        BasketRun.objects.filter(pk=run.pk).update(placing=False)
    return finished


# --- Scheduled orders -------------------------------------------------------------------------

# In the zone database but not places (as the trader's own zone: ``accounts.models.NOT_ZONES``).
_NOT_ZONES = NOT_ZONES


@functools.cache
def zone_names() -> frozenset[str]:
    """The zones a trader may choose: the IANA names of places."""
    return frozenset(name for name in available_timezones() if name not in _NOT_ZONES)


def _zone(name: str, *, new: bool = False) -> ZoneInfo:
    """A zone by name. ``new``: one a trader gives now, which must be an IANA name ("localtime" and
    file paths are not zones: the time would depend on the server); a stored one is read as it is."""
    if new and name not in zone_names():
        raise ValidationError({"timezone": "Unknown timezone; use an IANA name such as Asia/Kolkata."})
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValidationError({"timezone": "Unknown timezone; use an IANA name such as Asia/Kolkata."}) from None


def _wall_time(day: date, time_of_day: time, zone: ZoneInfo, after: datetime) -> datetime:
    """``time_of_day`` on ``day`` in ``zone``, in UTC. A time the clocks go back over happens
    twice: its first moment, or its second when the first has passed by ``after`` and by the clock
    it is still to come (``after`` in the repeated hour, before that time): the same wall time is
    one run, never both. A time the clocks skip (spring forward) is the moment they jump, the first
    one after it (02:30 in New York on 8 March 2026 is 03:00 EDT): not 03:30, an hour late by the
    clock, which is how the zone database reads it."""
    wall = datetime.combine(day, time_of_day, tzinfo=zone)
    first, second = wall.astimezone(UTC), wall.replace(fold=1).astimezone(UTC)
    if second < first:  # skipped: ``first`` is read with the offset before the jump, ``second`` after it
        return _clocks_jump(zone, second, first)
    still_to_come = after.astimezone(zone).replace(tzinfo=None) < wall.replace(tzinfo=None)
    return second if first <= after < second and still_to_come else first


def _clocks_jump(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The instant ``zone``'s clocks jump forward between ``before`` and ``after`` (UTC, at most a
    few hours apart, the jump between them), to the second: the first whose clock reads later than
    the ones before it."""
    while after - before > timedelta(seconds=1):
        middle = before + (after - before) / 2
        if middle.astimezone(zone).utcoffset() == before.astimezone(zone).utcoffset():
            before = middle
        else:
            after = middle
    return after.replace(microsecond=0)


def next_occurrence(scheduled: ScheduledOrder, after: datetime) -> datetime | None:
    """The first due time strictly after ``after`` (aware), in UTC; None when there is none."""
    zone = _zone(scheduled.timezone)
    if scheduled.recurrence == ScheduledOrder.Recurrence.ONCE:
        due = _wall_time(scheduled.run_on, scheduled.time_of_day, zone, after)
        return due if due > after else None
    trading_days = scheduled.recurrence == ScheduledOrder.Recurrence.TRADING_DAYS
    local_day = after.astimezone(zone).date()
    # A week and a day for chosen weekdays; past a run of holidays too for trading days.
    for offset in range(0, 40 if trading_days else 9):
        day: date = local_day + timedelta(days=offset)
        due = _wall_time(day, scheduled.time_of_day, zone, after)
        # A trading day is the exchange's (23:30 in New York is the next morning in India), and
        # not one of its holidays (``EXCHANGE_HOLIDAYS``); chosen weekdays are the trader's own.
        if trading_days:
            exchange_day = _exchange_day(scheduled, due)
            runs = markets.is_trading_day(exchange_day)
            # One run an exchange day: where the trader's clocks moved forward on a weekday (Cairo,
            # Jerusalem), the day before's time fell on this exchange day too; when that was the
            # run just made (not one that passed before the order was looked at), this is not one.
            before = _wall_time(day - timedelta(days=1), scheduled.time_of_day, zone, after)
            if runs and before >= after and before.astimezone(IST).date() == exchange_day:
                runs = False
        else:
            runs = day.weekday() in scheduled.weekdays
        if runs and due > after:
            return due
    return None


def _exchange_day(scheduled: ScheduledOrder, due: datetime) -> date:
    """The exchange's day (IST) whose run a trading-days order's ``due`` time is: its own day there;
    or the trading day before it, when its own is not one and the trader's clocks moved so that the
    time of their day before fell two exchange days back (Cairo's go back at the end of Thursday
    29 October 2026: 21:00 there is 23:30 on Thursday in India, then 00:30 on Saturday; Friday had
    no time of the trader's on it and no run): the trader's Friday time is Friday's run, not none."""
    own = due.astimezone(IST).date()
    skipped = own - timedelta(days=1)
    if markets.is_trading_day(own) or not markets.is_trading_day(skipped):
        return own
    zone = _zone(scheduled.timezone)
    before = _wall_time(due.astimezone(zone).date() - timedelta(days=1), scheduled.time_of_day, zone, due)
    return skipped if before.astimezone(IST).date() < skipped else own


SCHEDULE_MAX_YEARS_AHEAD = 10


def scheduled_save(
    *,
    owner,
    account: BrokerAccount,
    spec: dict,
    recurrence: str,
    time_of_day: time,
    timezone_name: str,
    run_on: date | None = None,
    weekdays=None,
    grace_s: int = 0,
    scheduled: ScheduledOrder | None = None,
    idempotency_key: str | None = None,
) -> ScheduledOrder:
    """Create a scheduled order, or replace all of one; its order is checked now, as if placed.

    What is given is checked first; a replace then takes the row's lock and is decided and written
    under it (``_scheduled_write``), as a change (``scheduled_change``) is. ``idempotency_key`` (a
    create's): a repeat (a double submit, at once or after) returns the first one instead of making
    a second, which would place every run twice; a repeat asking for something else is refused.
    A repeat is not checked again as if placed now: the account's limits lowered or its one-off
    time come since, it is still the first one (refused, its sender could schedule it twice)."""
    key = f"{owner.pk}:{idempotency_key}" if idempotency_key and scheduled is None else None
    first = ScheduledOrder.objects.filter(idempotency_key=key).first() if key else None
    asked = {
        "owner": owner,
        "account": account,
        "spec": spec,
        "recurrence": recurrence,
        "time_of_day": time_of_day,
        "timezone_name": timezone_name,
        "run_on": run_on,
        "weekdays": weekdays,
        "grace_s": grace_s,
    }
    values = _scheduled_values(**asked, as_placed=first is None)
    if first is None:
        try:
            with transaction.atomic():
                if scheduled is None:
                    row = ScheduledOrder(owner=owner, idempotency_key=key)
                else:
                    row = _locked(ScheduledOrder, scheduled, owner)
                return _scheduled_write(row, values)
        except IntegrityError:
            # The key's first request committed its row while this one was written (the unique index waited for it).
            first = ScheduledOrder.objects.filter(idempotency_key=key).first() if key else None
            if first is None:
                raise
    if any(getattr(first, name) != value for name, value in values.items()):
        text = "This form was already used for a different scheduled order; check it and submit again."
        raise ValidationError({"idempotency_key": ValidationError(text, code="conflict")})
    first.replayed = True
    return first


def _scheduled_values(
    *, owner, account, spec: dict, recurrence, time_of_day, timezone_name, run_on, weekdays, grace_s, as_placed=True
) -> dict:
    """A scheduled order's fields as given, checked (its order as if placed now, unless not
    ``as_placed``: then by its own rules only, as a repeat of a create is compared with the first),
    whatever it has now."""
    if as_placed:
        checked = services.order_check(actor=owner, account=account, **spec)
        quantity, price, trigger_price = checked.quantity, checked.price, checked.trigger_price
    else:
        quantity, price, trigger_price = services.spec_check(**spec)
    # As it will be placed (and stored: "1E+3" is 1000.00).
    spec = {**spec, "quantity": quantity, "price": price, "trigger_price": trigger_price}
    weekdays = sorted({int(day) for day in weekdays or []}) if recurrence == ScheduledOrder.Recurrence.WEEKDAYS else []
    if recurrence == ScheduledOrder.Recurrence.ONCE and run_on is None:
        raise ValidationError({"run_on": "Choose the date."})
    if recurrence == ScheduledOrder.Recurrence.WEEKDAYS and not weekdays:
        raise ValidationError({"weekdays": "Choose at least one weekday."})
    if not set(weekdays) <= set(range(7)):
        raise ValidationError({"weekdays": "Weekdays are 0 (Monday) to 6 (Sunday)."})
    if recurrence not in ScheduledOrder.Recurrence.values:
        raise ValidationError({"recurrence": "Choose once, every trading day or chosen weekdays."})
    zone = _zone(timezone_name, new=True)
    if recurrence == ScheduledOrder.Recurrence.ONCE and as_placed:
        if run_on > timezone.now().date() + timedelta(days=366 * SCHEDULE_MAX_YEARS_AHEAD):
            raise ValidationError({"run_on": f"Choose a date within {SCHEDULE_MAX_YEARS_AHEAD} years."})
        # Before yesterday (UTC) it is past in every zone; and 0001-01-01 east of UTC has no UTC time.
        if run_on < timezone.now().date() - timedelta(days=1):
            raise ValidationError({"run_on": "That time has already passed."})
        wall = datetime.combine(run_on, time_of_day, tzinfo=zone)
        if wall.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != wall.replace(tzinfo=None):
            skipped = f"{time_of_day:%H:%M} does not exist on {run_on} in {timezone_name} (the clocks skip it)."
            raise ValidationError({"time_of_day": skipped})
    return {
        "account": account,
        **spec,
        "recurrence": recurrence,
        "weekdays": weekdays,
        "time_of_day": time_of_day,
        "timezone": timezone_name,
        # A one-off's alone: kept on a recurring order, a later change back to once would reuse it.
        "run_on": run_on if recurrence == ScheduledOrder.Recurrence.ONCE else None,
        "grace_s": int(grace_s or 0),
    }


def _scheduled_write(row: ScheduledOrder, values: dict) -> ScheduledOrder:
    """Write checked ``values`` over ``row`` (a new one, or one read under its row lock in the
    caller's transaction) with its next due time, and drop the due times they replace.

    Under that lock its due times stay as they are read here: the dispatcher claims one, a worker
    prepares one or takes one to send it (PENDING -> PREPARED -> PLACING) and a cancel drops one
    only under it too. So a due
    time still waiting for a worker is placed as this write leaves the order (or dropped by it),
    and one a worker took is being placed as it was: the change is refused until it is placed. A
    one-off order whose run was placed is not armed again by a change (an edit page opened before
    its time, sent after it): refused too. One reading of the clock for all of it, so a due time
    that comes while this is written is either dropped as come or as still to come."""
    if row.pk is not None:
        if row.status == ScheduledOrder.Status.CANCELLED:  # read before a cancel on another tab: it stays cancelled
            raise _cancelled()
        _not_while_placing(row)
        _not_after_its_run(row)
    placed_as = (row.account_id, row.spec()) if row.pk is not None else None
    now = timezone.now()
    days_run = _days_run(row, now)  # as it was: in the zone its runs were placed in
    for name, value in values.items():
        setattr(row, name, value)
    start, came_due, end_of_today = _not_again_today(row, now)
    row.next_run_at = _not_on_a_day_run(row, next_occurrence(row, start), days_run)
    if row.next_run_at is None:
        raise ValidationError({"run_on": "That time has already passed."})
    _not_after_its_expiry(row)
    row.status = ScheduledOrder.Status.ACTIVE
    row.full_clean(exclude=["owner", "account", "instrument", "idempotency_key"])  # its unique index decides
    if came_due:
        # Today's due time came and is still unplaced: the later time today replaces it.
        _drop(ScheduledFire.objects.filter(pk__in=came_due), "replaced by an edit of its order")
    row.save()
    # A time claimed ahead for the old settings must not fire (if the new settings keep it, the next
    # claim takes it again); one whose time has come places with the new settings: if its order was
    # prepared with the old ones, that order is closed unsent and the worker writes it anew.
    _drop_pending_fires(row, only_future=True, now=now)
    # Today's came-due time the edit kept places as today's run of the order as it is now.
    for pk, due_at in ScheduledFire.objects.filter(scheduled_id=row.pk, status__in=ScheduledFire.WAITING).values_list(
        "pk", "due_at"
    ):
        ScheduledFire.objects.filter(pk=pk).update(run_day=_run_day(row, due_at))
    # A due time still to come whose order failed its check ahead of it: claimed again as the
    # edit leaves the order (the edit may be the trader's correction).
    ScheduledFire.objects.filter(scheduled_id=row.pk, status=ScheduledFire.Status.FAILED, due_at__gt=now).update(
        status=ScheduledFire.Status.CANCELLED, detail="failed its check ahead of its time; changed since"
    )
    if placed_as is not None and placed_as != (row.account_id, row.spec()):
        _unprepare(
            ScheduledFire.objects.filter(scheduled_id=row.pk), "its scheduled order was changed before it was sent"
        )
    return row


def _not_after_its_expiry(row: ScheduledOrder) -> None:
    """Refuse a schedule whose next run comes after its contract's last trading day: its order
    could only fail then, on the expired contract."""
    expiry = getattr(row.instrument, "expiry", None)
    if expiry is None or not instrument_expired(row.instrument, today=markets.trading_date(row.next_run_at)):
        return
    field = "run_on" if row.recurrence == ScheduledOrder.Recurrence.ONCE else "instrument"
    next_run = _due_text(row, row.next_run_at)
    raise ValidationError(
        {field: f"{row.instrument} expires on {expiry:%Y-%m-%d}, before this order's next run ({next_run})."}
    )


def _not_after_its_run(row: ScheduledOrder) -> None:
    """Refuse to change a one-off order (as stored) whose run placed its order: it ran. Its run is
    its stored due time (a daily order made one-off keeps its earlier days' runs: not this one's)."""
    if row.recurrence != ScheduledOrder.Recurrence.ONCE or row.run_on is None:
        return
    wall = datetime.combine(row.run_on, row.time_of_day, tzinfo=_zone(row.timezone))
    dues = {wall.astimezone(UTC), wall.replace(fold=1).astimezone(UTC)}  # either moment of a time the clocks repeat
    placed = ScheduledFire.objects.filter(
        scheduled_id=row.pk, status=ScheduledFire.Status.PLACED, due_at__in=dues
    ).exists()
    if placed:
        text = "This one-off scheduled order has placed its order already; create a new one for another run."
        raise ValidationError({"scheduled": ValidationError(text, code="conflict")})


def _cancelled() -> ValidationError:
    return ValidationError(
        {"scheduled": ValidationError("This scheduled order is cancelled; create a new one.", code="conflict")}
    )


def _placing_due(row: ScheduledOrder) -> datetime | None:
    """The due time a worker is placing now (PLACING: too late to stop or change, it places the
    settings it was taken with), if any."""
    return (
        ScheduledFire.objects.filter(scheduled_id=row.pk, status=ScheduledFire.Status.PLACING)
        .order_by("due_at")
        .values_list("due_at", flat=True)
        .first()
    )


def _not_while_placing(row: ScheduledOrder) -> None:
    """Refuse to change a scheduled order while a worker places one of its due times. An answer
    with the new settings would tell the trader that order has them. Once it is placed (a moment),
    a change of a recurring order applies from its next due time."""
    due_at = _placing_due(row)
    if due_at is None:
        return
    text = f"This scheduled order's run due {_due_text(row, due_at)} is being placed now, as it was"
    if row.recurrence == ScheduledOrder.Recurrence.ONCE:
        text += "; it is too late to change it."
    else:
        text += "; send the change again once it is placed, and it applies from the next run."
    raise ValidationError({"scheduled": ValidationError(text, code="conflict")})


# What a change of a scheduled order may name: its order's fields and its schedule's.
SCHEDULED_ORDER_FIELDS = ("side", "quantity", "order_type", "product", "validity", "price", "trigger_price")
SCHEDULE_FIELDS = ("account", "recurrence", "time_of_day", "timezone_name", "run_on", "weekdays", "grace_s")


def scheduled_change(*, owner, scheduled: ScheduledOrder, **changes) -> ScheduledOrder:
    """Change what is given of a scheduled order and keep the rest as it is now: ``scheduled_save``
    with the stored values for the fields not given, so it is checked as a whole, as a replace is.

    ``changes``: ``SCHEDULED_ORDER_FIELDS``, ``SCHEDULE_FIELDS``, and ``exchange`` and
    ``tradingsymbol`` (either alone keeps the other). Under the row lock, so edits of different
    fields made at the same time all stay (the dispatcher skips the row meanwhile).
    """
    unknown = set(changes) - {*SCHEDULED_ORDER_FIELDS, *SCHEDULE_FIELDS, "exchange", "tradingsymbol"}
    if unknown:
        raise TypeError(f"unexpected fields: {sorted(unknown)}")
    with _broker_price_asked_first(scheduled, changes), transaction.atomic():
        row = _locked(ScheduledOrder, scheduled, owner)
        spec = row.spec()
        if "exchange" in changes or "tradingsymbol" in changes:
            current = row.instrument
            spec["instrument"] = instrument_by_symbol(
                changes.pop("exchange", current.exchange), changes.pop("tradingsymbol", current.tradingsymbol)
            )
        spec.update({name: changes.pop(name) for name in SCHEDULED_ORDER_FIELDS if name in changes})
        kept = {
            "account": row.account,
            "recurrence": row.recurrence,
            "time_of_day": row.time_of_day,
            "timezone_name": row.timezone,
            "run_on": row.run_on,
            "weekdays": row.weekdays,
            "grace_s": row.grace_s,
        }
        return _scheduled_write(row, _scheduled_values(owner=owner, spec=spec, **{**kept, **changes}))


def _broker_price_asked_first(scheduled: ScheduledOrder, changes: dict) -> AbstractContextManager:
    """The price the changed order's check asks its broker for (``services.value_check_asks_broker``:
    a quote call, waiting for the account's quote budget), asked before the row is locked and
    answered from then on (``broker_prices_known``): not asked with the row held, which the due
    time's send waits for. ``scheduled`` as the caller read it; a row changed meanwhile to another
    account or instrument is asked under the lock as before."""
    account = changes.get("account", scheduled.account)
    side, order_type = changes.get("side", scheduled.side), changes.get("order_type", scheduled.order_type)
    if not services.value_check_asks_broker(account, side, order_type):
        return nullcontext()
    current = scheduled.instrument
    instrument = instrument_by_symbol(
        changes.get("exchange", current.exchange), changes.get("tradingsymbol", current.tradingsymbol)
    )
    price = instrument_last_price(instrument, account=account) if instrument is not None else None
    return broker_prices_known(account.broker, {instrument.key: price} if price else {})


def _not_again_today(row: ScheduledOrder, now: datetime) -> tuple[datetime, list[int], datetime]:
    """Where an edited recurring order's next run is looked for, so that it places once a day:
    (from when, today's came-due fires the edit drops, the end of today in its zone).

    After today when today's run placed (or is placing) an order already. A due time of today that
    has come and is claimed but not taken by a worker yet (PENDING or PREPARED; ``_drop_pending_fires`` drops
    only those still to come): if the new settings have a time later today, that time replaces it
    (the edit drops it: one run today, at the time the trader asked, even if a late worker would have
    missed it); else it places with the new settings, and is today's run, unless today is no
    longer one of its days (the edit drops it: no run today).

    A one-off order's due time that has come and is not taken yet is replaced by the time the edit
    leaves (one run, at that time), or, when the edit leaves none ("already passed"), the edit is
    refused and it places as it was."""
    if row.pk is None:
        return now, [], now
    # "Today" is the exchange's day (IST) for a trading-days order, the trader's for the others.
    zone = IST if row.recurrence == ScheduledOrder.Recurrence.TRADING_DAYS else _zone(row.timezone)
    today = datetime.combine(now.astimezone(zone).date(), time.min, tzinfo=zone)
    end_of_today = max(now, today + timedelta(days=1) - timedelta(microseconds=1))
    fires = ScheduledFire.objects.filter(scheduled_id=row.pk, due_at__gte=today, due_at__lte=end_of_today)
    if row.recurrence == ScheduledOrder.Recurrence.ONCE:
        _not_on_a_day_it_placed(row, next_occurrence(row, now))
        came_due = ScheduledFire.objects.filter(
            scheduled_id=row.pk, status__in=ScheduledFire.WAITING, due_at__lte=now
        ).values_list("pk", flat=True)
        return now, list(came_due), now
    if fires.filter(status__in=[ScheduledFire.Status.PLACING, ScheduledFire.Status.PLACED]).exists():
        return end_of_today, [], end_of_today
    came_due = list(fires.filter(status__in=ScheduledFire.WAITING, due_at__lte=now).values_list("pk", flat=True))
    if not came_due:
        return now, [], end_of_today
    later_today = next_occurrence(row, now)
    if later_today is not None and later_today <= end_of_today:
        return now, came_due, end_of_today
    runs_today = next_occurrence(row, today - timedelta(microseconds=1))
    if runs_today is None or runs_today > end_of_today:  # today is no longer one of its days: no run today
        return now, came_due, end_of_today
    return end_of_today, [], end_of_today


def _day_zone(row: ScheduledOrder) -> ZoneInfo:
    """The zone of a recurring order's days: the exchange's (IST) for a trading-days order, the
    trader's for the others."""
    return IST if row.recurrence == ScheduledOrder.Recurrence.TRADING_DAYS else _zone(row.timezone)


def _run_day(row: ScheduledOrder, due: datetime) -> date:
    """The day whose run ``due`` is, as ``row`` is now: the exchange's for a trading-days order
    (``_exchange_day``), the trader's otherwise."""
    if row.recurrence == ScheduledOrder.Recurrence.TRADING_DAYS:
        return _exchange_day(row, due)
    return due.astimezone(_day_zone(row)).date()


def _days_run(row: ScheduledOrder, now: datetime) -> set[date]:
    """The days of its runs of the last two days that placed their order or are placing it, each
    as the order was when it was claimed (``ScheduledFire.run_day``; a fire claimed before that was
    kept: its day as ``row`` is stored, before an edit). Not read again in the zone the order has
    now: moved to London and then to New York, Tokyo's Monday run is still Monday's."""
    if row.pk is None or row.recurrence == ScheduledOrder.Recurrence.ONCE:
        return set()
    placed = ScheduledFire.objects.filter(
        scheduled_id=row.pk,
        status__in=[ScheduledFire.Status.PLACING, ScheduledFire.Status.PLACED],
        due_at__gte=now - timedelta(days=2),
    ).values_list("due_at", "run_day")
    return {run_day or _run_day(row, due_at) for due_at, run_day in placed}


def _not_on_a_day_run(row: ScheduledOrder, due: datetime | None, days_run: set[date]) -> datetime | None:
    """``due`` (an edited recurring order's next run), or its first run after it on a day none of its
    runs placed on: an edit moving its zone (or recurrence) puts its times on other days, and
    Monday's 08:00 in Tokyo placed, the order moved to London's 09:00 would place Monday again
    (09:00 in London is 18:00 in Tokyo). A day is the one the run was placed on, as the order was."""
    if row.recurrence == ScheduledOrder.Recurrence.ONCE:  # ``_not_on_a_day_it_placed`` refuses those
        return due
    zone = _day_zone(row)
    while due is not None and _run_day(row, due) in days_run:
        end_of_day = datetime.combine(due.astimezone(zone).date() + timedelta(days=1), time.min, tzinfo=zone)
        due = next_occurrence(row, end_of_day - timedelta(microseconds=1))
    return due


def _not_on_a_day_it_placed(row: ScheduledOrder, due: datetime | None) -> None:
    """Refuse a one-off run (a daily or trading-days order made one-off, by an edit page opened
    before today's run) on a day an earlier run of the order placed its order: the trader's day or
    the exchange's (IST)."""
    if due is None:
        return
    zone = _zone(row.timezone)
    placed = ScheduledFire.objects.filter(
        scheduled_id=row.pk, status=ScheduledFire.Status.PLACED, due_at__range=(due - timedelta(days=2), due)
    ).values_list("due_at", flat=True)
    for at in placed:
        if (
            at.astimezone(zone).date() == due.astimezone(zone).date()
            or at.astimezone(IST).date() == due.astimezone(IST).date()
        ):
            text = "A run of this order placed its order on that day already; choose another day."
            raise ValidationError({"run_on": ValidationError(text, code="conflict")})


@dataclass(frozen=True)
class Cancelled:
    """What a cancel did: ``live``, whether the scheduled order was live (and is now cancelled; the
    answer is true when it was); ``placing_due``, the due time of a run a worker was already placing
    (too late to stop: its order goes out as it was), which the trader must be told of."""

    live: bool
    placing_due: datetime | None = None

    def __bool__(self) -> bool:
        return self.live

    def text(self, scheduled: ScheduledOrder) -> str:
        """What is left to say beyond "cancelled": the run that still goes out."""
        if self.placing_due is None:
            return ""
        return f"Its run due {_due_text(scheduled, self.placing_due)} was already being placed and goes out as it was."


def scheduled_cancel(*, scheduled: ScheduledOrder, actor) -> Cancelled:
    """Cancel a scheduled order and every due time not yet being placed."""
    if scheduled.owner_id != actor.pk:
        raise ValidationError({"scheduled": "No such scheduled order."})
    return _scheduled_cancel(scheduled, "cancelled before it was placed")


def scheduled_cancel_by_staff(*, scheduled: ScheduledOrder, staff, ip: str | None = None) -> Cancelled:
    """Staff cancelling a trader's scheduled order (the admin; its change permission is the admin's
    to check): as ``scheduled_cancel``, with the audit trail, the dropped due times and the closed
    orders written ahead for them naming who cancelled it, and its trader told (of a run that still
    goes out too)."""
    from accounts.models import AuditLog
    from accounts.services import audit_record

    with transaction.atomic():
        # Short enough for an event's cause (200) and a fire's detail (255), whatever the username.
        who = staff.get_username()[:60]
        cancelled = _scheduled_cancel(scheduled, f"cancelled by staff ({who}) before it was placed")
        if cancelled:
            audit_record(
                action=AuditLog.Action.SCHEDULED_ORDER_CANCELLED,
                actor=staff,
                target=scheduled,
                data={"owner": scheduled.owner_id},
                ip=ip,
            )
            text = f"Scheduled order #{scheduled.pk} was cancelled by staff"
            placing = cancelled.text(scheduled)
            text += f": no later run is placed. {placing}" if placing else "; it will not be placed."
            transaction.on_commit(lambda: _notify(scheduled, text))
    return cancelled


def _scheduled_cancel(scheduled: ScheduledOrder, detail: str) -> Cancelled:
    with transaction.atomic():
        # Its row first, then its fires: the order an edit, the dispatcher and a worker taking a due
        # time lock them in (a cancel and a take of the same order at once would deadlock otherwise).
        stored = ScheduledOrder.objects.select_for_update().filter(pk=scheduled.pk)
        status = stored.values_list("status", flat=True).first()
        # A once order whose time was claimed ahead shows done; dropping that claim cancels it.
        dropped = _drop_pending_fires(scheduled, only_future=False, detail=detail)
        if status == ScheduledOrder.Status.ACTIVE or (status == ScheduledOrder.Status.DONE and dropped):
            ScheduledOrder.objects.filter(pk=scheduled.pk).update(
                status=ScheduledOrder.Status.CANCELLED, next_run_at=None
            )
            # Read under its row lock, which a worker takes a due time under: PLACING now, it goes out.
            return Cancelled(True, _placing_due(scheduled))
    return Cancelled(False)


def _drop_pending_fires(
    scheduled: ScheduledOrder,
    *,
    only_future: bool,
    now: datetime | None = None,
    detail: str = "cancelled before it was placed",
) -> int:
    """Cancel claimed due times no worker has started placing. Under the scheduled order's row lock
    (a worker prepares a fire or takes it to send under it too), so a fire is either dropped here or
    placed, not both."""
    fires = ScheduledFire.objects.filter(scheduled_id=scheduled.pk)
    if only_future:
        fires = fires.filter(due_at__gt=now or timezone.now())
    return _drop(fires, detail)


def _drop(fires, detail: str) -> int:
    """Cancel those of ``fires`` still waiting (PENDING, PREPARED), under their scheduled orders'
    row locks; the orders written ahead for prepared ones were never sent: they are closed
    (``services.orders_unsent_drop``). Returns how many were dropped."""
    _unprepare(fires, f"its scheduled time was {detail}")
    return fires.filter(status=ScheduledFire.Status.PENDING).update(
        status=ScheduledFire.Status.CANCELLED, detail=detail
    )


def _unprepare(fires, cause: str) -> None:
    """Those of ``fires`` PREPARED back to PENDING, their orders written ahead closed unsent (their
    keys given back, for the orders the worker writes instead). Under their scheduled orders' row
    locks, as ``_drop``."""
    prepared = list(fires.filter(status=ScheduledFire.Status.PREPARED).select_related("scheduled"))
    if prepared:
        ScheduledFire.objects.filter(pk__in=[fire.pk for fire in prepared]).update(status=ScheduledFire.Status.PENDING)
        services.orders_unsent_drop(keys=[_fire_key(fire.scheduled, fire) for fire in prepared], cause=cause)


def scheduled_dispatch(*, now: datetime | None = None) -> list[tuple[list[int], datetime | None]]:
    """What the dispatcher sends to workers: (fire ids, their due time), each fire once; fires due
    at the same time together, ``SCHEDULE_FIRE_BATCH`` at most in one.

    Due times are claimed ``SCHEDULE_LEAD_S`` ahead, so a worker prepares their orders before the
    time and sends them at it rather than at the first poll after it. Fires a dead worker left
    unplaced are sent again (at most every 30 s each, with None for a due time; placing is
    idempotent).
    """
    fires = _claim(now=now or timezone.now(), lead_s=settings.SCHEDULE_LEAD_S, limit=1000)
    stale = [pk for pk in scheduled_pending_stale() if locks.acquire(f"orders:refire:{pk}", ttl_s=30)]
    batches: list[tuple[list[int], datetime | None]] = []
    for pk, eta in [*fires, *((pk, None) for pk in stale)]:
        if batches and batches[-1][1] == eta and len(batches[-1][0]) < settings.SCHEDULE_FIRE_BATCH:
            batches[-1][0].append(pk)
        else:
            batches.append(([pk], eta))
    return batches


def scheduled_claim_due(*, now: datetime | None = None, lead_s: float = 0.0, limit: int = 1000) -> list[int]:
    """Claim scheduled orders due by ``now + lead_s``, once each; the ids of the fires to place."""
    return [pk for pk, _due_at in _claim(now=now or timezone.now(), lead_s=lead_s, limit=limit)]


def _claim(*, now: datetime, lead_s: float, limit: int) -> list[tuple[int, datetime]]:
    """Claim due times: (fire id, due time) for each to place.

    ``select_for_update(skip_locked=True)``: two dispatchers (two workers, or two beats by
    mistake) never take the same row, and the unique (scheduled, due_at) fire row makes a
    second claim of one due time impossible even so (a fire dropped by an edit that kept its
    time is taken again). A due time missed by more than its grace window (the platform was
    down) is recorded as missed and reported, not fired late; every due time of an order that
    has come is seen in one claim (the dispatcher was down over several), so the one still on
    time is claimed at its time, not after a beat for each past one. Of those, only the latest
    is placed: an earlier one still within its grace is reported missed too, not placed with it.
    """
    missed_notes = []
    with transaction.atomic():
        due = list(
            ScheduledOrder.objects.select_for_update(skip_locked=True)
            .filter(status=ScheduledOrder.Status.ACTIVE, next_run_at__lte=now + timedelta(seconds=lead_s))
            .order_by("next_run_at")[:limit]
        )
        if not due:
            return []
        # Due times claimed before (a dispatcher that died after claiming): not again.
        existing = {
            (scheduled_id, due_at): (pk, status)
            for pk, scheduled_id, due_at, status in ScheduledFire.objects.filter(scheduled__in=due).values_list(
                "pk", "scheduled_id", "due_at", "status"
            )
        }
        fires, revived, ended = [], [], []
        horizon = now + timedelta(seconds=lead_s)
        expiries = dict(
            Instrument.objects.filter(pk__in={s.instrument_id for s in due}, expiry__isnull=False).values_list(
                "pk", "expiry"
            )
        )
        for scheduled in due:
            due_at = scheduled.next_run_at
            # Every due time that has come, in this one claim (the dispatcher was down over several):
            # each missed one reported, and today's still claimed on time, not a beat per past run later.
            while due_at is not None and due_at <= horizon:
                following = next_occurrence(scheduled, due_at)
                if scheduled.recurrence == ScheduledOrder.Recurrence.TRADING_DAYS and not markets.is_trading_day(
                    _exchange_day(scheduled, due_at)
                ):
                    # A holiday declared after this due time was set (``EXCHANGE_HOLIDAYS`` changed): not a run.
                    due_at = following
                    continue
                late_s = (now - due_at).total_seconds()
                # A later run came too (a grace as long as a day): only the latest is placed, not
                # one order per past run at once. Nor is a late one placed on the day of the next
                # run still to come when that run is nearer than its own time (yesterday's, the
                # platform back seconds before today's time, would be placed seconds before today's):
                # one run a day, that day's. One a few minutes late past midnight, within its grace,
                # is its own day's run, placed (the next is a day away).
                came_too = following is not None and following <= horizon
                superseded = came_too or (
                    late_s > settings.SCHEDULE_ON_TIME_S
                    and following is not None
                    and following.astimezone(_day_zone(scheduled)).date() == now.astimezone(_day_zone(scheduled)).date()
                    and following - now < now - due_at
                )
                missed = superseded or late_s > settings.SCHEDULE_ON_TIME_S + scheduled.grace_s
                status = ScheduledFire.Status.MISSED if missed else ScheduledFire.Status.PENDING
                detail = f"{late_s:.0f}s late; the scheduler was not running" if missed else ""
                if superseded and late_s <= settings.SCHEDULE_ON_TIME_S + scheduled.grace_s:
                    detail += f"; a later run (due {_due_text(scheduled, following)}) "
                    detail += "came too and is placed instead" if came_too else "is due the same day and is its run"
                before = existing.get((scheduled.pk, due_at))
                if before is None or before[1] == ScheduledFire.Status.CANCELLED:
                    day = _run_day(scheduled, due_at)
                    if before is None:
                        fires.append(
                            ScheduledFire(scheduled=scheduled, due_at=due_at, run_day=day, status=status, detail=detail)
                        )
                    else:
                        revived.append((before[0], day, status, detail))
                    if missed:
                        scheduled.last_run_at, scheduled.last_result = now, f"missed ({late_s:.0f}s late)"
                        missed_notes.append((scheduled, due_at))
                due_at = following
            expiry = expiries.get(scheduled.instrument_id)
            if due_at is not None and expiry is not None and markets.trading_date(due_at) > expiry:
                # Its contract expires before its next run, which could only fail: it ends, said once.
                due_at, scheduled.last_result = None, f"ended: its contract expired on {expiry:%Y-%m-%d}"
                ended.append((scheduled, expiry))
            scheduled.next_run_at = due_at
            if scheduled.next_run_at is None:
                scheduled.status = ScheduledOrder.Status.DONE
        # In bulk: 500 orders due in one second are claimed in milliseconds, not one by one.
        ScheduledFire.objects.bulk_create(fires)
        for pk, day, status, detail in revived:
            ScheduledFire.objects.filter(pk=pk).update(run_day=day, status=status, detail=detail, claimed_at=now)
        ScheduledOrder.objects.bulk_update(due, ["next_run_at", "status", "last_run_at", "last_result"])
        for scheduled, due_at in missed_notes:
            _notify_missed(scheduled, due_at)
        for scheduled, expiry in ended:
            _notify(scheduled, f"Scheduled order #{scheduled.pk} has ended: its contract expired on {expiry:%Y-%m-%d}.")
        pending = {(f.scheduled_id, f.due_at) for f in fires if f.status == ScheduledFire.Status.PENDING}
        pending_ids = [pk for pk, _day, status, _ in revived if status == ScheduledFire.Status.PENDING]
    if not pending and not pending_ids:
        return []
    rows = ScheduledFire.objects.filter(
        scheduled_id__in={scheduled_id for scheduled_id, _ in pending}, status=ScheduledFire.Status.PENDING
    ).values_list("pk", "scheduled_id", "due_at")
    claimed = [(pk, due_at) for pk, scheduled_id, due_at in rows if (scheduled_id, due_at) in pending]
    claimed += list(ScheduledFire.objects.filter(pk__in=pending_ids).values_list("pk", "due_at"))
    return sorted(claimed, key=lambda fire: fire[1])


def scheduled_fire(*, fire_id: int) -> ScheduledFire:
    """``scheduled_fires`` of one."""
    return scheduled_fires(fire_ids=[fire_id])[0]


def scheduled_prepare(*, fire_ids: list[int]) -> list[ScheduledFire]:
    """Ahead of their time, what can be done before it: check the orders of claimed due times and
    write them NEW (numbered for the day they are sent on, with their first event), in one commit
    with the fires PENDING -> PREPARED, so that a fire is PREPARED exactly when its order is
    written; at the time, ``scheduled_fires`` only sends them. A check that fails is the due time's
    outcome at once (FAILED, reported). A change or cancel of the scheduled order before the time
    still drops a prepared due time, and closes its order, never sent (``_drop``).

    Only due times still to come, within ``SCHEDULE_LEAD_S`` + 1 s, are prepared; the others are
    left as they are. Returns the fires as they are now, in the order asked.
    """
    now = timezone.now()
    soon = now + timedelta(seconds=settings.SCHEDULE_LEAD_S + 1)
    ahead = [
        (pk, scheduled_id, due_at)
        for pk, status, due_at, scheduled_id in _fire_states(fire_ids)
        if status == ScheduledFire.Status.PENDING and now < due_at <= soon
    ]
    if ahead:
        try:
            _fires_prepare(ahead)
        except Exception:  # left pending: placed whole at their time
            logger.exception("scheduled fires %s: preparing them failed", [pk for pk, _s, _d in ahead])
    return _fires_as_asked(fire_ids, {})


def _fires_prepare(ahead: list[tuple[int, int, datetime]]) -> None:
    scheduled_ids = {scheduled_id for _pk, scheduled_id, _due_at in ahead}
    accounts = dict(ScheduledOrder.objects.filter(pk__in=scheduled_ids).values_list("pk", "account_id"))
    for day in {services.trading_date(due_at) for _pk, _scheduled_id, due_at in ahead}:
        # Outside the transaction below, which numbers the orders (see ``services.counters_ready``).
        services.counters_ready(set(accounts.values()), day)
    failed = []
    with transaction.atomic():
        fires = _fires_locked(
            [pk for pk, _scheduled_id, _due_at in ahead], scheduled_ids, (ScheduledFire.Status.PENDING,)
        )
        prepared = []
        # The accounts' daily counters are locked until the commit: in account order, as another
        # worker preparing orders of the same accounts takes them.
        for fire in sorted(fires, key=lambda fire: (fire.scheduled.account_id, fire.pk)):
            scheduled = fire.scheduled
            if services.value_check_asks_broker(scheduled.account, scheduled.side, scheduled.order_type):
                # Its check asks its broker for the price (a call, waiting for the quote budget)
                # that would hold these rows and the account's counter, and so the account's other
                # orders, locked meanwhile: left pending, placed whole at its time, outside them.
                continue
            try:
                with transaction.atomic():  # one that fails leaves no writes; the others go on
                    services.order_prepare(**_fire_order(fire), day=services.trading_date(fire.due_at))
            except ValidationError as error:
                failed.append((fire, (ScheduledFire.Status.FAILED, " ".join(error.messages)[:255])))
            except DatabaseError:
                raise  # the transaction may be gone (a deadlock): all are left pending
            except Exception:
                logger.exception("scheduled fire %s: preparing it failed; it is placed whole at its time", fire.pk)
            else:
                prepared.append(fire.pk)
        ScheduledFire.objects.filter(pk__in=prepared).update(status=ScheduledFire.Status.PREPARED)
        _fires_record(failed, taken_as=ScheduledFire.Status.PENDING)
    for fire, (_status, detail) in failed:
        _notify(fire.scheduled, f"Scheduled order #{fire.scheduled_id} was not placed: {detail}")
    # Their sessions at hand at the time: an account logged in then is sent alone (``_fires_place``).
    sessions_ready(list({fire.scheduled.account_id: fire.scheduled.account for fire in fires}.values()))


def _fire_order(fire: ScheduledFire) -> dict:
    """What ``services.order_prepare`` and ``order_place`` are asked for a due time's order."""
    scheduled = fire.scheduled
    return {
        "actor": scheduled.owner,
        "account": scheduled.account,
        **scheduled.spec(),
        "source": Order.Source.SCHEDULED,
        "scheduled": scheduled,
        "cause": _fire_cause(fire),
        "idempotency_key": _FIRE_KEY.format(fire=fire.pk),
    }


def _fire_cause(fire: ScheduledFire) -> str:
    return f"scheduled order #{fire.scheduled_id} due {_due_text(fire.scheduled, fire.due_at)}"


def _due_text(scheduled: ScheduledOrder, due_at: datetime) -> str:
    """A due time as the trader set it: in the zone its time was chosen in (``due_at`` is UTC)."""
    return f"{due_at.astimezone(_zone(scheduled.timezone)):%Y-%m-%d %H:%M:%S} {scheduled.timezone}"


def scheduled_fires(*, fire_ids: list[int]) -> list[ScheduledFire]:
    """Place the orders of claimed due times, never before their time, side by side
    (``SCHEDULE_FIRE_PARALLELISM`` threads), with one commit to take them all and one to record
    them all. A prepared due time's order (``scheduled_prepare``) is only sent; the others are
    placed whole. Idempotent: a repeat, or a redelivery while the first is still placing, places
    nothing twice (each order's idempotency key is its fire's). Returns the fires as they are now,
    in the order asked; one far too early is left as it is, for its time.

    A fire is PLACING from its first commit on (a cancel is then too late for that due time, and a
    change of its scheduled order is refused until it is recorded). If placing one fails
    unexpectedly it stays PLACING and is sent again later (``scheduled_dispatch``); the others are
    recorded.
    """
    ahead = {pk: (status, due_at, scheduled_id) for pk, status, due_at, scheduled_id in _fire_states(fire_ids)}
    now = timezone.now()
    due = [
        pk
        for pk, (status, due_at, _scheduled_id) in ahead.items()
        if status in _TO_PLACE and (due_at - now).total_seconds() <= settings.SCHEDULE_LEAD_S + 1
    ]  # far too early (a clock far ahead): left pending, for its time
    placing = []
    if due:
        early_s = (max(ahead[pk][1] for pk in due) - now).total_seconds()
        if early_s > 0:  # sent with an ETA; a worker whose clock runs a little ahead waits
            time_module.sleep(early_s)
        placing, tokens = _fires_take(due, {ahead[pk][2] for pk in due})
        try:
            with locks.kept(tokens, ttl_s=FIRE_PLACING_TTL_S), background.urgent():
                _fires_ready(placing)
                _fires_prices_asked(placing)
                outcomes = _fires_place(placing)
                _fires_record([(fire, outcome) for fire, outcome in zip(placing, outcomes, strict=True) if outcome])
        finally:
            locks.release_many(tokens)
    return _fires_as_asked(fire_ids, {fire.pk: fire for fire in placing})


def _fires_as_asked(fire_ids: list[int], known: dict[int, ScheduledFire]) -> list[ScheduledFire]:
    rest = {f.pk: f for f in ScheduledFire.objects.filter(pk__in=[pk for pk in fire_ids if pk not in known])}
    return [known.get(pk) or rest[pk] for pk in fire_ids if pk in known or pk in rest]


_TO_PLACE = (ScheduledFire.Status.PENDING, ScheduledFire.Status.PREPARED, ScheduledFire.Status.PLACING)


def _fire_states(fire_ids: list[int]) -> list[tuple[int, str, datetime, int]]:
    """(id, status, due time, scheduled order id) of the fires, read before their locks (a worker
    that waits for the due time does not hold them while it waits)."""
    return list(ScheduledFire.objects.filter(pk__in=fire_ids).values_list("pk", "status", "due_at", "scheduled_id"))


def _fires_locked(fire_ids: list[int], scheduled_ids, statuses) -> list[ScheduledFire]:
    """Within a transaction: lock the fires still in ``statuses``, with their scheduled orders.

    Their scheduled orders' rows first, in id order, then the fires: the order an edit, a cancel
    and the dispatcher lock them in. An edit of one is then made wholly before the take (which
    places what it left, or finds the fire dropped) or after it (and finds the fire being placed),
    and the two never deadlock. Each table on its own, without joins: MariaDB's FOR UPDATE would
    lock every joined row too (the accounts, users and instruments that fire tasks side by side
    share: they deadlocked).
    """
    locked = ScheduledOrder.objects.select_for_update().filter(pk__in=scheduled_ids).order_by("pk")
    list(locked.values_list("pk", flat=True))
    fires = list(ScheduledFire.objects.select_for_update().filter(pk__in=fire_ids, status__in=statuses).order_by("pk"))
    orders = ScheduledOrder.objects.select_related("account", "instrument", "owner")  # read under their locks
    scheduled_orders = orders.in_bulk({fire.scheduled_id for fire in fires})
    for fire in fires:
        fire.scheduled = scheduled_orders[fire.scheduled_id]
    return fires


def _fires_take(fire_ids: list[int], scheduled_ids) -> tuple[list[ScheduledFire], dict[str, str]]:
    """Lock the fires still to place and mark them PLACING, in one commit; report the ones a worker
    got to too late as missed. Returns the ones to place, with their scheduled orders, and the
    placing locks taken for them (``_placing_lock``: held until they are recorded, so a late
    re-send can tell a fire another worker is still placing from one whose worker stopped)."""
    now = timezone.now()
    tokens: dict[str, str] = {}
    try:
        with transaction.atomic():
            fires = _fires_locked(fire_ids, scheduled_ids, _TO_PLACE)
            # A fire another worker holds (it took it and is placing it, however slowly) is its.
            held = locks.acquire_many([_placing_lock(fire) for fire in fires], ttl_s=FIRE_PLACING_TTL_S)
            tokens = {name: token for name, token in held.items() if token}
            taken = _fires_mark([fire for fire in fires if _placing_lock(fire) in tokens], now)
    except BaseException:
        locks.release_many(tokens)
        raise
    taken_locks = {_placing_lock(fire) for fire in taken}
    locks.release_many({name: token for name, token in tokens.items() if name not in taken_locks})
    return taken, {name: token for name, token in tokens.items() if name in taken_locks}


def _fires_mark(fires: list[ScheduledFire], now: datetime) -> list[ScheduledFire]:
    """Within ``_fires_take``'s transaction: the fires a worker got to too late marked missed, the
    others PLACING. A late fire left PLACING by a worker that died is finished if its order exists
    (placing it again returns that order), missed if the worker stopped before making it. A late
    prepared fire is missed, and its order, never sent, closed."""
    late = {
        fire.pk: late_s
        for fire in fires
        if (late_s := (now - fire.due_at).total_seconds()) > settings.SCHEDULE_ON_TIME_S + fire.scheduled.grace_s
    }
    started = set(
        Order.objects.filter(
            idempotency_key__in=[_fire_key(fire.scheduled, fire) for fire in fires if fire.pk in late]
        ).values_list("idempotency_key", flat=True)
    )
    taken, unsent, missed = [], [], {}
    for fire in fires:
        fire.prepared, fire.late = fire.status == ScheduledFire.Status.PREPARED, fire.pk in late
        if fire.pk in late and (fire.prepared or _fire_key(fire.scheduled, fire) not in started):
            stopped = "; the worker placing it stopped" if fire.status == ScheduledFire.Status.PLACING else ""
            fire.status = ScheduledFire.Status.MISSED
            fire.detail = f"missed: {late[fire.pk]:.0f}s late when a worker got to it{stopped}"
            fire.save(update_fields=["status", "detail"])
            missed[fire.scheduled_id] = (now, fire.detail)  # its scheduled order's last run, as ``_claim``'s
            _notify_missed(fire.scheduled, fire.due_at)
            if fire.prepared:
                unsent.append(_fire_key(fire.scheduled, fire))
        else:
            taken.append(fire)
    if missed:
        _LAST_RUNS.update(missed)
    if unsent:
        services.orders_unsent_drop(keys=unsent, cause="its scheduled time was missed")
    waiting = [fire.pk for fire in taken if fire.status in ScheduledFire.WAITING]
    if waiting:  # from here a cancel is too late for these due times
        ScheduledFire.objects.filter(pk__in=waiting).update(status=ScheduledFire.Status.PLACING)
    for fire in taken:
        fire.status = ScheduledFire.Status.PLACING
    return taken


def _fires_ready(fires: list[ScheduledFire]) -> None:
    """What the taken fires are sent with: the orders already written for them (prepared ahead, or
    by a worker that stopped after taking them), read in one query, and each account's live
    session, read at once for all (``sessions_live``)."""
    from brokers.client import AccountBroker

    keys = {_fire_key(fire.scheduled, fire): fire for fire in fires}
    for order in Order.objects.select_related("account", "instrument").filter(idempotency_key__in=keys):
        keys[order.idempotency_key].order = order
    accounts = {fire.scheduled.account_id: fire.scheduled.account for fire in fires}
    sessions = sessions_live(list(accounts.values()))
    for fire in fires:
        fire.broker = AccountBroker(fire.scheduled.account, session=sessions.get(fire.scheduled.account_id))


def _fires_prices_asked(fires: list[ScheduledFire]) -> None:
    """The broker prices the taken fires' checks value their orders at (``services.
    value_check_asks_broker``: a Kite account's MARKET order under an order value limit), asked at
    once, one quote call per account, before they are placed side by side: asked by each on its
    own, one instrument a second (the quote budget), the last of a time's orders went seconds late."""
    asking: dict[int, tuple[BrokerAccount, list[Instrument]]] = {}
    for fire in fires:
        scheduled = fire.scheduled
        asks = services.value_check_asks_broker(scheduled.account, scheduled.side, scheduled.order_type)
        if asks and scheduled.account.is_active:
            asking.setdefault(scheduled.account_id, (scheduled.account, []))[1].append(scheduled.instrument)
    for account, instruments in asking.values():
        try:
            instruments_last_prices_asked(instruments, account=account)
        except Exception:  # each order then asks for its own price, as before
            logger.exception("scheduled fires: asking account %s's broker for prices failed", account.pk)


def _fires_place(fires: list[ScheduledFire]) -> list:
    """``_fire_place`` of each taken fire (its outcome, in the fires' order), side by side: the
    prepared orders sent together (``_fires_send_together``) while the others are already on
    their way, one by one on the pool's threads (a real broker's order does not wait for the
    paper exchange's transaction)."""
    ready = [
        fire
        for fire in fires
        if fire.prepared and getattr(fire, "order", None) is not None and fire.order.status == Order.Status.NEW
        if not _fire_refusal(fire) and fire.broker.places_together()
    ]
    if len(ready) < 2:
        return _fires.map(_fire_place, fires)
    alone, outcomes = [fire for fire in fires if fire not in ready], {}

    def place_alone(fire):
        outcomes[fire.pk] = _fire_place(fire)

    jobs = background.Jobs()
    for fire in alone:
        _fires.submit(jobs, place_alone, fire)
    _fires_send_together(ready)
    outcomes.update(zip([fire.pk for fire in ready], _fires.map(_fire_place, ready), strict=True))
    jobs.wait()
    return [outcomes.get(fire.pk) for fire in fires]


def _fires_send_together(ready: list[ScheduledFire]) -> None:
    """The prepared orders of taken fires, sent at once where their brokers can take them together
    (``services.orders_send_together``: the paper exchange, in one transaction): each fire keeps its
    order's first answer (``fire.first``) for ``_fire_send`` to record. (A fire taken again, its
    worker stopped, asks its broker first, one by one, as does one refused: ``_fires_place``.)"""
    try:
        answers = services.orders_send_together([(fire.order, fire.broker) for fire in ready])
    except Exception as error:  # whether any was sent is not known: each is looked up, never sent again
        logger.exception("scheduled fires %s: sending them together failed", [fire.pk for fire in ready])
        answers = [OutcomeUnknown(f"sent with others, then {type(error).__name__}: {error}") for _fire in ready]
    for fire, answer in zip(ready, answers, strict=True):
        fire.first = answer


_FIRE_KEY = "scheduled:{fire}"


def _fire_key(scheduled: ScheduledOrder, fire: ScheduledFire) -> str:
    """The stored idempotency key of a fire's order (``order_place`` prefixes the actor)."""
    return f"{scheduled.owner_id}:{_FIRE_KEY.format(fire=fire.pk)}"


# A worker holds the fires it took (renewed while it places them); a late fire still PLACING
# whose lock is free was left by a worker that stopped.
FIRE_PLACING_TTL_S = 60


def _placing_lock(fire: ScheduledFire) -> str:
    return f"orders:placing-fire:{fire.pk}"


def _fire_place(fire: ScheduledFire) -> tuple[str, str] | None:
    """Place one taken fire's order, or send the one written for it: (its fire's status, detail),
    or None when placing it failed unexpectedly (it stays PLACING and is sent again later)."""
    scheduled = fire.scheduled
    order = getattr(fire, "order", None)
    try:
        if order is None:
            order = services.order_place(**_fire_order(fire), broker=fire.broker)
        elif order.status == Order.Status.NEW:
            order = _fire_send(fire, order)
            if isinstance(order, tuple):  # not sent: the fire's outcome
                return order
    except ValidationError as error:
        detail = " ".join(error.messages)[:255]
        _notify(scheduled, f"Scheduled order #{scheduled.pk} was not placed: {detail}")
        return ScheduledFire.Status.FAILED, detail
    except Exception:
        logger.exception("scheduled fire %s: placing failed; it is sent again later", fire.pk)
        return None
    if order.status == Order.Status.SUBMITTED and not order.broker_order_id:
        # Sent, and its answer lost: placed, as far as we know; its account's reconciliation
        # finds it by its tag, or closes it if the broker never got it.
        detail = f"{order.reference}: sent, its answer lost; it is looked up by its tag"
        _notify(scheduled, f"Scheduled order #{scheduled.pk}: {detail}")
        return ScheduledFire.Status.PLACED, detail
    unsent = order.status == Order.Status.FAILED and not order.broker_order_id
    if unsent or order.status == Order.Status.REJECTED:
        # Not at the broker (its send failed, or it was closed unsent meanwhile): not placed. Or
        # refused by the broker: its run was made (sent: not again this day). Both said.
        detail = f"{order.reference} {order.status}: {order.reject_reason}"[:255]
        what = "was not placed" if unsent else "was refused by the broker"
        _notify(scheduled, f"Scheduled order #{scheduled.pk} {what}: {detail}"[:255])
        return (ScheduledFire.Status.FAILED if unsent else ScheduledFire.Status.PLACED), detail
    return ScheduledFire.Status.PLACED, f"{order.reference} {order.status}"


def _fire_send(fire: ScheduledFire, order: Order) -> Order | tuple[str, str]:
    """Send a fire's order written before (NEW): the order as sent, or the fire's outcome when it
    is not sent.

    One taken again from PLACING was written by a worker that stopped after taking it: its placing
    lock was let go or expired (``FIRE_PLACING_TTL_S``), so a request it sent has long landed; the
    broker is asked for it by its tag first, and one the broker does not have is sent only while
    on time (else it is missed, closed unsent). When the broker cannot be asked (the account needs
    its trader, or the time is past), or no longer lists that day's orders (an earlier day's, late
    or still within a grace of days: never sent again), whether it got the order
    is not known: the order is marked so and reconciled by its tag, and the trader told. Nothing is
    sent for an owner or account deactivated since the order was written."""
    scheduled = fire.scheduled
    if not fire.prepared:
        try:
            found = fire.broker.find_by_tag(order.reference)
        except BrokerError as error:
            if fire.late or isinstance(error, AuthError):
                return _fire_unknown(fire, order, str(error))
            raise  # sent again later
        if found is not None:
            services.order_apply_broker_state(order, found, cause=f"{services.broker_name(order)} had it")
            return order
        if ist_today() != ist_today(max(order.created_at, fire.due_at)):
            # Sent on that day, if at all: late or still within a grace of days, never sent again.
            return _fire_unknown(fire, order, "the broker lists today's orders only", listed=False)
        if fire.late:
            services.orders_unsent_drop(keys=[order.idempotency_key], cause="its scheduled time was missed")
            _notify_missed(scheduled, fire.due_at)
            return ScheduledFire.Status.MISSED, "missed: the worker placing it stopped before sending it"
    # One sent with others (``first``: its broker's answer) was checked just before: it is at its
    # broker (or may be), and what changed since (a price tick under a value limit) refuses nothing.
    first = getattr(fire, "first", None)
    refused = _fire_refusal(fire) if first is None else ""
    if refused:
        services.orders_unsent_drop(keys=[order.idempotency_key], cause=refused)
        _notify(scheduled, f"Scheduled order #{scheduled.pk} was not placed: {refused}")
        return ScheduledFire.Status.FAILED, refused
    return services.order_submit(order=order, cause=_fire_cause(fire), broker=fire.broker, first=first)


def _fire_refusal(fire: ScheduledFire) -> str:
    """Why nothing is sent for a fire's order written before its time: its account or owner
    deactivated since, or the order no longer meets its account's rules (products and limits the
    trader lowered meanwhile, its open orders limit among them, an instrument expired at midnight).
    Checked again at the time, with the account as read under the take's locks, as an order placed
    whole then is checked: else a prepared order would be sent under limits the trader had already
    taken away."""
    scheduled = fire.scheduled
    if not scheduled.account.is_active:
        return f"{scheduled.account.label} is deactivated."
    if not scheduled.owner.is_active:
        return "This account's owner is deactivated."
    try:
        services.order_check(actor=scheduled.owner, account=scheduled.account, **scheduled.spec())
        services.open_orders_check(scheduled.account, besides=getattr(fire, "order", None))
    except ValidationError as error:
        return " ".join(error.messages)[:255]
    return ""


def _fire_unknown(fire: ScheduledFire, order: Order, why: str, *, listed: bool = True) -> tuple[str, str]:
    """Whether the broker got the order its stopped worker may have sent is not known: the order
    is marked so (``services.order_outcome_unknown``) and the trader told."""
    stopped = f"its worker stopped while sending it; the broker could not be asked: {why}"
    if listed:
        services.order_outcome_unknown(order, stopped)
        detail = f"{order.reference}: not known whether the broker got it ({why}); it is looked up by its tag"
    else:
        services.order_outcome_unknown(order, f"{stopped}; check the broker's order history", listed=False)
        detail = f"{order.reference}: not known whether the broker got it ({why}); check the broker's order history"
    _notify(fire.scheduled, f"Scheduled order #{fire.scheduled_id}: {detail}"[:255])
    return ScheduledFire.Status.FAILED, detail[:255]


_LAST_RUNS = PlainUpdates(ScheduledOrder, ("last_run_at", "last_result"))
_OUTCOMES = PlainUpdates(ScheduledFire, ("status", "detail"))


def _fires_record(
    outcomes: list[tuple[ScheduledFire, tuple[str, str]]], *, taken_as: str = ScheduledFire.Status.PLACING
) -> None:
    """Record what became of each fire (``taken_as`` until now) and its scheduled order's last run,
    in one commit."""
    if not outcomes:
        return
    now = timezone.now()
    outcomes = sorted(outcomes, key=lambda outcome: (outcome[0].scheduled_id, outcome[0].pk))
    # A scheduled order's last run is its latest fire's (several of one in a re-send).
    last_runs = {fire.scheduled_id: (now, detail) for fire, (_status, detail) in outcomes}
    with transaction.atomic():
        # The scheduled orders' rows before their fires, each in id order: the order the take locks
        # them in. A fire no longer ``taken_as`` was recorded by a redelivery first.
        _LAST_RUNS.update(last_runs)
        fires = ScheduledFire.objects.select_for_update().filter(pk__in=[fire.pk for fire, _ in outcomes])
        ours = set(fires.filter(status=taken_as).order_by("pk").values_list("pk", flat=True))
        _OUTCOMES.update({fire.pk: outcome for fire, outcome in outcomes if fire.pk in ours})
    for fire, (status, detail) in outcomes:
        if fire.pk in ours:
            fire.status, fire.detail = status, detail
        else:
            fire.refresh_from_db()


def scheduled_pending_stale(*, older_than_s: float = 30) -> list[int]:
    """Fires claimed but never placed, or left placing (their worker died): place them now (idempotent).

    One still waiting (PENDING, PREPARED) ``RESEND_WAITING_S`` after its time (and its claim) was
    not taken by the task sent for it, due at its time: that task was lost with its worker (killed
    after preparing it; a message it held comes back only after the broker's visibility timeout).
    It is sent again then, while it can still be placed on time, not first when it is sure to be
    missed."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=older_than_s)
    waiting_cutoff = now - timedelta(seconds=min(older_than_s, RESEND_WAITING_S))
    return list(
        ScheduledFire.objects.filter(
            Q(status__in=_TO_PLACE, claimed_at__lt=cutoff, due_at__lt=cutoff)
            | Q(status__in=ScheduledFire.WAITING, claimed_at__lt=waiting_cutoff, due_at__lt=waiting_cutoff)
        ).values_list("pk", flat=True)
    )


# A waiting due time not taken this long after its time lost its task (``scheduled_pending_stale``);
# well within ``SCHEDULE_ON_TIME_S``, and longer than a burst's tasks take to be taken at their time.
RESEND_WAITING_S = 2.0


def _notify_missed(scheduled: ScheduledOrder, due_at: datetime) -> None:
    _notify(scheduled, f"Scheduled order #{scheduled.pk} missed its time ({_due_text(scheduled, due_at)}); not placed.")


def _notify(scheduled: ScheduledOrder, text: str) -> None:
    from monitoring.broadcast import push_fragment

    push_fragment(
        user_id=scheduled.owner_id, template="partials/notice_push.html", context={"level": "warning", "text": text}
    )


# --- Strategies ------------------------------------------------------------------------------

STRATEGY_FIELDS = (
    "stop_loss",
    "stop_loss_unit",
    "take_profit",
    "take_profit_unit",
    "trailing_step",
    "reentry_enabled",
    "max_reentries",
    "chase_after_s",
    "chase_max_ticks",
    "chase_max_percent",
    "max_retries",
    "retryable_kinds",
    "is_active",
)


# At most this many re-entries after a stop-loss, and retries of a rejected entry (the API's and
# the page's limit alike).
MAX_REENTRIES = 100
MAX_RETRIES = 20


def _secret() -> tuple[str, str, str]:
    raw = f"whsec_{secrets.token_urlsafe(24)}"
    return raw, hashlib.sha256(raw.encode()).hexdigest(), raw[:12]


STRATEGY_NAME_TAKEN = "You already have a strategy with this name."


def strategy_save(
    *,
    owner,
    name: str,
    account_ids,
    strategy: Strategy | None = None,
    create_key: str | None = None,
    repeat_rotates: bool = True,
    **params,
) -> tuple[Strategy, str]:
    """Create a strategy, or change its name, accounts and the settings given. Returns it with its
    webhook secret when one was just made (else "").

    A change is made under the strategy's row lock, taken before anything is read (as
    ``strategy_change``), so two saves at the same time are made one after the other.

    ``create_key`` (a create's one-time form token or Idempotency-Key): a repeat of the create
    returns the strategy the first made, with a new secret. The first answer, the only one that
    showed a secret, may never have been seen (a double click shows the second), and a secret
    cannot be shown twice (only its hash is kept). The same key with another name or other
    settings is refused on ``idempotency_key``. ``repeat_rotates=False`` (the page, whose form a
    reload or Back sends again after the trader saw, and maybe copied, the secret): the repeat
    returns the strategy with no secret ("") and ``replayed`` set, the secret shown kept live."""
    if strategy is not None:
        with transaction.atomic():
            row = _locked(Strategy, strategy, owner)
            return _strategy_write(owner=owner, name=name, account_ids=account_ids, strategy=row, **params)
    key = f"{owner.pk}:{create_key}" if create_key else None
    asked = {"name": (name or "").strip(), "account_ids": account_ids, **params}
    try:
        with transaction.atomic():
            return _strategy_repeat(owner, key, asked, rotate=repeat_rotates) or _strategy_write(
                owner=owner, name=name, account_ids=account_ids, strategy=None, create_key=key, **params
            )
    except (ValidationError, IntegrityError):
        # The first request committed its row while this one was written (the unique index waited for it).
        made = _strategy_repeat(owner, key, asked, rotate=repeat_rotates)
        if made is None:
            raise
        return made


def _strategy_repeat(owner, key: str | None, asked: dict, *, rotate: bool) -> tuple[Strategy, str] | None:
    """The strategy a create with this key made, with a new secret (``rotate``, else ""); None if none has."""
    first = Strategy.objects.filter(owner=owner, create_key=key).first() if key else None
    if first is None:
        return None
    kept = {"name": first.name, "account_ids": set(first.accounts.values_list("pk", flat=True))}
    kept.update((field, getattr(first, field)) for field in asked if field in STRATEGY_FIELDS)
    if any(value != (set(asked[field]) if field == "account_ids" else asked[field]) for field, value in kept.items()):
        text = "This form was already used for a different strategy; check it and submit again."
        raise ValidationError({"idempotency_key": ValidationError(text, code="conflict")})
    first.replayed = True
    return first, strategy_rotate_secret(strategy=first) if rotate else ""


def strategy_check(params: dict, *, strategy: Strategy | None = None) -> None:
    """The rules a strategy's settings (``STRATEGY_FIELDS``, those given) must keep, whoever saves
    them (the trader's page and API, staff in admin): a ValidationError naming the field.
    ``strategy``: the one changed, as stored (None: a new one)."""
    from brokers.errors import RejectKind

    # Given, a list of known kinds: null (the admin's JSON) would be a 500 on the column, and an item
    # that is not text (a list, an object) one on the set.
    kinds = params.get("retryable_kinds", [])
    if not isinstance(kinds, list) or any(not isinstance(kind, str) or kind not in RejectKind.ALL for kind in kinds):
        raise ValidationError({"retryable_kinds": f"Choose from {', '.join(RejectKind.ALL)}."})
    for field, most in (("max_reentries", MAX_REENTRIES), ("max_retries", MAX_RETRIES)):
        # A count saved before the cap stays as it is when other settings change (pausing it must work).
        if params.get(field) is not None and params[field] > most and params[field] != getattr(strategy, field, None):
            raise ValidationError({field: f"At most {most}."})
    # 0 would read as none where it is used (a chase cap of 0 ticks as no cap: a chase without end).
    for field in ("stop_loss", "take_profit", "trailing_step", "chase_max_percent", "chase_max_ticks"):
        if params.get(field) is not None and params[field] <= 0:
            raise ValidationError({field: "Must be above 0 (leave it blank for none)."})
    # A percent of 100 or more puts a long's stop, or a short's target, at a price of 0 or less:
    # the exit could never be placed, and the entry would run without it.
    percents = {"chase_max_percent": Strategy.Unit.PERCENT}
    for field in ("stop_loss", "take_profit"):
        percents[field] = params.get(f"{field}_unit", strategy and getattr(strategy, f"{field}_unit"))
    for field, unit in percents.items():
        if unit in (None, Strategy.Unit.PERCENT) and params.get(field) is not None and params[field] >= 100:
            raise ValidationError({field: "A percent must be below 100."})
    if params.get("trailing_step") is not None and params.get("stop_loss", strategy and strategy.stop_loss) is None:
        raise ValidationError({"trailing_step": "A trailing step moves the stop-loss; set a stop-loss too."})
    # A chase moves an entry toward the market up to its cap (DESIGN 5): without one it would chase
    # without end, a limit order become a market one. Checked when the chase is set or its caps
    # changed (a strategy saved before this rule can still be paused or renamed). A change that sends
    # every setting (a PATCH, a PUT, the page) sends them as stored: that is no change.
    chase = ("chase_after_s", "chase_max_ticks", "chase_max_percent")
    if any(field in params and params[field] != getattr(strategy, field, None) for field in chase):
        after, ticks, percent = (params.get(field, strategy and getattr(strategy, field)) for field in chase)
        if after is not None and ticks is None and percent is None:
            raise ValidationError({"chase_max_ticks": "A chase needs a cap: set its ticks, its percent, or both."})


def _strategy_write(
    *, owner, name: str, account_ids, strategy: Strategy | None, create_key: str | None = None, **params
) -> tuple[Strategy, str]:
    """``strategy_save`` of a strategy as read under its row lock (None: a new one, made by the
    request ``create_key`` names), in the caller's transaction."""
    unknown = set(params) - set(STRATEGY_FIELDS)
    if unknown:
        raise TypeError(f"unexpected fields: {sorted(unknown)}")
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "Give the strategy a name."})
    if Strategy.objects.filter(owner=owner, name=name).exclude(pk=strategy.pk if strategy else None).exists():
        raise ValidationError({"name": STRATEGY_NAME_TAKEN})
    strategy_check(params, strategy=strategy)
    accounts = _owned_accounts(owner, account_ids, kept=strategy or Strategy())
    row = strategy or Strategy(owner=owner, create_key=create_key)
    row.name = name
    for field, value in params.items():
        setattr(row, field, value)
    secret = ""
    changed = ["name", *params, "updated_at"]
    if not row.webhook_secret_hash:
        secret = strategy_new_secret(row)
        changed += ["webhook_secret_hash", "webhook_secret_prefix"]
    row.full_clean(exclude=["owner"])
    # A change writes only what it changes: the secret is ``strategy_rotate_secret``'s alone.
    with _name_written(Strategy, owner, name, strategy, STRATEGY_NAME_TAKEN):
        row.save(update_fields=changed if strategy is not None else None)
    row.accounts.set(accounts)
    return row, secret


@transaction.atomic
def strategy_change(*, owner, strategy: Strategy, **changes) -> Strategy:
    """Change what is given of a strategy (``name``, ``account_ids``, ``STRATEGY_FIELDS``) and keep
    the rest as it is now: ``strategy_save`` with the stored values for the fields not given, so
    the rules between fields (a trailing step needs a stop-loss) hold for the result as a whole.

    Under the row lock, so edits of different fields made at the same time all stay.
    """
    row = _locked(Strategy, strategy, owner)
    name = changes.pop("name", row.name)
    account_ids = changes.pop("account_ids", None)
    if account_ids is None:
        account_ids = list(row.accounts.values_list("pk", flat=True))
    params = {field: getattr(row, field) for field in STRATEGY_FIELDS}
    row, _secret = _strategy_write(
        owner=owner, name=name, account_ids=account_ids, strategy=row, **{**params, **changes}
    )
    return row


@transaction.atomic
def strategy_delete(*, owner, strategy: Strategy) -> None:
    """Delete a strategy that has no orders (one that has is paused instead: its orders' exits are
    its). Under its row lock, which an order given to it meanwhile (a signal's) waits on to commit
    first: refused then, not a 500 on the database's foreign key."""
    row = _locked(Strategy, strategy, owner)
    if row.orders.exists():
        text = "This strategy has orders; pause it (is_active false) instead."
        raise ValidationError({"strategy": ValidationError(text, code="conflict")})
    row.delete()


def strategy_rotate_secret(*, strategy: Strategy, replaces: str | None = None) -> str:
    """A new webhook secret, returned to be shown once. With ``replaces`` (the prefix of the secret
    the trader's page showed) only that secret is replaced: the page's form sent again (a reload,
    Back to it) finds it replaced already and returns "" rather than ending the secret just shown."""
    secret, digest, prefix = _secret()
    rows = Strategy.objects.filter(pk=strategy.pk)
    if replaces is not None:
        rows = rows.filter(webhook_secret_prefix=replaces)
    return secret if rows.update(webhook_secret_hash=digest, webhook_secret_prefix=prefix) else ""


def strategy_new_secret(strategy: Strategy) -> str:
    """Give a strategy not saved yet with a secret (made in admin) its webhook secret; returns it,
    to be shown once (only its hash is kept)."""
    secret, strategy.webhook_secret_hash, strategy.webhook_secret_prefix = _secret()
    return secret


def strategy_signal(
    *,
    strategy: Strategy,
    actor,
    signal_id: str,
    via: str,
    instrument: Instrument | None,
    side: str,
    quantity,
    order_type: str = "MARKET",
    product: str = "MIS",
    price=None,
    trigger_price=None,
    sent_at: datetime | None = None,
) -> tuple[StrategySignal, bool]:
    """Place a strategy's entry on each of its accounts. Returns (signal, replayed).

    A signal id is used once per strategy: a repeat returns the first signal's results
    and places nothing. A repeat saying something else (another side, quantity, symbol...) is
    refused (409 on ``signal_id``) rather than answered with the first one's results: an alert
    that sends one fixed id would otherwise have every later signal silently dropped. So is a repeat
    whose alert was made (``sent_at``, a webhook's timestamp) more than ``WEBHOOK_MAX_AGE_S`` after
    the first was received: no delivery of that first alert, but a later one with the same terms
    (TradingView's {{strategy.order.id}} is the entry's name, the same for every long entry).

    A repeat of a signal whose first request died after taking the id and before recording its
    results (a worker restarted, a timeout) places it: under the same idempotency keys, so an
    account whose order that request placed gets it back, not a second one, and the others are
    not left without theirs (an alert's retry would else be answered "replayed" with nothing placed).
    An unexpected error in one account's placement is that account's result, as a basket item's
    (``_place_item``): the others are answered and recorded, and a repeat places that one again.
    The signal's lock is held while its copies are placed, and ``placing_since`` set until their
    results are recorded: a signal whose request ended half-way is told from one still placing, and
    its accounts never reached recorded not placed (``signals_finish``).
    """
    if strategy.owner_id != actor.pk:
        raise ValidationError({"strategy": "No such strategy."})
    # Taken as sent: "Sig-A", "sig-a" and " sig-a" are three signals, and an id is never cut.
    if not isinstance(signal_id, str) or not signal_id.strip():
        raise ValidationError({"signal_id": "Give each signal a unique id."})
    if len(signal_id) > SIGNAL_ID_MAX_LENGTH:
        raise ValidationError({"signal_id": f"A signal id has at most {SIGNAL_ID_MAX_LENGTH} characters."})
    signals = StrategySignal.objects.filter(strategy=strategy, signal_id=signal_id)
    signal = signals.first()
    if signal is not None:
        # A repeat: compared with the first as sent, not checked again (its instrument's lot or
        # tick may have changed since; a retry is still a retry).
        sent = _signal_payload(instrument, side, quantity, order_type, product, price, trigger_price)
        if _made_after(signal, sent_at):
            raise _signal_id_reused()
        signal = _replayed(signal, sent, signals)
        if _answered(signal, strategy):
            return _as_now(signal, actor), True
    if not strategy.is_active:
        held_back = _paused_repeat(actor, strategy, signal) if signal is not None else None
        if held_back is None:
            raise ValidationError({"strategy": "This strategy is paused."})
        return held_back, True
    if signal is not None and signal.payload:
        # A repeat of a signal that took its id (the same terms: ``_replayed``) places what its
        # first request did not, not checked again as a new signal: a lot or tick revised since
        # would refuse it whole, 422 as if nothing had been placed, with its orders standing. Each
        # copy still to place is checked on its own account, as every copy is.
        quantity, price, trigger_price = (
            signal.payload["quantity"],
            *(_stored_price(signal.payload[field]) for field in ("price", "trigger_price")),
        )
    else:
        # A refused signal leaves no trace, so the same id can be sent again once corrected: what
        # every account's order must meet is checked before the id is taken (each account's own
        # rules, its products and limits, are its placement's result).
        quantity, price, trigger_price = services.spec_check(
            instrument=instrument,
            side=side,
            quantity=quantity,
            order_type=order_type,
            product=product,
            price=price,
            trigger_price=trigger_price,
        )
    payload = _signal_payload(instrument, side, quantity, order_type, product, price, trigger_price)
    accounts = list(strategy.accounts.order_by("pk"))  # a deactivated one answers with why, as in a basket
    placed = _placed_by_signal(actor, signal) if signal is not None else {}
    if not placed and not any(account.is_active for account in accounts):
        raise ValidationError({"strategy": "This strategy has no active accounts."})
    replayed = signal is not None
    if not replayed:
        try:
            with transaction.atomic():
                signal = StrategySignal.objects.create(
                    strategy=strategy, signal_id=signal_id, via=via, payload=payload, placing_since=timezone.now()
                )
        except IntegrityError:  # the same id at the same moment: the other request places it
            signal, replayed = _replayed(signals.get(), payload, signals), True
            if _answered(signal, strategy):
                return _as_now(signal, actor), True
            placed = _placed_by_signal(actor, signal)
    # A repeat of a signal whose first request stopped answers the orders that request wrote as
    # they stand, on whatever account (one taken off the strategy since, one whose multiplier
    # changed since: its key would refuse the new quantity as another order), and places the rest.
    by_pk = {account.pk: account for account in accounts}
    by_pk.update({pk: order.account for pk, order in placed.items() if pk not in by_pk})
    accounts = [by_pk[pk] for pk in sorted(by_pk)]
    spec = {
        "instrument": instrument,
        "side": side,
        "quantity": quantity,  # the signal's own: a repeat's is checked on each copy (``_place_for``)
        "order_type": order_type,
        "product": product,
        "price": price,
        "trigger_price": trigger_price,
    }
    jobs = [
        (lambda account=account: _replayed_item(account, placed[account.pk]))
        if account.pk in placed
        else lambda account=account: _place_item(
            actor,
            account,
            spec,
            _copy_quantity(quantity, account, instrument),
            source=Order.Source.STRATEGY,
            strategy=strategy,
            cause=f"strategy {strategy.name}: signal {signal_id} via {via}",
            idempotency_key=_signal_key(signal, account.pk),
        )
        for account in accounts
    ]
    with _placing(_signal_lock(actor.pk, signal.pk)):
        if replayed:  # before any copy is written: a sweep that read the signal before writes nothing
            StrategySignal.objects.filter(pk=signal.pk).update(placing_since=timezone.now())
        signal.results = _copies.map(_call, jobs)
        StrategySignal.objects.filter(pk=signal.pk).update(results=signal.results, placing_since=None)
    return signal, replayed


SIGNAL_ID_MAX_LENGTH = StrategySignal._meta.get_field("signal_id").max_length


def _answered(signal: StrategySignal, strategy: Strategy) -> bool:
    """Whether a repeat of ``signal`` is answered with its results as they are: once it has them,
    unless an account's copy in them was not written for an error on our side (FAILED, no order)
    or is not known to be (UNKNOWN), which the repeat places under its key (an order that was
    placed after all is answered, not placed again), as a basket run's repeat does. A copy whose
    order was written is that order, whatever its status (one FAILED at its broker, a disconnected
    account's, is not sent again by its key): a repeat is not checked again for it, as a new signal
    would be (a lot size revised since would refuse it, though its orders stand). Paused since,
    what it placed is answered, not "paused"."""
    if not signal.results:
        return False
    unplaced = any(row.get("status") in ("FAILED", "UNKNOWN") and "order_id" not in row for row in signal.results)
    return not unplaced or not strategy.is_active


def _as_now(signal: StrategySignal, actor) -> StrategySignal:
    """A repeat's answer of a signal's results: each placed order as it is now, not as it was when
    first answered (an entry that rested OPEN, cancelled or filled since, is not answered OPEN), as
    a basket placement's repeat answers its orders and the strategy's page shows them."""
    signal.results = selectors.signal_results(signal, actor.pk)
    return signal


PAUSED_UNPLACED = "Not placed: the strategy was paused; a repeat of the signal once it is live places it."


def _paused_repeat(actor, strategy: Strategy, signal: StrategySignal) -> StrategySignal | None:
    """A repeat, on a paused strategy, of a signal whose first request stopped before recording its
    results: what that request placed (None if nothing: refused as paused, as a new signal), and
    each account's copy it did not as not placed (FAILED, which a repeat once live places), recorded.
    Refused as paused, the client would take it that nothing was placed while an order stands."""
    placed = _placed_by_signal(actor, signal)
    if not placed:
        return None
    instrument = next(iter(placed.values())).instrument
    rows = {pk: _replayed_item(order.account, order) for pk, order in placed.items()}
    for account in strategy.accounts.all() if signal.payload else ():
        if account.pk not in rows:
            rows[account.pk] = _signal_unplaced(actor.pk, signal, account, instrument, PAUSED_UNPLACED)
    signal.results = [rows[pk] for pk in sorted(rows)]
    StrategySignal.objects.filter(pk=signal.pk).update(results=signal.results)
    return signal


def _signal_unplaced(
    owner_id: int, signal: StrategySignal, account: BrokerAccount, instrument: Instrument | None, error: str
) -> dict:
    """The result of an account's copy of ``signal`` that was not placed (FAILED, which a repeat of the
    signal places), with why; its key kept, so an order written under it after all is shown."""
    payload = signal.payload
    terms = {"symbol": payload["instrument"].rpartition(":")[2], "side": payload["side"]}
    if instrument is not None:
        terms.update(symbol=instrument.tradingsymbol, quantity=_copy_quantity(payload["quantity"], account, instrument))
    key = f"{owner_id}:{_signal_key(signal, account.pk)}"  # as ``order_place`` stores it
    return {**_result(account, status="FAILED", key=key, **terms), "error": error}


def _signal_lock(owner_id: int, signal_pk: int) -> str:
    return f"orders:placing-signal:{owner_id}:{signal_pk}"


SIGNAL_NOT_SENT = (
    "Not placed: the signal's placement stopped (the process placing it ended) before sending it, and nothing "
    "was sent to the broker. Sending the signal again with its id places it."
)


def signals_finish(*, now: datetime | None = None, limit: int = 100) -> int:
    """Finish the results of strategy signals whose request ended before recording them (its worker
    killed, the request cut): an account's copy with no order written under its key was never sent
    (an order is written, with its key and tag, before it goes to its broker) and is recorded not
    placed (FAILED, ``SIGNAL_NOT_SENT``), which a repeat of the signal places; an account whose order
    exists is that order, whatever its status (the order's own path settles it); a copy the request
    recorded another outcome for (refused, below a lot) keeps it.

    A signal is judged only once its lock is free (no request of it is placing) and its placement
    began ``PLACEMENT_STALE_S`` ago. Idempotent, and safe with two workers at it: each signal is
    taken under its lock, and its results written only if no request began placing it since it was
    read. Returns how many copies it recorded not placed."""
    cutoff = (now or timezone.now()) - timedelta(seconds=PLACEMENT_STALE_S)
    stale = StrategySignal.objects.filter(placing_since__lt=cutoff).select_related("strategy")
    finished = 0
    for signal in stale.order_by("pk")[:limit]:
        lock = _signal_lock(signal.strategy.owner_id, signal.pk)
        token = locks.acquire(lock, ttl_s=PLACING_LOCK_TTL_S)
        if token is None:
            continue  # a request of it is placing: its answer records its results
        try:
            finished += _signal_finish(signal)
        except Exception:  # one signal's failure leaves the others to be finished
            logger.exception("finishing signal %s of strategy %s failed", signal.signal_id, signal.strategy_id)
        finally:
            locks.release(lock, token)
    return finished


def _signal_finish(signal: StrategySignal) -> int:
    strategy = signal.strategy
    placed = selectors.signals_placed([signal], strategy.owner_id).get(signal.pk, {})
    recorded = {row["account_id"]: row for row in signal.results or [] if row.get("account_id") is not None}
    accounts = {account.pk: account for account in strategy.accounts.all()}
    accounts.update({pk: order.account for pk, order in placed.items()})
    instrument = None
    if placed:
        instrument = next(iter(placed.values())).instrument
    elif signal.payload:
        exchange, _, tradingsymbol = signal.payload["instrument"].rpartition(":")
        instrument = Instrument.objects.filter(exchange=exchange, tradingsymbol=tradingsymbol).first()
    rows, finished = {}, 0
    for pk in sorted(set(accounts) | set(recorded)):
        row = recorded.get(pk)
        if pk in placed:
            rows[pk] = _result(placed[pk].account, order=placed[pk], **_terms(placed[pk]))
        elif row is not None and row.get("status") != "UNKNOWN":
            rows[pk] = row  # the outcome its request recorded: nothing was written for it
        elif row is not None:  # "not known whether it was placed": no order under its key, never sent
            rows[pk] = {**row, "status": "FAILED", "error": SIGNAL_NOT_SENT}
            finished += 1
        elif signal.payload:
            row = _signal_unplaced(strategy.owner_id, signal, accounts[pk], instrument, SIGNAL_NOT_SENT)
            if row.get("quantity") == 0:
                # Below one lot after its multiplier: the request answers it so, never an order, and
                # so does a repeat; not "not placed ... sending it again places it".
                terms = {field: row[field] for field in ("symbol", "side", "quantity")}
                rows[pk] = _below_one_lot(accounts[pk], **terms)
                continue
            rows[pk] = row
            finished += 1
    # Only as read: a request that began placing it since (a repeat) records its own results.
    still = StrategySignal.objects.filter(pk=signal.pk, placing_since=signal.placing_since)
    return finished if still.update(results=[rows[pk] for pk in sorted(rows)], placing_since=None) else 0


def _signal_key(signal: StrategySignal, account_pk: int) -> str:
    """The idempotency key of a signal's order on an account (``order_place`` prefixes the actor)."""
    return f"signal:{signal.pk}:{account_pk}"


def _placed_by_signal(actor, signal: StrategySignal) -> dict[int, Order]:
    """The orders a signal's requests wrote, by account id (one query)."""
    return selectors.signals_placed([signal], actor.pk).get(signal.pk, {})


def _signal_payload(instrument, side, quantity, order_type, product, price, trigger_price) -> dict | None:
    """A signal as it is stored (as ``spec_check`` leaves a valid one: a whole quantity, prices to
    two places), to tell a repeat of it from another signal; None when its numbers cannot be read."""
    try:
        quantity = services.positive_quantity(quantity)
        price = services.as_stored_price(price, "price")
        trigger_price = services.as_stored_price(trigger_price, "trigger_price")
    except ValidationError:
        return None
    return {
        "instrument": str(instrument),
        "side": side,
        "quantity": quantity,
        "order_type": order_type,
        "product": product,
        "price": str(price) if price is not None else None,
        "trigger_price": str(trigger_price) if trigger_price is not None else None,
    }


def _stored_price(text: str | None) -> Decimal | None:
    """A price as ``_signal_payload`` stored it."""
    return Decimal(text) if text is not None else None


def _replayed(first: StrategySignal, payload: dict | None, signals) -> StrategySignal:
    """The signal first sent with this id, with its results once its request has them, when this
    repeat says the same; else refused."""
    if first.payload and first.payload != payload:
        raise _signal_id_reused()
    return services.settled(first, signals.first, lambda signal: signal.results)


def _made_after(first: StrategySignal, sent_at: datetime | None) -> bool:
    """Whether an alert made at ``sent_at`` was made after ``first`` was received, by more than the
    clock skew an alert's time is allowed (``WEBHOOK_MAX_AGE_S``): then it is another alert."""
    return sent_at is not None and sent_at - first.received_at > timedelta(seconds=settings.WEBHOOK_MAX_AGE_S)


def _signal_id_reused() -> ValidationError:
    return ValidationError(
        {
            "signal_id": ValidationError(
                "This id was already used for a different signal (the first one's orders stand); this one was "
                "not placed. Give each signal its own id.",
                code="conflict",
            )
        }
    )


def _alert_time(value) -> datetime:
    """An alert's time: seconds or milliseconds since the epoch, or ISO 8601 with its offset
    (TradingView's ``{{timenow}}`` is "2026-12-03T12:25:00Z")."""
    refusal = ValidationError(
        {"timestamp": "Send the time of the alert: seconds since the epoch, or ISO 8601 with its offset."}
    )
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise refusal
    try:
        seconds = float(value)
    except OverflowError:  # a whole number too large for a float: no time at all
        raise refusal from None
    except ValueError:
        try:
            sent_at = datetime.fromisoformat(value.strip())
        except ValueError:
            raise refusal from None
        if timezone.is_naive(sent_at):
            raise refusal from None
        return sent_at
    if seconds > 10**11:  # milliseconds (seconds would be past the year 5000)
        seconds /= 1000
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (ValueError, OverflowError, OSError):
        raise refusal from None


def _is_text(value: str) -> bool:
    """Whether ``value`` is text that can be stored (JSON can escape half a character, "\\ud800")."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


# What an alert's JSON may say ("action" is TradingView's word for the side).
ALERT_FIELDS = (
    "secret",
    "id",
    "timestamp",
    "symbol",
    "side",
    "action",
    "quantity",
    "order_type",
    "product",
    "price",
    "trigger_price",
)


def strategy_alert_refused(*, strategy_id: int, reason: str) -> None:
    """Count a refused webhook alert on its strategy, with its time and why (for its owner's page):
    one update of the strategy's row, however many a sender sends; nothing for no such strategy.
    ``reason`` is ours (never the alert's secret), cut to what the row keeps."""
    limit = Strategy._meta.get_field("alert_refused_reason").max_length
    Strategy.objects.filter(pk=strategy_id).update(
        alerts_refused=F("alerts_refused") + 1, alert_refused_at=timezone.now(), alert_refused_reason=reason[:limit]
    )


def strategy_webhook(*, strategy_id: int, body: dict) -> tuple[StrategySignal, bool]:
    """A TradingView-style alert: JSON with the strategy's secret, a unique id and a timestamp.

    Refused (``PermissionError``) on a wrong secret or a timestamp more than
    ``WEBHOOK_MAX_AGE_S`` away from now; a replayed id places nothing (see ``strategy_signal``).
    """
    strategy = Strategy.objects.filter(pk=strategy_id).select_related("owner").first()
    supplied = str(body.get("secret") or "")
    if strategy is None or not strategy.webhook_secret_hash:
        raise PermissionError("unknown strategy")
    # "surrogatepass": half a character ("\ud800" in the JSON) is a wrong secret, not a 500.
    digest = hashlib.sha256(supplied.encode(errors="surrogatepass")).hexdigest()
    if not secrets.compare_digest(digest, strategy.webhook_secret_hash):
        raise PermissionError("wrong secret")
    if not strategy.owner.is_active:
        raise PermissionError("the strategy's owner is deactivated")
    sent_at = _alert_time(body.get("timestamp"))
    if abs((timezone.now() - sent_at).total_seconds()) > settings.WEBHOOK_MAX_AGE_S:
        raise PermissionError("stale or future timestamp")
    # A field an alert does not take is named, not dropped (as the API refuses one): a "validity"
    # of IOC would place a DAY order, a misspelt "product" of CNC an MIS one.
    unknown = [field for field in body if field not in ALERT_FIELDS]
    if unknown:
        raise ValidationError({unknown[0]: f"An alert has no such field; it takes {', '.join(ALERT_FIELDS)}."})
    signal_id = body.get("id")
    if isinstance(signal_id, bool) or not isinstance(signal_id, str | int):
        raise ValidationError({"signal_id": "Give each signal a unique id (a string)."})
    for field in ("id", "symbol"):  # looked up as text: half a character ("\ud800") cannot be
        if isinstance(body.get(field), str) and not _is_text(body[field]):
            raise ValidationError({field: "Send it as text: it holds half of a character (a lone surrogate)."})
    sides = {str(body[field]).upper() for field in ("side", "action") if body.get(field)}
    if len(sides) > 1:  # {"side": "buy", "action": "sell"}: the one meant cannot be told
        raise ValidationError({"side": "The alert's side and action differ; send one of them."})
    symbol = str(body.get("symbol") or "")
    # "NSE:INFY", or TradingView's {{ticker}} alone ("INFY"), which is on NSE.
    exchange, _, tradingsymbol = symbol.rpartition(":")
    instrument = instrument_by_symbol(exchange or "NSE", tradingsymbol)
    return strategy_signal(
        strategy=strategy,
        actor=strategy.owner,
        signal_id=str(signal_id),
        via="webhook",
        instrument=instrument,
        side=next(iter(sides), ""),
        quantity=body.get("quantity"),
        order_type=str(body.get("order_type") or "MARKET").upper(),
        product=str(body.get("product") or "MIS").upper(),
        price=body.get("price"),
        trigger_price=body.get("trigger_price"),
        sent_at=sent_at,
    )
