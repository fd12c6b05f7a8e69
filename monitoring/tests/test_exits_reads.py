"""The monitoring cycle's exits (step 4, every minute for every account) ask of each entry whether it
is done (an ``EXITS_DONE`` event) with one lookup: the rows the server reads do not grow with the
order events, the accounts' own or every account's."""

from datetime import datetime, timedelta

import pytest
from django.db import connection

from accounts.tests.factories import make_broker_account
from brokers.base import IST
from monitoring import cycle
from orders import sources
from orders.models import Order, OrderEvent
from orders.tests.factories import instrument, orders_as_written
from tradingplatform.testing import mariadb_only, server_reads

pytestmark = pytest.mark.django_db(transaction=True)  # ANALYZE TABLE commits

S = Order.Status
NOW = datetime(2026, 3, 26, 12, 0, tzinfo=IST)
TODAY = NOW.replace(hour=0)
LIFE = ("created", "submitted", "opened", "filled")


def write(rows):
    """Strategy orders as given (field values), with their times as written."""
    return orders_as_written([{"source": "strategy", **row} for row in rows])


def history(account, guarded, infy, days, *, per_day, first=1, done=True):
    """``per_day`` entries a day of earlier days (``first`` days back, and ``days`` days from it), each
    filled and closed by its filled stop-loss, with the events of their lives; ``done`` (marked so,
    with its ``EXITS_DONE`` event) or not yet."""
    entries = []
    for day in range(first, first + days):
        at = TODAY - timedelta(days=day) + timedelta(hours=10)
        common = {"account": account, "instrument": infy, "quantity": 1, "filled_quantity": 1}
        common |= {"strategy": guarded, "status": S.FILLED, "created_at": at, "updated_at": at, "exits_done": done}
        entries += write([{**common, "role": Order.Role.ENTRY} for _ in range(per_day)])
    exits = write(
        [
            {f: getattr(e, f) for f in ("account", "instrument", "strategy", "status", "created_at")}
            | {
                "role": Order.Role.STOP_LOSS,
                "parent": e,
                "quantity": 1,
                "filled_quantity": 1,
                "updated_at": e.created_at,
            }
            for e in entries
        ]
    )
    events = [OrderEvent(order=o, kind=kind, cause="test") for o in entries + exits for kind in LIFE]
    if done:
        events += [OrderEvent(order=e, kind=cycle.EXITS_DONE, cause="step 4") for e in entries]
    OrderEvent.objects.bulk_create(events, batch_size=1000)
    return len(entries)


def analyze():
    with connection.cursor() as cursor:
        for model in (Order, OrderEvent):  # as the server's own statistics would say
            cursor.execute(f"ANALYZE TABLE {model._meta.db_table}")
            cursor.fetchall()


def test_whether_an_entry_is_done_is_one_lookup_not_a_read_of_the_events(trader, instruments):
    """Every minute the cycle asks which of its accounts have strategy entries whose exits need a
    look (``_filled_entries`` over all of them), then reads each one's. Whether an entry is done
    (an ``EXITS_DONE`` event) was, for the many accounts' check, a scan of the whole order event
    table, every account's, and for one account's entries a read of all the events of each of its
    orders: every minute, more of them every day the platform ran."""
    mariadb_only()
    infy = instrument()
    account = make_broker_account(trader, broker="paper", client_id="PAPER-X1")
    other = make_broker_account(trader, broker="paper", client_id="PAPER-X2")
    guarded, _ = sources.strategy_save(owner=trader, name="Guarded", account_ids=[account.pk, other.pk])
    done = history(account, guarded, infy, 20, per_day=25)
    done += history(other, guarded, infy, 20, per_day=50)
    yesterday = TODAY - timedelta(hours=15)
    common = {"account": account, "instrument": infy, "strategy": guarded, "role": Order.Role.ENTRY, "quantity": 4}
    wanted = write(
        [
            # Today's, filled: its exits are to be placed.
            {**common, "status": S.FILLED, "filled_quantity": 4, "created_at": NOW, "updated_at": NOW},
            # Carried (NRML) from yesterday, filled, no exits yet.
            {**common, "status": S.FILLED, "filled_quantity": 4, "created_at": yesterday, "updated_at": yesterday},
            # Yesterday's, cancelled after filling 2.
            {**common, "status": S.CANCELLED, "filled_quantity": 2, "created_at": yesterday, "updated_at": yesterday},
        ]
    )
    OrderEvent.objects.bulk_create([OrderEvent(order=o, kind=kind, cause="test") for o in wanted for kind in LIFE])

    def measure():
        analyze()
        steps = [("4_exits", cycle.step_exits)]
        busy, busy_reads = server_reads(lambda: cycle._accounts_with_work([account.pk, other.pk], steps))
        assert busy == {account.pk}
        entries, reads = server_reads(lambda: list(cycle._filled_entries(account=account)))
        assert sorted(entry.pk for entry in entries) == sorted(entry.pk for entry in wanted)
        return busy_reads, reads

    orders = Order.objects.count()
    busy_reads, reads = measure()
    # Fewer than two rows for each order of the accounts: the order, and for an entry one lookup of
    # its events (as an EXISTS on the order's index alone, all its events; materialized, the table).
    assert busy_reads < 2 * orders, f"{busy_reads} rows read for the accounts' {orders} orders ({done} done entries)"
    mine = Order.objects.filter(account=account).count()
    assert reads < 2 * mine, f"{reads} rows read for the account's {mine} orders"
    # And not the events: ten more for each order of the history read no more rows.
    pks = Order.objects.values_list("pk", flat=True)
    more = [OrderEvent(order_id=pk, kind="updated", cause="test") for pk in pks for _ in range(10)]
    OrderEvent.objects.bulk_create(more, batch_size=1000)
    assert measure() == (busy_reads, reads)


def test_round_trips_closed_long_ago_are_not_read_by_each_run(trader, instruments):
    """Whether an entry was done was an event, found by reading the entry: each minute read every
    entry the accounts ever had, and every round trip not marked done (closed by its exits: only the
    sum of their fills said so) with its exits, more of them every day. Done is on the entry's row,
    in an index (``cycle.exits_settle`` marks the round trips closed and settled): the run reads the
    accounts' open and recent entries only."""
    mariadb_only()
    infy = instrument()
    account = make_broker_account(trader, broker="paper", client_id="PAPER-X1")
    other = make_broker_account(trader, broker="paper", client_id="PAPER-X2")
    guarded, _ = sources.strategy_save(owner=trader, name="Guarded", account_ids=[account.pk, other.pk])
    # Yesterday's round trips are not settled yet: read as the open ones are. The earlier days', as
    # ``exits_settle`` left them (written so: its UPDATE leaves the index entries it replaced until
    # the server purges them, which the optimizer counts meanwhile).
    history(account, guarded, infy, 1, per_day=25, done=False)
    history(other, guarded, infy, 1, per_day=50, done=False)
    history(account, guarded, infy, 20, per_day=25, first=2)
    history(other, guarded, infy, 20, per_day=50, first=2)
    common = {"account": account, "instrument": infy, "strategy": guarded, "role": Order.Role.ENTRY, "quantity": 4}
    wanted = write([{**common, "status": S.FILLED, "filled_quantity": 4, "created_at": NOW, "updated_at": NOW}])
    steps = [("4_exits", cycle.step_exits)]

    def measure():
        assert cycle.exits_settle(now=NOW) == 0  # none more settled
        analyze()
        busy, busy_reads = server_reads(lambda: cycle._accounts_with_work([account.pk, other.pk], steps))
        assert busy == {account.pk}
        entries, reads = server_reads(lambda: list(cycle._filled_entries(account=account)))
        assert [entry.pk for entry in entries] == [wanted[0].pk]
        return busy_reads, reads

    busy_reads, reads = measure()
    # The entries not done (today's, and yesterday's 75 round trips) and their exits, a few rows each:
    # not the 1,500 done round trips.
    recent = Order.objects.filter(role=Order.Role.ENTRY, exits_done=False).count()
    assert busy_reads < 8 * recent, f"{busy_reads} rows read for the accounts' {recent} entries not done"
    mine = Order.objects.filter(account=account, role=Order.Role.ENTRY, exits_done=False).count()
    assert reads < 8 * mine, f"{reads} rows read for the account's {mine} entries not done"
    # Twenty more days of history read no more rows.
    history(account, guarded, infy, 20, per_day=25, first=22)
    history(other, guarded, infy, 20, per_day=50, first=22)
    assert measure() == (busy_reads, reads)
