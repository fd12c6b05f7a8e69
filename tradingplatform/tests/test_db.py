from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db.models import F
from django.utils import timezone

from orders.models import ScheduledOrder
from orders.tests.test_sources import make_scheduled
from tradingplatform.db import PlainUpdate, PlainUpdates


@pytest.mark.django_db
def test_plain_updates_write_each_row_its_own_values_and_leave_the_others():
    users = get_user_model()
    ann, bob, cid = (users.objects.create_user(username=name, first_name="-") for name in ("ann", "bob", "cid"))
    updates = PlainUpdates(users, ("first_name", "is_active"))
    assert updates.update({ann.pk: ("Ann", False), cid.pk: ("Cid", True)}) == 2
    assert updates.update({}) == 0
    rows = {u.username: (u.first_name, u.is_active) for u in users.objects.all()}
    assert rows == {"ann": ("Ann", False), "bob": ("-", True), "cid": ("Cid", True)}
    assert updates.update({bob.pk: ("Bob", True)}) == 1  # another row count: its own statement
    assert users.objects.get(pk=bob.pk).first_name == "Bob"


@pytest.mark.django_db
def test_plain_updates_write_nulls_datetimes_and_mixed_rows(trader, account):
    a, b = make_scheduled(trader, account), make_scheduled(trader, account)
    at = timezone.now().replace(microsecond=123456) - timedelta(days=1)
    updates = PlainUpdates(ScheduledOrder, ("last_run_at", "last_result", "next_run_at"))
    assert updates.update({a.pk: (at, "x", None), b.pk: (None, "", at)}) == 2
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.last_run_at, a.last_result, a.next_run_at) == (at, "x", None)
    assert (b.last_run_at, b.last_result, b.next_run_at) == (None, "", at)
    # Writing the same values again still counts the rows (MySQL's affected rows vs matched rows).
    assert updates.update({a.pk: (at, "x", None)}) == 1


@pytest.mark.django_db
def test_plain_update_writes_one_row_only_while_its_conditions_hold(trader, account):
    a, b = make_scheduled(trader, account), make_scheduled(trader, account)
    at = timezone.now().replace(microsecond=654321) - timedelta(hours=3)
    update = PlainUpdate(ScheduledOrder)
    # Conditions on a value, a datetime and a NULL (IS NULL, not "= NULL", which matches nothing).
    assert update.update(a.pk, {"last_result": "ran", "last_run_at": at}, where={"last_run_at": None}) == 1
    assert update.update(a.pk, {"last_result": "again"}, where={"last_run_at": None}) == 0  # no longer NULL
    assert update.update(a.pk, {"last_result": "again", "next_run_at": None}, where={"last_run_at": at}) == 1
    assert update.update(a.pk, {"last_result": "x"}, where={"last_run_at": at + timedelta(seconds=1)}) == 0
    # By attname as by name, and the same values again still count the row (matched, not changed).
    assert update.update(a.pk, {"owner_id": trader.pk}, where={"last_result": "again"}) == 1
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.last_result, a.last_run_at, a.next_run_at) == ("again", at, None)
    assert (b.last_result, b.last_run_at) == ("", None)  # the other row is untouched
    assert update.update(10**9, {"last_result": "gone"}) == 0
    with pytest.raises(TypeError):  # an expression would otherwise be written as its text
        update.update(a.pk, {"last_result": F("last_result")})
    a.refresh_from_db()
    assert a.last_result == "again"
