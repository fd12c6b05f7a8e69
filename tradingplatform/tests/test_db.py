from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
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


@pytest.mark.django_db
def test_plain_inserts_give_several_rows_their_ids_where_asked_and_leave_conflicting_rows_out(trader, account):
    from orders.tests.factories import instrument
    from portfolio.models import Position
    from tradingplatform.db import PlainInserts

    infy, tcs, sbin = instrument("INFY"), instrument("TCS"), instrument("SBIN")
    made = [
        Position(account=account, instrument=infy, product="CNC"),
        Position(account=account, instrument=tcs, product="CNC"),
    ]
    PlainInserts(Position, returning_ids=True).insert(*made)
    stored = dict(Position.objects.values_list("instrument_id", "pk"))
    assert connection.features.can_return_rows_from_bulk_insert  # MariaDB, SQLite: each row its own id back
    assert [p.pk for p in made] == [stored[infy.pk], stored[tcs.pk]]
    assert all(not p._state.adding for p in made)
    # Without returning_ids, several rows keep no ids; one row always gets its own.
    plain = [
        Position(account=account, instrument=sbin, product="CNC"),
        Position(account=account, instrument=sbin, product="MIS"),
    ]
    PlainInserts(Position).insert(*plain)
    assert [p.pk for p in plain] == [None, None]
    one = Position(account=account, instrument=infy, product="MIS")
    PlainInserts(Position).insert(one)
    assert one.pk == Position.objects.get(instrument=infy, product="MIS").pk

    # ignore_conflicts: the rows that exist are left as they are (their values too), the new one goes in.
    Position.objects.filter(pk=stored[infy.pk]).update(net_quantity=5)
    again = [
        Position(account=account, instrument=infy, product="CNC"),
        Position(account=account, instrument=tcs, product="MIS"),
    ]
    PlainInserts(Position, ignore_conflicts=True).insert(*again)
    rows = sorted(Position.objects.values_list("instrument__tradingsymbol", "product", "net_quantity"))
    assert rows == [
        ("INFY", "CNC", 5),
        ("INFY", "MIS", 0),
        ("SBIN", "CNC", 0),
        ("SBIN", "MIS", 0),
        ("TCS", "CNC", 0),
        ("TCS", "MIS", 0),
    ]
    assert [p.pk for p in again] == [None, None]


@pytest.mark.django_db
def test_plain_inserts_keep_the_statements_of_a_few_rows_only():
    from tradingplatform.db import PlainInserts

    users = get_user_model()
    inserts = PlainInserts(users)
    many = PlainInserts.KEPT_ROWS + 1
    inserts.insert(*(users(username=f"u{i}", first_name="-") for i in range(many)))  # written out, not kept
    inserts.insert(users(username="one", first_name="-"))
    assert [count for _vendor, count in inserts._sql] == [1]
    assert users.objects.filter(username__startswith="u").count() == many
