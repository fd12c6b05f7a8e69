"""Kite's order rules as the paper exchange's Kite face enforces them, so a platform call that
real Kite would refuse fails our own tests: market protection, the tag's length, and the
postback Kite sends for a partial fill."""

from datetime import date
from decimal import Decimal

import pytest
from django.contrib.auth.hashers import make_password
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_errors

from accounts.tests.factories import make_kite_account
from brokers.base import Status
from brokers.kite.adapter import to_order
from brokers.paper import engine, kite_format
from brokers.paper.models import PaperClient, PaperOrder
from orders.services import reference_for

ORDER = dict(variety="regular", exchange="NSE", tradingsymbol="INFY", quantity=1, product="MIS")


@pytest.fixture
def kite(face_url):
    """The official Kite client, logged in at the face."""
    exchange_client = PaperClient.objects.create(user_id="AB1234", password=make_password("pw-123456"))
    _, request_token = engine.login_with_password(
        api_key=exchange_client.api_key, user_id="AB1234", password="pw-123456"
    )
    kite = KiteConnect(api_key=exchange_client.api_key, root=face_url)
    kite.set_access_token(kite.generate_session(request_token, api_secret=exchange_client.api_secret)["access_token"])
    return kite


@pytest.mark.parametrize(
    ("order_type", "fields"), [("MARKET", {}), ("SL-M", {"trigger_price": 1500})], ids=["MARKET", "SL-M"]
)
@pytest.mark.parametrize("protection", [None, 0], ids=["missing", "zero"])
def test_the_face_refuses_market_and_stop_market_orders_without_market_protection(kite, order_type, fields, protection):
    with pytest.raises(kite_errors.InputException, match="without market protection") as error:
        kite.place_order(transaction_type="BUY", order_type=order_type, market_protection=protection, **fields, **ORDER)
    assert error.value.code == 400
    assert not PaperOrder.objects.exists()


def test_the_face_takes_market_protection_and_limit_orders_without_it(kite):
    kite.place_order(transaction_type="BUY", order_type="MARKET", market_protection=-1, **ORDER)
    kite.place_order(transaction_type="SELL", order_type="SL-M", trigger_price=1400, market_protection=5, **ORDER)
    resting = kite.place_order(transaction_type="BUY", order_type="LIMIT", price=1400, **ORDER)
    with pytest.raises(kite_errors.InputException, match="Invalid `market_protection`"):
        kite.place_order(transaction_type="BUY", order_type="MARKET", market_protection=101, **ORDER)
    assert [o["status"] for o in kite.orders()] == ["COMPLETE", "TRIGGER PENDING", "OPEN"]
    with pytest.raises(kite_errors.InputException, match="without market protection"):
        kite.modify_order(variety="regular", order_id=resting, order_type="MARKET")
    assert kite.order_history(resting)[-1]["status"] == "OPEN"
    kite.modify_order(variety="regular", order_id=resting, order_type="MARKET", market_protection=-1)
    assert kite.order_history(resting)[-1]["status"] == "COMPLETE"


@pytest.mark.parametrize("protection", ["sNaN", "NaN", "Infinity", "abc"])
def test_a_market_protection_that_is_no_number_is_an_input_error_naming_it(kite, protection):
    """A signalling NaN cannot even be compared (comparing it raises): the face answered a 500
    page, which a Kite client cannot read, where Kite answers an InputException naming the field."""
    for call in (
        lambda: kite.place_order(transaction_type="BUY", order_type="MARKET", market_protection=protection, **ORDER),
        lambda: kite.place_order(
            transaction_type="SELL", order_type="SL-M", trigger_price=1400, market_protection=protection, **ORDER
        ),
    ):
        with pytest.raises(kite_errors.InputException, match="Invalid `market_protection`") as error:
            call()
        assert error.value.code == 400
    assert not PaperOrder.objects.exists()


def test_the_face_refuses_a_tag_longer_than_kites_20_characters(kite):
    with pytest.raises(kite_errors.InputException, match="20 characters"):
        kite.place_order(transaction_type="BUY", order_type="LIMIT", price=1400, tag="A" * 21, **ORDER)
    kite.place_order(transaction_type="BUY", order_type="LIMIT", price=1400, tag="A" * 20, **ORDER)
    assert list(PaperOrder.objects.values_list("tag", flat=True)) == ["A" * 20]


def test_the_platforms_order_references_fit_kites_tag_rule(trader):
    account = make_kite_account(trader, client_id="AB1234")
    account.pk = 999_999  # the last account id whose references fit
    longest = reference_for(account, date(2026, 12, 31), 999_999)
    assert len(longest) <= 20 and longest.isalnum()


def test_a_partial_fill_is_posted_back_as_update_and_read_as_partly_filled(kite_client_with_order):
    order = kite_client_with_order
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=Decimal("1390"), tick_volume=4)
    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == ("OPEN", 4)
    body = kite_format.postback(order)
    assert body["status"] == "UPDATE"
    state = to_order(body)
    assert (state.status, state.filled_quantity) == (Status.PARTIALLY_FILLED, 4)
    assert to_order({**body, "filled_quantity": 0}).status == Status.OPEN  # a modify's UPDATE

    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=Decimal("1390"), tick_volume=100)
    order.refresh_from_db()
    assert kite_format.postback(order)["status"] == "COMPLETE"


@pytest.fixture
def kite_client_with_order(transactional_db, paper_market):
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=Decimal("1500"))
    client = engine.client_get_or_create(user_id="AB1234")
    return engine.order_place(
        client=client,
        exchange="NSE",
        tradingsymbol="INFY",
        transaction_type="BUY",
        order_type="LIMIT",
        price=Decimal("1400"),
        quantity=10,
        product="MIS",
    )
