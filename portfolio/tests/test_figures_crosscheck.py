"""Every PnL and position figure a trader sees, cross-checked with a brute-force FIFO of the broker's fills.

Orders are placed on the paper exchange through the platform and recorded by monitoring runs; the
figures of every page and the API are then compared with what the fills say, recomputed here.
"""

import re
from collections import defaultdict
from decimal import Decimal

import pytest
from django.urls import reverse

from accounts import services as account_services
from accounts.tests.factories import make_broker_account
from brokers.base import IST
from brokers.models import Instrument
from brokers.paper import engine
from brokers.paper.models import PaperClient, PaperInstrument, PaperTrade
from monitoring import cycle
from orders.tests.factories import place
from portfolio import selectors
from portfolio.models import Position
from tradingplatform import background

D = Decimal


def brute_force(accounts):
    """{(account id, exchange, symbol, product): figures} and {IST day: realized}, from the paper fills."""
    by_client = {account.client_id: account for account in accounts}
    fills = PaperTrade.objects.filter(order__client__user_id__in=by_client).select_related(
        "order__client", "order__instrument"
    )
    fills = sorted(fills, key=lambda t: (t.filled_at, len(t.trade_id), t.trade_id))
    lots = defaultdict(list)  # key: [[signed qty, price], ...]
    realized = defaultdict(Decimal)
    days = defaultdict(Decimal)
    for t in fills:
        order = t.order
        instrument = order.instrument
        key = (by_client[order.client.user_id].pk, instrument.exchange, instrument.tradingsymbol, order.product)
        qty = t.quantity if order.transaction_type == "BUY" else -t.quantity
        price = t.price
        book = lots[key]
        gained = D(0)
        while qty and book and (book[0][0] > 0) != (qty > 0):
            lot = book[0]
            matched = min(abs(lot[0]), abs(qty))
            sign = 1 if lot[0] > 0 else -1
            gained += sign * matched * (price - lot[1])
            lot[0] -= sign * matched
            qty += sign * matched
            if not lot[0]:
                book.pop(0)
        if qty:
            book.append([qty, price])
        realized[key] += gained
        days[t.filled_at.astimezone(IST).date()] += gained
    figures = {}
    for key, book in lots.items():
        last = PaperInstrument.objects.get(exchange=key[1], tradingsymbol=key[2]).last_price
        net = sum(q for q, _ in book)
        cost = sum(q * p for q, p in book)
        figures[key] = {
            "net": net,
            "avg": (cost / net).quantize(D("0.0001")) if net else D(0),
            "realized": realized[key],
            "unrealized": net * last - cost,
            "last": last,
        }
    return figures, dict(days)


def money(value):
    return f"{D(value).quantize(D('0.01')):.2f}"


def check_everything(trader, client, accounts):
    figures, days = brute_force(accounts)
    assert figures, "no fills"
    # Positions as kept.
    kept = {
        (p.account_id, p.instrument.exchange, p.instrument.tradingsymbol, p.product): p
        for p in Position.objects.filter(account__in=accounts).select_related("instrument")
    }
    assert set(kept) == set(figures)
    for key, want in figures.items():
        p = kept[key]
        got = {
            "net": p.net_quantity,
            "avg": p.average_price if p.net_quantity else D(0),
            "realized": p.realized_pnl,
            "unrealized": p.unrealized_pnl,
            "last": p.last_price,
        }
        assert got == want, key
    # The summary (dashboard and portfolio): total and per account.
    summary = selectors.pnl_summary(trader)
    realized = sum((f["realized"] for f in figures.values()), D(0))
    unrealized = sum((f["unrealized"] for f in figures.values()), D(0))
    assert (summary.realized, summary.unrealized) == (realized, unrealized)
    for row in summary.accounts:
        mine = [f for k, f in figures.items() if k[0] == row.account.pk]
        assert row.realized == sum((f["realized"] for f in mine), D(0))
        assert row.unrealized == sum((f["unrealized"] for f in mine), D(0))
    # By symbol and by day.
    breakdown = selectors.pnl_by_symbol_and_day(trader)
    per_symbol = defaultdict(lambda: [0, D(0), D(0)])
    for key, f in figures.items():
        row = per_symbol[(key[1], key[2])]
        row[0] += f["net"]
        row[1] += f["realized"]
        row[2] += f["unrealized"]
    assert {(r.exchange, r.tradingsymbol): [r.net_quantity, r.realized, r.unrealized] for r in breakdown.symbols} == {
        k: v for k, v in per_symbol.items()
    }
    assert {row.day: row.realized for row in breakdown.days} == days
    # The API.
    _, secret = account_services.api_key_create(owner=trader, name=f"check-{len(figures)}-{id(figures)}")
    api = client.get("/api/v1/positions", {"limit": 500}, HTTP_AUTHORIZATION=f"Bearer {secret}").json()["items"]
    got = {
        (row["account_id"], row["exchange"], row["tradingsymbol"], row["product"]): (
            row["net_quantity"],
            D(row["realized_pnl"]),
            D(row["unrealized_pnl"]),
            D(row["last_price"]),
        )
        for row in api
    }
    assert got == {k: (f["net"], f["realized"], f["unrealized"], f["last"]) for k, f in figures.items()}
    # The pages, as shown (2 places).
    client.force_login(trader)
    for name in ("dashboard", "portfolio"):
        html = client.get(reverse(f"portfolio:{name}")).content.decode()
        assert re.search(rf'id="pnl-total"><span class="num[^"]*">{money(realized + unrealized)}<', html), name
        assert re.search(rf'id="pnl-realized"><span class="num[^"]*">{money(realized)}<', html), name
        assert re.search(rf'id="pnl-unrealized"><span class="num[^"]*">{money(unrealized)}<', html), name
    return figures, days


def set_price(symbol, last, exchange="NSE", tick="0.05", volume=None):
    last, tick = D(last), D(tick)
    return engine.market_set(
        exchange=exchange,
        tradingsymbol=symbol,
        last_price=last,
        bid=last - tick,
        ask=last + tick,
        tick_volume=volume,
    )


def run(*accounts):
    assert background.wait_idle(30)
    for account in accounts:
        result = cycle.account_monitor(account=account)
        assert result.errors == [], result.errors


@pytest.fixture
def second(trader, account):
    return make_broker_account(trader, broker="paper", client_id="PAPER-O2", label="Second")


def test_buy_in_parts_sell_in_parts_with_paise(trader, client, account):
    set_price("INFY", "1500.35", tick=D("0.1"))
    place(trader, account, quantity=10)
    set_price("INFY", "1502.75", tick=D("0.1"))
    place(trader, account, quantity=7)
    set_price("INFY", "1510.15", tick=D("0.1"))
    place(trader, account, quantity=12, side="SELL")
    run(account)
    set_price("INFY", "1490.45", tick=D("0.1"))
    place(trader, account, quantity=3, side="SELL")
    set_price("INFY", "1495.55", tick=D("0.1"))
    run(account)
    check_everything(trader, client, [account])


def test_short_cover_and_flip(trader, client, account):
    set_price("INFY", "1500", tick=D("0.1"))
    place(trader, account, quantity=10, side="SELL")
    set_price("INFY", "1490", tick=D("0.1"))
    place(trader, account, quantity=4)
    run(account)
    set_price("INFY", "1480", tick=D("0.1"))
    place(trader, account, quantity=20)  # covers 6, long 14
    set_price("INFY", "1485", tick=D("0.1"))
    place(trader, account, quantity=30, side="SELL")  # long to short in one fill
    set_price("INFY", "1470.3", tick=D("0.1"))
    run(account)
    figures, _ = check_everything(trader, client, [account])
    assert list(figures.values())[0]["net"] == -16


def test_two_accounts_in_one_symbol(trader, client, account, second):
    set_price("INFY", "1500", tick=D("0.1"))
    place(trader, account, quantity=10)
    place(trader, second, quantity=5, side="SELL")
    set_price("INFY", "1520", tick=D("0.1"))
    place(trader, account, quantity=4, side="SELL")
    place(trader, second, quantity=2)
    set_price("INFY", "1510", tick=D("0.1"))
    run(account, second)
    check_everything(trader, client, [account, second])


def test_futures_in_lots(trader, client, account):
    lot = Instrument.objects.get(exchange="NFO", tradingsymbol="NIFTY26DECFUT").lot_size
    PaperClient.objects.filter(pk=engine.client_get_or_create(user_id=account.client_id).pk).update(
        cash=D("100000000"), opening_funds=D("100000000")
    )
    set_price("NIFTY26DECFUT", "26104.2", exchange="NFO", tick=D("0.1"))
    place(trader, account, symbol="NIFTY26DECFUT", exchange="NFO", quantity=2 * lot, product="NRML")
    set_price("NIFTY26DECFUT", "26150.4", exchange="NFO", tick=D("0.1"))
    place(trader, account, symbol="NIFTY26DECFUT", exchange="NFO", quantity=3 * lot, side="SELL", product="NRML")
    set_price("NIFTY26DECFUT", "26120.1", exchange="NFO", tick=D("0.1"))
    run(account)
    check_everything(trader, client, [account])


def test_partial_fills_of_one_order(trader, client, account):
    set_price("INFY", "1500", tick=D("0.1"))
    place(trader, account, quantity=10, order_type="LIMIT", price=D("1495"))
    set_price("INFY", "1494.9", tick=D("0.1"), volume=3)
    set_price("INFY", "1494.5", tick=D("0.1"), volume=4)
    run(account)
    set_price("INFY", "1494.3", tick=D("0.1"), volume=100)
    set_price("INFY", "1499", tick=D("0.1"))
    run(account)
    figures, _ = check_everything(trader, client, [account])
    assert list(figures.values())[0]["net"] == 10


def test_a_position_carried_from_yesterday(trader, client, account, kite_day_books):
    from datetime import timedelta

    from django.utils import timezone

    from brokers.paper.models import PaperOrder
    from monitoring.models import BrokerSnapshot
    from portfolio.models import Trade

    set_price("INFY", "1500.25", tick=D("0.1"))
    place(trader, account, quantity=10, product="CNC")
    set_price("INFY", "1505.65", tick=D("0.1"))
    place(trader, account, quantity=6, product="CNC", side="SELL")
    run(account)
    yesterday = timezone.now() - timedelta(days=1)
    PaperTrade.objects.update(filled_at=yesterday)
    PaperOrder.objects.update(placed_at=yesterday, updated_at=yesterday)
    Trade.objects.update(filled_at=yesterday)
    BrokerSnapshot.objects.update(fetched_at=yesterday)
    set_price("INFY", "1510.85", tick=D("0.1"))
    run(account)
    place(trader, account, quantity=3, product="CNC", side="SELL")
    set_price("INFY", "1490.05", tick=D("0.1"))
    run(account)
    figures, days = check_everything(trader, client, [account])
    assert len(days) == 2


def test_a_fill_the_trade_list_lagged(trader, client, account, monkeypatch):
    from brokers.paper.adapter import PaperBroker

    set_price("INFY", "1500.45", tick=D("0.1"))
    first = place(trader, account, quantity=10)
    set_price("INFY", "1503.15", tick=D("0.1"))
    place(trader, account, quantity=5)
    set_price("INFY", "1507.85", tick=D("0.1"))
    place(trader, account, quantity=12, side="SELL")
    real = PaperBroker.trades
    monkeypatch.setattr(
        PaperBroker, "trades", lambda self: [t for t in real(self) if t.broker_order_id != first.broker_order_id]
    )
    run(account)
    assert Position.objects.get(account=account).net_quantity == -7
    monkeypatch.setattr(PaperBroker, "trades", real)
    set_price("INFY", "1502.25", tick=D("0.1"))
    run(account)
    figures, _ = check_everything(trader, client, [account])
    assert list(figures.values())[0]["net"] == 3
