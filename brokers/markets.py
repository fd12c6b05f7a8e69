"""The Indian exchanges' days and hours: which trading day an instant belongs to, and when each
exchange's normal session opens and closes on one.

A trading day is the exchange's date (Asia/Kolkata), whatever the viewer's timezone. Weekends are
closed, as are the dates in ``EXCHANGE_HOLIDAYS`` (the exchanges publish them each year); special
sessions (a Diwali muhurat) are not known here.
"""

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import timezone

IST = ZoneInfo("Asia/Kolkata")

# Each exchange's normal session (IST). MCX trades to 23:30 while the US keeps summer time and to
# 23:55 otherwise: the later close, so that what ended earlier is never taken for the day's end.
SESSIONS = {
    "NSE": (time(9, 15), time(15, 30)),
    "BSE": (time(9, 15), time(15, 30)),
    "NFO": (time(9, 15), time(15, 30)),
    "BFO": (time(9, 15), time(15, 30)),
    "CDS": (time(9, 0), time(17, 0)),
    "BCD": (time(9, 0), time(17, 0)),
    "MCX": (time(9, 0), time(23, 55)),
}


def trading_date(now: datetime | None = None) -> date:
    """The trading day at ``now`` (default: now)."""
    return (now or timezone.now()).astimezone(IST).date()


def date_start(day: date) -> datetime:
    """The start (midnight, IST) of the trading day ``day``."""
    return datetime.combine(day, time.min, tzinfo=IST)


def day_start(now: datetime | None = None) -> datetime:
    """The start (midnight, IST) of the trading day at ``now``."""
    return date_start(trading_date(now))


def is_trading_day(day: date) -> bool:
    return day.weekday() < 5 and day.isoformat() not in settings.EXCHANGE_HOLIDAYS


def session(exchange: str, day: date) -> tuple[datetime, datetime]:
    """When ``exchange``'s normal session opens and closes on ``day`` (NSE's hours for one not known)."""
    opens, closes = SESSIONS.get(exchange, SESSIONS["NSE"])
    return datetime.combine(day, opens, tzinfo=IST), datetime.combine(day, closes, tzinfo=IST)


def next_open(exchange: str, after: datetime) -> datetime:
    """When ``exchange`` next opens after ``after`` (``after`` itself while it is open)."""
    day = trading_date(after)
    for _ in range(30):  # a fortnight of holidays at most, twice over
        if is_trading_day(day):
            opens, closes = session(exchange, day)
            if after < closes:
                return max(opens, after)
        day += timedelta(days=1)
    raise ValueError(f"{exchange} does not open within 30 days of {after:%Y-%m-%d}: check EXCHANGE_HOLIDAYS")
