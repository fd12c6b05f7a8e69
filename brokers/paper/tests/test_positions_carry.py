"""Net positions read the day's fills on what earlier days carried in, kept once a day
(``PaperCarry``), not every fill the client ever had: the same figures, to the last digit."""

import random
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.backends.utils import CursorWrapper
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from brokers.paper import engine
from brokers.paper.models import PaperCarry, PaperInstrument, PaperOrder, PaperTrade

D = Decimal
SYMBOLS = ("INFY", "TCS", "RELIANCE", "SBIN")
PRODUCTS = ("MIS", "NRML", "CNC")


@pytest.fixture
def client(db, paper_market):
    return engine.client_get_or_create(user_id="C1")


@pytest.fixture
def orders(client):
    """An order per instrument and product for the fills to hang on (positions read the fills)."""
    made = {}
    for number, instrument in enumerate(PaperInstrument.objects.filter(exchange="NSE", tradingsymbol__in=SYMBOLS)):
        for product in PRODUCTS:
            made[(instrument.pk, product)] = PaperOrder.objects.create(
                order_id=f"9{number}{len(made):08d}",
                client=client,
                instrument=instrument,
                transaction_type="BUY",
                order_type="MARKET",
                product=product,
                quantity=1,
                status=PaperOrder.Status.COMPLETE,
                filled_quantity=1,
                priority=0,
            )
    return made


_numbers = iter(range(10**6))


def fills(orders, rng, moments):
    """A fill at each moment: a random instrument, product, side, quantity and price (odd prices,
    so that averages run to many digits)."""
    made = []
    keys = sorted(orders)
    for moment in moments:
        instrument_id, product = rng.choice(keys)
        made.append(
            PaperTrade(
                trade_id=f"8{next(_numbers):019d}",
                order=orders[(instrument_id, product)],
                client=orders[(instrument_id, product)].client,
                instrument_id=instrument_id,
                transaction_type=rng.choice(("BUY", "SELL")),
                product=product,
                quantity=rng.choice((1, 2, 3, 5, 7, 10, 25, 40)),
                price=D(rng.randint(10000, 300000)) / 100,
                filled_at=moment,
            )
        )
    return PaperTrade.objects.bulk_create(made)


def history(orders, rng, *, days, per_day, today=0):
    """``per_day`` fills on each of ``days`` days before today (some in the last minutes before
    midnight, read with the day's book), and ``today`` fills today."""
    start = engine.day_start()
    moments = []
    for day in range(days, 0, -1):
        midnight = start - timedelta(days=day - 1)
        moments += sorted(midnight - timedelta(seconds=rng.randint(1, 86399)) for _ in range(per_day))
        moments.append(midnight - timedelta(minutes=rng.randint(1, 14)))  # within BOOK_LOOKBACK
    elapsed = max(int((timezone.now() - start).total_seconds()), 1)
    moments += sorted(start + timedelta(seconds=rng.randint(0, elapsed - 1)) for _ in range(today))
    return fills(orders, rng, moments)


def figures(rows):
    """Every figure of every row, as text: the same value written another way (1E+1, 10.00) differs."""
    return [
        (
            row.instrument.pk,
            str(row.instrument.last_price),
            row.product,
            row.buy_quantity,
            str(row.buy_value),
            row.sell_quantity,
            str(row.sell_value),
            row.day_buy_quantity,
            str(row.day_buy_value),
            row.day_sell_quantity,
            str(row.day_sell_value),
            row.overnight_quantity,
            str(row.average_price),
            str(row.pnl),
            str(row.realised),
            str(row.unrealised),
        )
        for row in rows
    ]


def assert_as_from_every_fill(client):
    expected = engine._positions_of_every_fill(client)
    assert figures(engine.positions_of(client)) == figures(expected)
    realised = sum((row.realised for row in expected), D(0))
    assert str(engine.margins_of(client)["realised"]) == str(realised)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_net_positions_and_margins_are_those_of_every_fill_to_the_last_digit(client, orders, seed):
    rng = random.Random(seed)
    history(orders, rng, days=6, per_day=60, today=30)
    assert engine._positions_of_every_fill(client)  # something carried in, something traded today
    assert_as_from_every_fill(client)  # the carry worked out
    assert PaperCarry.objects.filter(client=client).count() == 1
    assert_as_from_every_fill(client)  # the carry kept

    history(orders, rng, days=0, per_day=0, today=10)  # more trading today
    assert_as_from_every_fill(client)
    fills(orders, rng, [engine.day_start() - timedelta(minutes=3)])  # a fill before midnight told late
    assert_as_from_every_fill(client)
    fills(orders, rng, [engine.day_start() - timedelta(days=3)])  # one of days ago, written now
    assert_as_from_every_fill(client)

    today = PaperTrade.objects.filter(filled_at__gte=engine.day_start()).order_by("id")
    PaperTrade.objects.filter(pk=today.first().pk).update(filled_at=engine.day_start() - timedelta(days=2))
    assert_as_from_every_fill(client)  # a fill of today backdated
    earlier = PaperTrade.objects.filter(filled_at__lt=engine.day_start() - timedelta(days=1)).order_by("id")
    PaperTrade.objects.filter(pk=earlier[5].pk).update(product="NRML", price=D("1234.57"))
    assert_as_from_every_fill(client)  # an earlier fill edited
    earlier[7].delete()
    assert_as_from_every_fill(client)  # one deleted
    PaperTrade.objects.filter(pk=earlier[9].pk).update(filled_at=earlier[9].filled_at - timedelta(days=1))
    assert_as_from_every_fill(client)  # one moved among the earlier days
    PaperTrade.objects.filter(filled_at__gte=engine.day_start()).delete()
    assert_as_from_every_fill(client)  # nothing traded today: only what was carried in


def test_the_carry_kept_is_the_clients_own_and_of_the_day(client, orders):
    rng = random.Random(4)
    history(orders, rng, days=3, per_day=20, today=5)
    other = engine.client_get_or_create(user_id="C2")
    assert engine.positions_of(other) == []
    assert_as_from_every_fill(client)
    PaperCarry.objects.filter(client=client).update(day=engine.trading_date() - timedelta(days=1))  # yesterday's
    assert_as_from_every_fill(client)
    assert list(PaperCarry.objects.filter(client=client).values_list("day", flat=True)) == [engine.trading_date()]


def reads(client, monkeypatch):
    """The statements and the rows fetched by one ``positions_of`` of the client, and on MariaDB
    the rows its server read (handler reads)."""
    fetched = [0]

    def counted(name):
        def fetch(self, *args):
            result = getattr(self.cursor, name)(*args)
            fetched[0] += len(result) if name != "fetchone" else result is not None
            return result

        return fetch

    def handler_reads():
        if connection.vendor != "mysql":
            return 0
        with connection.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS LIKE 'Handler_read%%'")
            return sum(int(value) for _name, value in cursor.fetchall())

    before = handler_reads()
    with monkeypatch.context() as patched:
        for name in ("fetchone", "fetchmany", "fetchall"):
            patched.setattr(CursorWrapper, name, counted(name), raising=False)
        with CaptureQueriesContext(connection) as queries:
            engine.positions_of(client)
    return len(queries), fetched[0], handler_reads() - before


def test_net_positions_read_the_same_rows_whatever_the_number_of_earlier_days(client, orders, monkeypatch):
    """The monitoring cycle reads every account's positions every minute: they read every fill the
    client ever had (2.5 s for 20,000 on MariaDB), growing without bound with its history."""
    rng = random.Random(5)
    history(orders, rng, days=2, per_day=10, today=10)
    engine.positions_of(client)
    few_days = reads(client, monkeypatch)

    start = engine.day_start()
    fills(orders, rng, [start - timedelta(days=3 + n // 20, minutes=n) for n in range(600)])  # a month more
    engine.positions_of(client)  # worked out again: fills of earlier days were written
    many_days = reads(client, monkeypatch)
    assert many_days[:2] == few_days[:2]
    assert many_days[2] <= few_days[2] + 20  # the server's reads too (MariaDB), not the month's 600
