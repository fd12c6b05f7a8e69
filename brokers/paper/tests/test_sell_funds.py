"""Funds for SELL orders: a sell that opens or adds to a short needs margin, as a BUY does;
one that sells from the client's long needs none; delivery (CNC) cannot sell more than is held."""

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from brokers.paper import engine
from brokers.paper.models import PaperClient, PaperOrder, PaperTrade

D = Decimal
Status = PaperOrder.Status
FINNIFTY = {"exchange": "NFO", "tradingsymbol": "FINNIFTY26DECFUT"}  # lot 65, about 27610


def quote(last, tradingsymbol="INFY", exchange="NSE", volume=0):
    last = D(last)
    engine.market_set(
        exchange=exchange, tradingsymbol=tradingsymbol, last_price=last, bid=last - D("0.1"), ask=last + D("0.1"),
        tick_volume=volume,
    )  # fmt: skip


def place(
    client, side, quantity, *, symbol="INFY", exchange="NSE", product="MIS", price=None, order_type=None, **trigger
):
    return engine.order_place(
        client=client,
        exchange=exchange,
        tradingsymbol=symbol,
        transaction_type=side,
        order_type=order_type or ("LIMIT" if price else "MARKET"),
        quantity=quantity,
        product=product,
        price=D(price) if price else None,
        trigger_price=D(trigger["trigger_price"]) if trigger else None,
    )


def future(client, side, quantity=65, **kw):
    return place(client, side, quantity, symbol=FINNIFTY["tradingsymbol"], exchange="NFO", product="NRML", **kw)


def set_cash(client, cash):
    PaperClient.objects.filter(pk=client.pk).update(cash=D(cash))


def cash_of(client):
    return PaperClient.objects.get(pk=client.pk).cash


@pytest.fixture
def client(db, paper_market):
    quote("1500")
    quote("27600", **FINNIFTY)
    client = engine.client_get_or_create(user_id="C1")
    set_cash(client, "5000000")  # a lot of the future is about 1.79M
    return client


def test_a_short_sale_beyond_cash_is_rejected_like_the_same_buy(client):
    set_cash(client, "990000")  # 65 x 27600 is about 1.79M
    short = future(client, "SELL")
    assert short.status == Status.REJECTED
    assert short.status_message == (
        "Insufficient funds. Required margin is 1793993.50 but available margin is 990000.00."
    )  # 65 at the bid 27599.9
    assert future(client, "BUY").status == Status.REJECTED
    assert not PaperTrade.objects.exists() and cash_of(client) == D("990000")


def test_a_short_sale_within_cash_fills_and_is_paid_its_proceeds(client):
    set_cash(client, "2000000")
    short = future(client, "SELL")
    assert short.status == Status.COMPLETE and short.uncovered_quantity == 65
    assert cash_of(client) == D("2000000") + 65 * D("27599.9")  # cash accounting of fills unchanged


def test_a_short_sale_priced_below_the_market_needs_the_funds_of_the_price_it_fills_at(client):
    """A sell limit below the bid fills at once at the bid (the better price), so the short it opens
    is worth the bid, not its limit: it needs what the same MARKET sell needs. Judged at its limit,
    a limit at the bottom of the band opened a short of 17.9 lakh on 15 lakh of cash, and a resting
    sell moved below the market (and grown) one of 35.9 lakh on 30 lakh."""
    set_cash(client, "1500000")
    assert future(client, "SELL").status == Status.REJECTED  # 65 at the bid 27599.9: 1793993.50
    low = future(client, "SELL", price="22100")  # inside the band (22088 - 33132), far below the bid
    assert low.status == Status.REJECTED
    assert low.status_message == (
        "Insufficient funds. Required margin is 1793993.50 but available margin is 1500000.00."
    )
    assert not PaperTrade.objects.exists() and cash_of(client) == D("1500000")
    set_cash(client, "3000000")
    resting = future(client, "SELL", price="27700")  # above the market: rests, blocks 65 x 27700
    assert resting.status == Status.OPEN
    with pytest.raises(engine.InputException, match="Required margin is 3587987.00"):  # 130 at the bid
        engine.order_modify(client=client, order_id=resting.order_id, quantity=130, price=D("22100"))
    assert PaperOrder.objects.get(pk=resting.pk).filled_quantity == 0
    assert not PaperTrade.objects.exists() and cash_of(client) == D("3000000")


def test_a_short_selling_stop_loss_needs_the_funds_of_its_trigger_not_its_lower_limit(client):
    """A sell SL fills at the bid once the price falls to its trigger; its limit, up to the band's
    bottom, only says how low it may go. Judged and blocked at that limit, an SL at trigger 27500
    and limit 22100 took 14.4 lakh of funds and opened a short of 17.9 lakh on 15 lakh of cash."""
    set_cash(client, "1500000")
    stop = future(client, "SELL", order_type="SL", price="22100", trigger_price="27500")
    assert stop.status == Status.REJECTED
    assert stop.status_message == (
        "Insufficient funds. Required margin is 1787500.00 but available margin is 1500000.00."
    )
    set_cash(client, "5000000")
    stop = future(client, "SELL", order_type="SL", price="22100", trigger_price="27500")
    assert stop.status == Status.TRIGGER_PENDING
    assert engine._blocked_funds(client) == 65 * D("27500")  # what later orders cannot use
    quote("27490", **FINNIFTY, volume=10**6)  # triggers; its limit is below the bid: fills at 27489.9
    assert PaperOrder.objects.get(pk=stop.pk).average_price == D("27489.9")
    assert engine._blocked_funds(client) == 0


def test_a_sell_covered_by_a_long_needs_no_funds(client):
    assert future(client, "BUY").status == Status.COMPLETE
    set_cash(client, "0")
    exit_ = future(client, "SELL")
    assert exit_.status == Status.COMPLETE and exit_.uncovered_quantity == 0
    assert cash_of(client) == 65 * D("27599.9")


def test_a_sell_beyond_the_long_needs_funds_for_the_part_that_goes_short(client):
    future(client, "BUY")
    set_cash(client, "1000")
    order = future(client, "SELL", quantity=130, price="27700")
    assert order.status == Status.REJECTED
    assert "Required margin is 1800500.00" in order.status_message  # 65 short at 27700, not 130
    set_cash(client, "1800500")
    order = future(client, "SELL", quantity=130, price="27700")
    assert order.status == Status.OPEN and order.uncovered_quantity == 65
    assert engine._blocked_funds(client) == 65 * D("27700")


def test_a_long_covers_only_its_own_product(client):
    place(client, "BUY", 10, product="MIS")
    set_cash(client, "1000")
    order = place(client, "SELL", 10, product="NRML")  # the MIS long is not an NRML one
    assert order.status == Status.REJECTED and order.status_message.startswith("Insufficient funds")
    assert place(client, "SELL", 10, product="MIS").status == Status.COMPLETE


def test_open_sells_each_sell_the_long(client):
    """A strategy's stop-loss and take-profit both sell the same long (the platform cancels one
    when the other fills): neither needs margin."""
    future(client, "BUY")
    set_cash(client, "0")
    take_profit = future(client, "SELL", price="27700")  # rests above the market
    stop_loss = future(client, "SELL", order_type="SL-M", trigger_price="27000")
    assert (take_profit.status, stop_loss.status) == (Status.OPEN, Status.TRIGGER_PENDING)
    assert engine._blocked_funds(client) == 0
    beyond = future(client, "SELL", quantity=130, price="27700")  # half of it goes short
    assert beyond.status == Status.REJECTED and beyond.status_message.startswith("Insufficient funds")


def test_a_resting_short_sale_blocks_funds_for_later_orders(client):
    set_cash(client, "2000000")
    short = future(client, "SELL", price="27700")  # blocks 65 x 27700 = 1800500
    assert short.status == Status.OPEN
    assert engine.margins_of(client)["blocked"] == D("1800500")
    buy = place(client, "BUY", 200)  # 200 x 1500.1 = 300020 > 199500 left
    assert buy.status == Status.REJECTED and "available margin is 199500.00" in buy.status_message
    # A partial fill of the short leaves its unfilled part blocked; a full one nothing.
    quote("27710", **FINNIFTY, volume=26)
    assert PaperOrder.objects.get(pk=short.pk).filled_quantity == 26
    assert engine._blocked_funds(client) == 39 * D("27700")
    quote("27710", **FINNIFTY, volume=10**6)
    assert PaperOrder.objects.get(pk=short.pk).status == Status.COMPLETE
    assert engine._blocked_funds(client) == 0


def test_growing_a_resting_sell_beyond_the_long_blocks_the_growth(client):
    future(client, "BUY")
    resting = future(client, "SELL", price="27700")
    assert engine._blocked_funds(client) == 0
    with pytest.raises(engine.InputException, match="Insufficient funds"):  # 130 short: 36 lakh
        engine.order_modify(client=client, order_id=resting.order_id, quantity=195)
    PaperClient.objects.filter(pk=client.pk).update(cash=D("5000000"))
    engine.order_modify(client=client, order_id=resting.order_id, quantity=195)
    assert PaperOrder.objects.get(pk=resting.pk).uncovered_quantity == 130
    assert engine._blocked_funds(client) == 130 * D("27700")
    engine.order_modify(client=client, order_id=resting.order_id, quantity=65)
    assert engine._blocked_funds(client) == 0


def test_a_cnc_sell_beyond_holdings_is_refused_and_nothing_is_stored(client):
    place(client, "BUY", 3, product="CNC")
    orders = PaperOrder.objects.count()
    cash = cash_of(client)
    with pytest.raises(engine.InputException) as error:
        place(client, "SELL", 4, product="CNC")
    assert error.value.kind == "input"
    assert error.value.message.startswith("Insufficient holding of INFY for a CNC sell of 4: 3 held")
    assert PaperOrder.objects.count() == orders and cash_of(client) == cash


def test_a_cnc_sell_with_no_holding_is_refused_even_with_cash(client):
    with pytest.raises(engine.InputException, match="Insufficient holding of INFY for a CNC sell"):
        place(client, "SELL", 1, product="CNC")
    assert not PaperOrder.objects.exists()


def test_a_cnc_sell_of_held_shares_needs_no_funds(client):
    place(client, "BUY", 3, product="CNC")
    set_cash(client, "0")
    assert place(client, "SELL", 3, product="CNC").status == Status.COMPLETE


def test_cnc_sells_of_held_shares_may_rest_side_by_side_but_not_grow_beyond_them(client):
    place(client, "BUY", 3, product="CNC")
    resting = place(client, "SELL", 2, product="CNC", price="1550")
    assert place(client, "SELL", 3, product="CNC", price="1560").status == Status.OPEN
    with pytest.raises(engine.InputException, match="Insufficient holding"):
        engine.order_modify(client=client, order_id=resting.order_id, quantity=4)


def test_a_sell_costs_one_query_like_a_buys_funds_check(client):
    place(client, "BUY", 5)

    def queries(side):
        with CaptureQueriesContext(connection) as captured:
            assert place(client, side, 1).status == Status.COMPLETE
        return len(captured.captured_queries)

    assert queries("SELL") == queries("BUY")
