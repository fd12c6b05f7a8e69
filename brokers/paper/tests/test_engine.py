"""The paper exchange's rules: fills, priority, triggers, rejections, funds and knobs."""

import threading
import time
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from brokers.paper import engine
from brokers.paper.models import PaperClient, PaperInstrument, PaperOrder, PaperTrade
from tradingplatform.testing import page_form_data

D = Decimal
Status = PaperOrder.Status


def quote(symbol="INFY", last="1500", bid=None, ask=None, volume=None, exchange="NSE"):
    last = D(last)
    return engine.market_set(
        exchange=exchange,
        tradingsymbol=symbol,
        last_price=last,
        bid=D(bid) if bid else last - D("0.1"),
        ask=D(ask) if ask else last + D("0.1"),
        tick_volume=volume,
    )


def place(client, side="BUY", order_type="LIMIT", quantity=1, price=None, trigger=None, symbol="INFY", **kw):
    return engine.order_place(
        client=client,
        exchange=kw.pop("exchange", "NSE"),
        tradingsymbol=symbol,
        transaction_type=side,
        order_type=order_type,
        quantity=quantity,
        product=kw.pop("product", "MIS"),
        price=D(price) if price else None,
        trigger_price=D(trigger) if trigger else None,
        **kw,
    )


@pytest.fixture
def client(db, paper_market):
    quote(last="1500", volume=1000)
    return engine.client_get_or_create(user_id="C1")


def reload(order):
    return PaperOrder.objects.get(pk=order.pk)


# --- Fills ------------------------------------------------------------------------------


def test_market_buy_fills_at_once_at_the_ask(client):
    order = place(client, order_type="MARKET", quantity=3)
    assert order.status == Status.COMPLETE and order.filled_quantity == 3
    assert order.average_price == D("1500.1")
    assert PaperTrade.objects.get(order=order).price == D("1500.10")


def test_market_sell_fills_at_the_bid(client):
    order = place(client, side="SELL", order_type="MARKET", quantity=2)
    assert order.status == Status.COMPLETE and order.average_price == D("1499.9")


def test_crossing_limit_buy_fills_at_the_better_price(client):
    order = place(client, price="1510", quantity=1)
    assert order.status == Status.COMPLETE
    assert order.average_price == D("1500.1")


def test_resting_limit_fills_at_its_own_price_when_the_market_crosses(client):
    order = place(client, price="1490", quantity=5)
    assert order.status == Status.OPEN and order.filled_quantity == 0
    quote(last="1495", volume=1000)  # ask 1495.1: not crossed yet
    assert reload(order).filled_quantity == 0
    quote(last="1480", volume=1000)  # ask 1480.1 <= 1490: crossed
    order = reload(order)
    assert order.status == Status.COMPLETE and order.average_price == D("1490")


def test_price_time_priority_and_partial_fills_against_tick_volume(client):
    first = place(client, price="1490", quantity=6)
    better = place(client, price="1492", quantity=3)
    later = place(client, price="1490", quantity=4)
    quote(last="1480", volume=7)  # 7 shares: 3 to the better price, then 4 to the earlier 1490
    assert reload(better).filled_quantity == 3
    assert reload(first).filled_quantity == 4 and reload(first).status == Status.OPEN
    assert reload(later).filled_quantity == 0
    quote(last="1480", volume=5)
    assert reload(first).status == Status.COMPLETE
    assert reload(later).filled_quantity == 3


def test_sell_side_priority_lowest_price_first(client):
    high = place(client, side="SELL", price="1520", quantity=2)
    low = place(client, side="SELL", price="1510", quantity=2)
    quote(last="1515", bid="1515", ask="1515.1", volume=10)
    assert reload(low).status == Status.COMPLETE and reload(high).filled_quantity == 0


def test_sl_m_buy_triggers_and_fills_at_market(client):
    order = place(client, order_type="SL-M", trigger="1510", quantity=2)
    assert order.status == Status.TRIGGER_PENDING
    quote(last="1509")
    assert reload(order).status == Status.TRIGGER_PENDING
    quote(last="1511")
    order = reload(order)
    assert order.status == Status.COMPLETE and order.order_type == "MARKET"
    assert order.average_price == D("1511.1")


def test_sl_sell_triggers_into_a_limit_that_can_rest(client):
    order = place(client, side="SELL", order_type="SL", trigger="1490", price="1489", quantity=2)
    assert order.status == Status.TRIGGER_PENDING
    quote(last="1490", bid="1488", ask="1490.1")  # triggered; limit 1489 above bid 1488: rests
    order = reload(order)
    assert order.status == Status.OPEN and order.order_type == "LIMIT" and order.filled_quantity == 0
    quote(last="1489.5", bid="1489.5", ask="1489.6")
    assert reload(order).status == Status.COMPLETE and reload(order).average_price == D("1489")


def test_an_ioc_limit_that_does_not_cross_is_cancelled_at_once_and_blocks_nothing(client):
    order = place(client, price="1490", quantity=5, validity="IOC")  # ask 1500.1: nothing fills
    assert order.status == Status.CANCELLED and reload(order).status == Status.CANCELLED
    assert (order.filled_quantity, order.pending_quantity, order.cancelled_quantity) == (0, 0, 5)
    assert engine._blocked_funds(client) == 0
    quote(last="1480", volume=1000)  # a later tick that crosses its price fills nothing
    assert not PaperTrade.objects.exists()
    filled = place(client, price="1510", quantity=2, validity="IOC")  # crosses: fills at once, as a DAY order
    assert filled.status == Status.COMPLETE and filled.cancelled_quantity == 0


def test_a_triggered_ioc_stop_that_does_not_cross_is_cancelled(client):
    order = place(client, side="SELL", order_type="SL", trigger="1490", price="1489", quantity=2, validity="IOC")
    assert order.status == Status.TRIGGER_PENDING
    quote(last="1490", bid="1488", ask="1490.1")  # triggered; limit 1489 above bid 1488: does not fill
    order = reload(order)
    assert order.status == Status.CANCELLED and order.cancelled_quantity == 2 and order.filled_quantity == 0
    quote(last="1485", volume=1000)
    assert not PaperTrade.objects.exists()


def test_a_triggered_stop_queues_behind_the_limits_already_resting_at_its_price(client):
    """A stop enters the book when it triggers: limits resting at its price before then go first,
    in the tick it triggers in and in every later one (it does not keep its placement's time)."""
    quote(last="1500", bid="1480", ask="1500.1")
    stop = place(client, side="SELL", order_type="SL", trigger="1490", price="1489", quantity=1)
    limit = place(client, side="SELL", price="1489", quantity=1)  # placed after the stop, rests before it
    quote(last="1490", bid="1480", ask="1490.1")  # the stop triggers and rests at 1489 behind the limit
    assert reload(stop).status == Status.OPEN and reload(limit).status == Status.OPEN
    quote(last="1489", bid="1489", ask="1489.1", volume=1)  # one share: the earlier in the book
    assert reload(limit).status == Status.COMPLETE and reload(stop).filled_quantity == 0


def test_cancel_and_modify(client):
    order = place(client, price="1490", quantity=2)
    modified = engine.order_modify(client=client, order_id=order.order_id, price=D("1491"), quantity=3)
    assert modified.price == D("1491") and modified.quantity == 3 and modified.modifications == 1
    cancelled = engine.order_cancel(client=client, order_id=order.order_id)
    assert cancelled.status == Status.CANCELLED and cancelled.cancelled_quantity == 3
    with pytest.raises(engine.InputException):
        engine.order_cancel(client=client, order_id=order.order_id)


def test_modifying_the_price_loses_time_priority(client):
    first = place(client, price="1490", quantity=2)
    second = place(client, price="1490", quantity=2)
    engine.order_modify(client=client, order_id=first.order_id, price=D("1490.1"))
    engine.order_modify(client=client, order_id=first.order_id, price=D("1490"))
    quote(last="1480", volume=2)
    assert reload(second).status == Status.COMPLETE and reload(first).filled_quantity == 0


# --- Rejections -------------------------------------------------------------------------


def test_rejects_quantity_not_multiple_of_lot(client):
    with pytest.raises(engine.InputException) as error:
        place(client, symbol="NIFTY26DECFUT", exchange="NFO", product="NRML", order_type="MARKET", quantity=50)
    assert error.value.kind == "lot_size"
    assert not PaperOrder.objects.exists()


def test_rejects_price_off_the_tick(client):
    with pytest.raises(engine.InputException) as error:
        place(client, price="1500.03")
    assert error.value.kind == "tick_size" and "multiple of tick size" in error.value.message


def test_rejects_unknown_instrument(client):
    with pytest.raises(engine.InputException) as error:
        place(client, symbol="NOPE", order_type="MARKET")
    assert error.value.kind == "instrument"


def test_rejects_price_outside_the_band(client):
    order = place(client, price="1900")  # previous close 1500, band +-20%
    assert order.status == Status.REJECTED and "price band" in order.status_message
    assert not PaperTrade.objects.exists()


def test_a_market_order_on_an_instrument_with_no_price_is_rejected_not_filled_around_zero(client, tmp_path):
    """An instrument that has not traded (a Kite instruments file gives its last price as 0) is
    quoted one tick around 0: a MARKET sell filled at the bid of -0.05 (the seller paid to sell)
    and a MARKET buy at 0.05."""
    listing = tmp_path / "instruments.csv"
    listing.write_text(
        "instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,strike,tick_size,lot_size,"
        "instrument_type,segment,exchange\n"
        "9990001,99901,NEWLIST,NEW LISTING,0,,0.0,0.05,1,EQ,NSE,NSE\n"
    )
    engine.instruments_load_csv(listing)
    for side in ("SELL", "BUY"):
        order = place(client, side=side, order_type="MARKET", quantity=10, symbol="NEWLIST")
        assert order.status == Status.REJECTED, (side, order.average_price)
        assert "no market price for NEWLIST" in order.status_message
    assert not PaperTrade.objects.exists()
    assert PaperClient.objects.get(pk=client.pk).cash == D("1000000")


def test_a_modify_to_market_on_an_instrument_with_no_price_is_refused(client):
    resting = place(client, side="SELL", price="1600", quantity=2)
    PaperInstrument.objects.filter(tradingsymbol="INFY").update(last_price=0, bid=D("-0.1"), ask=D("0.1"))
    with pytest.raises(engine.InputException) as error:
        engine.order_modify(client=client, order_id=resting.order_id, order_type="MARKET")
    assert "no market price for INFY" in error.value.message
    assert reload(resting).order_type == "LIMIT" and reload(resting).status == Status.OPEN
    assert not PaperTrade.objects.exists()


OPTION = {"symbol": "NIFTY26DEC26000CE", "exchange": "NFO", "product": "NRML", "quantity": 75}


def test_an_sl_m_order_on_an_option_is_rejected_as_kite_rejects_it(client):
    """Kite blocks stop-loss market orders on F&O options (an SL, with a limit price, is taken);
    the paper exchange took them, so paper trading hid that a strategy's stop on an option would
    be refused at the broker."""
    quote(symbol="NIFTY26DEC26000CE", exchange="NFO", last="250", bid="249.95", ask="250.05")
    refused = place(client, side="SELL", order_type="SL-M", trigger="240", **OPTION)
    assert refused.status == Status.REJECTED
    assert "SL-M orders are blocked for F&O option contracts" in refused.status_message
    stop = place(client, side="SELL", order_type="SL", trigger="240", price="232.80", **OPTION)
    assert stop.status == Status.TRIGGER_PENDING
    with pytest.raises(engine.InputException) as error:
        engine.order_modify(client=client, order_id=stop.order_id, order_type="SL-M")
    assert "SL-M orders are blocked" in error.value.message
    assert reload(stop).order_type == "SL"
    assert place(client, side="SELL", order_type="SL-M", trigger="1490").status == Status.TRIGGER_PENDING  # equity


def test_the_band_a_refusal_names_is_the_band_it_allows(client):
    """The refusal names the lowest and highest prices the band allows. It named the band's edges
    rounded to the nearest tick, which can lie outside it (20 % of 1500.40 is 300.08: 1200.3 and
    1800.5 were named, and an order at either was refused again)."""
    PaperInstrument.objects.filter(tradingsymbol="INFY").update(previous_close=D("1500.4"))
    refused = place(client, price="1900")
    assert refused.status == Status.REJECTED
    assert "price band of 1200.40 - 1800.40 " in refused.status_message
    assert place(client, price="1800.4").status == Status.COMPLETE  # crosses: filled at the ask
    assert place(client, side="SELL", price="1200.4").status == Status.COMPLETE
    assert place(client, price="1800.5").status == Status.REJECTED


def test_the_quotes_circuit_limits_are_the_prices_the_band_allows(client):
    """A Kite client reads the band from the quote's circuit limits (an algo clamps its price to
    them). They were 80 % and 120 % of the close to the paisa, off the tick once a day had closed
    off a round price (1200.08 - 1800.12 for 1500.10): an order at either was refused."""
    from brokers.paper import kite_format

    PaperInstrument.objects.filter(tradingsymbol="INFY").update(previous_close=D("1500.1"))
    instrument = engine.instrument_lookup("NSE", "INFY")
    limits = kite_format.quote(instrument)
    lower, upper = D(str(limits["lower_circuit_limit"])), D(str(limits["upper_circuit_limit"]))
    assert (lower, upper) == (D("1200.1"), D("1800.1"))
    assert place(client, price=str(upper)).status == Status.COMPLETE  # crosses: filled at the ask
    assert place(client, side="SELL", price=str(lower)).status == Status.COMPLETE
    assert place(client, price=str(upper + instrument.tick_size)).status == Status.REJECTED


def test_the_in_process_adapters_quote_carries_the_circuit_limits_its_kite_face_gives(client):
    """The platform clamps an option stop's limit to the circuit limits of the broker's quote: the
    in-process adapter's quote gives the same limits as the Kite face's, the prices the band allows."""
    from brokers.paper import kite_format
    from brokers.paper.adapter import PaperBroker

    PaperInstrument.objects.filter(tradingsymbol="INFY").update(previous_close=D("1500.1"))
    broker = PaperBroker(client_id=client.user_id)
    broker.login()
    quote = broker.quote(["NSE:INFY"])["NSE:INFY"]
    face = kite_format.quote(engine.instrument_lookup("NSE", "INFY"))
    assert quote.circuit == (D("1200.10"), D("1800.10"))
    assert quote.circuit == (D(str(face["lower_circuit_limit"])), D(str(face["upper_circuit_limit"])))


def test_rejects_insufficient_funds_counting_open_orders(client):
    PaperClient.objects.filter(pk=client.pk).update(cash=D("10000"))
    place(client, price="1450", quantity=6)  # blocks 8700
    order = place(client, price="1450", quantity=1)  # 1450 > 1300 left
    assert order.status == Status.REJECTED and order.status_message.startswith("Insufficient funds")


def test_cash_moves_with_fills(client):
    before = PaperClient.objects.get(pk=client.pk).cash
    place(client, order_type="MARKET", quantity=10)
    place(client, side="SELL", order_type="MARKET", quantity=4)
    after = PaperClient.objects.get(pk=client.pk).cash
    assert after == before - 10 * D("1500.1") + 4 * D("1499.9")


def test_rejects_the_26th_modification(client):
    order = place(client, price="1400", quantity=1)
    for step in range(25):
        engine.order_modify(client=client, order_id=order.order_id, price=D("1400") + D(step % 2))
    with pytest.raises(engine.InputException) as error:
        engine.order_modify(client=client, order_id=order.order_id, price=D("1401"))
    assert error.value.kind == "modification_cap"


def test_rejection_rate_knob(client):
    PaperClient.objects.filter(pk=client.pk).update(rejection_rate=1)
    client.refresh_from_db()
    order = place(client, order_type="MARKET")
    assert order.status == Status.REJECTED and order.status_message.startswith("RMS")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"order_type": "SL", "trigger": "1490", "price": "1495"}, "Trigger price for stoploss buy"),
        ({"order_type": "SL-M", "side": "SELL", "trigger": "1510"}, "stoploss sell"),
        ({"order_type": "LIMIT"}, "Price should be greater than 0"),
        ({"order_type": "SL-M"}, "Trigger price should be greater than 0"),
        ({"order_type": "MARKET", "product": "XYZ"}, "Invalid `product`"),
    ],
)
def test_rejects_bad_order_parameters(client, kwargs, message):
    with pytest.raises(engine.InputException, match=message):
        place(client, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"quantity": 10**12, "price": "1500"}, "Invalid `quantity`"),
        ({"price": "1e13"}, "Invalid `price`"),
        ({"order_type": "SL-M", "trigger": "1e13"}, "Invalid `trigger_price`"),
    ],
    ids=["quantity", "price", "trigger"],
)
def test_refuses_a_quantity_or_price_no_order_can_hold_and_stores_nothing(client, kwargs, message):
    # These were stored as REJECTED orders (funds, band), which the columns cannot hold: a server error.
    with pytest.raises(engine.InputException, match=message):
        place(client, **kwargs)
    assert not PaperOrder.objects.exists()


def test_a_modify_to_a_quantity_no_order_can_hold_is_refused(client):
    PaperClient.objects.filter(pk=client.pk).update(cash=D("1e13"))
    order = place(client, price="1400", quantity=1)
    with pytest.raises(engine.InputException, match="Invalid `quantity`"):
        engine.order_modify(client=client, order_id=order.order_id, quantity=5 * 10**9)
    assert reload(order).quantity == 1


# --- Knobs, sessions, the feed -------------------------------------------------------------


def test_error_rate_knob_fails_before_doing_anything(client):
    client.error_rate = 1
    with pytest.raises(engine.ServerError):
        engine.faults_before(client)


def test_rate_limit_knob(client, monkeypatch):
    client.rate_limit_per_s = 2
    # Its window is the wall clock's second: three calls either side of a second's turn are two windows.
    monkeypatch.setattr(engine, "time", SimpleNamespace(time=lambda: 1_800_000_000.25, sleep=time.sleep))
    engine.faults_before(client)
    engine.faults_before(client)
    with pytest.raises(engine.RateLimitExceeded):
        engine.faults_before(client)


def test_timeout_knob_loses_only_write_answers(client):
    client.timeout_rate = 1
    assert engine.faults_before(client).lose_answer is False
    faults = engine.faults_before(client, write=True)
    with pytest.raises(engine.AnswerLost):
        faults.after()


def test_access_tokens_expire(client):
    token, _ = engine.session_open(client=client)
    assert engine.client_for_access_token(api_key=None, access_token=token) == client
    engine.session_expire_now(client=client)
    with pytest.raises(engine.TokenException):
        engine.client_for_access_token(api_key=None, access_token=token)


def test_the_random_walk_is_repeatable_and_stays_on_ticks(db, settings):
    settings.PAPER_TICK_SIGMA = 0.01

    def walk():
        PaperInstrument.objects.update(last_price=D("1500"))
        from brokers.paper.models import PaperFeedState

        PaperFeedState.objects.all().delete()
        for _ in range(5):
            engine.market_tick(rng_seed=7)
        return dict(PaperInstrument.objects.values_list("tradingsymbol", "last_price"))

    first, second = walk(), walk()
    assert first == second
    assert len(set(first.values())) > 1
    infy = PaperInstrument.objects.get(tradingsymbol="INFY")
    assert infy.last_price % infy.tick_size == 0
    assert infy.ask - infy.bid == 2 * infy.tick_size


def test_one_instruments_matching_failing_leaves_the_others_matched_that_tick(client, settings, monkeypatch):
    """A tick matched its instruments one after another: one failing (a lock wait, a deadlock)
    ended the tick, and every instrument after it went unmatched (its crossed orders unfilled)."""
    settings.PAPER_TICK_SIGMA = 0
    quote("TCS", last="3500", volume=1000)
    infy = place(client, price="1400")  # both rest below the market
    tcs = place(client, price="3000", symbol="TCS")
    PaperInstrument.objects.filter(tradingsymbol="TCS").update(last_price=D("2900"), bid=D("2899.9"), ask=D("2900.1"))
    real, tried = engine.match_instrument, []

    def match(*, instrument_id):
        tried.append(instrument_id)
        if instrument_id == infy.instrument_id:
            raise OperationalError(1205, "Lock wait timeout exceeded")
        return real(instrument_id=instrument_id)

    monkeypatch.setattr(engine, "match_instrument", match)
    assert engine.market_tick() == 1
    assert sorted(tried) == sorted([infy.instrument_id, tcs.instrument_id])
    assert reload(tcs).status == "COMPLETE" and reload(infy).status == "OPEN"


def test_staff_set_a_clients_password_and_knobs_in_admin(client, staff, django_user_model):
    from django.test import Client

    browser = Client()
    browser.force_login(staff)
    url = f"/admin/paper/paperclient/{client.pk}/change/"
    assert browser.get(url).status_code == 200
    data = {
        "user_id": client.user_id,
        "name": "Renamed",
        "new_password": "s3cret-pass",
        "api_key": client.api_key,
        "api_secret": client.api_secret,
        "redirect_url": "",
        "postback_url": "",
        "session_ttl_s": 0,
        "opening_funds": "1000000",
        "cash": "500000",
        "latency_ms": 5,
        "error_rate": 0.5,
        "timeout_rate": 0,
        "rejection_rate": 0,
        "rate_limit_per_s": 0,
    }
    assert browser.post(url, data).status_code == 302
    client.refresh_from_db()
    assert client.name == "Renamed" and client.error_rate == 0.5 and client.cash == D("500000")
    assert client.password.startswith("md5$") or client.password.startswith("argon2")
    engine.login_with_password(api_key=client.api_key, user_id=client.user_id, password="s3cret-pass")


def test_staff_changing_a_clients_knobs_in_admin_keep_the_fills_paid_meanwhile(client, staff):
    """The admin's page shows the client's cash; a fill paid while staff edit a fault knob must not
    be undone by the save writing back the cash the page showed."""
    from django.test import Client

    browser = Client()
    browser.force_login(staff)
    url = f"/admin/paper/paperclient/{client.pk}/change/"
    page = browser.get(url)
    data = page_form_data(page)  # as it posts
    shown = client.cash
    place(client, order_type="MARKET", quantity=2)  # pays 2 x 1500.10 while the page is open
    paid = shown - PaperClient.objects.get(pk=client.pk).cash
    assert paid == D("3000.20")

    assert browser.post(url, {**data, "latency_ms": 7}).status_code == 302
    client.refresh_from_db()
    assert client.latency_ms == 7
    assert client.cash == shown - paid


# --- The written-out book reads ------------------------------------------------------------


def test_the_written_out_book_reads_give_what_the_querysets_give(client):
    from datetime import timedelta

    from django.utils import timezone

    from brokers.paper.adapter import to_broker_order, to_broker_trade

    quote("TCS", last="3500", volume=1000)
    place(client, order_type="MARKET", quantity=2, tag="T1")
    old = place(client, order_type="MARKET", symbol="TCS", quantity=3, product="CNC")
    PaperTrade.objects.filter(order=old).update(filled_at=timezone.now() - timedelta(days=2))  # yesterday's delivery
    place(client, side="SELL", order_type="MARKET", symbol="TCS", quantity=1, product="CNC")  # sells from it
    place(client, price="1400", tag="RESTING")
    other = engine.client_get_or_create(user_id="C2")
    place(other, order_type="MARKET", quantity=5)

    assert [to_broker_order(o) for o in engine.order_book(client)] == [
        to_broker_order(o) for o in engine.orders_of(client)
    ]
    assert [to_broker_trade(t) for t in engine.trade_book(client, every_day=True)] == [
        to_broker_trade(t) for t in engine.trades_of(client)
    ]
    assert [to_broker_trade(t) for t in engine.trade_book(client)] == [
        to_broker_trade(t) for t in engine.day_trades_of(client)
    ]
    assert len(engine.order_book(client)) == 4 and len(engine.trade_book(client, every_day=True)) == 3
    assert len(engine.trade_book(client)) == 2  # today's: not yesterday's delivery

    # Every column as the ORM reads it (datetimes aware, decimals, JSON, flags), instruments too.
    def columns(row):
        return {f.attname: getattr(row, f.attname) for f in type(row)._meta.concrete_fields}

    assert [(columns(o), columns(o.instrument)) for o in engine.order_book(client)] == [
        (columns(o), columns(o.instrument)) for o in engine.orders_of(client)
    ]
    assert [columns(t) for t in engine.trade_book(client, every_day=True)] == [
        columns(t) for t in engine.trades_of(client)
    ]
    token, _ = engine.session_open(client=client)
    found = engine.client_for_access_token(api_key=None, access_token=token)
    assert columns(found) == columns(PaperClient.objects.get(pk=client.pk))
    # Positions: today's delivery and every intraday fill; yesterday's delivery is a holding.
    positions = {(row.instrument.tradingsymbol, row.product): row.quantity for row in engine.positions_of(client)}
    assert positions == {("INFY", "MIS"): 2, ("TCS", "CNC"): -1}
    assert engine.positions_of(client, day_only=True)[0].instrument.last_price == D("1500")


# --- The written-out placement writes ------------------------------------------------------


def test_the_written_out_blocked_funds_sum_what_the_orm_sums(client):
    from django.db.models import Case, DecimalField, ExpressionWrapper, F, Sum, When

    place(client, order_type="MARKET", quantity=4)  # a long of 4 (MIS) that sells can use
    quote(last="1500.3", volume=0)  # nothing fills: every order below rests
    place(client, price="1450.1", quantity=3)
    place(client, order_type="SL-M", trigger="1510.1", quantity=2)
    place(client, order_type="SL", price="1520.2", trigger="1510.1", quantity=7)
    place(client, side="SELL", price="1550", quantity=3)  # sells from the long: blocks nothing
    place(client, side="SELL", price="1560", quantity=5)  # 4 from the long (not netted), 1 goes short
    short = place(client, side="SELL", price="1570", quantity=6)  # 2 go short; 2 fill, 2 short still to
    PaperOrder.objects.filter(pk=short.pk).update(filled_quantity=2)
    place(client, side="SELL", price="1580", quantity=2, product="NRML")  # the MIS long is not NRML's
    place(client, side="SELL", order_type="SL", price="1480", trigger="1490.2", quantity=3, product="NRML")
    partial = place(client, price="1440.3", quantity=4)
    PaperOrder.objects.filter(pk=partial.pk).update(filled_quantity=1)
    cancelled = place(client, price="1430", quantity=9)
    engine.order_cancel(client=client, order_id=cancelled.order_id)
    other = engine.client_get_or_create(user_id="C2")
    place(other, price="1450", quantity=1)
    place(other, side="SELL", price="1550", quantity=1)

    unfilled = F("quantity") - F("filled_quantity")
    blocking = Case(
        When(transaction_type="SELL", uncovered_quantity__lt=unfilled, then=F("uncovered_quantity")), default=unfilled
    )
    reference = Case(
        When(order_type="SL-M", then=F("trigger_price")),
        When(order_type="SL", transaction_type="SELL", then=F("trigger_price")),
        default=F("price"),
    )
    expected = PaperOrder.objects.filter(client=client, status__in=PaperOrder.LIVE).aggregate(
        total=Sum(ExpressionWrapper(blocking * reference, output_field=DecimalField()))
    )["total"]
    blocked = engine._blocked_funds(client)
    buys = 3 * D("1450.1") + 2 * D("1510.1") + 7 * D("1520.2") + 3 * D("1440.3")
    shorts = 1 * D("1560") + 2 * D("1570") + 2 * D("1580") + 3 * D("1490.2")  # a sell SL at its trigger
    assert blocked == expected == buys + shorts
    assert engine._blocked_funds(engine.client_get_or_create(user_id="C3")) == D(0)


def test_a_placement_writes_the_rows_the_orm_would_write(client):
    from django.utils import timezone

    from tradingplatform.db import PlainInserts

    order = place(client, order_type="MARKET", quantity=3, tag="WRITTEN")
    trade = PaperTrade.objects.get(order=order)
    assert order.pk == PaperOrder.objects.get(tag="WRITTEN").pk and not order._state.adding

    def columns(row, *skip):
        return {f.attname: getattr(row, f.attname) for f in type(row)._meta.concrete_fields if f.attname not in skip}

    # The same instance saved by the ORM and inserted written out reads back the same, column by column.
    now = timezone.now()
    values = {
        "client": client,
        "instrument": order.instrument,
        "transaction_type": "BUY",
        "order_type": "SL",
        "product": "NRML",
        "quantity": 5,
        "price": D("1520.2"),
        "trigger_price": D("1510.1"),
        "status": Status.TRIGGER_PENDING,
        "status_message": "ünïcode ✓",
        "average_price": D("1500.1234"),
        "tag": "",
        "priority": 12345678901234567,
        "placed_at": now,
        "updated_at": now,
    }
    by_orm = PaperOrder(order_id="ORM", exchange_order_id="1ORM", **values)
    by_orm.save()
    written = PaperOrder(order_id="PLAIN", exchange_order_id="1PLAIN", **values)
    PlainInserts(PaperOrder).insert(written)
    assert written.pk and written.pk != by_orm.pk
    assert columns(PaperOrder.objects.get(pk=written.pk), "id", "order_id", "exchange_order_id") == columns(
        PaperOrder.objects.get(pk=by_orm.pk), "id", "order_id", "exchange_order_id"
    )
    assert trade.price == D("1500.10") and trade.quantity == 3 and trade.client_id == client.pk
    fill = {
        "order": order,
        "client_id": client.pk,
        "instrument_id": order.instrument_id,
        "transaction_type": "SELL",
        "product": "CNC",
        "quantity": 7,
        "price": D("1499.95"),
        "filled_at": now,
    }
    trade_by_orm = PaperTrade(trade_id="ORM", **fill)
    trade_by_orm.save()
    trade_written = PaperTrade(trade_id="PLAIN", **fill)
    PlainInserts(PaperTrade).insert(trade_written)
    assert columns(PaperTrade.objects.get(pk=trade_written.pk), "id", "trade_id") == columns(
        PaperTrade.objects.get(pk=trade_by_orm.pk), "id", "trade_id"
    )


class _Holder:
    """Another connection holding a row lock, as a placement (its client) or the tick (an instrument) does."""

    def __init__(self, model, pk):
        self.held, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold, args=(model, pk))

    def _hold(self, model, pk):
        try:
            with transaction.atomic():
                model.objects.select_for_update().get(pk=pk)
                self.held.set()
                self.release.wait(15)
        finally:
            connection.close()

    def __enter__(self):
        self.thread.start()
        assert self.held.wait(10)
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.thread.join()


def _short_lock_waits():
    if connection.vendor != "mysql":
        pytest.skip("row locks: MariaDB")
    with connection.cursor() as cursor:  # a wait on a held row fails in 2 s instead of 50
        cursor.execute("SET SESSION innodb_lock_wait_timeout = 2")


@pytest.mark.django_db(transaction=True)
def test_matching_locks_the_orders_not_their_clients(client):
    """A placement holds its client's row while it checks funds; the tick's matching of that
    client's resting order must not wait for it (it locks the orders, and the client only to pay)."""
    _short_lock_waits()
    place(client, price="1400")  # rests: nothing crosses
    instrument = PaperInstrument.objects.get(tradingsymbol="INFY")
    with _Holder(PaperClient, client.pk):
        assert engine.match_instrument(instrument_id=instrument.pk) == 0


@pytest.mark.django_db(transaction=True)
def test_a_cancel_locks_its_order_not_its_instrument(client):
    """The tick holds the instruments' rows while it moves their quotes; a cancel must not wait."""
    _short_lock_waits()
    order = place(client, price="1400")
    with _Holder(PaperInstrument, order.instrument_id):
        assert engine.order_cancel(client=client, order_id=order.order_id).status == Status.CANCELLED


def _waiting_for_a_lock(connection_id) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = %s AND trx_state = %s",
            [connection_id, "LOCK WAIT"],
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", ["cancel", "modify"])
def test_a_modify_or_cancel_and_the_ticks_matching_of_its_order_at_once_both_go_through(client, change):
    """A cancel (or a modify that crosses: it fills at once) holds its order's row and then changes
    its status; the tick's matching of that instrument reaches the same order meanwhile. It waits
    for the row and matches after: neither is failed as a deadlock (which lost the tick's fills of
    the whole instrument, or the trader's cancel)."""
    _short_lock_waits()
    order = place(client, price="1400")  # rests
    quote(last="1390", volume=0)  # crosses, but nothing trades this tick
    matching = {}

    def match():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT CONNECTION_ID()")
                matching["connection_id"] = cursor.fetchone()[0]
            matching["fills"] = engine.match_instrument(instrument_id=order.instrument_id)
        except Exception as error:  # noqa: BLE001 - the test reports it
            matching["error"] = error
        finally:
            connection.close()

    thread = threading.Thread(target=match)
    with transaction.atomic():
        PaperOrder.objects.select_for_update().filter(client=client, order_id=order.order_id).get()  # as both do
        thread.start()
        deadline = time.monotonic() + 30  # a loaded machine (a whole suite beside others) is slow to start it
        while not ("connection_id" in matching and _waiting_for_a_lock(matching["connection_id"])):
            assert time.monotonic() < deadline and thread.is_alive(), matching
            time.sleep(0.02)
        if change == "cancel":
            changed = engine.order_cancel(client=client, order_id=order.order_id)
        else:
            changed = engine.order_modify(client=client, order_id=order.order_id, price=D("1395"))
    thread.join(15)
    assert "error" not in matching, matching
    assert matching["fills"] == 0
    assert changed.status == (Status.CANCELLED if change == "cancel" else Status.COMPLETE)
    assert reload(order).status == changed.status


def _started_at_the_first_fill(monkeypatch, work) -> tuple[threading.Thread, dict]:
    """``work()`` on a thread of its own with its own connection, started once the engine has
    inserted its first trade, which then waits until ``work`` waits for a row lock: (the thread,
    what came of it: ``result`` or ``error``)."""
    outcome = {}

    def run():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT CONNECTION_ID()")
                outcome["connection_id"] = cursor.fetchone()[0]
            outcome["result"] = work()
        except Exception as error:  # noqa: BLE001 - the test reports it
            outcome["error"] = error
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    insert = engine._NEW_TRADES.insert

    def insert_then_wait_for_it(trade):
        insert(trade)
        if thread.ident is not None:  # started already (a fill of its own)
            return
        thread.start()
        deadline = time.monotonic() + 30  # a loaded machine (a whole suite beside others) is slow to start it
        while not ("connection_id" in outcome and _waiting_for_a_lock(outcome["connection_id"])):
            assert time.monotonic() < deadline and thread.is_alive(), outcome
            time.sleep(0.02)

    monkeypatch.setattr(engine._NEW_TRADES, "insert", insert_then_wait_for_it)
    return thread, outcome


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("filler", ["tick", "modify"])
def test_a_fill_and_a_placement_of_the_same_client_at_once_both_go_through(client, filler, monkeypatch):
    """A fill (the tick's, or a modify's that crosses) writes its trade and pays its client's cash;
    a placement of the same client meanwhile waits for the client's row. The trade's insert took a
    shared lock on that row (its foreign key) and the payment then wanted it exclusive, behind the
    waiting placement: a deadlock, which failed the trader's order as a busy exchange, or lost the
    tick's fills of the whole instrument."""
    _short_lock_waits()
    resting = place(client, price="1400")
    quote(last="1390", volume=0)  # crosses, but nothing trades this tick
    if filler == "tick":
        PaperInstrument.objects.filter(tradingsymbol="INFY").update(tick_volume=1000)  # the next match fills
    thread, placing = _started_at_the_first_fill(
        monkeypatch, lambda: place(client, side="SELL", symbol="TCS", order_type="MARKET")
    )
    if filler == "tick":
        assert engine.match_instrument(instrument_id=resting.instrument_id) == 1
    else:
        engine.order_modify(client=client, order_id=resting.order_id, price=D("1395"))
    thread.join(15)
    assert "error" not in placing, placing
    assert placing["result"].status == Status.COMPLETE
    assert reload(resting).status == Status.COMPLETE


@pytest.mark.django_db(transaction=True)
def test_a_tick_filling_several_clients_and_a_batch_placing_for_them_at_once_both_go_through(client, monkeypatch):
    """The tick pays the clients whose orders fill in the book's order (best price first); a batch of
    placements (``orders_place_many``) locks its clients in id order. A tick that paid the later
    client first and then wanted the earlier one, which the batch held while it waited for the later
    one, deadlocked: the batch's orders were failed, or the tick's fills of the instrument lost."""
    _short_lock_waits()
    later = engine.client_get_or_create(user_id="C2")
    assert later.pk > client.pk
    place(later, price="1401")  # the better price: filled first
    place(client, price="1400")
    quote(last="1390", volume=0)  # both cross; nothing trades this tick, the next match fills both
    PaperInstrument.objects.filter(tradingsymbol="INFY").update(tick_volume=1000)
    tokens = {c.pk: engine.session_open(client=c)[0] for c in (client, later)}
    thread, placing = _started_at_the_first_fill(  # after the tick's first fill: the later client's
        monkeypatch,
        lambda: engine.orders_place_many(
            [
                engine.Placement(
                    access_token=tokens[c.pk], exchange="NSE", tradingsymbol="TCS", transaction_type="BUY",
                    order_type="LIMIT", quantity=1, product="MIS", price=D("3000"),
                )
                for c in (client, later)
            ]
        ),
    )  # fmt: skip
    assert engine.match_instrument(instrument_id=PaperInstrument.objects.get(tradingsymbol="INFY").pk) == 2
    thread.join(15)
    assert "error" not in placing, placing
    assert [order.status for order in placing["result"]] == [Status.OPEN, Status.OPEN]


# --- The day's end ----------------------------------------------------------------------------


def test_day_orders_of_an_earlier_day_are_closed_not_filled_today(client):
    """A DAY order is valid for the day it was placed: one still resting from yesterday (a LIMIT
    part filled, a stop not triggered) is cancelled by the next tick, keeping its fills and
    freeing its funds, before a price that crosses it could fill it; today's stays."""
    part = place(client, price="1490", quantity=10)
    quote(last="1489", volume=4)  # 4 of it fill (the tick's volume)
    stop = place(client, side="SELL", order_type="SL-M", trigger="1400", quantity=2)
    today = place(client, price="1450", quantity=3)
    assert (reload(part).filled_quantity, reload(stop).status) == (4, Status.TRIGGER_PENDING)
    yesterday = timezone.now() - timedelta(days=1)
    PaperOrder.objects.filter(pk__in=[part.pk, stop.pk]).update(placed_at=yesterday)

    assert engine.day_orders_close() == 2
    quote(last="1390", volume=100)  # would fill all three
    part, stop, today = reload(part), reload(stop), reload(today)
    assert (part.status, part.filled_quantity, part.cancelled_quantity) == (Status.CANCELLED, 4, 6)
    assert part.status_message == engine.DAY_ENDED
    assert (stop.status, stop.cancelled_quantity, PaperTrade.objects.filter(order=stop).exists()) == (
        Status.CANCELLED, 2, False
    )  # fmt: skip
    assert (today.status, today.filled_quantity) == (Status.COMPLETE, 3)
    assert engine._blocked_funds(client) == 0
    assert engine.day_orders_close() == 0  # once

    late = place(client, price="1380", quantity=1)  # under the market: it rests
    PaperOrder.objects.filter(pk=late.pk).update(placed_at=yesterday)
    engine.market_tick(rng_seed=1)  # the feed's every tick closes them first
    assert reload(late).status == Status.CANCELLED


def test_a_new_trading_day_takes_the_last_price_as_its_previous_close(client, settings):
    """The price band and the day change are measured from the previous day's close: the first
    tick of a trading day (IST) closes the day before at its last price. The close stayed the
    instruments file's for ever, so after a day's move a price inside today's band was refused,
    and the walk stayed pinned inside the first day's band."""
    from brokers.paper.models import PaperFeedState

    settings.PAPER_TICK_SIGMA = 0  # the walk stands still: the tick only closes the day
    PaperFeedState.objects.update_or_create(pk=1, defaults={"ticked_at": timezone.now() - timedelta(days=1)})
    quote(last="1750", volume=10)  # yesterday's last price (the file's close is 1500)
    engine.market_tick()
    infy = PaperInstrument.objects.get(tradingsymbol="INFY")
    assert (infy.previous_close, infy.open, infy.high, infy.low) == (D("1750"),) * 4
    # 20 % of 1750 allows 2100 (20 % of 1500 only 1800)
    assert place(client, side="SELL", price="1950", quantity=1).status == Status.OPEN

    quote(last="1760", volume=10)
    engine.market_tick()  # a later tick of the same day closes nothing
    assert PaperInstrument.objects.get(tradingsymbol="INFY").previous_close == D("1750")


def test_the_days_volume_adds_up_the_ticks_volumes(client):
    """A quote's volume is the day's traded volume (Kite's): each tick's adds to it, a new day
    starts it again. It stayed 0 (the feed never counted it)."""
    from brokers.paper.models import PaperFeedState

    start = PaperInstrument.objects.get(tradingsymbol="INFY").volume
    quote(last="1500", volume=30)
    quote(last="1501", volume=12)
    assert PaperInstrument.objects.get(tradingsymbol="INFY").volume == start + 42
    engine.market_tick(rng_seed=3)
    infy = PaperInstrument.objects.get(tradingsymbol="INFY")
    assert infy.volume == start + 42 + infy.tick_volume
    PaperFeedState.objects.filter(pk=1).update(ticked_at=timezone.now() - timedelta(days=1))
    engine.market_tick(rng_seed=3)
    infy = PaperInstrument.objects.get(tradingsymbol="INFY")
    assert infy.volume == infy.tick_volume


def test_an_ioc_stop_of_an_earlier_day_is_closed_with_its_day_not_triggered_today(client):
    """An IOC stop waits for its trigger like any stop, but only for the day it was placed: every
    regular order ends with its day. Only DAY orders were closed, so yesterday's IOC stop stayed
    TRIGGER PENDING (its funds blocked) and a price of any later day triggered and filled it."""
    stop = place(client, order_type="SL-M", trigger="1510", quantity=2, validity="IOC")
    assert stop.status == Status.TRIGGER_PENDING and engine._blocked_funds(client) == 2 * D("1510")
    PaperOrder.objects.filter(pk=stop.pk).update(placed_at=timezone.now() - timedelta(days=1))

    assert engine.day_orders_close() == 1
    quote(last="1520", volume=100)  # would trigger and fill it
    stop = reload(stop)
    assert (stop.status, stop.cancelled_quantity, stop.status_message) == (Status.CANCELLED, 2, engine.DAY_ENDED)
    assert not PaperTrade.objects.filter(order=stop).exists() and engine._blocked_funds(client) == 0


def test_a_day_order_of_an_earlier_day_cannot_be_modified_into_a_fill_today(client):
    """Until the next tick closes it, a resting DAY order of yesterday is still OPEN in the book: a
    modify to a crossing price filled it today, after its day had ended (so did one while the tick
    was paused). It is refused and nothing changes; a cancel still takes it."""
    resting = place(client, price="1450", quantity=3)
    PaperOrder.objects.filter(pk=resting.pk).update(placed_at=timezone.now() - timedelta(days=1))
    cash = PaperClient.objects.get(pk=client.pk).cash

    with pytest.raises(engine.InputException, match="its trading day has ended"):
        engine.order_modify(client=client, order_id=resting.order_id, price=D("1510"))
    resting = reload(resting)
    assert (resting.status, resting.price, resting.filled_quantity, resting.modifications) == (
        Status.OPEN, D("1450"), 0, 0
    )  # fmt: skip
    assert not PaperTrade.objects.exists() and PaperClient.objects.get(pk=client.pk).cash == cash
    assert engine.order_cancel(client=client, order_id=resting.order_id).status == Status.CANCELLED


def test_a_price_set_before_the_days_first_tick_does_not_fill_an_order_of_an_earlier_day(client):
    """Only the tick closes yesterday's DAY orders; a price set before the new day's first tick
    (staff in admin, a demo, or while the tick is paused) matched the instrument's every resting
    order: yesterday's LIMIT filled today and yesterday's stop triggered, after their day had
    ended. They wait for the tick's close, which cancels them; today's order fills."""
    resting = place(client, price="1450", quantity=3)
    stop = place(client, side="SELL", order_type="SL-M", trigger="1460", quantity=2)
    PaperOrder.objects.filter(pk__in=[resting.pk, stop.pk]).update(placed_at=timezone.now() - timedelta(days=1))
    today = place(client, price="1440", quantity=1)

    assert quote(last="1400", volume=100) == 1  # crosses all three: only today's fills
    resting, stop, today = reload(resting), reload(stop), reload(today)
    assert (resting.status, resting.filled_quantity) == (Status.OPEN, 0)
    assert (stop.status, stop.filled_quantity) == (Status.TRIGGER_PENDING, 0)
    assert (today.status, today.filled_quantity) == (Status.COMPLETE, 1)
    assert not PaperTrade.objects.filter(order__in=[resting, stop]).exists()
    assert engine.day_orders_close() == 2
    assert (reload(resting).status, reload(stop).status) == (Status.CANCELLED, Status.CANCELLED)


def test_net_positions_are_what_the_day_carried_in_at_its_average_and_todays_fills(client):
    """Kite's net positions: a position carried from an earlier day (its overnight quantity at its
    average price) plus today's trading. The net view was built from every fill of every day: a
    position closed days ago stayed listed for ever with its realised PnL (and in the margins'
    realised), and one closed and opened again averaged the closed buys into its price and PnL."""
    earlier = timezone.now() - timedelta(days=3)
    quote(last="1000", volume=1000)
    closed = [place(client, order_type="MARKET", quantity=10, symbol="INFY")]  # at 1000.1
    quote(last="1100", volume=1000)
    closed.append(place(client, side="SELL", order_type="MARKET", quantity=10))  # at 1099.9: +998
    quote(last="1200", volume=1000)
    carried = place(client, order_type="MARKET", quantity=4)  # at 1200.1, held overnight
    PaperTrade.objects.filter(order__in=[*closed, carried]).update(filled_at=earlier)
    PaperTrade.objects.filter(order=carried).update(filled_at=timezone.now() - timedelta(days=1))
    place(client, order_type="MARKET", quantity=2)  # today, at 1200.1
    place(client, side="SELL", order_type="MARKET", quantity=1)  # today, at 1199.9

    (row,) = engine.positions_of(client)
    assert (row.quantity, row.overnight_quantity) == (5, 4)
    assert (row.buy_quantity, row.buy_value, row.sell_quantity, row.sell_value) == (
        6, D("7200.6"), 1, D("1199.9")
    )  # fmt: skip
    assert row.average_price == D("1200.1") and row.realised == D("-0.2")
    assert engine.margins_of(client)["realised"] == D("-0.2")

    PaperTrade.objects.filter(filled_at__gte=engine.day_start()).delete()  # no trading today
    (row,) = engine.positions_of(client)
    assert (row.quantity, row.overnight_quantity, row.buy_value, row.realised) == (4, 4, D("4800.4"), 0)
    PaperTrade.objects.filter(order=carried).delete()
    assert engine.positions_of(client) == []  # closed on an earlier day: not a position today


def test_staff_editing_an_instrument_in_admin_keep_the_prices_ticked_meanwhile(client, staff):
    """The admin's page shows the instrument's quote; the ticks move it while the page is open. A
    save of another field (its previous close, a demo's band) wrote back the quote the page showed:
    the market jumped back to it, and the next MARKET buy filled at the old ask. A price staff type
    is set as the feed sets one: bid and ask a tick around it, crossing orders filled at once."""
    from django.test import Client

    browser = Client()
    browser.force_login(staff)
    infy = PaperInstrument.objects.get(tradingsymbol="INFY")
    url = f"/admin/paper/paperinstrument/{infy.pk}/change/"
    data = page_form_data(browser.get(url))
    quote(last="1510")  # a tick while the page is open

    answer = browser.post(url, {**data, "previous_close": "1490"})
    assert answer.status_code == 302, answer.context["adminform"].form.errors
    infy.refresh_from_db()
    assert infy.previous_close == D("1490")
    assert (infy.last_price, infy.bid, infy.ask) == (D("1510"), D("1509.90"), D("1510.10"))
    bought = place(client, order_type="MARKET", quantity=1)
    assert bought.average_price == D("1510.10")

    resting = place(client, side="SELL", price="1550", quantity=1)
    data = page_form_data(browser.get(url))
    assert browser.post(url, {**data, "last_price": "1600"}).status_code == 302
    infy.refresh_from_db()
    assert (infy.last_price, infy.bid, infy.ask) == (D("1600"), D("1599.90"), D("1600.10"))
    resting.refresh_from_db()
    assert resting.status == PaperOrder.Status.COMPLETE and resting.average_price == D("1550")


# --- The day's books -----------------------------------------------------------------------


def yesterdays(*orders, closed=True):
    """Move orders (and their fills) to yesterday (IST): placed, changed and filled then."""
    yesterday = engine.day_start() - timedelta(hours=2)
    for order in orders:
        fields = {"placed_at": yesterday, **({"updated_at": yesterday} if closed else {})}
        PaperOrder.objects.filter(pk=order.pk).update(**fields)
        PaperTrade.objects.filter(order=order).update(filled_at=yesterday)


def test_the_order_and_trade_books_list_the_days_own_as_kites_do(client):
    """Kite lists the day's orders and fills only; the paper exchange listed every day's, read whole
    by every monitoring run (thousands of rows per account after months). Yesterday's filled order
    and its fill are not in today's books; today's are; yesterday's position is still carried in, and
    an old order's own history and fills are still found by its id."""
    from brokers.paper.adapter import PaperBroker

    old = place(client, order_type="MARKET", quantity=4, tag="OLD")  # an intraday long carried overnight
    yesterdays(old)
    today = place(client, order_type="MARKET", quantity=2, tag="NEW")

    assert [o.order_id for o in engine.order_book(client)] == [today.order_id]
    assert [t.order.order_id for t in engine.trade_book(client)] == [today.order_id]
    assert [t.order.order_id for t in engine.day_trades_of(client)] == [today.order_id]
    (row,) = engine.positions_of(client)
    assert (row.quantity, row.overnight_quantity, row.day_buy_quantity) == (6, 4, 2)

    broker = PaperBroker(client_id=client.user_id)
    broker.login()
    assert [o.tag for o in broker.orders()] == ["NEW"]
    assert [t.broker_order_id for t in broker.trades()] == [today.order_id]
    assert broker.order(old.order_id).filled_quantity == 4
    assert [t.quantity for t in broker.order_trades(old.order_id)] == [4]
    assert broker.find_by_tag("OLD").broker_order_id == old.order_id
    (position,) = broker.positions()
    assert (position.quantity, position.overnight_quantity) == (6, 4)


def test_a_fill_in_the_last_minutes_before_midnight_is_still_in_the_books_after_it(client):
    """The paper market trades through midnight: an order filled a minute before it, whose
    announcement to the platform was lost, was in no book the platform's next run read (today's
    only), so its fill was never recorded. The books reach BOOK_LOOKBACK back; earlier is not listed."""
    late = place(client, order_type="MARKET", quantity=2, tag="LATE")
    early = place(client, order_type="MARKET", quantity=1, tag="EARLY")
    for order, before in ((late, timedelta(minutes=1)), (early, engine.BOOK_LOOKBACK + timedelta(minutes=1))):
        moment = engine.day_start() - before
        PaperOrder.objects.filter(pk=order.pk).update(placed_at=moment, updated_at=moment)
        PaperTrade.objects.filter(order=order).update(filled_at=moment)
    assert [(o.order_id, o.status) for o in engine.order_book(client)] == [(late.order_id, Status.COMPLETE)]
    assert [t.order.order_id for t in engine.trade_book(client)] == [late.order_id]
    assert [t.order.order_id for t in engine.day_trades_of(client)] == [late.order_id]


def test_an_earlier_days_order_is_listed_while_live_and_the_day_its_close_is_told(client):
    """An order of yesterday still resting after midnight is live until the next tick closes it with
    its day: it is in the book until then, and, closed, in the book of the day it was closed (as
    Kite's book shows an order its exchange closed at its day's end), so the platform reads how it
    ended; one closed yesterday is not."""
    resting = place(client, price="1400", quantity=3)
    cancelled = place(client, price="1400", quantity=1)
    engine.order_cancel(client=client, order_id=cancelled.order_id)
    yesterdays(resting, closed=False)
    yesterdays(cancelled)

    assert [o.order_id for o in engine.order_book(client)] == [resting.order_id]
    assert engine.day_orders_close() == 1
    (closed,) = engine.order_book(client)
    assert (closed.order_id, closed.status, closed.status_message) == (
        resting.order_id, Status.CANCELLED, engine.DAY_ENDED
    )  # fmt: skip
    assert engine.trade_book(client) == []
