"""A basket's results page with a row refused before the broker (INVALID: no ``reason`` key)."""

from decimal import Decimal

from django.urls import reverse

from accounts.tests.factories import make_broker_account
from brokers.paper.models import PaperOrder
from orders import sources
from orders.tests.factories import instrument


def test_a_row_below_one_lot_after_the_multiplier_is_shown_with_why(trader_client, trader, account):
    half = make_broker_account(trader, broker="paper", client_id="HALF", label="Half", copy_multiplier=Decimal("0.5"))
    basket = sources.basket_save(
        owner=trader,
        name="Mixed",
        account_ids=[account.pk, half.pk],
        items=[{"instrument": instrument(), "side": "BUY", "quantity": 1}],
    )
    placed = trader_client.post(reverse("sources:basket_detail", args=[basket.pk]), {"token": "t-1"})
    assert PaperOrder.objects.count() == 1  # placed on the first account, refused (0 shares) on "Half"
    assert placed.status_code == 200  # the results page, not a 500 after an order went to the broker
    assert "Below one lot on Half" in placed.content.decode()
    again = trader_client.get(reverse("sources:basket_detail", args=[basket.pk]))
    assert again.status_code == 200  # and on every later visit
    assert "Below one lot on Half" in again.content.decode()
