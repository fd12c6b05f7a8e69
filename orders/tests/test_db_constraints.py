"""What the database refuses to hold in the orders tables, whatever writes the row (a bulk update,
a hand-written statement, a script): each invariant the code relies on is a constraint."""

from datetime import time
from decimal import Decimal

import pytest
from django.db import connection

from orders.models import Basket, BasketItem, Order, ScheduledFire, ScheduledOrder, Strategy
from orders.tests.factories import instrument
from orders.tests.test_sources import make_scheduled
from tradingplatform.testing import refused

pytestmark = pytest.mark.django_db


def _order(account, **fields) -> Order:
    return Order.objects.create(
        reference=f"261121A{account.pk}Z1",
        account=account,
        instrument=instrument(),
        side="BUY",
        quantity=5,
        order_type="MARKET",
        product="MIS",
        source=Order.Source.MANUAL,
        **fields,
    )


@pytest.mark.parametrize(
    "field, bad",
    [
        ("status", "COMPLETE"),  # the broker's word, never ours
        ("source", "webhook"),
        ("role", "stoploss"),
        ("product", "MTF"),
        ("validity", "TTL"),
        ("average_price", Decimal("-1")),
    ],
)
def test_an_order_holds_only_its_choices(account, field, bad):
    order = _order(account)
    assert refused(Order, order.pk, **{field: bad})
    order.refresh_from_db()
    assert (order.status, order.source, order.role, order.product, order.validity) == (
        "NEW",
        "manual",
        "entry",
        "MIS",
        "DAY",
    )


def test_an_order_takes_every_one_of_its_choices(account):
    order = _order(account)
    for field, choices in (
        ("status", Order.Status.values),
        ("source", Order.Source.values),
        ("role", Order.Role.values),
        ("product", [value for value, _ in Order._meta.get_field("product").choices]),
        ("validity", [value for value, _ in Order._meta.get_field("validity").choices]),
    ):
        for value in choices:
            assert not refused(Order, order.pk, **{field: value}), (field, value)


def test_a_basket_item_holds_only_its_choices(trader, account):
    basket = Basket.objects.create(owner=trader, name="B")
    item = BasketItem.objects.create(basket=basket, instrument=instrument(), side="BUY", quantity=1)
    assert refused(BasketItem, item.pk, product="BO")
    assert refused(BasketItem, item.pk, validity="GTT")
    assert not refused(BasketItem, item.pk, product="CNC", validity="IOC")


def test_a_scheduled_order_and_its_runs_hold_only_their_choices(trader, account):
    row = make_scheduled(trader, account)
    for field, bad in (("status", "paused"), ("recurrence", "monthly"), ("product", "CO"), ("validity", "GTD")):
        assert refused(ScheduledOrder, row.pk, **{field: bad}), field
    for value in ScheduledOrder.Status.values:
        assert not refused(ScheduledOrder, row.pk, status=value)
    for value in ScheduledOrder.Recurrence.values:
        assert not refused(ScheduledOrder, row.pk, recurrence=value, weekdays=[1], time_of_day=time(9, 30))
    fire = ScheduledFire.objects.create(scheduled=row, due_at=row.created_at)
    assert refused(ScheduledFire, fire.pk, status="done")
    for value in ScheduledFire.Status.values:
        assert not refused(ScheduledFire, fire.pk, status=value)


def test_a_one_off_scheduled_order_always_has_its_date(trader, account):
    once = make_scheduled(trader, account)
    assert refused(ScheduledOrder, once.pk, run_on=None)
    once.refresh_from_db()
    assert once.run_on is not None
    daily = make_scheduled(trader, account, recurrence="trading_days", run_on=None)
    assert daily.run_on is None
    assert refused(ScheduledOrder, daily.pk, recurrence="once")  # made one-off without a date
    assert not refused(ScheduledOrder, daily.pk, recurrence="once", run_on=once.run_on)


def test_a_strategy_chase_cap_is_above_zero_or_none(trader):
    strategy = Strategy.objects.create(owner=trader, name="Chase", chase_after_s=30, chase_max_ticks=4)
    assert refused(Strategy, strategy.pk, chase_max_ticks=0)  # read as no cap: a chase without end
    assert refused(Strategy, strategy.pk, chase_max_percent=Decimal("0"))
    assert refused(Strategy, strategy.pk, chase_max_percent=Decimal("-1"))
    assert not refused(Strategy, strategy.pk, chase_max_ticks=None, chase_max_percent=Decimal("0.5"))


def test_the_migration_turns_a_chase_capped_at_zero_into_no_chase(trader):
    from importlib import import_module

    from django.apps import apps

    migration = import_module("orders.migrations.0015_strategy_chase_caps_positive")
    capped = Strategy.objects.create(owner=trader, name="Capped", chase_after_s=30, chase_max_ticks=4)
    zero = Strategy.objects.create(owner=trader, name="Zero", chase_after_s=30, chase_max_ticks=4)
    off, on = {
        "mysql": ("SET SESSION check_constraint_checks = 0", "SET SESSION check_constraint_checks = 1"),
        "sqlite": ("PRAGMA ignore_check_constraints = ON", "PRAGMA ignore_check_constraints = OFF"),
    }[connection.vendor]
    with connection.cursor() as cursor:  # a row saved before the constraint
        cursor.execute(off)
        try:
            Strategy.objects.filter(pk=zero.pk).update(chase_max_ticks=0)
        finally:
            cursor.execute(on)
    assert Strategy.objects.filter(pk=zero.pk, chase_max_ticks=0).exists()
    migration.no_chase_for_zero_caps(apps, None)
    zero.refresh_from_db()
    capped.refresh_from_db()
    assert (zero.chase_after_s, zero.chase_max_ticks, zero.chase_max_percent) == (None, None, None)
    assert (capped.chase_after_s, capped.chase_max_ticks) == (30, 4)
