"""The monitoring cycle's order sync (step 3, every minute for every account) reads the orders it
looks at, not the account's history: the rows the server reads do not grow with the closed orders
of earlier days."""

import random
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from accounts.tests.factories import make_broker_account
from brokers.base import IST
from monitoring import cycle
from orders import services
from orders.models import Order
from orders.tests.factories import instrument, orders_as_written
from tradingplatform.testing import mariadb_only, server_reads

pytestmark = pytest.mark.django_db(transaction=True)  # ANALYZE TABLE commits

S = Order.Status
NOW = datetime(2026, 3, 26, 12, 0, tzinfo=IST)
TODAY = NOW.replace(hour=0)


def write(account, rows, *, infy):
    """Orders of ``account`` as (status, created_at, updated_at), with those times as written."""
    common = {"account": account, "instrument": infy, "quantity": 1}
    return orders_as_written([{**common, "status": s, "created_at": c, "updated_at": u} for s, c, u in rows])


def test_the_order_sync_reads_the_orders_it_syncs_not_the_accounts_history(trader, instruments, monkeypatch):
    """Every minute the cycle asks which of its accounts have orders to sync (``orders_to_sync`` over
    all of them), then reads each one's. On a busy day (today's orders of another account) that look
    went by the index on (account, status): every CANCELLED and FAILED order of every earlier day
    of the accounts, read again every minute, more of them every day the platform ran."""
    mariadb_only()
    infy = instrument()
    account = make_broker_account(trader, broker="paper", client_id="PAPER-H1")
    other = make_broker_account(trader, broker="paper", client_id="PAPER-H2")
    rng = random.Random(54)
    closed = [S.FILLED, S.FILLED, S.CANCELLED, S.REJECTED, S.FAILED]
    history = 0
    for each in (account, other):
        rows = []
        for day in range(1, 61):  # two months of earlier days, 60 closed orders each
            for _ in range(60):
                at = TODAY - timedelta(days=day) + timedelta(minutes=rng.randrange(9 * 60, 16 * 60))
                rows.append((rng.choice(closed), at, at + timedelta(minutes=rng.randrange(0, 30))))
        history += len(write(each, rows, infy=infy))
    # The other account's busy day: orders filled or refused (none to sync).
    busy_day = [NOW - timedelta(seconds=rng.randrange(60, 3 * 3600)) for _ in range(2000)]
    write(other, [(rng.choice([S.FILLED, S.REJECTED]), at, at) for at in busy_day], infy=infy)
    yesterday = TODAY - timedelta(hours=15)
    minutes = timedelta(minutes=1)
    wanted = write(
        account,
        [
            (S.OPEN, yesterday, yesterday),  # live of an earlier day (its day's end is closed by the sync)
            (S.NEW, NOW - minutes, NOW - minutes),
            (S.SUBMITTED, NOW - 5 * minutes, NOW - 5 * minutes),
            (S.OPEN, TODAY + 600 * minutes, TODAY + 600 * minutes),
            (S.PARTIALLY_FILLED, TODAY + 30 * minutes, NOW - 2 * minutes),
            (S.FAILED, TODAY + 60 * minutes, TODAY + 61 * minutes),  # today's failed
            (S.CANCELLED, TODAY + 90 * minutes, NOW - 9 * minutes),  # today's, cancelled in the last 10 minutes
        ],
        infy=infy,
    )
    write(
        account,
        [
            (S.FAILED, yesterday, yesterday + minutes),  # yesterday's failed
            (S.CANCELLED, yesterday, NOW - 2 * minutes),  # yesterday's, cancelled just now
            (S.CANCELLED, TODAY + 60 * minutes, NOW - 11 * minutes),  # today's, cancelled over 10 minutes ago
            (S.FILLED, NOW - 3 * minutes, NOW - 2 * minutes),
            (S.REJECTED, NOW - 3 * minutes, NOW - 3 * minutes),
        ],
        infy=infy,
    )
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE TABLE {Order._meta.db_table}")  # as the server's own statistics would say
        cursor.fetchall()
    monkeypatch.setattr(timezone, "now", lambda: NOW)

    steps = [("3_orders", cycle.step_orders)]
    busy, reads = server_reads(lambda: cycle._accounts_with_work([account.pk, other.pk], steps))
    assert busy == {account.pk}
    assert reads < 200, f"{reads} rows read for the accounts' {history} closed orders of earlier days"

    synced, reads = server_reads(lambda: list(services.orders_to_sync(account=account).select_related("instrument")))
    assert sorted(order.reference for order in synced) == sorted(order.reference for order in wanted)
    assert [order.pk for order in synced] == [
        order.pk for order in sorted(synced, key=lambda order: (order.created_at, order.pk), reverse=True)
    ]
    assert reads < 200, f"{reads} rows read for the account's {history // 2} closed orders of earlier days"
