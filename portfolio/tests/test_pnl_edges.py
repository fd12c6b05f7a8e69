"""PnL at the edges a review found wrong: fills recorded out of the order they filled, a last price
of 0, a fill in an instrument the platform has not loaded, a position carried from an earlier day."""

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from brokers.base import BrokerTrade
from brokers.models import Instrument
from brokers.paper import engine
from brokers.paper.adapter import PaperBroker
from brokers.paper.models import PaperOrder, PaperTrade
from brokers.selectors import instruments_search
from monitoring import cycle
from monitoring.models import AccountRun, BrokerSnapshot
from orders.tests.factories import place
from portfolio import selectors, services
from portfolio.models import Position, Trade
from portfolio.tests.test_services import fill

D = Decimal


def set_price(last, symbol="INFY"):
    last = D(last)
    engine.market_set(exchange="NSE", tradingsymbol=symbol, last_price=last, bid=last - D("0.1"), ask=last + D("0.1"))


def test_a_fill_recorded_after_a_later_one_is_matched_in_the_order_they_filled(trader, account):
    """BUY 10 @ 110 is recorded before the earlier BUY 10 @ 100 (told late); a SELL 10 @ 120 then
    closes the 100 lot first: realized 200, 10 left at 110, as the per-day replay says."""
    services.trades_record(account=account, broker_trades=[fill("2", "BUY", 10, "110", seconds=-598)])
    services.trades_record(account=account, broker_trades=[fill("1", "BUY", 10, "100", seconds=-600)])
    services.trades_record(account=account, broker_trades=[fill("3", "SELL", 10, "120", seconds=-597)])
    position = Position.objects.get(account=account)
    per_day = sum(row.realized for row in selectors.pnl_by_symbol_and_day(trader).days)
    assert position.realized_pnl == per_day == D("200")
    assert (position.net_quantity, position.average_price) == (10, D("110"))
    # In order again afterwards: the next fill goes on from the lots as they are.
    services.trades_record(account=account, broker_trades=[fill("4", "SELL", 5, "130", seconds=-596)])
    position.refresh_from_db()
    assert (position.realized_pnl, position.net_quantity) == (D("300"), 5)


def tied_fills():
    """Kite's fills, to the second: two BUYs in one second, in the exchange's order of their trade
    numbers (its orders' ids, given when they were placed, the other way round), then a SELL."""
    second = timezone.now().replace(microsecond=0) - timedelta(seconds=600)
    made = [
        ("250101000000011", "BUY", 10, "100", 0, "250101000000002"),
        ("250101000000012", "BUY", 10, "110", 0, "250101000000001"),
        ("250101000000013", "SELL", 15, "120", 1, "250101000000003"),
    ]
    return {
        trade_id: replace(
            fill(trade_id, side, qty, price), broker_order_id=order, filled_at=second + timedelta(seconds=s)
        )
        for trade_id, side, qty, price, s, order in made
    }


def with_answer(account, trades):
    with transaction.atomic():
        services.fills_with_answer(account, trades)()


@pytest.mark.parametrize(
    "arrivals",
    [
        [("sync", ["11", "12", "13"])],
        [("answer", ["12"]), ("sync", ["11", "12", "13"])],  # the trade list lags the placement's answer
        [("sync", ["12"]), ("sync", ["11"]), ("sync", ["13"])],
        [("sync", ["13"]), ("sync", ["12"]), ("sync", ["11"])],
        [("sync", ["12", "13"]), ("sync", ["13", "11", "12"])],  # overlapping batches: each fill counts once
    ],
)
def test_fills_of_one_second_match_in_their_trade_numbers_order_however_they_arrive(trader, account, arrivals):
    """Fills tied on their second match FIFO in the order of their trade numbers (the exchange's),
    whichever batches and order they are recorded in: 10 @ 100 then 5 @ 110 close at 120,
    realized 250, 5 left at 110 (the other way round would be 200, 5 at 100)."""
    fills = tied_fills()
    for path, trade_ids in arrivals:
        trades = [fills[f"2501010000000{trade_id}"] for trade_id in trade_ids]
        if path == "answer":
            with_answer(account, trades)
        else:
            services.trades_record_many([(account, trades)])
    position = Position.objects.get(account=account)
    per_day = sum(row.realized for row in selectors.pnl_by_symbol_and_day(trader).days)
    assert position.realized_pnl == per_day == D("250")
    assert (position.net_quantity, position.average_price) == (5, D("110"))
    assert Trade.objects.filter(account=account).count() == 3


def test_a_fill_of_the_same_second_that_comes_after_the_latest_goes_on_from_the_kept_lots(account):
    """Only a fill that comes before one applied replays the position's history: one of the same
    second with a later trade number (most fills of a busy second, at Kite) goes on from the lots."""
    fills = tied_fills()
    services.trades_record_many([(account, [fills["250101000000011"]])])
    with CaptureQueriesContext(connection) as queries:
        services.trades_record_many([(account, [fills["250101000000012"]])])
    replays = [q for q in queries if q["sql"].startswith("SELECT") and "`portfolio_trade`.`product` =" in q["sql"]]
    assert not replays  # the replay reads every fill of the position (account, instrument, product)
    services.trades_record_many([(account, [fills["250101000000013"]])])
    position = Position.objects.get(account=account)
    assert (position.realized_pnl, position.net_quantity, position.average_price) == (D("250"), 5, D("110"))


def test_a_last_price_of_0_is_no_price(account):
    services.trades_record(account=account, broker_trades=[fill("1", "BUY", 75, "120")])
    services.positions_mark(account=account, last_prices={("NSE", "INFY"): D("0")})
    position = Position.objects.get(account=account)
    assert (position.last_price, position.unrealized_pnl) == (D("120"), 0)


def test_a_fill_in_an_instrument_not_loaded_is_an_error_of_the_run(trader, account):
    """Bought in the broker's own app in a contract the platform has not loaded: it cannot be in
    the positions, and the run says so instead of reporting all well."""
    Instrument.objects.filter(exchange="NSE", tradingsymbol="WIPRO").delete()
    client = engine.client_get_or_create(user_id=account.client_id)
    engine.order_place(
        client=client, exchange="NSE", tradingsymbol="WIPRO", transaction_type="BUY", order_type="MARKET",
        quantity=100, product="MIS", price=None, trigger_price=None, validity="DAY", tag="", variety="regular",
    )  # fmt: skip
    run = cycle.account_monitor(account=account)
    assert run.status == AccountRun.Status.ERRORS
    assert "NSE:WIPRO are not recorded" in run.errors[0]["error"] and run.errors[0]["step"] == "2_pnl"
    assert not Trade.objects.exists()


def test_a_position_carried_from_an_earlier_day_is_valued_at_todays_price(trader, account, monkeypatch):
    """A broker lists today's orders only (Kite), and yesterday's CNC buy is in its holdings, not its
    positions: the platform's open position is still priced each cycle."""
    real_orders = PaperBroker.orders
    today = timezone.now().astimezone(engine.IST).date()
    monkeypatch.setattr(
        PaperBroker,
        "orders",
        lambda self: [o for o in real_orders(self) if o.placed_at.astimezone(engine.IST).date() == today],
    )
    monkeypatch.setattr(PaperBroker, "positions", lambda self: [])
    set_price("1500")
    place(trader, account, quantity=10, product="CNC")
    cycle.account_monitor(account=account)
    yesterday = timezone.now() - timedelta(days=1)
    PaperTrade.objects.update(filled_at=yesterday)
    PaperOrder.objects.update(placed_at=yesterday, updated_at=yesterday)
    Trade.objects.update(filled_at=yesterday)
    BrokerSnapshot.objects.update(fetched_at=yesterday)  # the holdings read yesterday: read again today
    set_price("1600")
    run = cycle.account_monitor(account=account)
    assert run.errors == []
    position = Position.objects.get(account=account, product="CNC")
    assert position.last_price == D("1600")
    assert position.unrealized_pnl == 10 * (D("1600") - position.average_price)


def test_contracts_quoted_in_lots_of_a_multiplier_are_neither_traded_nor_recorded_wrong(trader, account):
    """An MCX lot of LEADMINI is 1000 kg: price x quantity would make a 500 rupee gain 0.50."""
    import pytest
    from django.core.exceptions import ValidationError

    from orders import services as orders

    lead = Instrument.objects.create(
        exchange="MCX", tradingsymbol="LEADMINI26DECFUT", instrument_token=53496327, tick_size=D("0.05"), lot_size=1
    )
    assert lead not in instruments_search("LEADMINI")[0]  # not offered
    with pytest.raises(ValidationError) as error:
        orders.spec_check(instrument=lead, side="BUY", quantity=1, order_type="MARKET", product="NRML")
    assert "multiplier" in error.value.message_dict["instrument"][0]
    trades = [
        BrokerTrade(
            trade_id=str(n),
            broker_order_id=f"o{n}",
            exchange="MCX",
            tradingsymbol=lead.tradingsymbol,
            side=side,
            product="NRML",
            quantity=1,
            price=D(price),
            filled_at=timezone.now(),
        )  # fmt: skip
        for n, side, price in ((1, "BUY", "161.05"), (2, "SELL", "161.55"))
    ]
    assert services.trades_record(account=account, broker_trades=trades) == []
    assert not Position.objects.exists()
    assert cycle._unrecordable(trades) == [
        (["MCX:LEADMINI26DECFUT"], "their contract multiplier is not kept yet, so their PnL would be wrong")
    ]


def test_a_replay_of_a_position_written_before_fill_ids_were_kept_keeps_the_latest_fills_ids(account):
    """A position written before its latest fill's ids were kept has only that fill's second: a fill
    of that second replays it (it may come first). The replay then keeps the latest fill's ids, so a
    third fill of that second, earlier than it by its trade number, replays it again: BUY 10 @ 100
    (#10), 10 @ 110 (#11), 10 @ 120 (#12), recorded #12, #11, #10; a SELL 10 @ 130 closes the 100 lot."""
    second = timezone.now().replace(microsecond=0) - timedelta(seconds=600)

    def tied(number, side, quantity, price, seconds=0):
        trade_id = f"2501010000000{number}"
        made = fill(trade_id, side, quantity, price)
        return replace(made, broker_order_id=f"9{trade_id}", filled_at=second + timedelta(seconds=seconds))

    services.trades_record_many([(account, [tied(12, "BUY", 10, "120")])])
    position = Position.objects.get(account=account)
    legacy = {k: v for k, v in position.fifo.items() if k != services.LAST_FILL}  # as written before today
    Position.objects.filter(pk=position.pk).update(fifo=legacy)
    services.trades_record_many([(account, [tied(11, "BUY", 10, "110")])])
    services.trades_record_many([(account, [tied(10, "BUY", 10, "100")])])
    services.trades_record_many([(account, [tied(13, "SELL", 10, "130", seconds=1)])])
    position.refresh_from_db()
    assert (position.realized_pnl, position.net_quantity, position.average_price) == (D("300"), 20, D("115"))


def test_a_position_reopened_by_a_run_that_could_not_read_prices_is_valued_at_its_fill_not_an_old_mark(account):
    """Closed last week, last marked then at 100; today's BUY 10 @ 150 is recorded by a run whose
    prices could not be read (a quote limit): no mark follows, so the fill's price, newer than the
    position's last valuation, is its last price, not last week's (unrealized -500 and a dip in the
    chart's snapshot, for a position bought a moment ago)."""
    week_ago = -7 * 24 * 3600
    services.trades_record(
        account=account,
        broker_trades=[fill("1", "BUY", 10, "90", seconds=week_ago), fill("2", "SELL", 10, "95", seconds=week_ago + 1)],
    )
    services.positions_mark(account=account, last_prices={("NSE", "INFY"): D("100")})
    Position.objects.update(updated_at=timezone.now() + timedelta(seconds=week_ago + 2))
    services.trades_record(account=account, broker_trades=[fill("3", "BUY", 10, "150", seconds=-5)])
    position = Position.objects.get(account=account)
    assert (position.last_price, position.unrealized_pnl, position.realized_pnl) == (D("150"), 0, D("50"))
    assert services.pnl_snapshot(account=account).unrealized == 0
    # A mark newer than a fill recorded late stays: the fill's price is older than it.
    services.positions_mark(account=account, last_prices={("NSE", "INFY"): D("160")})
    services.trades_record(account=account, broker_trades=[fill("4", "BUY", 10, "140", seconds=-60)])
    position.refresh_from_db()
    assert (position.last_price, position.unrealized_pnl) == (D("160"), 10 * 10 + 20 * 10)
