"""What the database refuses to hold in the orders tables, whatever writes the row (a bulk update,
a hand-written statement, a script): each invariant the code relies on is a constraint."""

from datetime import time
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from orders.models import Basket, BasketItem, Order, ScheduledFire, ScheduledOrder
from orders.tests.factories import instrument
from orders.tests.test_sources import make_scheduled

pytestmark = pytest.mark.django_db


def refused(model, pk, **values) -> bool:
    """The database refuses to write ``values`` on the row (and it keeps what it had)."""
    try:
        with transaction.atomic():
            model.objects.filter(pk=pk).update(**values)
    except IntegrityError:
        return True
    return False


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
