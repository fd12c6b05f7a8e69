import pytest
from django.utils import timezone

from brokers.base import IST
from brokers.paper.adapter import PaperBroker


def start_of_today():
    return timezone.now().astimezone(IST).replace(hour=0, minute=0, second=0, microsecond=0)


@pytest.fixture
def kite_day_books(monkeypatch):
    """The paper adapter's order book and fills as Kite gives them: today's only."""
    real_orders, real_trades = PaperBroker.orders, PaperBroker.trades

    def today(rows, when):
        return [row for row in rows if when(row) is None or when(row) >= start_of_today()]

    monkeypatch.setattr(PaperBroker, "orders", lambda self: today(real_orders(self), lambda o: o.placed_at))
    monkeypatch.setattr(PaperBroker, "trades", lambda self: today(real_trades(self), lambda t: t.filled_at))
