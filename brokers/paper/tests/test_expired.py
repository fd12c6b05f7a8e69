"""The paper exchange refuses orders on contracts that have expired, like a real exchange."""

from datetime import timedelta
from decimal import Decimal

import pytest

from brokers import base
from brokers.errors import OrderRejected, RejectKind
from brokers.paper import engine
from brokers.paper.adapter import PaperBroker
from brokers.paper.models import PaperClient, PaperInstrument, PaperOrder, PaperTrade

D = Decimal
FUTURE = {"exchange": "NFO", "tradingsymbol": "NIFTY26DECFUT"}


def expire(days_ago: int) -> PaperInstrument:
    """Give the NIFTY future an expiry ``days_ago`` days before today (IST); 0 is today."""
    PaperInstrument.objects.filter(**FUTURE).update(expiry=base.ist_today() - timedelta(days=days_ago))
    return PaperInstrument.objects.get(**FUTURE)


def place(client, side="BUY", **kw):
    return engine.order_place(
        client=client,
        **FUTURE,
        transaction_type=side,
        order_type=kw.pop("order_type", "MARKET"),
        quantity=kw.pop("quantity", 75),
        product="NRML",
        **kw,
    )


@pytest.fixture
def client(db, paper_market):
    client = engine.client_get_or_create(user_id="C1")
    PaperClient.objects.filter(pk=client.pk).update(cash=D("10000000"))  # a lot is about 1.96M
    return client


@pytest.mark.parametrize("side", ["BUY", "SELL"])
def test_refuses_an_order_on_an_expired_contract_and_stores_nothing(client, side):
    future = expire(days_ago=1)
    cash = PaperClient.objects.get(pk=client.pk).cash
    with pytest.raises(engine.InputException) as error:
        place(client, side=side)
    assert error.value.kind == "instrument"
    assert error.value.message.startswith(f"NIFTY26DECFUT expired on {future.expiry:%Y-%m-%d}")
    assert not PaperOrder.objects.exists() and not PaperTrade.objects.exists()
    assert PaperClient.objects.get(pk=client.pk).cash == cash


def test_a_contract_expiring_today_still_trades(client):
    expire(days_ago=0)
    order = place(client)
    assert order.status == PaperOrder.Status.COMPLETE and order.filled_quantity == 75


def test_a_resting_order_on_a_contract_that_has_since_expired_cannot_be_modified_but_can_be_cancelled(client):
    expire(days_ago=0)
    future = PaperInstrument.objects.get(**FUTURE)
    resting = place(client, order_type="LIMIT", price=future.last_price - 100)
    assert resting.status == PaperOrder.Status.OPEN
    expire(days_ago=1)
    with pytest.raises(engine.InputException, match="expired on"):
        engine.order_modify(client=client, order_id=resting.order_id, price=future.last_price - 90)
    assert engine.order_cancel(client=client, order_id=resting.order_id).status == PaperOrder.Status.CANCELLED


def test_the_adapter_reports_an_expired_contract_as_an_instrument_rejection(client):
    expire(days_ago=1)
    broker = PaperBroker(client_id=client.user_id)
    broker.login()
    request = base.OrderRequest(**FUTURE, side="BUY", quantity=75, order_type="MARKET", product="NRML", tag="EXP-1")
    with pytest.raises(OrderRejected) as error:
        broker.place_order(request)
    assert error.value.kind == RejectKind.INSTRUMENT and "expired on" in error.value.message
    assert not PaperOrder.objects.exists()
