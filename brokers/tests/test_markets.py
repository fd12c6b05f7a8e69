"""The exchanges' days and hours (``brokers.markets``)."""

from datetime import UTC, date, datetime

import pytest

from brokers import markets
from brokers.markets import IST


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=IST)


def test_the_trading_day_is_india_s_whatever_the_instant_s_zone():
    assert markets.trading_date(datetime(2026, 12, 6, 18, 45, tzinfo=UTC)) == date(2026, 12, 7)
    assert markets.day_start(datetime(2026, 12, 6, 18, 45, tzinfo=UTC)) == at(7, 0)
    assert markets.date_start(date(2026, 12, 7)) == at(7, 0)


@pytest.mark.parametrize(
    ("exchange", "after", "opens"),
    [
        ("NSE", at(7, 9, 14), at(7, 9, 15)),
        ("NSE", at(7, 9, 15), at(7, 9, 15)),
        ("NSE", at(7, 15, 29), at(7, 15, 29)),  # open: then
        ("NSE", at(7, 15, 30), at(8, 9, 15)),
        ("NFO", at(7, 12), at(7, 12)),
        ("CDS", at(7, 16, 30), at(7, 16, 30)),
        ("MCX", at(7, 23, 0), at(7, 23, 0)),
        ("MCX", at(7, 23, 55), at(8, 9, 0)),
        ("NSE", at(5, 12), at(7, 9, 15)),  # a Saturday: Monday's
        ("NSE", at(6, 12), at(7, 9, 15)),  # a Sunday
    ],
)
def test_an_exchange_opens_in_its_session_on_weekdays(exchange, after, opens):
    assert markets.next_open(exchange, after) == opens


def test_holidays_are_skipped_to_the_next_session(settings):
    settings.EXCHANGE_HOLIDAYS = frozenset({"2026-12-07"})
    assert not markets.is_trading_day(date(2026, 12, 7))
    # Friday after the close: not Saturday, Sunday nor the Monday holiday, but Tuesday's open.
    assert markets.next_open("NSE", at(4, 15, 30)) == at(8, 9, 15)
    assert markets.next_open("MCX", at(8, 23, 56)) == at(9, 9, 0)
