"""The dashboard, portfolio, trades (and CSV) and monitoring pages, and the dashboard's live pushes."""

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count
from zoneinfo import ZoneInfo

import pytest
from asgiref.sync import sync_to_async
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, include, path, reverse
from django.utils import timezone

from accounts.tests.factories import make_broker_account
from brokers import markets
from brokers.models import Instrument
from brokers.paper import engine
from monitoring import cycle
from monitoring.models import AccountRun
from monitoring.tests.test_consumer import connect
from orders import services as order_services
from orders.tests.factories import instrument, place
from portfolio import broadcast, selectors, services
from portfolio.models import PnlSnapshot, Position, Trade
from portfolio.tests.test_services import fill as trade
from tradingplatform import background

D = Decimal
XSS = "<script>alert(1)</script>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
PAGES = ["dashboard", "dashboard_fragments", "portfolio", "trades", "monitoring"]


# Until tradingplatform/urls.py includes portfolio.urls, these tests mount it themselves.
urlpatterns = [path("", include("tradingplatform.urls")), path("", include("portfolio.urls"))]


@pytest.fixture(autouse=True)
def _portfolio_urls(settings):
    try:
        reverse("portfolio:dashboard", urlconf="tradingplatform.urls")
    except NoReverseMatch:
        settings.ROOT_URLCONF = __name__


_ids = count(1)


def fill(account, symbol, side, quantity, price, at, product="MIS") -> Trade:
    n = next(_ids)
    return Trade.objects.create(
        account=account,
        broker_trade_id=f"T{n}",
        broker_order_id=f"O{n}",
        instrument=instrument(symbol),
        product=product,
        side=side,
        quantity=quantity,
        price=D(price),
        filled_at=at,
    )


def ist(*args) -> datetime:
    return datetime(*args, tzinfo=selectors.IST)


def set_price(last, symbol="INFY"):
    last = D(last)
    engine.market_set(exchange="NSE", tradingsymbol=symbol, last_price=last, bid=last, ask=last)


def section(html: str, element_id: str) -> str:
    match = re.search(rf'<section id="{element_id}"[^>]*>.*?</section>', html, re.S)
    assert match, f"no #{element_id} section"
    return match.group(0)


def get(client, name, **params):
    return client.get(reverse(f"portfolio:{name}"), params)


@pytest.fixture
def filled(trader, account):
    """The trader bought 4 INFY at market at 1500, and the monitor recorded it."""
    set_price("1500")
    order = place(trader, account, quantity=4)
    run = cycle.account_monitor(account=account)
    assert run.status == AccountRun.Status.OK, run.errors
    return order


@pytest.fixture
def theirs(other_trader, instruments, settings):
    """Another trader with a filled WIPRO order, a snapshot and a monitoring error."""
    settings.ORDER_LOOKUP_DELAY_S = 0
    their_account = make_broker_account(other_trader, broker="paper", client_id="PAPER-X9", label="Their desk")
    set_price("245", symbol="WIPRO")
    order = place(other_trader, their_account, symbol="WIPRO", quantity=7)
    cycle.account_monitor(account=their_account)
    assert Trade.objects.filter(account=their_account).exists()
    AccountRun.objects.create(
        account=their_account, status=AccountRun.Status.ERRORS, errors=[{"step": "1_fetch", "error": "their secret"}]
    )
    return their_account, order


# --- Access ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAGES)
def test_anonymous_is_sent_to_login(client, db, name):
    response = get(client, name)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("name", PAGES)
def test_wrong_method_is_405(trader_client, name):
    assert trader_client.post(reverse(f"portfolio:{name}")).status_code == 405


@pytest.mark.parametrize("name", PAGES)
def test_pages_render_for_a_new_trader(trader_client, name):
    assert get(trader_client, name).status_code == 200


# --- Dashboard ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        # An opening lot priced at its holding's average (801.78125 kept as 801.7812) marked at 801.78:
        # -0.0012 is shown 0.00, which is not a loss to show in red (nor 0.004 a gain in green).
        (D("-0.0012"), '<span class="num">0.00</span>'),
        (D("0.0040"), '<span class="num">0.00</span>'),
        (D("-0.0050"), '<span class="num down">-0.01</span>'),
        (D("0.0050"), '<span class="num up">0.01</span>'),
        (D("-12.5000"), '<span class="num down">-12.50</span>'),
    ],
)
def test_money_is_up_or_down_as_shown_not_below_its_last_paisa(value, shown):
    assert render_to_string("portfolio/partials/money.html", {"value": value}).strip() == shown


def test_dashboard_shows_position_trade_and_pnl_after_a_fill(trader_client, account, filled):
    resting = place(account.owner, account, quantity=2, order_type="LIMIT", price=D("1200"))
    set_price("1512.5")
    cycle.account_monitor(account=account)  # values the position at the new price
    html = get(trader_client, "dashboard").content.decode()

    position = Position.objects.get(account=account)
    assert position.net_quantity == 4 and position.realized_pnl == 0
    positions = section(html, "positions")
    assert f'id="position-{position.pk}"' in positions and "INFY" in positions
    assert 'data-label="Net qty" class="num up">4<' in positions

    summary = section(html, "pnl-summary")
    assert re.search(r'id="pnl-realized"><span class="num">0\.00</span>', summary)
    assert Trade.objects.get().price == D("1500") and position.last_price == D("1512.5")
    assert selectors.pnl_summary(account.owner).total == position.unrealized_pnl == D("50")
    assert re.search(r'id="pnl-total"><span class="num up">50\.00</span>', summary)
    assert re.search(r'id="pnl-unrealized"><span class="num up">50\.00</span>', summary)
    assert f'id="pnl-account-{account.pk}"' in summary

    trades = section(html, "recent-trades")
    assert "INFY" in trades and f'href="/orders/{filled.pk}/"' in trades and filled.reference in trades

    open_orders = section(html, "open-orders")
    assert '<tbody id="order-rows">' in open_orders
    assert f'id="order-{resting.pk}"' in open_orders and resting.reference in open_orders
    assert filled.reference not in open_orders  # filled: no longer open


def test_dashboard_chart_is_vendored_and_fed_from_todays_snapshots(trader_client, account, filled):
    html = get(trader_client, "dashboard").content.decode()
    assert "/static/vendor/uplot/uPlot.iife.min.js" in html and "/static/vendor/uplot/uPlot.min.css" in html
    assert "/static/js/dashboard.js" in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # no CDN
    points = json.loads(re.search(r'<script id="pnl-series" type="application/json">(.*?)</script>', html).group(1))
    snapshot = PnlSnapshot.objects.get(account=account)
    assert points == [[int(snapshot.taken_at.timestamp()), str(snapshot.total)]]
    summary = section(html, "pnl-summary")
    assert f'data-point-time="{int(snapshot.taken_at.timestamp())}"' in summary
    assert f'data-point-total="{snapshot.total}"' in summary


def test_dashboard_resyncs_when_the_websocket_reconnects(trader_client, account, filled):
    html = get(trader_client, "dashboard").content.decode()
    resync = re.search(r'<div id="dashboard-resync"[^>]*>', html).group(0)
    assert f'hx-get="{reverse("portfolio:dashboard_fragments")}"' in resync
    assert 'hx-trigger="htmx:wsOpen from:body"' in resync and 'hx-swap="none"' in resync

    response = get(trader_client, "dashboard_fragments")
    assert "no-cache" in response["Cache-Control"]
    fragments = response.content.decode()
    for element_id in ("pnl-summary", "positions", "open-orders", "recent-trades", "monitoring-errors"):
        assert 'hx-swap-oob="true"' in re.search(rf'<section id="{element_id}"[^>]*>', fragments).group(0)
    assert '<div id="pnl-series-data" hidden hx-swap-oob="true">' in fragments
    assert "INFY" in section(fragments, "positions")


def test_pnl_series_carries_each_accounts_latest_snapshot_forward(trader, account, theirs):
    second = make_broker_account(trader, broker="paper", client_id="PAPER-O2", label="Second")
    day = markets.day_start()
    PnlSnapshot.objects.create(account=account, taken_at=day - timedelta(minutes=5), realized=D(999), unrealized=0)
    for minutes, row, realized, unrealized in (
        (10, account, "100", "0"),
        (20, second, "40", "10.5"),
        (30, account, "100", "20"),
        (30, theirs[0], "5000", "0"),  # another trader's: never counted
    ):
        PnlSnapshot.objects.create(
            account=row, taken_at=day + timedelta(minutes=minutes), realized=D(realized), unrealized=D(unrealized)
        )

    points = selectors.pnl_series(trader, day)
    assert [(p.taken_at - day, p.total) for p in points] == [
        (timedelta(minutes=10), D("100")),
        (timedelta(minutes=20), D("150.5")),
        (timedelta(minutes=30), D("170.5")),
    ]
    assert selectors.pnl_latest_point(trader, day) == points[-1]


def test_the_charts_points_count_an_account_not_snapshotted_today_as_the_total_does(trader, trader_client, account):
    """A trader's total PnL over the day counts every account, as the Total beside the chart does:
    one with no snapshot yet today (deactivated, its session expired overnight, or not yet reached
    by the day's first cycle) counts at its latest snapshot, not as nothing until its next one."""
    idle = make_broker_account(trader, broker="paper", client_id="PAPER-O2", label="Idle")
    idle.is_active = False
    idle.save()
    day = markets.day_start()
    Position.objects.create(account=idle, instrument=instrument("INFY"), product="NRML", realized_pnl=D("500"))
    PnlSnapshot.objects.create(account=idle, taken_at=day - timedelta(hours=3), realized=D(400), unrealized=0)
    PnlSnapshot.objects.create(account=idle, taken_at=day - timedelta(hours=2), realized=D(500), unrealized=0)
    Position.objects.create(account=account, instrument=instrument("INFY"), product="MIS", realized_pnl=D("-100.5"))
    for minutes, realized in ((1, "-80"), (2, "-100.5")):
        PnlSnapshot.objects.create(
            account=account, taken_at=day + timedelta(minutes=minutes), realized=D(realized), unrealized=0
        )

    points = selectors.pnl_series(trader, day)
    assert [(p.taken_at - day, p.total) for p in points] == [
        (timedelta(minutes=1), D("420")),
        (timedelta(minutes=2), D("399.5")),
    ]
    assert selectors.pnl_latest_point(trader, day) == points[-1]
    assert selectors.pnl_summary(trader).total == points[-1].total

    html = get(trader_client, "dashboard").content.decode()
    series = json.loads(re.search(r'<script id="pnl-series" type="application/json">(.*?)</script>', html).group(1))
    assert [total for _t, total in series] == ["420.0000", "399.5000"]
    assert 'data-point-total="399.5000"' in section(html, "pnl-summary")


def test_no_chart_point_before_the_days_first_snapshot(trader, account):
    """Yesterday's snapshots carry into today's points, but make none: the chart starts empty."""
    day = markets.day_start()
    PnlSnapshot.objects.create(account=account, taken_at=day - timedelta(hours=1), realized=D(500), unrealized=0)
    assert selectors.pnl_series(trader, day) == []
    assert selectors.pnl_latest_point(trader, day) is None


def test_monitoring_errors_of_the_last_day_are_on_the_dashboard(trader_client, account):
    recent = AccountRun.objects.create(
        account=account, status=AccountRun.Status.ERRORS, errors=[{"step": "1_fetch", "error": "BrokerError: down"}]
    )
    old = AccountRun.objects.create(
        account=account, status=AccountRun.Status.ERRORS, errors=[{"step": "3_orders", "error": "ancient trouble"}]
    )
    AccountRun.objects.filter(pk=old.pk).update(started_at=timezone.now() - timedelta(days=2))
    errors = section(get(trader_client, "dashboard").content.decode(), "monitoring-errors")
    assert f'id="run-{recent.pk}"' in errors and "BrokerError: down" in errors and "1_fetch" in errors
    assert "ancient trouble" not in errors


def test_stored_xss_in_an_account_label_and_an_error_is_escaped(trader, trader_client, instruments):
    evil = make_broker_account(trader, broker="paper", client_id="PAPER-XSS", label=XSS)
    fill(evil, "INFY", "BUY", 1, "1500", timezone.now())
    Position.objects.create(account=evil, instrument=instrument("INFY"), product="MIS", net_quantity=1)
    AccountRun.objects.create(
        account=evil,
        status=AccountRun.Status.ERRORS,
        errors=[{"step": "1_fetch", "error": "<img src=x onerror=alert(2)>"}],
    )
    for name in PAGES:
        html = get(trader_client, name).content.decode()
        assert XSS not in html and "<img src=x" not in html, name
        assert XSS_ESCAPED in html, name


# --- Portfolio: per symbol and per trading day ----------------------------------------------------


def test_portfolio_shows_pnl_per_symbol(trader_client, account, filled):
    html = get(trader_client, "portfolio").content.decode()
    by_symbol = section(html, "pnl-by-symbol")
    assert 'id="symbol-NSE-infy"' in by_symbol
    row = re.search(r'<tr id="symbol-NSE-infy">.*?</tr>', by_symbol, re.S).group(0)
    assert 'data-label="Net qty" class="num">4<' in row
    assert re.search(r'data-label="Realized" class="num"><span class="num">0\.00</span>', row)


def test_realized_pnl_per_ist_trading_day_replays_fills_fifo(trader, trader_client, account):
    second = make_broker_account(trader, broker="paper", client_id="PAPER-O2", label="Second")
    fill(account, "INFY", "BUY", 10, "100", ist(2025, 1, 6, 9, 30))
    fill(account, "INFY", "SELL", 4, "110.05", ist(2025, 1, 6, 23, 59, 59))  # +40.20 on the 6th (IST)
    fill(account, "INFY", "SELL", 6, "105", ist(2025, 1, 7, 0, 0, 0))  # +30 on the 7th; still the 6th in UTC
    fill(account, "TCS", "SELL", 5, "200", ist(2025, 1, 7, 10, 0))  # short
    fill(account, "TCS", "BUY", 5, "190.5", ist(2025, 1, 7, 11, 0))  # +47.50 on the 7th
    # Another account and another product are other positions: nothing closes across them.
    fill(second, "INFY", "SELL", 10, "120", ist(2025, 1, 8, 10, 0))
    fill(account, "INFY", "BUY", 10, "100", ist(2025, 1, 8, 10, 0), product="CNC")
    fill(account, "INFY", "BUY", 3, "99", ist(2025, 1, 8, 11, 0))
    fill(account, "INFY", "SELL", 3, "101", ist(2025, 1, 8, 12, 0))  # +6 on the 8th

    days = {row.day.isoformat(): (row.realized, row.fills) for row in selectors.pnl_by_symbol_and_day(trader).days}
    assert days == {
        "2025-01-06": (D("40.2000"), 2),
        "2025-01-07": (D("77.5000"), 3),
        "2025-01-08": (D("6.0000"), 4),
    }
    assert str(days["2025-01-06"][0]) == "40.2000"  # exact, 4 places

    by_day = section(get(trader_client, "portfolio").content.decode(), "pnl-by-day")
    assert re.search(r'id="day-2025-01-06">.*?>40\.20</span>', by_day, re.S)
    assert re.search(r'id="day-2025-01-07">.*?>77\.50</span>', by_day, re.S)
    assert by_day.index("day-2025-01-08") < by_day.index("day-2025-01-06")  # newest first


def test_a_trading_days_link_lists_that_ist_days_fills_whatever_the_traders_timezone(trader, trader_client, account):
    """The per-day rows are IST trading days; their link must list the fills the row counts, not
    those of the same date in the trader's own timezone (New York is 10.5 hours behind IST)."""
    trader.timezone = "America/New_York"
    trader.save()
    opening = fill(account, "INFY", "BUY", 10, "100", ist(2025, 1, 6, 9, 30))  # the 5th, 23:00 in New York
    closing = fill(account, "INFY", "SELL", 10, "101", ist(2025, 1, 6, 15, 0))  # the 6th, 04:30 in New York
    fill(account, "INFY", "BUY", 1, "100", ist(2025, 1, 7, 9, 20))  # the 6th, 22:50 in New York: IST's 7th
    by_day = section(get(trader_client, "portfolio").content.decode(), "pnl-by-day")
    row = re.search(r'<tr id="day-2025-01-06">.*?</tr>', by_day, re.S).group(0)
    assert 'data-label="Fills" class="num">2<' in row
    link = re.search(r'href="([^"]+)"', row).group(1).replace("&amp;", "&")
    html = trader_client.get(link).content.decode()
    listed = re.findall(r'<tr id="trade-(\d+)"', html)
    assert listed == [str(closing.pk), str(opening.pk)]
    csv_ids = [row[10] for row in csv_rows(trader_client.get(link + "&format=csv"))[1:]]
    assert csv_ids == [closing.broker_trade_id, opening.broker_trade_id]


def test_filtering_a_trading_days_list_again_keeps_it_that_ist_day(trader, trader_client, account):
    """The trades page a per-day row links to is that IST day's; narrowing it with the page's own
    filter form (an account, a symbol) must keep the same day, not switch to the trader's own date,
    which in New York drops the day's first fills and takes in the next day's."""
    trader.timezone = "America/New_York"
    trader.save()
    first = fill(account, "INFY", "BUY", 10, "100", ist(2025, 1, 6, 9, 30))  # the 5th, 23:00 in New York
    later = fill(account, "INFY", "SELL", 10, "101", ist(2025, 1, 6, 15, 0))
    fill(account, "INFY", "BUY", 1, "100", ist(2025, 1, 7, 9, 20))  # IST's 7th, the 6th in New York
    by_day = section(get(trader_client, "portfolio").content.decode(), "pnl-by-day")
    row = re.search(r'<tr id="day-2025-01-06">.*?</tr>', by_day, re.S).group(0)
    html = trader_client.get(re.search(r'href="([^"]+)"', row).group(1).replace("&amp;", "&")).content.decode()
    # The form as the page shows it, sent with an account chosen.
    form = re.search(r'<form method="get"[^>]*class="filters".*?</form>', html, re.S).group(0)
    fields = dict(re.findall(r'<input[^>]*name="(\w+)"[^>]*value="([^"]*)"', form))
    fields["account"] = account.pk
    again = trader_client.get(reverse("portfolio:trades"), fields).content.decode()
    assert re.findall(r'<tr id="trade-(\d+)"', again) == [str(later.pk), str(first.pk)]


# --- Trades and the CSV export --------------------------------------------------------------------


@pytest.fixture
def ledger(trader, account):
    second = make_broker_account(trader, broker="paper", client_id="PAPER-O2", label="Second")
    return {
        "infy": fill(account, "INFY", "BUY", 3, "1500.05", datetime(2025, 1, 6, 4, 0, tzinfo=UTC)),
        "tcs": fill(account, "TCS", "SELL", 2, "3100.1", datetime(2025, 1, 7, 4, 0, tzinfo=UTC)),
        "second": fill(second, "INFY", "SELL", 1, "1499.95", datetime(2025, 1, 8, 4, 0, tzinfo=UTC)),
        "second_account": second,
    }


def csv_rows(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.content.decode())))


def test_trades_csv_has_exact_values_in_the_traders_timezone(trader, trader_client, ledger, theirs):
    trader.timezone = "America/New_York"
    trader.save()
    response = get(trader_client, "trades", format="csv")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="trades-')
    rows = csv_rows(response)
    assert rows[0] == [
        "filled_at",
        "account",
        "exchange",
        "symbol",
        "product",
        "side",
        "quantity",
        "price",
        "value",
        "order",
        "broker_trade_id",
        "broker_order_id",
    ]
    body = rows[1:]
    assert [row[3] for row in body] == ["INFY", "TCS", "INFY"]  # newest first, only the trader's
    infy = body[2]
    assert infy[:9] == [
        "2025-01-05T23:00:00-05:00",
        "Paper",
        "NSE",
        "INFY",
        "MIS",
        "BUY",
        "3",
        "1500.0500",
        "4500.1500",
    ]
    assert infy[10] == ledger["infy"].broker_trade_id
    assert body[1][7:9] == ["3100.1000", "6200.2000"]
    assert "WIPRO" not in response.content.decode() and "Their desk" not in response.content.decode()


def test_trades_csv_cells_from_brokers_and_traders_never_start_a_formula(trader_client, account):
    """A cell starting with =, +, - or @ is run by a spreadsheet as a formula (DDE, HYPERLINK):
    every text that came from a broker (its instrument dump's exchange, a fill's product) or a
    trader (a label) is written so it stays text."""
    infy = instrument("INFY")
    hostile = Instrument.objects.create(
        exchange="=cmd|'/c calc'!A",
        tradingsymbol="@SUM(1+1)",
        instrument_token=990001,
        tick_size=infy.tick_size,
        lot_size=1,
    )
    account.label = "-2+3"
    account.save()
    traded = fill(account, "INFY", "BUY", 1, "100", datetime(2025, 1, 6, 4, 0, tzinfo=UTC), product="+1+1")
    Trade.objects.filter(pk=traded.pk).update(instrument=hostile)
    rows = csv_rows(get(trader_client, "trades", format="csv"))
    assert len(rows) == 2
    risky = [cell for cell in rows[1] if cell[:1] in ("=", "+", "-", "@")]
    assert not risky, risky


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"symbol": "tcs"}, ["tcs"]),
        ({"account": "SECOND"}, ["second"]),
        ({"date_from": "2025-01-07"}, ["second", "tcs"]),
        ({"date_to": "2025-01-06"}, ["infy"]),
        ({"date_from": "2025-01-07", "date_to": "2025-01-07", "symbol": "T"}, ["tcs"]),
    ],
)
def test_trades_filters_apply_to_the_page_and_the_csv(trader_client, ledger, params, expected):
    if params.get("account") == "SECOND":
        params = {**params, "account": ledger["second_account"].pk}
    wanted = [ledger[key].broker_trade_id for key in expected]
    rows = csv_rows(get(trader_client, "trades", format="csv", **params))
    assert [row[10] for row in rows[1:]] == wanted
    html = get(trader_client, "trades", **params).content.decode()
    assert re.findall(r'<tr id="trade-(\d+)"', html) == [str(Trade.objects.get(broker_trade_id=t).pk) for t in wanted]


@pytest.mark.parametrize("params", [{"date_from": "2025-02-30"}, {"date_to": "last friday"}, {"symbol": "x" * 65}])
def test_a_csv_asked_with_a_bad_filter_is_refused_naming_it_not_every_trade(trader_client, ledger, params):
    """The page shows a bad filter beside its field and lists unfiltered; a download has no field to
    show it by, so every trade of every account would be saved as the filtered ones."""
    response = get(trader_client, "trades", format="csv", **params)
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/plain") and next(iter(params)) in response.content.decode()
    assert ledger["infy"].broker_trade_id not in response.content.decode()


def test_a_csv_of_another_traders_or_an_unknown_account_is_404_not_every_trade(trader_client, ledger, theirs):
    their_account, _ = theirs
    for account_id in (their_account.pk, their_account.pk + 1000):
        response = get(trader_client, "trades", format="csv", account=account_id)
        assert response.status_code == 404
        assert ledger["infy"].broker_trade_id not in response.content.decode()


def test_trades_dates_are_days_in_the_traders_timezone(trader, trader_client, ledger):
    trader.timezone = "America/New_York"  # 2025-01-06 04:00 UTC is the 5th in New York
    trader.save()
    rows = csv_rows(get(trader_client, "trades", format="csv", date_from="2025-01-05", date_to="2025-01-05"))
    assert [row[10] for row in rows[1:]] == [ledger["infy"].broker_trade_id]


def test_trades_are_paginated(trader_client, account):
    start = datetime(2025, 1, 6, 4, 0, tzinfo=UTC)
    for minute in range(55):
        fill(account, "INFY", "BUY", 1, "100", start + timedelta(minutes=minute))
    first = get(trader_client, "trades").content.decode()
    second = get(trader_client, "trades", page=2).content.decode()
    assert len(re.findall(r'<tr id="trade-', first)) == 50 and len(re.findall(r'<tr id="trade-', second)) == 5
    assert "Page 2 of 2 · 55 trades" in second
    assert len(csv_rows(get(trader_client, "trades", format="csv", page=2))) == 56  # the CSV is never paged


def test_another_traders_account_filter_shows_none_of_their_trades(trader_client, account, theirs):
    their_account, _ = theirs
    response = get(trader_client, "trades", account=their_account.pk)
    html = response.content.decode()
    assert response.status_code == 200 and "Select a valid choice" in html
    assert "WIPRO" not in html
    assert "WIPRO" not in get(trader_client, "trades", format="csv", account=their_account.pk).content.decode()


# --- Monitoring page ------------------------------------------------------------------------------


def test_monitoring_lists_runs_with_steps_actions_and_errors(trader_client, account):
    ok = AccountRun.objects.create(
        account=account, step_ms={"1_fetch": 12.5, "2_pnl": 3.0}, actions=["recorded 2 fill(s)"]
    )
    bad = AccountRun.objects.create(
        account=account,
        status=AccountRun.Status.ERRORS,
        step_ms={"1_fetch": 7001.0},
        errors=[{"step": "1_fetch", "error": "BrokerError: session expired"}],
    )
    html = get(trader_client, "monitoring").content.decode()
    row = re.search(rf'<tr id="run-{bad.pk}".*?</tr>', html, re.S).group(0)
    assert "Errors" in row and "BrokerError: session expired" in row and "7001.0" in row and "Paper" in row
    row = re.search(rf'<tr id="run-{ok.pk}".*?</tr>', html, re.S).group(0)
    assert "recorded 2 fill(s)" in row and "12.5" in row and "2_pnl" in row

    errors_only = get(trader_client, "monitoring", status="errors").content.decode()
    assert f'id="run-{bad.pk}"' in errors_only and f'id="run-{ok.pk}"' not in errors_only


# --- Another trader's data ------------------------------------------------------------------------


def test_another_traders_data_appears_on_no_page(trader_client, account, filled, theirs):
    their_account, their_order = theirs
    for name in PAGES:
        html = get(trader_client, name).content.decode()
        for secret in ("WIPRO", their_order.reference, "Their desk", "their secret", their_account.client_id):
            assert secret not in html, (name, secret)
    csv_text = get(trader_client, "trades", format="csv").content.decode()
    assert "INFY" in csv_text and "WIPRO" not in csv_text and their_order.reference not in csv_text


# --- Live pushes ----------------------------------------------------------------------------------


def _seed_position(account, quantity=4):
    Position.objects.create(
        account=account,
        instrument=instrument("INFY"),
        product="MIS",
        net_quantity=quantity,
        average_price=D("1500"),
        last_price=D("1510"),
        unrealized_pnl=D(10 * quantity),
    )
    fill(account, "INFY", "BUY", quantity, "1500", timezone.now())


@pytest.fixture
def push_account(trader, other_trader, instruments):
    """A trader's account (with a hostile label) with a position, a fill and an error; another trader's fill."""
    account = make_broker_account(trader, broker="paper", client_id="PAPER-P1", label=XSS)
    _seed_position(account)
    AccountRun.objects.create(
        account=account, status=AccountRun.Status.ERRORS, errors=[{"step": "2_pnl", "error": "pushed trouble"}]
    )
    their_account = make_broker_account(other_trader, broker="paper", client_id="PAPER-P2", label="Their desk")
    fill(their_account, "WIPRO", "BUY", 1, "245", timezone.now())
    return account


@pytest.mark.django_db(transaction=True)
async def test_dashboard_push_sends_every_fragment_with_stable_ids(trader, push_account):
    communicator, connected, _ = await connect(trader)
    assert connected

    assert await sync_to_async(broadcast.dashboard_push)(push_account) is True
    html = await communicator.receive_from(timeout=2)
    for element_id in ("pnl-summary", "positions", "open-orders", "recent-trades", "monitoring-errors"):
        root = re.search(rf'<section id="{element_id}"[^>]*>', html)
        assert root and 'hx-swap-oob="true"' in root.group(0), element_id
    assert 'id="position-' in section(html, "positions") and "INFY" in section(html, "positions")
    assert re.search(r'id="pnl-total"><span class="num up">40\.00</span>', section(html, "pnl-summary"))
    assert "INFY" in section(html, "recent-trades")
    assert "pushed trouble" in section(html, "monitoring-errors")
    assert XSS not in html and XSS_ESCAPED in html
    assert "WIPRO" not in html and "Their desk" not in html
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_burst_of_pushes_sends_one_now_and_one_trailing_push_with_the_last_state(
    trader, push_account, settings
):
    settings.DASHBOARD_PUSH_INTERVAL_S = 1.0
    communicator, connected, _ = await connect(trader)
    assert connected

    assert await sync_to_async(broadcast.dashboard_push)(push_account) is True
    first = await communicator.receive_from(timeout=2)
    assert 'data-label="Net qty" class="num up">4<' in section(first, "positions")
    # The burst goes on: the state changes and five more pushes are asked for within the interval.
    await sync_to_async(lambda: Position.objects.filter(account=push_account).update(net_quantity=9))()
    sent = [await sync_to_async(broadcast.dashboard_push)(push_account) for _ in range(5)]
    assert sent == [False] * 5

    # One trailing push at the end of the interval, showing the state at the end of the burst.
    assert await sync_to_async(background.wait_idle)()
    last = await communicator.receive_from(timeout=5)
    assert 'data-label="Net qty" class="num up">9<' in section(last, "positions")
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


def _version(html: str, element_id: str) -> int | None:
    root = re.search(rf'<section id="{element_id}"[^>]*>', html)
    assert root, f"no #{element_id} section"
    version = re.search(r'data-version="(\d+)"', root.group(0))
    return int(version.group(1)) if version else None


def test_a_dashboard_push_read_before_a_fill_is_older_than_the_page_read_after_it(trader, trader_client, account):
    """Pushes are rendered on different processes and threads (a monitoring run's, a fill's trailing
    push) and may reach the page in either order: one read before the last fill, arriving after the
    page showed that fill, must not put the fill's PnL back. Each live part carries the time its state
    was read (its version, as order rows carry theirs), so the page keeps the newer (pushes.js)."""
    services.trades_record(account=account, broker_trades=[trade("1", "BUY", 10, "100", seconds=-2)])
    stale = render_to_string(broadcast.TEMPLATE, {"dashboard": selectors.dashboard_of(trader)})
    services.trades_record(account=account, broker_trades=[trade("2", "SELL", 10, "110", seconds=-1)])
    page = get(trader_client, "dashboard").content.decode()
    portfolio = get(trader_client, "portfolio").content.decode()
    fresh = get(trader_client, "dashboard_fragments").content.decode()

    assert 'data-label="Net qty" class="num up">10<' in section(stale, "positions")  # the fill is not in it
    assert re.search(r'id="pnl-realized"><span class="num up">100\.00</span>', section(page, "pnl-summary"))
    for element_id in ("pnl-summary", "positions", "recent-trades", "monitoring-errors"):
        old, shown, new = (_version(html, element_id) for html in (stale, page, fresh))
        assert old is not None and old < shown <= new, element_id
    assert _version(stale, "pnl-summary") < _version(portfolio, "pnl-summary")


def test_a_dashboard_push_of_open_orders_read_before_a_cancel_is_older_than_the_page(trader, trader_client, account):
    """The open orders are a live part of the dashboard too: a push read while an order was still
    open, arriving after the page dropped it (cancelled or filled), must not put it back as open.
    Its rows cannot tell (the order's row is no longer on the page to compare with), so the section
    carries the time its state was read, as the other live parts do."""
    set_price("1500")
    resting = place(trader, account, quantity=2, order_type="LIMIT", price=D("1200"))
    stale = render_to_string(broadcast.TEMPLATE, {"dashboard": selectors.dashboard_of(trader)})
    order_services.order_cancel(order=resting, actor=trader, cause="test")
    resting.refresh_from_db()
    assert resting.status == "CANCELLED"
    page = get(trader_client, "dashboard").content.decode()
    fresh = get(trader_client, "dashboard_fragments").content.decode()

    assert f'id="order-{resting.pk}"' in section(stale, "open-orders")  # still open when it was read
    assert f'id="order-{resting.pk}"' not in section(page, "open-orders")
    old, shown, new = (_version(html, "open-orders") for html in (stale, page, fresh))
    assert old is not None and old < shown <= new


@pytest.mark.django_db(transaction=True)
def test_a_trailing_push_asked_for_in_a_transaction_rolled_back_does_not_hold_the_slot(
    trader, push_account, settings, monkeypatch
):
    """The change was rolled back, so its trailing push never runs: its slot must not make the next
    (committed) change within the window skip its own push, leaving the page stale until a run."""
    from django.db import transaction

    settings.DASHBOARD_PUSH_INTERVAL_S = 1.0
    pushed = []
    monkeypatch.setattr(broadcast, "_push", lambda user_id, owner=None: pushed.append(user_id))
    assert broadcast.dashboard_push(push_account) is True  # the window opens
    with pytest.raises(RuntimeError), transaction.atomic():
        assert broadcast.dashboard_push(push_account) is False
        raise RuntimeError("the change fails: rolled back")
    assert broadcast.dashboard_push(push_account) is False  # a committed change, inside the window
    assert background.wait_idle(10)
    assert pushed == [trader.pk, trader.pk]  # at once, then the committed change's trailing push


@pytest.mark.django_db(transaction=True)
async def test_a_push_after_the_trader_changes_timezone_shows_times_in_the_new_one(trader, push_account):
    """A trader who sets their timezone sees the page's times in it at once: the live pushes to that
    page (its recent trades, open orders, errors) must show theirs in it too, not in the old timezone
    for a minute more (mixed on one page: a fill's time hours away from the one beside it)."""
    from accounts import services as account_services

    filled_at = await sync_to_async(lambda: Trade.objects.get(account=push_account).filled_at)()
    shown_in = {
        name: timezone.localtime(filled_at, ZoneInfo(name)).strftime("%d %b %H:%M:%S")
        for name in ("Asia/Kolkata", "America/New_York")
    }
    communicator, connected, _ = await connect(trader)
    assert connected

    await sync_to_async(broadcast._push)(trader.pk)
    assert shown_in["Asia/Kolkata"] in section(await communicator.receive_from(timeout=2), "recent-trades")

    await sync_to_async(account_services.user_update_profile)(user=trader, timezone_name="America/New_York")
    await sync_to_async(broadcast._push)(trader.pk)
    trades = section(await communicator.receive_from(timeout=2), "recent-trades")
    assert shown_in["America/New_York"] in trades and shown_in["Asia/Kolkata"] not in trades
    await communicator.disconnect()
