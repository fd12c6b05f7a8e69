"""What the paper exchange's tables refuse to hold, whatever writes the row: its order book's
figures (filled, cancelled, pending) add up, and a fill has a quantity and a price."""

from decimal import Decimal

import pytest

from brokers.paper.models import PaperOrder, PaperTrade
from brokers.paper.tests.test_engine import place, quote
from tradingplatform.testing import refused

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(db, paper_market):
    from brokers.paper import engine

    quote(last="1500", volume=1000)
    return engine.client_get_or_create(user_id="C1")


def test_a_paper_order_figures_add_up_and_hold_only_its_choices(client):
    order = place(client, side="BUY", order_type="LIMIT", quantity=10, price="1400")
    assert order.status == PaperOrder.Status.OPEN
    PaperOrder.objects.filter(pk=order.pk).update(filled_quantity=4)
    # Cancelled more than is unfilled: the book's unfilled quantity (quantity - filled - cancelled) below 0.
    assert refused(PaperOrder, order.pk, cancelled_quantity=7)
    assert not refused(PaperOrder, order.pk, cancelled_quantity=6, status=PaperOrder.Status.CANCELLED)
    assert refused(PaperOrder, order.pk, uncovered_quantity=11)
    assert refused(PaperOrder, order.pk, status="PENDING")
    assert refused(PaperOrder, order.pk, transaction_type="B")
    assert refused(PaperOrder, order.pk, price=Decimal("-0.05"))
    assert refused(PaperOrder, order.pk, trigger_price=Decimal("-1"))
    for value in PaperOrder.Status.values:
        assert not refused(PaperOrder, order.pk, status=value)
    order.refresh_from_db()
    assert (order.filled_quantity, order.cancelled_quantity, order.uncovered_quantity) == (4, 6, 0)


def test_a_paper_fill_has_a_quantity_a_price_and_a_side(client):
    place(client, side="BUY", order_type="MARKET", quantity=2)
    trade = PaperTrade.objects.get(client=client)
    assert refused(PaperTrade, trade.pk, quantity=0)
    assert refused(PaperTrade, trade.pk, price=Decimal("0"))  # a sell at no price took money from the seller
    assert refused(PaperTrade, trade.pk, price=Decimal("-0.05"))
    assert refused(PaperTrade, trade.pk, transaction_type="S")
    trade.refresh_from_db()
    assert (trade.quantity, trade.price, trade.transaction_type) == (2, Decimal("1500.10"), "BUY")


def test_a_paper_client_that_traded_cannot_be_deleted_with_its_orders_and_fills(client):
    from django.db.models import ProtectedError

    from brokers.paper import engine
    from brokers.paper.models import PaperClient

    place(client, side="BUY", order_type="MARKET", quantity=2)
    with pytest.raises(ProtectedError):
        client.delete()
    assert PaperOrder.objects.filter(client=client).count() == 1
    assert PaperTrade.objects.filter(client=client).count() == 1
    unused = engine.client_get_or_create(user_id="C2")
    unused.delete()  # one that never traded still goes
    assert not PaperClient.objects.filter(user_id="C2").exists()


def test_staff_deleting_a_paper_client_that_traded_are_refused(client, staff):
    from django.test import Client

    place(client, side="BUY", order_type="MARKET", quantity=2)
    browser = Client()
    browser.force_login(staff)
    page = browser.post(f"/admin/paper/paperclient/{client.pk}/delete/", {"post": "yes"})
    assert page.status_code == 200  # the page says what protects it; nothing deleted
    assert PaperOrder.objects.filter(client=client).count() == 1
    assert PaperTrade.objects.filter(client=client).count() == 1
