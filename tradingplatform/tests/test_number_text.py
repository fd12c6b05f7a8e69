"""Number text with '_' (a digit separator to Python's int() and Decimal(): "1_5" is 15) is
refused, naming the field, at every entry point: the pages, the admin, the API and the webhook."""

import json
import time as clock
import uuid
from decimal import Decimal

import pytest
from django.contrib import admin
from django.test import RequestFactory
from django.urls import reverse

from accounts import services as account_services
from accounts.models import BrokerAccount
from brokers.paper.models import PaperOrder
from orders import sources
from orders.models import Order, Strategy
from orders.tests.factories import instrument
from tradingplatform.numbers import SEPARATOR_MESSAGE


def ticket(account, **overrides):
    data = {"token": str(uuid.uuid4()), "account": account.pk, "instrument": instrument("INFY").pk, "side": "BUY",
            "quantity": "1", "order_type": "MARKET", "product": "MIS", "validity": "DAY", "price": "",
            "trigger_price": ""}  # fmt: skip
    return {**data, **overrides}


@pytest.mark.parametrize(
    ("change", "field"), [({"quantity": "1_0"}, "quantity"), ({"order_type": "LIMIT", "price": "1_400"}, "price")]
)
def test_the_ticket_refuses_a_number_with_an_underscore(trader_client, account, change, field):
    response = trader_client.post(reverse("orders:ticket"), ticket(account, **change))
    assert response.status_code == 200
    assert response.context["form"].errors[field] == [SEPARATOR_MESSAGE]
    assert not Order.objects.exists()


def test_a_copy_multiplier_with_an_underscore_is_refused_not_read_as_15(trader_client, account):
    data = {"label": "Paper", "allowed_products": ["CNC", "MIS", "NRML"], "copy_multiplier": "1_5",
            "max_order_value": "", "max_quantity": "", "max_open_orders": ""}  # fmt: skip
    response = trader_client.post(reverse("accounts:broker_edit", args=[account.pk]), data)
    assert response.status_code == 200
    assert response.context["form"].errors["copy_multiplier"] == [SEPARATOR_MESSAGE]
    account.refresh_from_db()
    assert account.copy_multiplier == Decimal("1")


def test_the_strategy_page_refuses_a_number_with_an_underscore(trader_client, account):
    form = {"name": "Trend", "accounts": [account.pk], "stop_loss": "1_5", "stop_loss_unit": "percent",
            "take_profit_unit": "points", "max_reentries": "0", "max_retries": "0", "is_active": "on"}  # fmt: skip
    response = trader_client.post(reverse("sources:strategy_create"), form)
    assert response.context["form"].errors["stop_loss"] == [SEPARATOR_MESSAGE]
    assert not Strategy.objects.exists()


def test_the_admin_refuses_a_number_with_an_underscore(staff, account):
    request = RequestFactory().get("/")
    request.user = staff
    Form = admin.site._registry[BrokerAccount].get_form(request, account, change=True)
    field = Form.base_fields["copy_multiplier"]
    with pytest.raises(Exception, match="without '_'"):
        field.clean("1_5")
    assert field.clean("1.5") == Decimal("1.5")


@pytest.fixture
def api(client, trader):
    _, secret = account_services.api_key_create(owner=trader, name="bot")
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return client


def test_the_api_refuses_a_price_sent_as_text_with_an_underscore(api, account):
    order = {"account_id": account.pk, "tradingsymbol": "INFY", "side": "BUY", "quantity": 1, "order_type": "LIMIT"}
    response = api.post("/api/v1/orders", {**order, "price": "1_400"}, content_type="application/json")
    assert response.status_code == 422 and response.json()["error"]["field"] == "price", response.json()
    strategy = {"name": "Trend", "account_ids": [account.pk], "stop_loss": "1_5"}
    response = api.post("/api/v1/strategies", strategy, content_type="application/json")
    assert response.status_code == 422 and response.json()["error"]["field"] == "stop_loss", response.json()
    assert not PaperOrder.objects.exists() and not Strategy.objects.exists()


@pytest.mark.parametrize(("change", "field"), [({"quantity": "1_0"}, "quantity"), ({"price": "1_400"}, "price")])
def test_the_webhook_refuses_a_number_with_an_underscore(client, trader, account, change, field):
    strategy, secret = sources.strategy_save(owner=trader, name="Breakout", account_ids=[account.pk])
    body = {"secret": secret, "id": "tv-1", "timestamp": clock.time(), "symbol": "NSE:INFY", "side": "buy",
            "quantity": 1, "order_type": "LIMIT", "price": "1400", **change}  # fmt: skip
    response = client.post(f"/hooks/strategies/{strategy.pk}/", json.dumps(body), content_type="application/json")
    assert response.status_code == 422, response.json()
    assert response.json()["error"]["field"] == field and "_" in response.json()["error"]["message"]
    assert not PaperOrder.objects.exists()


# --- Whole numbers are whole numbers, as written ---------------------------------------------


def scheduled(account, **overrides):
    return {"account_id": account.pk, "tradingsymbol": "INFY", "side": "BUY", "quantity": 1, "time_of_day": "09:20",
            "recurrence": "weekdays", "weekdays": [0], **overrides}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"weekdays": [True]}, "weekdays"),  # was Tuesday
        ({"weekdays": ["1"]}, "weekdays"),
        ({"weekdays": [1.0]}, "weekdays"),
        ({"grace_s": True}, "grace_s"),
        ({"grace_s": "60"}, "grace_s"),
    ],
)
def test_the_api_takes_a_scheduled_orders_whole_numbers_only_as_json_integers(api, account, change, field):
    response = api.post("/api/v1/scheduled", scheduled(account, **change), content_type="application/json")
    assert response.status_code == 422 and response.json()["error"]["field"].startswith(field), response.json()
    response = api.post("/api/v1/scheduled", scheduled(account, grace_s=60), content_type="application/json")
    assert response.status_code == 201, response.json()


@pytest.mark.parametrize("field", ["chase_after_s", "chase_max_ticks", "max_retries", "max_reentries"])
@pytest.mark.parametrize("value", [True, "2", 2.0])
def test_the_api_takes_a_strategys_whole_numbers_only_as_json_integers(api, account, field, value):
    capped = {"chase_max_ticks": 5} if field == "chase_after_s" else {}  # a chase needs a cap
    body = {"name": "Trend", "account_ids": [account.pk], **capped, field: value}
    response = api.post("/api/v1/strategies", body, content_type="application/json")
    assert response.status_code == 422 and response.json()["error"]["field"] == field, response.json()
    assert not Strategy.objects.exists()
    response = api.post("/api/v1/strategies", {**body, field: 2}, content_type="application/json")
    assert response.status_code == 201, response.json()


@pytest.mark.parametrize(
    "quantity", ['"1E+1"', "1e1", '"5.5"', "5.5", '"5."', '"+5"', '" 5 "', '"\\u0665"', "true", '"-5"', "-5", "-5.0"]
)
def test_the_webhook_takes_a_quantity_as_a_whole_number_in_digits(client, trader, account, quantity):
    """The webhook reads its body's numbers exactly (a JSON 5.0 is Decimal("5.0")); a quantity is a
    whole number of shares: 5, "5", or as TradingView's placeholders can write one, 5.0 or "5.0"."""
    strategy, secret = sources.strategy_save(owner=trader, name="Breakout", account_ids=[account.pk])
    body = {"secret": secret, "id": "tv-1", "timestamp": clock.time(), "symbol": "NSE:INFY", "side": "buy"}
    text = json.dumps(body)[:-1] + f', "quantity": {quantity}}}'
    response = client.post(f"/hooks/strategies/{strategy.pk}/", text, content_type="application/json")
    assert response.status_code == 422, response.json()
    error = response.json()["error"]
    assert error["field"] == "quantity" and "quantity" in error["message"].lower(), error
    assert not PaperOrder.objects.exists()
    for sent in ("5", '"5"', "5.0", '"5.00"'):
        response = client.post(
            f"/hooks/strategies/{strategy.pk}/",
            json.dumps({**body, "id": f"tv-{sent!r}"})[:-1] + f', "quantity": {sent}}}',
            content_type="application/json",
        )
        assert response.status_code == 201 and response.json()["results"][0]["quantity"] == 5, response.json()
    huge = json.dumps({**body, "id": "tv-huge"})[:-1] + f', "quantity": {"1" * 40}.0}}'
    response = client.post(f"/hooks/strategies/{strategy.pk}/", huge, content_type="application/json")
    assert response.status_code == 422 and response.json()["error"]["field"] == "quantity"


# --- Errors that say what is wrong -----------------------------------------------------------


@pytest.mark.parametrize("field", ["quantity", "price", "account_id"])
def test_a_json_integer_too_long_to_read_is_an_error_on_its_field(api, account, field):
    """Python reads no integer of more than 4300 digits: the body was answered as not JSON at all."""
    order = {"account_id": account.pk, "tradingsymbol": "INFY", "side": "BUY", "quantity": 1, "order_type": "LIMIT",
             "price": 1400}  # fmt: skip
    text = json.dumps({**order, field: 0}).replace(f'"{field}": 0', f'"{field}": {"1" * 5000}')
    response = api.post("/api/v1/orders", text, content_type="application/json")
    assert response.status_code == 422, response.json()
    error = response.json()["error"]
    assert error["field"] == field and "too long" in error["message"], error
    assert not Order.objects.exists()


def test_a_large_negative_price_is_not_told_to_be_below_a_trillion(api, account):
    order = {"account_id": account.pk, "tradingsymbol": "INFY", "side": "BUY", "quantity": 1, "order_type": "LIMIT"}
    response = api.post("/api/v1/orders", {**order, "price": "-1e13"}, content_type="application/json")
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "price" and "above 0" in error["message"], error


def test_a_weekday_out_of_range_says_which_days_are_allowed(api, account):
    response = api.post("/api/v1/scheduled", scheduled(account, weekdays=[7]), content_type="application/json")
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "weekdays" and "0 (Monday) to 6 (Sunday)" in error["message"], error
