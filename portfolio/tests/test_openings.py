"""Opening positions: what an account held before the platform met it, taken once by the monitoring
cycle, so a later sale nets against it FIFO with the right PnL (``portfolio.openings``).

The account's history is made at the paper exchange for real: its orders filled, then dated days
back. Kite lists only today's orders and fills, and so does the paper exchange (the
``kite_day_books`` fixture keeps the paper adapter's order list to the orders placed today too);
where a test stands for a broker whose fill list reaches earlier days (Kite's before its
start-of-day run), ``broker_lists_fills_since`` lists them.
"""

import json
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import OperationalError
from django.utils import timezone

from accounts.models import BrokerAccount
from brokers.base import IST, BrokerTrade
from brokers.client import AccountBroker
from brokers.models import Instrument
from brokers.paper import engine
from brokers.paper.adapter import PaperBroker, to_broker_trade
from brokers.paper.models import PaperClient, PaperInstrument, PaperOrder, PaperTrade
from monitoring import cycle
from monitoring.models import AccountRun
from orders.tests.factories import place
from portfolio import openings, services
from portfolio.models import Opening, Position, Trade
from portfolio.tests.conftest import start_of_today
from tradingplatform import background

D = Decimal
KITE_SAMPLES = Path(__file__).resolve().parents[2] / "brokers" / "kite" / "samples"


def set_price(symbol, last, exchange="NSE"):
    last = D(last)
    engine.market_set(exchange=exchange, tradingsymbol=symbol, last_price=last, bid=last, ask=last)


def history(account, symbol, side, quantity, price, *, product="CNC", days_ago=1, exchange="NSE"):
    """A fill of the account at the paper exchange ``days_ago`` days back, at ``price``."""
    set_price(symbol, price, exchange)
    client = engine.client_get_or_create(user_id=account.client_id)
    PaperClient.objects.filter(pk=client.pk).update(cash=D("10000000"))  # a future's full margin too
    order = engine.order_place(
        client=client, exchange=exchange, tradingsymbol=symbol,
        transaction_type=side, order_type="MARKET", quantity=quantity, product=product,
    )  # fmt: skip
    assert order.status == "COMPLETE", order.status_message
    when = timezone.now() - timedelta(days=days_ago)
    PaperTrade.objects.filter(order=order).update(filled_at=when, price=D(price))
    PaperOrder.objects.filter(pk=order.pk).update(placed_at=when, updated_at=when)


@pytest.fixture
def no_day_figures(monkeypatch):
    """The paper adapter's positions as a broker without the start of the day's figures gives them
    (only the net figures: openings subtract today's fills)."""
    real_positions = PaperBroker.positions
    plain = {name: None for name in ("overnight_quantity", "day_buy_quantity", "day_buy_value")}
    plain |= {"day_sell_quantity": None, "day_sell_value": None}
    monkeypatch.setattr(PaperBroker, "positions", lambda self: [replace(p, **plain) for p in real_positions(self)])


def sell_today(trader, account, symbol, quantity, price, *, product="CNC", exchange="NSE"):
    """A SELL through the order service at ``price``; the fill of the exchange, as recorded."""
    set_price(symbol, price, exchange)
    order = place(trader, account, symbol=symbol, side="SELL", quantity=quantity, product=product, exchange=exchange)
    run = cycle.account_monitor(account=account)
    assert run.errors == []
    fill = PaperTrade.objects.get(order__order_id=order.broker_order_id)
    assert fill.price == D(price)
    return fill


def test_holdings_and_an_overnight_short_are_opening_lots_a_later_sale_nets_against(trader, account, kite_day_books):
    """100 INFY bought ten days ago (delivery: the broker's holdings) and 75 NIFTY futures sold short
    two days ago (NRML, carried in its positions), connected today: the first run takes them as
    opening lots at the start of the day, and a SELL 40 INFY today realizes its PnL against the
    earlier average instead of opening a short."""
    history(account, "INFY", "BUY", 100, "1412.35", days_ago=10)
    history(account, "NIFTY26DECFUT", "SELL", 75, "24100.5", product="NRML", days_ago=2, exchange="NFO")

    run = cycle.account_monitor(account=account)
    assert run.errors == []
    day = start_of_today()
    opening = Opening.objects.get(account=account)
    assert (opening.outcome, opening.trading_date) == (Opening.Outcome.SEEDED, day.date())
    lots = Trade.objects.filter(account=account).order_by("product")
    assert [(t.product, t.instrument.tradingsymbol, t.side, t.quantity, t.price) for t in lots] == [
        ("CNC", "INFY", "BUY", 100, D("1412.35")),
        ("NRML", "NIFTY26DECFUT", "SELL", 75, D("24100.5")),
    ]
    for lot in lots:
        assert lot.broker_order_id == f"opening:{day.date().isoformat()}" and lot.order_id is None
        assert lot.filled_at == day and lot.broker_order_id.startswith(openings.ORDER_PREFIX)
    short = Position.objects.get(account=account, product="NRML")
    assert (short.net_quantity, short.average_price) == (-75, D("24100.5"))

    fill = sell_today(trader, account, "INFY", 40, "1500.05")
    position = Position.objects.get(account=account, product="CNC")
    assert (position.net_quantity, position.average_price) == (60, D("1412.35"))
    assert position.realized_pnl == 40 * (fill.price - D("1412.35")) == D("3508.0000")

    # A second run, and a duplicate taking (its row lost, a task delivered twice): nothing twice.
    assert cycle.account_monitor(account=account).errors == []
    Opening.objects.filter(account=account).delete()
    assert openings.opening_take(account=account, broker=AccountBroker(account)).outcome == Opening.Outcome.SEEDED
    assert Trade.objects.filter(account=account).count() == 3
    position.refresh_from_db()
    assert (position.net_quantity, position.realized_pnl) == (60, D("3508.0000"))


def test_a_sale_recorded_before_the_first_run_is_replayed_after_the_opening(trader, account, kite_day_books):
    """The account's SELL 30 is recorded (a short, as nothing else is known) before its first run
    takes the opening: the lot, at the start of the day, goes before it, and the position is
    rebuilt in the order they filled."""
    history(account, "INFY", "BUY", 100, "1400")
    set_price("INFY", "1450")
    order = place(trader, account, side="SELL", quantity=30, product="CNC")
    fill = PaperTrade.objects.get(order__order_id=order.broker_order_id)
    services.trades_record(account=account, broker_trades=AccountBroker(account).trades())
    assert Position.objects.get(account=account).net_quantity == -30  # not known yet

    assert cycle.account_monitor(account=account).errors == []
    position = Position.objects.get(account=account)
    assert (position.net_quantity, position.average_price) == (70, D("1400"))
    assert position.realized_pnl == 30 * (fill.price - D("1400")) == D("1500.0000")
    assert position.fifo[services.LAST_FILLED_AT] == fill.filled_at.isoformat()


def test_an_account_with_fills_from_an_earlier_day_is_not_seeded(trader, account, kite_day_books):
    """Fills recorded yesterday: the platform knew the account, and its holdings include what the
    platform bought: seeding them would count them twice."""
    set_price("INFY", "1400")
    place(trader, account, quantity=10, product="CNC")
    cycle.account_monitor(account=account)  # as before openings existed: recorded as a fill
    Opening.objects.all().delete()
    Trade.objects.filter(account=account).update(filled_at=timezone.now() - timedelta(days=1))
    PaperTrade.objects.update(filled_at=timezone.now() - timedelta(days=1))

    assert cycle.account_monitor(account=account).errors == []
    opening = Opening.objects.get(account=account)
    assert opening.outcome == Opening.Outcome.EARLIER_FILLS and "earlier day" in opening.detail["why"]
    assert not Trade.objects.filter(broker_order_id__startswith="opening:").exists()
    assert Position.objects.get(account=account).net_quantity == 10


def test_a_holding_in_an_instrument_not_loaded_waits_and_is_reported_until_it_is_loaded(
    trader, account, kite_day_books
):
    """WIPRO's instrument is not loaded: its lot waits on the opening, with its figures and day,
    and every run says so, until staff load the instruments (as the error tells them): the run
    after that records it as it would have been seeded, before the day's fills, at the market."""
    history(account, "INFY", "BUY", 5, "1400")
    history(account, "WIPRO", "BUY", 100, "245.5")
    Instrument.objects.filter(exchange="NSE", tradingsymbol="WIPRO").delete()
    waits = {
        "step": "2_pnl",
        "error": "opening position CNC 100 NSE:WIPRO is not recorded yet: "
        "the instrument is not loaded (load the broker's instruments: the next run records it then)",
    }

    run = cycle.account_monitor(account=account)
    assert run.status == AccountRun.Status.ERRORS
    assert run.errors == [waits]
    opening = Opening.objects.get(account=account)
    assert [row["instrument"] for row in opening.detail["seeded"]] == ["NSE:INFY"]
    assert opening.waiting and opening.detail["skipped"] == []
    ((row),) = opening.detail["waiting"]
    day = start_of_today()
    assert (row["instrument"], row["side"], row["quantity"], row["price"]) == ("NSE:WIPRO", "BUY", 100, "245.5000")
    assert row["day"] == day.date().isoformat()
    assert Position.objects.get(account=account).net_quantity == 5
    assert cycle.account_monitor(account=account).errors == [waits]  # still true: said again

    call_command("load_instruments", broker="paper")  # staff do as told
    set_price("WIPRO", "250")
    sold = place(trader, account, symbol="WIPRO", side="SELL", quantity=30, product="CNC")
    services.trades_record(account=account, broker_trades=AccountBroker(account).trades())  # as the fast path does
    assert Position.objects.get(account=account, instrument__tradingsymbol="WIPRO").net_quantity == -30
    run = cycle.account_monitor(account=account)
    assert run.errors == [] and "recorded 1 opening position(s) whose instruments are loaded now" in run.actions
    opening.refresh_from_db()
    assert not opening.waiting and opening.detail["waiting"] == []
    assert [row["instrument"] for row in opening.detail["seeded"]] == ["NSE:INFY", "NSE:WIPRO"]
    lot = Trade.objects.get(account=account, instrument__tradingsymbol="WIPRO", broker_order_id__startswith="opening:")
    assert (lot.broker_order_id, lot.broker_trade_id) == (f"opening:{day.date().isoformat()}", "CNC:NSE:WIPRO")
    assert (lot.side, lot.quantity, lot.price, lot.filled_at) == ("BUY", 100, D("245.5"), day)
    fill = PaperTrade.objects.get(order__order_id=sold.broker_order_id)
    wipro = Position.objects.get(account=account, instrument__tradingsymbol="WIPRO")
    assert (wipro.net_quantity, wipro.realized_pnl) == (70, 30 * (fill.price - D("245.5")))
    assert cycle.account_monitor(account=account).errors == []
    assert Trade.objects.filter(account=account, broker_order_id__startswith="opening:").count() == 2


def test_holding_skipped_as_not_loaded_is_seeded_once_instruments_are_loaded(trader, account, kite_day_books):
    history(account, "INFY", "BUY", 100, "1400", days_ago=10)
    Instrument.objects.filter(exchange="NSE", tradingsymbol="INFY").delete()
    run = cycle.account_monitor(account=account)
    assert "not loaded" in run.errors[0]["error"]
    call_command("load_instruments", broker="paper")  # staff do as told
    run = cycle.account_monitor(account=account)
    assert run.errors == []
    assert Position.objects.get(account=account, product="CNC").net_quantity == 100
    sell_today(trader, account, "INFY", 40, "1500")
    position = Position.objects.get(account=account, product="CNC")
    assert position.net_quantity == 60


def _mcx_contract(symbol="LEADMINI26DECFUT"):
    """An MCX future at the paper exchange (its data has none), and loaded here."""
    like = PaperInstrument.objects.filter(exchange="NFO").first()
    PaperInstrument.objects.create(
        **{
            f.name: getattr(like, f.name)
            for f in PaperInstrument._meta.concrete_fields
            if f.name not in ("id", "exchange", "segment", "tradingsymbol", "instrument_token", "lot_size")
        },
        exchange="MCX",
        segment="MCX",
        tradingsymbol=symbol,
        instrument_token=53496327,
        lot_size=1,
    )
    call_command("load_instruments", broker="paper")


@pytest.mark.parametrize("loaded", [True, False])
def test_a_holding_of_a_contract_quoted_in_lots_of_a_multiplier_is_skipped_for_good(
    trader, account, kite_day_books, loaded
):
    """MCX: its PnL cannot be kept, loaded or not: skipped and reported once, without telling staff
    to load instruments, and never waiting."""
    _mcx_contract()
    history(account, "LEADMINI26DECFUT", "BUY", 2, "161.05", product="NRML", days_ago=2, exchange="MCX")
    if not loaded:
        Instrument.objects.filter(exchange="MCX").delete()

    run = cycle.account_monitor(account=account)
    assert run.errors == [
        {
            "step": "2_pnl",
            "error": "opening position NRML 2 MCX:LEADMINI26DECFUT is not recorded: " + openings.MULTIPLIED,
        }
    ]
    assert "load" not in openings.MULTIPLIED
    opening = Opening.objects.get(account=account)
    assert not opening.waiting and opening.detail["waiting"] == []
    assert cycle.account_monitor(account=account).errors == []
    assert not Trade.objects.exists()


def test_a_brokers_own_earlier_fills_are_not_seeded_again(trader, account, monkeypatch):
    """A broker whose fill list reaches earlier days: those fills are recorded as they filled, and
    the holdings they explain are no opening lot (100 held, not 200)."""
    broker_lists_fills_since(monkeypatch, start_of_today() - timedelta(days=10))
    history(account, "INFY", "BUY", 100, "1400", days_ago=3)
    history(account, "INFY", "SELL", 20, "1420", days_ago=2)

    assert cycle.account_monitor(account=account).errors == []
    detail = Opening.objects.get(account=account).detail
    assert detail["seeded"] == [] and detail["skipped"] == []
    assert detail["explained_by_fills"] == [
        {"instrument": "NSE:INFY", "product": "CNC", "quantity": 80, "why": "the broker's fills from earlier days"}
    ]
    position = Position.objects.get(account=account)
    assert (position.net_quantity, position.realized_pnl) == (80, D("400.0000"))


@pytest.mark.django_db(transaction=True)
def test_a_kite_accounts_holdings_are_read_through_the_kite_face(trader, kite_on_face, monkeypatch):
    """Kite's holdings and positions, parsed by the Kite adapter from the paper exchange's Kite face
    (whose fill list is kept to today's, as Kite's)."""
    account = kite_on_face
    real = engine.trades_of
    today = lambda client, order_id=None: real(client, order_id).filter(filled_at__gte=start_of_today())  # noqa: E731
    monkeypatch.setattr(engine, "trades_of", today)
    history(account, "INFY", "BUY", 12, "1401.45", days_ago=5)

    assert cycle.account_monitor(account=account).errors == []
    (lot,) = Trade.objects.filter(account=account)
    assert (lot.side, lot.quantity, lot.price, lot.filled_at) == ("BUY", 12, D("1401.45"), start_of_today())
    fill = sell_today(trader, account, "INFY", 12, "1390")
    position = Position.objects.get(account=account)
    assert (position.net_quantity, position.realized_pnl) == (0, 12 * (fill.price - D("1401.45")))


@pytest.mark.django_db(transaction=True)
def test_a_fill_kites_positions_count_before_its_fill_list_lists_it_is_not_counted_twice(
    trader, kite_on_face, monkeypatch
):
    """Kite's positions and fill list are separate endpoints, and the fill list can lag: a SELL 75
    made today (on Kite's own app) is in the positions (-150) but in no read of the fill list yet.
    The opening is the -75 the day opened with (the positions' overnight quantity, at the average
    of the carried sells), not -150; once the fill list lists the 75 sold, they are recorded after
    it: -150 in all, not -225."""
    account = kite_on_face
    real, lagging = engine.trades_of, set()

    def listed(client, order_id=None):  # Kite's: today's only, less the fills not listed yet
        return real(client, order_id).filter(filled_at__gte=start_of_today()).exclude(trade_id__in=lagging)

    monkeypatch.setattr(engine, "trades_of", listed)
    history(account, "NIFTY26DECFUT", "SELL", 75, "24100.5", product="NRML", days_ago=2, exchange="NFO")
    history(account, "NIFTY26DECFUT", "SELL", 75, "24050", product="NRML", days_ago=0, exchange="NFO")
    (today,) = PaperTrade.objects.filter(filled_at__gte=start_of_today())
    lagging.add(today.trade_id)
    (position,) = AccountBroker(account).positions()
    assert (position.quantity, position.overnight_quantity, position.day_sell_quantity) == (-150, -75, 75)

    assert cycle.account_monitor(account=account).errors == []
    (lot,) = Trade.objects.filter(account=account)
    assert lot.broker_order_id.startswith(openings.ORDER_PREFIX)
    assert (lot.side, lot.quantity, lot.price, lot.filled_at) == ("SELL", 75, D("24100.5"), start_of_today())
    assert Position.objects.get(account=account).net_quantity == -75

    lagging.clear()  # listed now
    assert cycle.account_monitor(account=account).errors == []
    position = Position.objects.get(account=account)
    assert Trade.objects.filter(account=account).count() == 2
    assert (position.net_quantity, position.average_price) == (-150, D("24075.25"))


def test_a_fill_that_comes_in_while_the_book_is_read_puts_the_opening_off(
    trader, account, kite_day_books, no_day_figures
):
    """A broker without the start of the day's figures: the positions read may or may not have
    counted a fill the run's own fill list lacks: nothing is taken then (the next run takes it),
    rather than a start of the day off by that fill."""
    history(account, "NIFTY26DECFUT", "BUY", 75, "24000", product="NRML", days_ago=2, exchange="NFO")
    set_price("NIFTY26DECFUT", "24010", "NFO")
    place(trader, account, symbol="NIFTY26DECFUT", exchange="NFO", quantity=75, product="NRML")
    broker = AccountBroker(account)
    opening = openings.opening_take(account=account, broker=broker, trades_before=[])
    assert (opening.outcome, opening.detail, opening.trading_date) == (
        Opening.Outcome.PENDING,
        {"why": openings.RACED},
        start_of_today().date(),
    )
    assert not Trade.objects.exists()

    assert cycle.account_monitor(account=account).errors == []
    opening_lot = Trade.objects.get(account=account, broker_order_id__startswith="opening:")
    assert (opening_lot.side, opening_lot.quantity, opening_lot.price) == ("BUY", 75, D("24000"))
    assert Position.objects.get(account=account).net_quantity == 150


def test_a_broker_giving_the_start_of_the_days_figures_is_not_put_off_by_a_fill_coming_in(
    trader, account, kite_day_books
):
    """The positions say what was carried into the day: a fill the run's fill list lacks changes
    none of it, so the opening is taken at once, and the fill is recorded after it."""
    history(account, "NIFTY26DECFUT", "BUY", 75, "24000", product="NRML", days_ago=2, exchange="NFO")
    set_price("NIFTY26DECFUT", "24010", "NFO")
    place(trader, account, symbol="NIFTY26DECFUT", exchange="NFO", quantity=75, product="NRML")
    opening = openings.opening_take(account=account, broker=AccountBroker(account), trades_before=[])
    assert (opening.outcome, opening.trading_date) == (Opening.Outcome.SEEDED, start_of_today().date())
    lot = Trade.objects.get(account=account, broker_order_id__startswith="opening:")
    assert (lot.side, lot.quantity, lot.price) == ("BUY", 75, D("24000"))

    assert cycle.account_monitor(account=account).errors == []
    position = Position.objects.get(account=account)
    assert (position.net_quantity, position.average_price) == (150, D("24005"))


def test_the_day_figures_decide_a_position_flat_now_that_opened_long():
    """Kite's own example (its positions sample, a broker answer parsed by the Kite adapter):
    GOLDGUINEA carried 3 in, bought 1 and sold 4 today, flat now: the day opened with 3, at the
    average of the buys less today's. LEADMINI (bought today) and SBIN (today's round trip) carried
    nothing in. With the same rows but no day figures, today's fills in the fill list are taken out."""
    from brokers.kite.adapter import to_position

    sample = json.loads((KITE_SAMPLES / "positions.json").read_text())["data"]["net"]
    positions = [to_position(row) for row in sample]
    start = start_of_today()
    lots, skipped, explained = openings.book_at_day_start(holdings=[], positions=positions, trades=[], start=start)
    assert (skipped, explained) == ([], [])
    assert [(lot.tradingsymbol, lot.side, lot.quantity, lot.price) for lot in lots] == [
        ("GOLDGUINEA17DECFUT", "BUY", 3, D("23057.0000"))
    ]

    # A broker without the figures, its fill list of today listing the same buys and sells.
    plain = [replace(p, overnight_quantity=None) for p in positions]
    fills = [
        BrokerTrade("1", "A", "MCX", "GOLDGUINEA17DECFUT", "BUY", "NRML", 1, D("23388"), start + timedelta(hours=10)),
        BrokerTrade("2", "B", "MCX", "GOLDGUINEA17DECFUT", "SELL", "NRML", 4, D("23340"), start + timedelta(hours=11)),
        BrokerTrade("3", "C", "MCX", "LEADMINI17DECFUT", "BUY", "NRML", 1, D("161050"), start + timedelta(hours=10)),
        BrokerTrade("4", "D", "NSE", "SBIN", "BUY", "CO", 1, D("311"), start + timedelta(hours=10)),
        BrokerTrade("5", "E", "NSE", "SBIN", "SELL", "CO", 1, D("309"), start + timedelta(hours=11)),
    ]
    assert openings.book_at_day_start(holdings=[], positions=plain, trades=fills, start=start)[0] == lots


def test_day_figures_that_do_not_add_up_seed_nothing_and_say_why():
    """A position row whose overnight quantity, today's buys and sells and net quantity disagree
    (a broker's half-updated row) is no honest start of the day: skipped and reported, not seeded
    at a quantity that may be wrong."""
    from brokers.kite.adapter import to_position

    sample = json.loads((KITE_SAMPLES / "positions.json").read_text())["data"]["net"]
    gold = next(to_position(row) for row in sample if row["tradingsymbol"] == "GOLDGUINEA17DECFUT")
    torn = replace(gold, quantity=1)  # 3 carried + 1 bought - 4 sold is 0, not 1
    lots, skipped, _ = openings.book_at_day_start(holdings=[], positions=[torn], trades=[], start=start_of_today())
    assert lots == []
    assert skipped == [
        {"instrument": "MCX:GOLDGUINEA17DECFUT", "product": "NRML", "quantity": 3, "why": openings.DISAGREE}
    ]


def test_first_run_values_a_seeded_holding_at_the_market(trader, account, kite_day_books):
    from portfolio.models import PnlSnapshot

    history(account, "INFY", "BUY", 100, "1400", days_ago=10)
    set_price("INFY", "1500")
    assert cycle.account_monitor(account=account).errors == []
    position = Position.objects.get(account=account, product="CNC")
    point = PnlSnapshot.objects.filter(account=account).latest("taken_at")
    assert (position.last_price, position.unrealized_pnl, point.unrealized) == (D("1500"), D("10000"), D("10000"))


def _a_day_passes(account, to=None):
    """Everything of the account dated today (its recorded fills, its paper fills, its opening's
    first-met day) is moved a day back (to ``to``, a moment of yesterday): today is the next day."""
    yesterday = to or timezone.now() - timedelta(days=1)
    Trade.objects.filter(account=account).update(filled_at=yesterday)
    PaperTrade.objects.filter(filled_at__gte=timezone.now() - timedelta(hours=23)).update(filled_at=yesterday)
    Opening.objects.filter(account=account).update(trading_date=yesterday.astimezone(IST).date(), taken_at=yesterday)
    return yesterday.astimezone(IST).replace(hour=0, minute=0, second=0, microsecond=0)


def test_opening_failing_through_its_first_day_is_taken_the_next_day(trader, account, kite_day_books, monkeypatch):
    """The broker's holdings fail all day: the account is first met that day (a pending opening)
    and its SELL 40 is recorded as a short. The next day the opening is taken at the start of the
    first-met day: today's book (60) plus what was sold since (40), before the sale."""
    history(account, "INFY", "BUY", 100, "1400", days_ago=10)
    real = PaperBroker.holdings

    def broken(self):
        raise RuntimeError("holdings unavailable")

    monkeypatch.setattr(PaperBroker, "holdings", broken)
    set_price("INFY", "1450")
    order = place(trader, account, symbol="INFY", side="SELL", quantity=40, product="CNC")
    run = cycle.account_monitor(account=account)
    assert any("tries again" in e["error"] for e in run.errors)
    assert Position.objects.get(account=account, product="CNC").net_quantity == -40
    pending = Opening.objects.get(account=account)
    assert (pending.outcome, pending.detail) == (Opening.Outcome.PENDING, {"why": "RuntimeError: holdings unavailable"})
    assert openings.openings_due([account.pk])[0] == {account.pk}
    assert any("tries again" in e["error"] for e in cycle.account_monitor(account=account).errors)

    first_met = _a_day_passes(account)
    monkeypatch.setattr(PaperBroker, "holdings", real)
    assert cycle.account_monitor(account=account).errors == []
    opening = Opening.objects.get(account=account)
    position = Position.objects.get(account=account, product="CNC")
    assert position.net_quantity == 60, (opening.outcome, opening.detail, position.net_quantity)
    assert (opening.outcome, opening.trading_date) == (Opening.Outcome.SEEDED, first_met.date())
    assert opening.detail["book_of"] == start_of_today().date().isoformat()
    lot = Trade.objects.get(account=account, broker_order_id__startswith="opening:")
    assert (lot.side, lot.quantity, lot.price, lot.filled_at) == ("BUY", 100, D("1400"), first_met)
    assert lot.broker_order_id == f"opening:{first_met.date().isoformat()}"
    fill = PaperTrade.objects.get(order__order_id=order.broker_order_id)
    assert position.realized_pnl == 40 * (fill.price - D("1400")) == D("2000.0000")
    assert openings.openings_due([account.pk])[0] == set()


def test_fills_from_before_the_first_met_day_still_mark_a_pending_opening(trader, account, kite_day_books, monkeypatch):
    """A pending opening dated today, and fills recorded from before today: met before."""
    set_price("INFY", "1400")
    place(trader, account, quantity=10, product="CNC")
    monkeypatch.setattr(PaperBroker, "holdings", lambda self: (_ for _ in ()).throw(RuntimeError("down")))
    cycle.account_monitor(account=account)
    assert Opening.objects.get(account=account).outcome == Opening.Outcome.PENDING
    Trade.objects.filter(account=account).update(filled_at=start_of_today() - timedelta(seconds=1))
    monkeypatch.undo()
    cycle.account_monitor(account=account)
    assert Opening.objects.get(account=account).outcome == Opening.Outcome.EARLIER_FILLS


def test_a_pending_opening_is_left_to_the_fills_its_broker_lists_from_earlier_days(trader, account, monkeypatch):
    """A broker whose fill list reaches earlier days: the BUY 100 and SELL 30 of the day its opening
    failed, recorded that day, explain the holding the next day: nothing is seeded and nothing is
    skipped (they are not earlier fills: the account was first met that day)."""
    monkeypatch.setattr(PaperBroker, "holdings", lambda self: (_ for _ in ()).throw(RuntimeError("down")))
    set_price("INFY", "1400")
    place(trader, account, quantity=100, product="CNC")
    set_price("INFY", "1410")
    place(trader, account, side="SELL", quantity=30, product="CNC")
    cycle.account_monitor(account=account)
    _a_day_passes(account)
    monkeypatch.undo()
    broker_lists_fills_since(monkeypatch, start_of_today() - timedelta(days=10))

    assert cycle.account_monitor(account=account).errors == []
    opening = Opening.objects.get(account=account)
    assert (opening.outcome, opening.detail["seeded"], opening.detail["skipped"]) == (Opening.Outcome.SEEDED, [], [])
    assert [row["quantity"] for row in opening.detail["explained_by_fills"]] == [70]
    position = Position.objects.get(account=account)
    assert (position.net_quantity, position.realized_pnl) == (70, D("300.0000"))


def test_an_opening_another_run_took_meanwhile_is_said_so(trader, account, kite_day_books, monkeypatch):
    """A duplicate taker takes the opening while this run reads the book: the run says so, and
    records nothing twice."""
    history(account, "INFY", "BUY", 100, "1400")
    real = PaperBroker.holdings

    def meanwhile(self):
        monkeypatch.setattr(PaperBroker, "holdings", real)
        assert openings.opening_take(account=account, broker=AccountBroker(account)).outcome == "seeded"
        return real(self)

    monkeypatch.setattr(PaperBroker, "holdings", meanwhile)
    run = cycle.account_monitor(account=account)
    assert run.errors == []
    assert "opening positions were taken by another run meanwhile" in run.actions
    assert not any(action.startswith("recorded 1 opening") for action in run.actions)
    assert Trade.objects.filter(account=account).count() == 1
    assert Position.objects.get(account=account).net_quantity == 100


def test_a_waiting_lot_held_on_an_earlier_day_is_taken_again_from_the_book(trader, account, kite_day_books):
    """WIPRO is not loaded when the account is first met: its 100 wait. That day 30 are sold at the
    broker (a fill the platform cannot record). Loaded the next day, the 100 are stale: the opening
    is taken again from the book as it is (70), not from the figures that waited."""
    history(account, "WIPRO", "BUY", 100, "245.5", days_ago=10)
    Instrument.objects.filter(exchange="NSE", tradingsymbol="WIPRO").delete()
    assert "not recorded yet" in cycle.account_monitor(account=account).errors[0]["error"]
    history(account, "WIPRO", "SELL", 30, "250", days_ago=0)
    cycle.account_monitor(account=account)  # its fill is not recorded: the instrument is not loaded

    first_met = _a_day_passes(account)
    opening = Opening.objects.get(account=account)
    opening.detail["waiting"][0]["day"] = first_met.date().isoformat()
    Opening.objects.filter(pk=opening.pk).update(detail=opening.detail)
    call_command("load_instruments", broker="paper")
    assert {h.tradingsymbol: h.quantity for h in AccountBroker(account).holdings()} == {"WIPRO": 70}
    run = cycle.account_monitor(account=account)
    assert any("taken again from the broker's book" in action for action in run.actions)
    assert Opening.objects.get(account=account).outcome == Opening.Outcome.PENDING
    assert cycle.account_monitor(account=account).errors == []
    wipro = Position.objects.get(account=account, instrument__tradingsymbol="WIPRO")
    assert wipro.net_quantity == 70
    lot = Trade.objects.get(account=account, instrument__tradingsymbol="WIPRO")
    assert (lot.broker_order_id, lot.filled_at, lot.quantity) == (f"opening:{first_met.date()}", first_met, 70)


def test_an_opening_whose_recording_fails_all_its_first_day_is_taken_the_next_day(
    trader, account, kite_day_books, monkeypatch
):
    """Not the broker: the database refuses the lots all day. The first-met day is kept all the same."""
    history(account, "INFY", "BUY", 100, "1400", days_ago=10)

    def lock_timeout(*args, **kwargs):
        raise OperationalError(1205, "Lock wait timeout exceeded; try restarting transaction")

    monkeypatch.setattr(services, "trades_record_many", lock_timeout)
    set_price("INFY", "1450")
    place(trader, account, symbol="INFY", side="SELL", quantity=40, product="CNC")
    run = cycle.account_monitor(account=account)
    assert any("the next run tries again" in e["error"] for e in run.errors), run.errors
    assert Opening.objects.get(account=account).outcome == Opening.Outcome.PENDING

    _a_day_passes(account)
    monkeypatch.undo()
    assert cycle.account_monitor(account=account).errors == []
    assert Opening.objects.get(account=account).outcome == Opening.Outcome.SEEDED
    assert Position.objects.get(account=account).net_quantity == 60


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded-that-day", "recording-failed-that-day"])
def test_a_sale_in_the_last_minutes_of_the_first_met_day_nets_against_the_opening_taken_the_next_day(
    trader, account, monkeypatch, recorded
):
    """The paper exchange's book reaches BOOK_LOOKBACK back before the day's start, so the next day
    it still lists a SELL 40 of 23:55 on the day the account was first met (its opening pending
    then: the holdings failed, or the database refused the fills). That fill is the account's own,
    of its first-met day, not one from before it: the opening is the book's 60 plus the 40 sold
    since, at that day's start, and the sale nets against it, not skipped as part-explained
    (leaving a short of 40)."""
    history(account, "INFY", "BUY", 100, "1400", days_ago=10)
    if recorded:
        monkeypatch.setattr(PaperBroker, "holdings", lambda self: (_ for _ in ()).throw(RuntimeError("down")))
    else:
        monkeypatch.setattr(
            services, "trades_record_many", lambda *a, **k: (_ for _ in ()).throw(OperationalError(1205, "Lock wait"))
        )
    set_price("INFY", "1450")
    sold = place(trader, account, symbol="INFY", side="SELL", quantity=40, product="CNC")
    assert cycle.account_monitor(account=account).errors != []
    assert Opening.objects.get(account=account).outcome == Opening.Outcome.PENDING
    first_met = _a_day_passes(account, to=start_of_today() - timedelta(minutes=5))  # its fills were of 23:55
    monkeypatch.undo()
    assert [t.trade_id for t in AccountBroker(account).trades()] == [
        PaperTrade.objects.get(order__order_id=sold.broker_order_id).trade_id
    ]  # still in the book

    assert cycle.account_monitor(account=account).errors == []
    opening = Opening.objects.get(account=account)
    assert (opening.outcome, opening.trading_date, opening.detail["skipped"]) == (
        Opening.Outcome.SEEDED, first_met.date(), []
    )  # fmt: skip
    lot = Trade.objects.get(account=account, broker_order_id__startswith=openings.ORDER_PREFIX)
    assert (lot.side, lot.quantity, lot.price, lot.filled_at) == ("BUY", 100, D("1400"), first_met)
    position = Position.objects.get(account=account)
    assert (position.net_quantity, position.realized_pnl) == (60, D("2000.0000"))


@pytest.mark.django_db(transaction=True)
def test_an_account_first_met_through_the_fast_path_has_its_opening_taken_the_next_day(trader, account, kite_day_books):
    """The account held 100 INFY before it was connected. Its first orders (SELL 30 INFY, BUY 10
    TCS) fill on a day its monitoring never runs: the fill fast path records them (a short, as
    nothing else is known) and the account counts as first met that day. The next day's run takes
    its opening at that day's start (today's 70 plus the 30 sold since; TCS bought since, none), so
    the sales net FIFO against the 100 at their price, and TCS is not counted twice."""
    BrokerAccount.objects.filter(pk=account.pk).update(is_active=False)  # not connected: told nothing
    history(account, "INFY", "BUY", 100, "1400", days_ago=10)
    assert background.wait_idle(30)
    BrokerAccount.objects.filter(pk=account.pk).update(is_active=True)
    set_price("INFY", "1450")
    sold = place(trader, account, symbol="INFY", side="SELL", quantity=30, product="CNC")
    set_price("TCS", "3500")
    place(trader, account, symbol="TCS", quantity=10, product="CNC")
    assert background.wait_idle(30)
    assert Position.objects.get(account=account, instrument__tradingsymbol="INFY").net_quantity == -30
    pending = Opening.objects.get(account=account)
    assert (pending.outcome, pending.trading_date) == (Opening.Outcome.PENDING, start_of_today().date())
    assert not AccountRun.objects.exists()

    first_met = _a_day_passes(account)
    assert cycle.account_monitor(account=account).errors == []
    opening = Opening.objects.get(account=account)
    assert (opening.outcome, opening.trading_date) == (Opening.Outcome.SEEDED, first_met.date())
    lot = Trade.objects.get(account=account, broker_order_id__startswith=openings.ORDER_PREFIX)
    assert (lot.instrument.tradingsymbol, lot.side, lot.quantity, lot.price) == ("INFY", "BUY", 100, D("1400"))
    assert lot.filled_at == first_met

    fill = sell_today(trader, account, "INFY", 40, "1500")
    assert background.wait_idle(30)
    day_one = PaperTrade.objects.get(order__order_id=sold.broker_order_id)
    infy = Position.objects.get(account=account, instrument__tradingsymbol="INFY")
    assert (infy.net_quantity, infy.average_price) == (30, D("1400"))
    assert infy.realized_pnl == 30 * (day_one.price - D("1400")) + 40 * (fill.price - D("1400")) == D("5500")
    assert Position.objects.get(account=account, instrument__tradingsymbol="TCS").net_quantity == 10


def test_the_first_fills_of_accounts_never_met_cost_one_statement_for_their_openings(trader, account):
    """Recording fills leaves a pending opening for each account without one, dated its earliest
    fill's day, in one statement for the batch; an account known to have one costs none, and one
    whose opening is taken keeps it as it is."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.tests.factories import make_broker_account

    other = make_broker_account(trader, broker="paper", client_id="PAPER-O2", label="Other")
    Opening.objects.create(
        account=other, trading_date=start_of_today().date(), taken_at=timezone.now(), outcome=Opening.Outcome.SEEDED
    )
    third = make_broker_account(trader, broker="paper", client_id="PAPER-O3", label="Third")

    def fill(n, when):
        return BrokerTrade(f"T{n}", f"O{n}", "NSE", "INFY", "BUY", "CNC", 1, D("1400"), when)

    yesterday = timezone.now() - timedelta(days=1)

    def opening_statements(fills):
        with CaptureQueriesContext(connection) as queries:
            services.trades_record_many(fills)
        return [q["sql"] for q in queries if Opening._meta.db_table in q["sql"]]

    statements = opening_statements(
        [(account, [fill(1, timezone.now()), fill(2, yesterday)]), (other, [fill(3, timezone.now())])]
    )
    assert len(statements) == 1 and statements[0].upper().startswith("INSERT")
    mine = Opening.objects.get(account=account)
    assert (mine.outcome, mine.trading_date) == (Opening.Outcome.PENDING, yesterday.astimezone(IST).date())
    assert Opening.objects.get(account=other).outcome == Opening.Outcome.SEEDED

    assert opening_statements([(account, [fill(4, timezone.now())]), (other, [fill(5, timezone.now())])]) == []
    assert len(opening_statements([(account, [fill(6, timezone.now())]), (third, [fill(7, timezone.now())])])) == 1
    assert Opening.objects.get(account=third).trading_date == start_of_today().date()
    assert Opening.objects.get(account=account).trading_date == yesterday.astimezone(IST).date()
    assert Trade.objects.count() == 7


def test_before_the_brokers_day_begins_the_opening_waits_for_it(trader, account, settings):
    """At 02:00 IST a broker's book can still be the day before's (Kite's start-of-day run comes in
    the early morning): the opening is put off, pending from today, and taken from ``OPENINGS_FROM``."""
    settings.OPENINGS_FROM = "08:00"
    history(account, "INFY", "BUY", 100, "1400", days_ago=3)
    night = start_of_today() + timedelta(hours=2)
    broker = AccountBroker(account)
    opening = openings.opening_take(account=account, broker=broker, now=night)
    assert (opening.outcome, opening.detail["why"]) == (Opening.Outcome.PENDING, openings.NOT_BEGUN)
    assert not Trade.objects.filter(account=account).exists()
    opening = openings.opening_take(account=account, broker=broker, now=start_of_today() + timedelta(hours=9))
    assert opening.outcome == Opening.Outcome.SEEDED


def test_a_run_whose_day_turns_while_it_reads_the_book_takes_nothing_then(trader, account, monkeypatch):
    """A run meets the account just before midnight (IST): its day is the one ending, and the paper
    exchange's book, read just after midnight, gives the next day's start. A fill of the ending day
    would be both in that start and among the run's fills of its day (counted twice): nothing is
    taken, and the next run takes it."""
    history(account, "NIFTY26DECFUT", "BUY", 75, "24000", product="NRML", days_ago=0, exchange="NFO")
    PaperTrade.objects.update(filled_at=start_of_today() - timedelta(minutes=2))
    broker = AccountBroker(account)
    with monkeypatch.context() as before:
        broker_lists_fills_since(before, start_of_today() - timedelta(days=1))  # the ending day's book
        fills = broker.trades()
    before_midnight = start_of_today() - timedelta(milliseconds=100)
    opening = openings.opening_take(account=account, broker=broker, trades_before=fills, now=before_midnight)
    assert (opening.outcome, opening.detail["why"]) == (Opening.Outcome.PENDING, openings.DAY_TURNED)
    services.trades_record(account=account, broker_trades=fills)
    assert Position.objects.get(account=account).net_quantity == 75


def broker_lists_fills_since(monkeypatch, day) -> dict:
    """The paper adapter's fill list as a broker's before its start-of-day run: from ``day`` on (the
    returned ``{"day": ...}`` moves it), where the paper exchange's own is the day's."""
    since = {"day": day}

    def trades(self):
        client, _faults = self._client()
        return [to_broker_trade(t) for t in engine.trade_book(client, every_day=True) if t.filled_at >= since["day"]]

    monkeypatch.setattr(PaperBroker, "trades", trades)
    return since


def a_night_then_a_morning(account, settings, lists_since) -> None:
    """A monitoring run at night (before OPENINGS_FROM: the opening waits), then one from
    OPENINGS_FROM on, when the broker lists today's fills only."""
    if timezone.now().astimezone(IST).strftime("%H:%M") >= "23:58":
        pytest.skip("23:59 stands in for a time the broker's day has not begun at")
    settings.OPENINGS_FROM = "23:59"  # the night: the broker's day has not begun
    cycle.account_monitor(account=account)
    assert Opening.objects.get(account=account).outcome == Opening.Outcome.PENDING
    settings.OPENINGS_FROM = "00:00"
    lists_since["day"] = start_of_today()
    cycle.account_monitor(account=account)


def test_fills_of_the_day_before_recorded_by_a_night_run_do_not_cancel_the_opening(
    trader, account, settings, monkeypatch
):
    """100 INFY bought ten days ago (in the holdings, in no fill list) and 5 TCS bought yesterday.
    The platform first meets the account at night, before OPENINGS_FROM: the opening is put off,
    and the fills the broker still lists then (yesterday's TCS) are left to it, not recorded as
    fills. The first run from OPENINGS_FROM on takes the opening (INFY 100, TCS 5). Had the night
    run recorded yesterday's fill, it would read as one from before the platform met the account:
    marked EARLIER_FILLS, INFY
    never seeded, and a sale of it shows as a short with a wrong PnL."""
    lists_since = broker_lists_fills_since(monkeypatch, start_of_today() - timedelta(days=1))
    history(account, "INFY", "BUY", 100, "1400", days_ago=10)
    history(account, "TCS", "BUY", 5, "3200", days_ago=1)

    a_night_then_a_morning(account, settings, lists_since)
    held = {p.instrument.tradingsymbol: p.net_quantity for p in Position.objects.filter(account=account)}
    assert held == {"INFY": 100, "TCS": 5}, (Opening.objects.get(account=account).outcome, held)


def test_a_night_run_records_the_fills_of_the_day_the_account_was_first_met(trader, account, settings, monkeypatch):
    """The account is first met yesterday through the fill fast path (its platform order, BUY 10
    TCS MIS; no monitoring run took the opening yesterday): its opening is pending, dated
    yesterday. The trader sold those 10 TCS yesterday in the broker's own app: only the monitoring
    run's fill list has that fill. The night run (before OPENINGS_FROM, the broker still lists
    yesterday's fills) leaves out only fills from before the first-met day, so it records the SELL;
    from OPENINGS_FROM on the broker lists today's fills only, and the opening is taken: flat TCS
    with its 1000 realized, INFY 100."""
    lists_since = broker_lists_fills_since(monkeypatch, start_of_today() - timedelta(days=1))
    history(account, "INFY", "BUY", 100, "1400", days_ago=10)
    history(account, "TCS", "BUY", 10, "3200", product="MIS", days_ago=1)
    services.trades_record(account=account, broker_trades=AccountBroker(account).trades())  # as the fast path does
    yesterday = (start_of_today() - timedelta(days=1)).date()
    assert (Opening.objects.get(account=account).outcome, Opening.objects.get(account=account).trading_date) == (
        Opening.Outcome.PENDING,
        yesterday,
    )
    history(account, "TCS", "SELL", 10, "3300", product="MIS", days_ago=1)  # in the broker's own app

    a_night_then_a_morning(account, settings, lists_since)
    assert Opening.objects.get(account=account).outcome == Opening.Outcome.SEEDED
    tcs = Position.objects.get(account=account, instrument__tradingsymbol="TCS")
    infy = Position.objects.get(account=account, instrument__tradingsymbol="INFY")
    assert infy.net_quantity == 100
    assert (tcs.net_quantity, tcs.realized_pnl) == (0, D("1000")), Opening.objects.get(account=account).detail


def test_a_run_takes_the_opening_as_of_when_it_read_the_book(trader, account, settings, monkeypatch):
    """The run reads the account's book at 23:59:59 (a TCS MIS round trip of that day, made in the
    broker's own app) and comes to its opening just after midnight. The opening is taken as of when
    the book was read: that day, after OPENINGS_FROM, not the next day's night, when it would be put
    off and the fills it read dropped as fills from before the day the account was first met (the
    broker does not list them again after its start-of-day run)."""
    settings.OPENINGS_FROM = "08:00"
    history(account, "TCS", "BUY", 10, "3200", product="MIS", days_ago=0)
    history(account, "TCS", "SELL", 10, "3300", product="MIS", days_ago=0)
    read_at = start_of_today() + timedelta(days=1, seconds=-1)
    real_fetch, real_take, asked = cycle._fetch_many, openings.opening_take, []

    def fetch(contexts):
        failures = real_fetch(contexts)
        for ctx in contexts:
            ctx.orders_asked_at = read_at  # the book was read at 23:59:59
        return failures

    monkeypatch.setitem(cycle.BATCHED, cycle.step_fetch, fetch)
    monkeypatch.setattr(openings, "opening_take", lambda **kw: asked.append(kw.get("now")) or real_take(**kw))
    cycle.account_monitor(account=account)
    assert asked == [read_at]
    assert Opening.objects.get(account=account).detail.get("why") != openings.NOT_BEGUN
    assert Trade.objects.filter(account=account, instrument__tradingsymbol="TCS").count() == 2
