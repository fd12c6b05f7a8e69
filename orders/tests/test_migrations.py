"""Migrations run on a database that holds rows (what a deploy does): each migration that adds a
constraint or rewrites data is run over rows the code before it could write, and must neither fail
on them nor change what they mean."""

from datetime import datetime, time
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor

from accounts.tests.factories import make_broker_account, make_user
from orders.tests.factories import instrument

pytestmark = pytest.mark.django_db(transaction=True)

IST = ZoneInfo("Asia/Kolkata")


def migrate(*targets):
    """Migrate to ``targets`` ((app, migration) pairs); the historical models of the state reached."""
    executor = MigrationExecutor(connection)
    state = executor.migrate(list(targets))
    return state.apps


def migrate_to_latest():
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.fixture
def latest_after():
    """Whatever the test does, the database is at the latest migrations again after it (emptied
    first when the rows it wrote stop a migration)."""
    yield
    try:
        migrate_to_latest()
    except DatabaseError:
        call_command("flush", interactive=False, verbosity=0)
        migrate_to_latest()


@pytest.fixture
def owner_account(instruments):
    trader = make_user("trader")
    return trader, make_broker_account(trader, broker="paper", client_id="PAPER-M1", label="Paper")


def _scheduled(apps, trader, account, **fields):
    ScheduledOrder = apps.get_model("orders", "ScheduledOrder")
    values = {
        "owner_id": trader.pk,
        "account_id": account.pk,
        "instrument_id": instrument().pk,
        "side": "BUY",
        "quantity": 1,
        "order_type": "MARKET",
        "product": "MIS",
        "validity": "DAY",
        "time_of_day": time(9, 20),
        "timezone": "Asia/Kolkata",
    }
    values.update(fields)
    return ScheduledOrder.objects.create(**values)


def test_one_off_scheduled_orders_saved_without_a_date_are_given_the_date_they_ran_or_run(owner_account, latest_after):
    """Until the admin stopped editing scheduled orders (dd18411), staff could make one one-off (or
    a daily one into a one-off) with its date left empty: 0014's constraint must not stop the
    deploy on such a row, and each is given the date it was due, ran, or was made (in its zone)."""
    trader, account = owner_account
    apps = migrate(("orders", "0013_choices_constraints"))
    due = datetime(2026, 12, 8, 3, 50, tzinfo=ZoneInfo("UTC"))  # 09:20 in Kolkata
    waiting = _scheduled(apps, trader, account, recurrence="once", run_on=None, next_run_at=due)
    ran = _scheduled(
        apps,
        trader,
        account,
        recurrence="once",
        run_on=None,
        status="done",
        timezone="America/New_York",
        last_run_at=datetime(2026, 12, 2, 2, 0, tzinfo=ZoneInfo("UTC")),  # 1 December, 21:00 in New York
    )
    never = _scheduled(apps, trader, account, recurrence="once", run_on=None, status="cancelled")
    daily = _scheduled(apps, trader, account, recurrence="trading_days", run_on=None, next_run_at=due)

    apps = migrate(("orders", "0014_scheduledorder_once_has_date"))

    ScheduledOrder = apps.get_model("orders", "ScheduledOrder")
    rows = {row.pk: row for row in ScheduledOrder.objects.all()}
    assert rows[waiting.pk].run_on == datetime(2026, 12, 8).date()
    assert (rows[waiting.pk].next_run_at, rows[waiting.pk].status) == (due, "active")
    assert rows[ran.pk].run_on == datetime(2026, 12, 1).date()
    assert rows[ran.pk].status == "done"
    assert rows[never.pk].run_on == never.created_at.astimezone(IST).date()
    assert rows[never.pk].status == "cancelled"
    assert rows[daily.pk].run_on is None  # a recurring order needs no date


def test_names_the_old_collation_told_apart_are_kept_when_names_tell_emoji_apart(owner_account, latest_after):
    """0012 moves strategy and basket names (unique per trader) to a collation that tells emoji apart
    (MariaDB). That collation also weighs some letters as MariaDB's default (``general_ci``) does
    not: "ß" as "ss" (the default, as "s"), so a trader's "Straße" and "Strasse", two names before,
    are one name after; the migration must not stop on them, and each keeps a name of its own."""
    trader, _account = owner_account
    apps = migrate(("orders", "0011_strategy_create_key"))
    if connection.vendor == "mysql":
        # A database created with MariaDB's own default collation (CREATE DATABASE as the README's
        # DATABASE_URL has it); the tests' database is created in another.
        with connection.cursor() as cursor:
            for table in ("orders_strategy", "orders_basket"):
                cursor.execute(f"ALTER TABLE {table} MODIFY name varchar(100) COLLATE utf8mb4_general_ci NOT NULL")
    Strategy, Basket = apps.get_model("orders", "Strategy"), apps.get_model("orders", "Basket")
    strategies = [Strategy.objects.create(owner_id=trader.pk, name=name) for name in ("Straße", "Strasse", "Other")]
    baskets = [Basket.objects.create(owner_id=trader.pk, name=name) for name in ("Große", "Grosse")]

    apps = migrate(("orders", "0012_names_tell_emoji_apart"))
    made_one = connection.vendor == "mysql" and connection.mysql_is_mariadb  # the collation changed there

    Strategy, Basket = apps.get_model("orders", "Strategy"), apps.get_model("orders", "Basket")
    names = dict(Strategy.objects.values_list("pk", "name"))
    assert names[strategies[0].pk] == "Straße"  # the first keeps its name
    assert names[strategies[1].pk] == ("Strasse (2)" if made_one else "Strasse")
    assert names[strategies[2].pk] == "Other"
    basket_names = dict(Basket.objects.values_list("pk", "name"))
    assert basket_names[baskets[0].pk] == "Große"
    assert basket_names[baskets[1].pk] == ("Grosse (2)" if made_one else "Grosse")
