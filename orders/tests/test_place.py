"""order_place, modify and cancel against the paper exchange."""

import threading
import time as clock
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

import kombu.exceptions
import pytest
import redis
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from accounts import services as account_services
from accounts.tests.factories import make_broker_account
from brokers import markets, ratelimit
from brokers.client import AccountBroker
from brokers.models import Instrument
from brokers.paper import engine
from brokers.paper.adapter import PaperBroker
from brokers.paper.models import PaperClient, PaperOrder
from monitoring import cycle, presence
from monitoring.tasks import monitor_account
from orders import services
from orders.models import Order, OrderEvent
from orders.tests.factories import nrml_on_equity_as_taken_before, place
from portfolio.models import Position
from tradingplatform.testing import requires_redis

D = Decimal


def events(order):
    return list(order.events.values_list("kind", flat=True))


def knobs(account, **values):
    engine.client_get_or_create(user_id=account.client_id)
    PaperClient.objects.filter(user_id=account.client_id).update(**values)


def test_market_order_is_sent_with_its_reference_as_tag_and_fills(trader, account):
    order = place(trader, account, quantity=2)
    # The exchange's answer says it filled on arrival: recorded with the move to SUBMITTED, in one commit.
    assert order.status == Order.Status.FILLED and order.broker_order_id
    assert order.filled_quantity == 2 and order.average_price > 0
    assert order.reference == f"{services.trading_date():%y%m%d}A{account.pk}N000001"
    assert PaperOrder.objects.get(order_id=order.broker_order_id).tag == order.reference
    assert events(order) == ["created", "submitted", "filled"]
    assert "paper exchange's answer" in order.events.last().cause.lower()
    assert services.orders_sync_account(account=account) == 0  # the reconciliation finds nothing to change


def test_an_ioc_order_that_does_not_cross_is_cancelled_at_once(trader, account):
    """Immediate or cancel: a LIMIT BUY below the market is not left resting (nor blocking funds)."""
    order = place(trader, account, quantity=3, order_type="LIMIT", price="1300", validity="IOC")
    assert (order.status, order.filled_quantity) == (Order.Status.CANCELLED, 0)
    assert services.orders_sync_account(account=account) == 0


def test_references_count_up_per_account_and_day(trader, account):
    other = make_broker_account(trader, broker="paper", client_id="PAPER-O2")
    refs = [place(trader, account).reference, place(trader, other).reference, place(trader, account).reference]
    assert [ref[-7:] for ref in refs] == ["N000001", "N000001", "N000002"]


def test_an_account_id_past_six_digits_still_gets_a_reference_kite_takes_as_its_tag():
    """The reference is the broker's tag: at most 20 alphanumerics (Kite's rule, the paper face's
    too, and the column's). ``YYMMDD`` + ``A<account>`` + ``N<six-digit number>`` fits only up to
    account 999,999: the next account's references were 21 characters, too long for the column (a
    500 on MySQL: "Data too long for column 'reference'") and for the tag (every order refused).
    The number's zeros make way for the account's digits instead. (Accounts not saved: a row at
    such an id would move MySQL's auto-increment for every later test.)"""
    from accounts.models import BrokerAccount

    day = services.trading_date()
    big = BrokerAccount(pk=1_234_567)
    references = [services.reference_for(big, day, number) for number in (1, 2, 99_999)]
    assert references == [f"{day:%y%m%d}A1234567N{n}" for n in ("00001", "00002", "99999")]
    assert all(len(reference) <= 20 and reference.isalnum() for reference in references)
    assert services.reference_for(BrokerAccount(pk=12_345_678), day, 1) == f"{day:%y%m%d}A12345678N0001"
    assert services.reference_for(BrokerAccount(pk=999_999), day, 1) == f"{day:%y%m%d}A999999N000001"  # as before


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"quantity": 0}, "quantity"),
        ({"quantity": "x"}, "quantity"),
        ({"symbol": "NIFTY26DECFUT", "exchange": "NFO", "product": "NRML", "quantity": 10}, "quantity"),
        ({"order_type": "LIMIT", "price": "1500.03"}, "price"),
        ({"order_type": "LIMIT"}, "price"),
        ({"order_type": "MARKET", "price": "1500"}, "price"),
        ({"order_type": "SL-M"}, "trigger_price"),
        ({"order_type": "SL", "price": "1490", "trigger_price": "1500"}, "price"),
        ({"order_type": "SL-M", "trigger_price": "1500.07"}, "trigger_price"),
        ({"side": "HOLD"}, "side"),
        ({"order_type": "STOP"}, "order_type"),
        ({"product": "XYZ"}, "product"),
        ({"symbol": "NIFTY26DECFUT", "exchange": "NFO", "product": "CNC", "quantity": 75}, "product"),
        ({"product": "NRML"}, "product"),  # carry forward is for derivatives: no overnight equity short
        ({"price": "abc", "order_type": "LIMIT"}, "price"),
        ({"symbol": "NIFTY26NOVFUT", "exchange": "NFO", "product": "NRML", "quantity": 75}, "instrument"),  # expired
    ],
)
def test_bad_input_names_the_field_and_sends_nothing(trader, account, kwargs, field):
    with pytest.raises(ValidationError) as error:
        place(trader, account, **kwargs)
    assert field in error.value.message_dict
    assert not Order.objects.exists() and not PaperOrder.objects.exists()


@pytest.mark.parametrize(
    "side, trigger, percent, price",
    [
        ("SELL", "240.05", "3", "232.80"),  # 232.8485: the tick under it, away from the trigger
        ("BUY", "240.05", "3", "247.30"),  # 247.2515: the tick over it
        ("SELL", "1.00", "1", "0.95"),  # a band under a tick: one tick beyond the trigger
        ("BUY", "1.00", "1", "1.05"),
        ("SELL", "0.05", "3", "0.05"),  # never under one tick (a price above 0)
    ],
)
def test_a_stop_limits_price_is_the_protection_band_beyond_its_trigger(
    instruments, settings, side, trigger, percent, price
):
    settings.STOP_LIMIT_PROTECTION_PERCENT = D(percent)
    option = Instrument.objects.get(exchange="NFO", tradingsymbol="NIFTY26DEC26000PE")
    terms = services.stop_loss_terms(option, side, D(trigger))
    assert terms == {"order_type": "SL", "trigger_price": D(trigger), "price": D(price)}
    future = Instrument.objects.get(exchange="NFO", tradingsymbol="NIFTY26DECFUT")
    assert services.stop_loss_terms(future, side, D("26000"))["order_type"] == "SL-M"  # futures keep SL-M


@pytest.mark.parametrize(
    "side, trigger, circuit, price",
    [
        ("SELL", "202.55", ("200", "300"), "200.00"),  # the band's 196.45 is under the lower limit
        ("SELL", "200.00", ("200", "300"), "200.00"),  # at the limit: the limit is the trigger
        ("SELL", "202.55", ("199.98", "300"), "200.00"),  # a limit off the tick: the tick inside it
        ("SELL", "240.05", ("200", "300"), "232.80"),  # inside: the band as it is
        ("BUY", "297.45", ("200", "300"), "300.00"),  # the band's 306.40 is over the upper limit
        ("BUY", "297.45", ("200", "300.03"), "300.00"),
        ("BUY", "297.45", None, "306.40"),  # limits not known: the band as it is
    ],
)
def test_a_stop_limits_price_is_held_inside_the_circuit_limits(instruments, settings, side, trigger, circuit, price):
    settings.STOP_LIMIT_PROTECTION_PERCENT = D("3")
    option = Instrument.objects.get(exchange="NFO", tradingsymbol="NIFTY26DEC26000PE")
    circuit = tuple(D(limit) for limit in circuit) if circuit else None
    terms = services.stop_loss_terms(option, side, D(trigger), circuit)
    assert terms == {"order_type": "SL", "trigger_price": D(trigger), "price": D(price)}


@pytest.mark.parametrize("side, trigger", [("SELL", "199.95"), ("BUY", "300.05")])
def test_a_stop_limit_whose_trigger_is_outside_the_circuit_limits_is_refused_naming_the_trigger(
    instruments, side, trigger
):
    option = Instrument.objects.get(exchange="NFO", tradingsymbol="NIFTY26DEC26000PE")
    with pytest.raises(ValidationError) as refused:
        services.stop_loss_terms(option, side, D(trigger), (D("200"), D("300")))
    assert "circuit limits 200 - 300" in refused.value.message_dict["trigger_price"][0]


@pytest.mark.parametrize(
    "terms, circuit, field",
    [
        ({"price": D("1875.10")}, ("1200", "1800"), "price"),  # a take-profit over the upper limit
        ({"price": D("1124.90")}, ("1200", "1800"), "price"),  # a short's under the lower one
        ({"trigger_price": D("1125.10")}, ("1200", "1800"), "trigger_price"),  # an SL-M's trigger
        ({"price": D("1800.10")}, ("1200", "1800.07"), "price"),  # a limit off the tick: the tick inside it
        ({"price": D("1800.00")}, ("1200", "1800"), None),  # at the limit: taken
        ({"price": D("1875.10"), "trigger_price": None}, None, None),  # limits not known: nothing refused
    ],
)
def test_an_exit_outside_the_circuit_limits_is_refused_naming_its_field(instruments, terms, circuit, field):
    infy = Instrument.objects.get(exchange="NSE", tradingsymbol="INFY")
    circuit = tuple(D(limit) for limit in circuit) if circuit else None
    if field is None:
        services.exit_in_circuit_check(infy, circuit=circuit, **terms)
        return
    with pytest.raises(ValidationError) as refused:
        services.exit_in_circuit_check(infy, circuit=circuit, **terms)
    assert list(refused.value.message_dict) == [field]
    assert f"outside today's circuit limits {circuit[0]} - {circuit[1]}" in refused.value.message_dict[field][0]


@pytest.mark.parametrize(
    "side, price, expected",
    [
        ("SELL", D("1125.00"), D("1200.00")),  # a long's target the market went past: at the lower limit
        ("BUY", D("1875.00"), D("1800.00")),  # a short's: at the upper limit
        ("SELL", D("1500.00"), D("1500.00")),  # inside them: the trader's
        ("SELL", D("1875.00"), None),  # a long's target over the upper limit: out of the market's reach
        ("BUY", D("1125.00"), None),  # a short's under the lower limit
    ],
)
def test_a_take_profit_the_market_went_past_beyond_the_circuit_limits_goes_at_the_limit(
    instruments, side, price, expected
):
    infy = Instrument.objects.get(exchange="NSE", tradingsymbol="INFY")
    circuit = (D("1200"), D("1800"))
    if expected is not None:
        assert services.take_profit_in_circuit(infy, side, price, circuit) == expected
        return
    with pytest.raises(ValidationError) as refused:
        services.take_profit_in_circuit(infy, side, price, circuit)
    assert list(refused.value.message_dict) == ["price"]
    assert services.take_profit_in_circuit(infy, side, price, None) == price  # limits not known


def test_risk_limits(trader, account):
    account_services.broker_account_update(
        account=account, actor=trader, max_quantity=10, max_order_value=D("20000"), allowed_products=["MIS"]
    )
    account.refresh_from_db()
    with pytest.raises(ValidationError, match="limit of 10"):
        place(trader, account, quantity=11)
    with pytest.raises(ValidationError, match="Order value"):
        place(trader, account, quantity=10, order_type="LIMIT", price="2500")
    with pytest.raises(ValidationError, match="not allowed"):
        place(trader, account, product="CNC")
    assert not PaperOrder.objects.exists()


def test_a_kite_accounts_market_order_is_valued_at_kites_price_not_the_paper_exchanges(trader, kite_on_face):
    """The instruments' last prices are the paper exchange's ticker's, a random walk of its own: a
    Kite account's MARKET order was valued at it against the order value limit. With INFY at 1500
    at Kite and 1000 on the paper ticker, 100 shares (150000) passed a limit of 120000."""
    from brokers import services as broker_services
    from brokers.base import Quote

    account = kite_on_face
    account_services.broker_account_update(account=account, actor=trader, max_order_value=D("120000"))
    account.refresh_from_db()
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=D("1500"))  # Kite's market (its face)
    broker_services.ticks_apply([Quote("NSE", "INFY", 1, D("1000"), None, None, D("1000"), 0, None)])  # paper's
    with pytest.raises(ValidationError, match="Order value 150000.00") as refused:
        place(trader, account, quantity=100)
    assert "quantity" in refused.value.message_dict
    with pytest.raises(ValidationError, match="Order value 150000.00"):  # a SELL LIMIT below it fills at it
        place(trader, account, side="SELL", quantity=100, order_type="LIMIT", price="1100")
    assert not Order.objects.exists() and not PaperOrder.objects.exists()
    assert place(trader, account, quantity=80).status != Order.Status.REJECTED  # 120000 at Kite's price: within it


def test_a_kite_accounts_market_orders_moments_apart_ask_its_price_once(trader, kite_on_face, monkeypatch):
    """Kite answers one quote call a second: a basket's or a scheduled time's MARKET orders in one
    instrument, each asking its price for the order value limit, waited a second each. The price is
    kept ``BROKER_PRICE_KEEP_S``: asked once, and asked again once that is past."""
    from brokers import selectors
    from tradingplatform import memo

    account = kite_on_face
    account_services.broker_account_update(account=account, actor=trader, max_order_value=D("1000000"))
    account.refresh_from_db()
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=D("1500"))
    asked, ltp = [], AccountBroker.ltp
    monkeypatch.setattr(AccountBroker, "ltp", lambda broker, keys: asked.append(keys) or ltp(broker, keys))
    for _ in range(3):
        assert place(trader, account, quantity=1).status != Order.Status.REJECTED
    assert asked == [["NSE:INFY"]]
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=D("1510"))
    later = clock.monotonic() + selectors.BROKER_PRICE_KEEP_S + 1
    monkeypatch.setattr(memo, "time", SimpleNamespace(monotonic=lambda: later))  # the memos' clock only
    with pytest.raises(ValidationError, match="Order value 1002640.00"):  # at 1510, asked again (996000 at 1500)
        place(trader, account, quantity=664)
    assert len(asked) == 2


def test_a_sell_limit_below_the_market_is_valued_at_the_market_it_fills_at(trader, account):
    """A SELL LIMIT priced below the market crosses on arrival and fills at the market: 12 at a
    limit of 1300 with the last price at 1500 is an order worth 18000, as the same order at MARKET
    is. Valued at its limit (15600) it passed a limit of 16000 the MARKET order is refused by."""
    account_services.broker_account_update(account=account, actor=trader, max_order_value=D("16000"))
    account.refresh_from_db()
    with pytest.raises(ValidationError, match="Order value 18000.00") as market:
        place(trader, account, side="SELL", quantity=12)
    with pytest.raises(ValidationError, match="Order value 18000.00") as limit:
        place(trader, account, side="SELL", quantity=12, order_type="LIMIT", price="1300")
    assert "quantity" in market.value.message_dict and "quantity" in limit.value.message_dict
    assert not Order.objects.exists() and not PaperOrder.objects.exists()
    # Above the market it fills at its own price, and a BUY LIMIT never above it: each valued at its limit.
    assert place(trader, account, side="SELL", quantity=10, order_type="LIMIT", price="1590").status == "OPEN"
    assert place(trader, account, side="BUY", quantity=12, order_type="LIMIT", price="1300").status == "OPEN"


def test_a_sell_stop_loss_limit_is_valued_at_its_trigger_where_it_fills(trader, account):
    """A SELL SL's limit is at or below its trigger: once the price falls to the trigger it sells
    at the market there, not at its limit (as the exchange blocks funds for it). 12 triggered at
    1450 with a limit of 1300 is an order worth 17400, as the same order at SL-M is; valued at its
    limit (15600) it passed a limit of 16000 the SL-M is refused by."""
    account_services.broker_account_update(account=account, actor=trader, max_order_value=D("16000"))
    account.refresh_from_db()
    with pytest.raises(ValidationError, match="Order value 17400.00") as stop_market:
        place(trader, account, side="SELL", quantity=12, order_type="SL-M", trigger_price="1450")
    with pytest.raises(ValidationError, match="Order value 17400.00") as stop_limit:
        place(trader, account, side="SELL", quantity=12, order_type="SL", price="1300", trigger_price="1450")
    assert "quantity" in stop_market.value.message_dict and "quantity" in stop_limit.value.message_dict
    assert not Order.objects.exists() and not PaperOrder.objects.exists()
    # Within the limit at its trigger it is placed (and a BUY SL is still valued at its limit, above its trigger).
    stop = place(trader, account, side="SELL", quantity=10, order_type="SL", price="1300", trigger_price="1450")
    assert stop.status == "OPEN"
    with pytest.raises(ValidationError, match="Order value 16500.00"):
        place(trader, account, quantity=10, order_type="SL", price="1650", trigger_price="1550")


def test_an_exit_of_a_position_is_not_refused_by_the_order_value_limit(trader, account):
    """The order value limit caps what an order may open. A strategy's exit closes (part of) a
    position that passed it: a take-profit above the entry price, a short's stop above it, or a
    trail following the price up is worth more than the entry was, and must still be placed and
    moved, or the position is left without it."""
    account_services.broker_account_update(account=account, actor=trader, max_order_value=D("15500"))
    account.refresh_from_db()
    entry = place(trader, account, quantity=10)  # 10 x 1500 at the last price: within the limit
    assert entry.status == Order.Status.FILLED
    exit_terms = {"side": "SELL", "quantity": 10, "role": Order.Role.TAKE_PROFIT, "parent": entry, "source": "system"}
    target = place(trader, account, order_type="LIMIT", price="1600", **exit_terms)  # 16000
    assert target.status == Order.Status.OPEN
    services.order_modify(order=target, actor=trader, cause="test", price="1610")
    assert PaperOrder.objects.get(order_id=target.broker_order_id).price == D("1610")
    with pytest.raises(ValidationError, match="Order value"):  # an entry is still held to it
        place(trader, account, quantity=11)


def test_an_nrml_equity_position_held_from_before_the_rule_can_still_be_closed_and_its_orders_moved(trader, account):
    """NRML is refused on equity (no naked overnight short), but positions and orders of NRML on
    equity taken before that stay: closing one is a SELL NRML (a BUY NRML for a short), refused
    as NRML on equity it could not be closed in its product at all (a CNC sell has no holding to
    cover it, an MIS one opens a short beside it), and its resting stop could not be moved."""
    entry = nrml_on_equity_as_taken_before(trader, account)
    assert entry.status == Order.Status.FILLED
    cycle.account_monitor(account=account)  # its fill in the position (NRML, 10)
    assert Position.objects.get(account=account).product == "NRML"
    with pytest.raises(ValidationError) as more:  # NRML on equity opens nothing more
        place(trader, account, quantity=10, product="NRML")
    assert "product" in more.value.message_dict
    with pytest.raises(ValidationError) as past:  # nor a short past what it holds
        place(trader, account, side="SELL", quantity=11, product="NRML")
    assert "product" in past.value.message_dict
    stop = place(trader, account, side="SELL", quantity=4, product="NRML", order_type="SL-M", trigger_price="1450")
    assert stop.status == Order.Status.OPEN
    services.order_modify(order=stop, actor=trader, cause="test", trigger_price="1460")
    assert PaperOrder.objects.get(order_id=stop.broker_order_id).trigger_price == D("1460")
    with pytest.raises(ValidationError) as raised:  # raised past what it closes: held to the rule
        services.order_modify(order=stop, actor=trader, cause="test", quantity=20)
    assert "product" in raised.value.message_dict
    closed = place(trader, account, side="SELL", quantity=6, product="NRML")
    assert closed.status == Order.Status.FILLED and closed.product == "NRML"


def test_an_exit_raised_past_its_position_is_held_to_the_quantity_limit(trader, account):
    """An exit is spared the limits because it closes a position that passed them. Its quantity
    raised by hand past that position (a fat finger: 5000 for 50) would open one in the other
    direction when it triggers: that modify is held to the limits like any order that opens."""
    entry = place(trader, account, quantity=50)
    assert entry.status == Order.Status.FILLED
    account_services.broker_account_update(account=account, actor=trader, max_quantity=100)
    account.refresh_from_db()
    exit_terms = {"side": "SELL", "quantity": 50, "role": Order.Role.TAKE_PROFIT, "parent": entry, "source": "system"}
    target = place(trader, account, order_type="LIMIT", price="1600", **exit_terms)
    assert target.status == Order.Status.OPEN
    with pytest.raises(ValidationError, match="limit of 100"):
        services.order_modify(order=target, actor=trader, cause="test", quantity=5000)
    target.refresh_from_db()
    assert target.quantity == 50
    assert PaperOrder.objects.get(order_id=target.broker_order_id).quantity == 50
    services.order_modify(order=target, actor=trader, cause="test", quantity=40, price="1610")  # a cut: still spared


def test_max_open_orders(trader, account):
    account_services.broker_account_update(account=account, actor=trader, max_open_orders=2)
    account.refresh_from_db()
    place(trader, account, order_type="LIMIT", price="1400")
    place(trader, account, order_type="LIMIT", price="1400")
    with pytest.raises(ValidationError) as error:
        place(trader, account, order_type="LIMIT", price="1400")
    assert "account" in error.value.message_dict
    assert PaperOrder.objects.count() == 2
    # The rolled-back attempt gave its number back: the next order is N000003.
    account_services.broker_account_update(account=account, actor=trader, max_open_orders=5)
    account.refresh_from_db()
    assert place(trader, account).reference.endswith("N000003")


def test_an_exit_of_a_position_is_not_refused_by_the_open_orders_limit(trader, account):
    """The open orders limit caps how many orders a trader has working. A filled entry's stop-loss
    and take-profit protect a position already taken: refused at the limit (the trader's other
    entries resting), the position would be left unprotected. They are placed, and counted."""
    account_services.broker_account_update(account=account, actor=trader, max_open_orders=2)
    account.refresh_from_db()
    entry = place(trader, account, quantity=10)
    assert entry.status == Order.Status.FILLED
    place(trader, account, order_type="LIMIT", price="1400")
    place(trader, account, order_type="LIMIT", price="1400")  # at the limit
    exit_terms = {"side": "SELL", "quantity": 10, "parent": entry, "source": "system"}
    stop = place(trader, account, order_type="SL-M", trigger_price="1450", role=Order.Role.STOP_LOSS, **exit_terms)
    target = place(trader, account, order_type="LIMIT", price="1600", role=Order.Role.TAKE_PROFIT, **exit_terms)
    assert (stop.status, target.status) == (Order.Status.OPEN, Order.Status.OPEN)
    with pytest.raises(ValidationError, match="4 open orders"):  # an entry is still held to it
        place(trader, account, order_type="LIMIT", price="1400")


def test_someone_elses_or_an_inactive_account_is_refused(trader, other_trader, account):
    with pytest.raises(ValidationError, match="No such broker account"):
        place(other_trader, account)
    account_services.broker_account_set_active(account=account, actor=trader, active=False)
    account.refresh_from_db()
    with pytest.raises(ValidationError, match="deactivated"):
        place(trader, account)


def test_an_idempotency_key_returns_the_same_order(trader, account):
    first = place(trader, account, idempotency_key="k-1")
    again = place(trader, account, idempotency_key="k-1")
    assert again.pk == first.pk and PaperOrder.objects.count() == 1
    with pytest.raises(ValidationError) as error:
        place(trader, account, idempotency_key="k-1", quantity=5)
    assert "idempotency_key" in error.value.message_dict


def test_keys_are_per_trader(trader, other_trader, account):
    theirs = make_broker_account(other_trader, broker="paper", client_id="PAPER-X")
    mine = place(trader, account, idempotency_key="same")
    their_order = place(other_trader, theirs, idempotency_key="same")
    assert mine.pk != their_order.pk


def test_a_lost_answer_is_resolved_by_tag_and_placed_once(trader, account):
    knobs(account, timeout_rate=1)
    order = place(trader, account)
    assert PaperOrder.objects.filter(tag=order.reference).count() == 1
    assert order.broker_order_id == PaperOrder.objects.get(tag=order.reference).order_id
    # The look-up by tag found it filled on arrival: that is the answer, not "submitted".
    assert (order.status, order.filled_quantity) == (Order.Status.FILLED, 1)
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED
    assert events(order) == ["created", "submitted", "filled"]


def test_a_lost_answer_of_an_order_the_broker_rejected_answers_rejected_with_its_reason(trader, account):
    """The answer is lost, the look-up by tag finds the order refused (its price outside the band):
    the trader is told it was rejected and why (the ticket's "Placed" or the API's SUBMITTED was
    wrong), and nothing is sent again."""
    knobs(account, timeout_rate=1)
    order = place(trader, account, order_type="LIMIT", price="1000")
    assert PaperOrder.objects.filter(tag=order.reference).count() == 1
    for seen in (order, Order.objects.get(pk=order.pk)):
        assert seen.status == Order.Status.REJECTED
        assert seen.reject_kind == "price_band" and "price band" in seen.reject_reason
        assert seen.broker_order_id == PaperOrder.objects.get(tag=order.reference).order_id
    assert events(order) == ["created", "submitted", "rejected"]


def test_a_session_ended_before_a_lost_answer_is_looked_up_leaves_the_outcome_unknown(trader, kite_on_face, settings):
    """The answer to a Kite placement is lost, and the session ends (Kite's 06:00 expiry, a logout
    elsewhere) before the order is looked up by its tag: a login needs the trader, so the broker
    cannot be asked. The order may be there (it is): never FAILED, which says it is not, and which
    a trader would answer by placing it again."""
    settings.ORDER_LOOKUP_DELAY_S = 0
    client = PaperClient.objects.get(user_id=kite_on_face.client_id)
    PaperClient.objects.filter(pk=client.pk).update(timeout_rate=1)

    def session_ends(_seconds):
        PaperClient.objects.filter(pk=client.pk).update(timeout_rate=0)
        engine.session_expire_now(client=client)

    order = place(trader, kite_on_face, broker=AccountBroker(kite_on_face, sleep=session_ends))
    assert PaperOrder.objects.filter(tag=order.reference).count() == 1
    assert order.status == Order.Status.SUBMITTED and order.broker_order_id is None
    assert events(order) == ["created", "outcome_unknown"]


def test_an_order_not_sent_in_time_is_never_sent_after_a_sync_could_close_it(trader, account, settings, monkeypatch):
    """A sync closes a NEW order its broker does not have a minute after it was written (its sender
    stopped), and a strategy may then place it again. So a placer held up past its time (waiting
    for the rate budget here) does not send it at all: FAILED, and the broker never has it."""
    settings.BROKER_RATE_LIMITS = {"paper": {"orders": [(1, 1.0)]}}
    monkeypatch.setattr(services, "SEND_WITHIN_S", 0.3)
    first = place(trader, account)
    late = place(trader, account)  # waits about a second for the budget's next slot
    assert first.status == Order.Status.FILLED
    assert late.status == Order.Status.FAILED and "its time to be sent ran out" in late.reject_reason
    assert not PaperOrder.objects.filter(tag=late.reference).exists()


def test_an_order_over_the_rate_budget_for_longer_than_a_wait_fails_as_rate_limited(trader, account, settings):
    """An account whose order budget frees its next slot only in a minute: the order is refused by
    the rate budget (rate_limit, which a strategy may choose to retry), not said to have run out of
    time waiting (network): it was never kept waiting, the budget is what refused it."""
    settings.BROKER_RATE_LIMITS = {"paper": {"orders": [(1, 60.0)]}}
    first = place(trader, account)
    refused = place(trader, account)
    assert first.status == Order.Status.FILLED
    assert refused.status == Order.Status.FAILED
    assert refused.reject_kind == "rate_limit", refused.reject_reason
    assert not PaperOrder.objects.filter(tag=refused.reference).exists()


@requires_redis
def test_an_order_whose_rate_budget_cannot_be_checked_fails_unsent_not_maybe_sent(trader, account, monkeypatch):
    """The budget is taken before the broker is called: when its Redis cannot be reached the order
    was certainly not sent. FAILED, saying why, not SUBMITTED with its outcome "unknown" (looked up
    by its tag a minute later, while the trader takes it for sent)."""
    place(trader, account)  # logged in
    monkeypatch.setattr(ratelimit, "redis_client", lambda: redis.Redis(port=1, socket_connect_timeout=1))
    order = place(trader, account, broker=AccountBroker(account, sleep=lambda _seconds: None))
    assert order.status == Order.Status.FAILED and order.broker_order_id is None
    assert "rate budget" in order.reject_reason
    assert events(order) == ["created", "failed"]
    assert not PaperOrder.objects.filter(tag=order.reference).exists()


def test_an_unreachable_broker_leaves_an_unknown_outcome_that_reconciles(trader, account):
    knobs(account, error_rate=1)
    order = place(trader, account)
    assert order.status == Order.Status.SUBMITTED and order.broker_order_id is None
    assert events(order) == ["created", "outcome_unknown"]
    knobs(account, error_rate=0)
    lost_at = _stale_today()  # written and its answer lost then
    Order.objects.filter(pk=order.pk).update(created_at=lost_at, updated_at=lost_at)
    services.orders_sync_account(account=account)
    order.refresh_from_db()
    assert order.status == Order.Status.FAILED and "not at the broker" in order.reject_reason
    assert not PaperOrder.objects.exists()


@pytest.mark.parametrize("away", ["push", "queue"])
@pytest.mark.django_db(transaction=True)
def test_redis_away_for_a_moment_does_not_turn_a_placed_order_into_an_error(trader, account, monkeypatch, away):
    """Redis out for a moment when the broker's answer comes: the order is at the broker and
    recorded, and the placement answers it, not an error (a 500 a trader would answer by placing it
    again). The same for a cancel. ``push``: Redis says whether the trader has a page open to push
    the order to. ``queue``: at a broker that tells nothing of what became of an order (Kite), each
    placement and cancel queues its account's run through Celery's broker; the cycle runs it anyway."""
    if away == "push":

        def down(_user_ids):
            raise redis.exceptions.ConnectionError("Error 111 connecting to redis")

        monkeypatch.setattr(presence, "watching", down)
    else:

        def down(*args, **kwargs):
            raise kombu.exceptions.OperationalError("Error 111 connecting to redis")

        monkeypatch.setattr(PaperBroker, "tells_order_updates", False)
        monkeypatch.setattr(monitor_account, "apply_async", down)
    order = place(trader, account, quantity=2)
    assert order.status == Order.Status.FILLED and order.broker_order_id
    assert PaperOrder.objects.filter(tag=order.reference).count() == 1
    resting = place(trader, account, order_type="LIMIT", price="1400")
    assert resting.status == Order.Status.OPEN
    services.order_cancel(order=resting, actor=trader, cause="test")
    assert resting.status == Order.Status.CANCELLED


def test_broker_rejections_are_recorded_with_their_kind(trader, account):
    banded = place(trader, account, order_type="LIMIT", price="2500")
    assert banded.status == Order.Status.REJECTED and banded.reject_kind == "price_band"
    PaperClient.objects.filter(user_id=account.client_id).update(cash=D("100"))
    poor = place(trader, account, quantity=1)
    assert poor.status == Order.Status.REJECTED and poor.reject_kind == "funds"
    assert "Insufficient funds" in poor.reject_reason


def test_modify_and_cancel_a_resting_order(trader, account):
    order = place(trader, account, order_type="LIMIT", price="1400", quantity=2)
    services.order_modify(order=order, actor=trader, cause="test", price="1401.5", quantity=3)
    at_broker = PaperOrder.objects.get(order_id=order.broker_order_id)
    assert at_broker.price == D("1401.5") and at_broker.quantity == 3
    order.refresh_from_db()
    assert order.price == D("1401.5") and order.quantity == 3 and "modified" in events(order)
    services.order_cancel(order=order, actor=trader, cause="test")
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    assert PaperOrder.objects.get(order_id=order.broker_order_id).status == "CANCELLED"


def test_modify_refuses_bad_values_without_touching_the_broker(trader, account):
    order = place(trader, account, order_type="LIMIT", price="1400")
    with pytest.raises(ValidationError) as error:
        services.order_modify(order=order, actor=trader, cause="test", price="1400.01")
    assert "price" in error.value.message_dict
    assert PaperOrder.objects.get(order_id=order.broker_order_id).price == D("1400")


def test_cancelling_a_filled_order_is_refused_and_reconciles(trader, account):
    order = place(trader, account)
    with pytest.raises(services.OrderActionRefused):
        services.order_cancel(order=order, actor=trader, cause="test")
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED


def test_another_trader_cannot_modify_or_cancel(trader, other_trader, account):
    order = place(trader, account, order_type="LIMIT", price="1400")
    with pytest.raises(services.OrderActionRefused):
        services.order_cancel(order=order, actor=other_trader, cause="test")
    with pytest.raises(services.OrderActionRefused):
        services.order_modify(order=order, actor=other_trader, cause="test", price="1401")
    assert PaperOrder.objects.get(order_id=order.broker_order_id).status == "OPEN"


def test_events_are_append_only(trader, account):
    event = place(trader, account).events.first()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        OrderEvent.objects.update(kind="x")


@pytest.mark.django_db(transaction=True)
def test_concurrent_placement_gives_unique_gap_free_references(trader, instruments):
    account = make_broker_account(trader, broker="paper", client_id="PAPER-C1")
    account_services.broker_account_update(account=account, actor=trader)
    refs, errors = [], []
    barrier = threading.Barrier(8)

    def worker():
        try:
            barrier.wait()
            for _ in range(4):
                refs.append(place(trader, account, order_type="LIMIT", price="1400").reference)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    numbers = sorted(int(ref.split("N")[-1]) for ref in refs)
    assert numbers == list(range(1, 33))
    assert PaperOrder.objects.count() == 32


@pytest.mark.django_db(transaction=True)
def test_one_key_from_two_clients_at_once_places_one_order(trader, instruments):
    account = make_broker_account(trader, broker="paper", client_id="PAPER-C2")
    results, barrier = [], threading.Barrier(2)

    def worker():
        try:
            barrier.wait()
            results.append(place(trader, account, idempotency_key="dup").pk)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results) == 2
    assert PaperOrder.objects.count() == 1 and Order.objects.count() == 1


def test_a_repeat_key_returns_the_order_even_after_the_account_changed(trader, account):
    first = place(trader, account, idempotency_key="k-2")
    account_services.broker_account_set_active(account=account, actor=trader, active=False)
    account.refresh_from_db()
    assert place(trader, account, idempotency_key="k-2").pk == first.pk
    with pytest.raises(ValidationError, match="deactivated"):
        place(trader, account, idempotency_key="k-3")


def test_a_modify_that_fills_the_order_at_once_is_recorded_as_made(trader, account, monkeypatch):
    """Modified to MARKET, a resting order fills as the broker takes the change; the fill can be
    recorded before the change is: the order is still the changed one, filled, with its event."""
    modify = AccountBroker.modify_order

    def modify_then_fill_recorded(self, broker_order_id, change):
        modify(self, broker_order_id, change)  # the exchange fills it on arrival ...
        services.orders_sync_account(account=account, cause="the fill's update")  # ... told first

    order = place(trader, account, order_type="LIMIT", price="1400", quantity=2)
    monkeypatch.setattr(AccountBroker, "modify_order", modify_then_fill_recorded)
    changed = services.order_modify(order=order, actor=trader, cause="test", order_type="MARKET")
    assert changed.status == Order.Status.FILLED and changed.filled_quantity == 2
    assert changed.order_type == "MARKET" and changed.price is None
    assert events(changed)[-1] == "modified"
    assert PaperOrder.objects.get(order_id=order.broker_order_id).status == "COMPLETE"


def test_a_modify_refuses_a_price_its_order_type_takes_none_of(trader, account):
    order = place(trader, account, order_type="LIMIT", price="1400")
    with pytest.raises(ValidationError) as error:
        services.order_modify(order=order, actor=trader, cause="test", trigger_price="1390")
    assert error.value.message_dict == {"trigger_price": ["A LIMIT order takes no trigger price."]}
    with pytest.raises(ValidationError, match="A MARKET order takes no price"):
        services.order_modify(order=order, actor=trader, cause="test", order_type="MARKET", price="1401")
    order.refresh_from_db()
    assert order.order_type == "LIMIT" and "modified" not in events(order)


def test_a_placement_overtaken_by_reconciliation_answers_with_the_order_as_it_is(trader, account):
    # Under load an earlier order's sync can find this one at the broker by its tag (filled)
    # between the broker's answer and our move to SUBMITTED; the answer must not say NEW.
    class ReconciledMeanwhile(AccountBroker):
        def place_order(self, request, **options):
            placed = super().place_order(request, **options)
            services.orders_sync_account(account=account, cause="an earlier order's sync")
            return placed

    order = place(trader, account, quantity=2, broker=ReconciledMeanwhile(account))
    assert order.status == Order.Status.FILLED and order.broker_order_id and order.filled_quantity == 2
    assert events(order) == ["created", "filled"]
    assert PaperOrder.objects.filter(tag=order.reference).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_replay_while_the_first_request_is_sending_answers_with_the_brokers_word(trader, instruments):
    """A client retrying while its first request still waits on a slow broker gets the order as the
    broker answered it, not NEW without a broker id."""
    account = make_broker_account(trader, broker="paper", client_id="PAPER-R1")
    account_services.broker_account_update(account=account, actor=trader)
    PaperClient.objects.filter(user_id=account.client_id).update(latency_ms=600)
    first = []

    def send():
        try:
            first.append(place(trader, account, idempotency_key="slow-1"))
        finally:
            connection.close()

    thread = threading.Thread(target=send)
    thread.start()
    deadline = clock.monotonic() + 10
    while not Order.objects.filter(idempotency_key__endswith="slow-1").exists() and clock.monotonic() < deadline:
        clock.sleep(0.01)
    again = place(trader, account, idempotency_key="slow-1")
    thread.join()
    assert again.replayed and again.pk == first[0].pk
    assert again.status == Order.Status.FILLED and again.broker_order_id == first[0].broker_order_id
    assert PaperOrder.objects.count() == 1


class _SenderDied(BaseException):
    """The placing process stopped (killed, its pod evicted) at this point."""


@pytest.mark.django_db(transaction=True)
def test_a_retry_of_an_order_whose_sender_died_after_the_broker_had_it_answers_with_the_brokers_word(
    trader, instruments, settings
):
    """The sender stopped after the exchange took the order and before it recorded the answer: the
    row is still NEW. The client's retry (same key) gets the order as the exchange has it (filled,
    with its id), not NEW, which says it was never sent; and it is not sent again."""
    settings.REPLAY_WAIT_S = 0.1
    account = make_broker_account(trader, broker="paper", client_id="PAPER-R2")
    account_services.broker_account_update(account=account, actor=trader)

    class DiesAfterSending(AccountBroker):
        def place_order(self, request, **options):
            super().place_order(request, **options)
            raise _SenderDied

    with pytest.raises(_SenderDied):
        place(trader, account, quantity=2, idempotency_key="died-1", broker=DiesAfterSending(account))
    again = place(trader, account, quantity=2, idempotency_key="died-1")
    at_exchange = PaperOrder.objects.get()
    assert again.replayed and at_exchange.tag == again.reference
    assert (again.status, again.broker_order_id) == (Order.Status.FILLED, at_exchange.order_id)
    assert again.filled_quantity == 2


def _stale_today():
    """A time written more than ``UNSENT_STALE_S`` ago, on today's trading date: an order written
    on an earlier day is closed with its day instead (``_closed_with_its_day``), so in the first
    minute after midnight in India this waits that minute out."""
    ago = timedelta(seconds=services.UNSENT_STALE_S + 1)
    while markets.trading_date(timezone.now() - ago) != markets.trading_date():
        clock.sleep(1)
    return timezone.now() - ago


def _sender_died_before_sending(trader, client_id: str, key: str):
    """A new paper account whose order (``key``) was written, its sender stopping before the call."""
    account = make_broker_account(trader, broker="paper", client_id=client_id)
    account_services.broker_account_update(account=account, actor=trader)

    class DiesBeforeSending(AccountBroker):
        def place_order(self, request, **options):
            raise _SenderDied

    with pytest.raises(_SenderDied):
        place(trader, account, idempotency_key=key, broker=DiesBeforeSending(account))
    return account


@pytest.mark.django_db(transaction=True)
def test_a_retry_of_an_order_whose_sender_died_before_sending_it_does_not_send_it(trader, instruments, settings):
    """The sender stopped after writing the row, before the call: the retry cannot tell it from a
    slow sender, so it does not send it (twice, maybe): NEW, and the sync closes it a minute on."""
    settings.REPLAY_WAIT_S = 0.1
    account = _sender_died_before_sending(trader, "PAPER-R3", "died-2")
    again = place(trader, account, idempotency_key="died-2")
    assert again.replayed and (again.status, again.broker_order_id) == (Order.Status.NEW, None)
    assert not PaperOrder.objects.exists()
    Order.objects.filter(pk=again.pk).update(created_at=_stale_today())
    services.orders_sync_account(account=account)
    last = place(trader, account, idempotency_key="died-2")
    assert (last.status, last.reject_kind) == (Order.Status.FAILED, "network") and not PaperOrder.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_retry_a_minute_after_its_sender_died_before_sending_answers_never_sent(trader, instruments, settings):
    """Written over a minute ago, never sent, and not at the broker when the retry looks: no sender
    is on its way (one sends within SEND_WITHIN_S), so the retry closes it as the sync would and
    answers FAILED, never sent (the client places it again with a new key), not NEW; still not sent."""
    settings.REPLAY_WAIT_S = 0.1
    account = _sender_died_before_sending(trader, "PAPER-R4", "died-3")
    Order.objects.update(created_at=_stale_today())
    again = place(trader, account, idempotency_key="died-3")
    assert again.replayed and (again.status, again.reject_kind) == (Order.Status.FAILED, "network")
    assert again.reject_reason == services.NEVER_SENT and not PaperOrder.objects.exists()
    assert place(trader, account, idempotency_key="died-3").status == Order.Status.FAILED


@pytest.mark.django_db(transaction=True)
def test_a_retry_on_a_later_day_of_an_order_whose_sender_died_sends_to_the_days_history(trader, instruments, settings):
    """A day later the broker may have taken it that day and list today's orders only (Kite): not
    found is no proof it was never sent. Closed as the sync closes such an order: FAILED, pointing
    to that day's history, not "never reached the broker"."""
    settings.REPLAY_WAIT_S = 0.1
    account = _sender_died_before_sending(trader, "PAPER-R5", "died-4")
    Order.objects.update(created_at=timezone.now() - timedelta(days=1))
    again = place(trader, account, idempotency_key="died-4")
    assert again.replayed and again.status == Order.Status.FAILED
    assert "answer never came on" in again.reject_reason and again.reject_reason != services.NEVER_SENT


@pytest.mark.django_db(transaction=True)
def test_a_retry_just_after_midnight_of_an_order_its_sender_may_still_send_is_not_closed(
    trader, instruments, settings, monkeypatch
):
    """Written seconds before midnight, not at the broker yet when the retry looks just after it:
    its sender may still be sending it (it sends within SEND_WITHIN_S), as the sync knows (it closes
    an earlier day's order only once it is a minute old). The retry answers NEW, not FAILED ("its
    answer never came"), which the client would answer by placing it again; the sender then lands it."""
    settings.REPLAY_WAIT_S = 0.1
    account = _sender_died_before_sending(trader, "PAPER-R6", "midnight-1")
    Order.objects.update(created_at=timezone.now() - timedelta(seconds=10))
    midnight, real = timezone.now() - timedelta(seconds=5), services.trading_date
    monkeypatch.setattr(
        services, "trading_date", lambda when=None: real(when) - timedelta(days=(when or midnight) < midnight)
    )
    again = place(trader, account, idempotency_key="midnight-1")
    assert again.replayed and (again.status, again.broker_order_id) == (Order.Status.NEW, None)
    sent = services.order_submit(order=Order.objects.get(pk=again.pk), cause="its sender, on its way")
    assert sent.status == Order.Status.FILLED and PaperOrder.objects.get().tag == sent.reference
