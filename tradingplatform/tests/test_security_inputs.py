"""Hostile input through every filter, search box and pagination parameter, on the pages and the API.

SQL-ish strings, huge and negative numbers, bad and extreme dates, NUL bytes, very long
strings: a page shows the filter's error (or an empty result), the API answers a clean
4xx naming the field (or an empty result). Never a 500, and never more rows than asked for.
"""

import pytest
from django.test import Client
from django.urls import reverse

from brokers.paper.models import PaperOrder

from .test_security_sweep import assert_api_error

SQLISH = ["' OR '1'='1", "1 OR 1=1", "1; DROP TABLE orders_order; --", '" OR ""="', "%", "_", "\\", "%%' --"]
NUMBERS = ["99999999999999999999999999999", "-1", "0", "1e309", "NaN", "Infinity", "0x10", "1.5", " 1"]
DATES = ["2026-13-45", "0000-00-00", "0001-01-01", "9999-12-31", "10000-01-01", "yesterday", "2026-02-30"]
DATETIMES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "2026-11-21T25:61:00", "1e10", "-1"]
OTHER = ["\x00", "é𝕏\u202e", "A" * 5000, ""]
HOSTILE = SQLISH + NUMBERS + DATES + DATETIMES + OTHER

PAGE_FILTERS = {
    "orders:book": ["account", "status", "source", "symbol", "date", "page"],
    "portfolio:trades": ["account", "symbol", "date_from", "date_to", "page", "format"],
    "portfolio:monitoring": ["status", "page"],
    "brokers:instruments": ["q"],
    "orders:instrument_options": ["q"],
    "orders:ticket": ["instrument"],
}
API_FILTERS = {
    "/api/v1/orders": ["account_id", "status", "source", "symbol", "since", "limit", "offset"],
    "/api/v1/instruments": ["q", "limit"],
    "/api/v1/trades": ["account_id", "symbol", "since", "until", "limit", "offset"],
    "/api/v1/positions": ["account_id", "open_only", "limit", "offset", "before_id"],
    "/api/v1/accounts": ["limit", "offset", "before_id"],
    "/api/v1/baskets": ["limit", "offset", "before_id"],
    "/api/v1/scheduled": ["limit", "offset", "before_id"],
    "/api/v1/strategies": ["limit", "offset", "before_id"],
}


@pytest.mark.parametrize("name", sorted(PAGE_FILTERS))
def test_page_filters_never_fail_on_hostile_input(name, owned, trader_client):
    url = reverse(name)
    failures = []
    for param in PAGE_FILTERS[name]:
        for value in HOSTILE:
            response = trader_client.get(url, {param: value})
            if response.status_code != 200:
                failures.append(f"{param}={value[:40]!r}: {response.status_code}")
    assert not failures, f"{url}: {failures}"


def test_instrument_pick_takes_hostile_product_and_quantity(owned, trader_client):
    url = reverse("orders:instrument_pick", args=[owned["instrument"].pk])
    for param in ("product", "quantity"):
        for value in HOSTILE:
            assert trader_client.get(url, {param: value}).status_code == 200, (param, value[:40])
    huge = reverse("orders:instrument_pick", args=[2**62])
    assert trader_client.get(huge).status_code == 404


@pytest.mark.parametrize("name", ["orders:book", "portfolio:trades"])
def test_sqlish_symbol_filters_match_nothing(name, owned, trader_client):
    """A symbol filter is a value, never SQL: the trader's own order or trade does not come back."""
    reference = owned["order"].reference
    assert reference in trader_client.get(reverse("orders:book")).content.decode()
    for value in SQLISH:
        html = trader_client.get(reverse(name), {"symbol": value, "date": "all"}).content.decode()
        assert reference not in html, (name, value)


@pytest.mark.parametrize("path", sorted(API_FILTERS))
def test_api_filters_answer_a_clean_4xx_naming_the_field(path, owned, settings):
    settings.API_RATE_LIMITS = [(10_000, 1.0)]  # this test sends many requests with one key
    api = Client(HTTP_AUTHORIZATION=f"Bearer {owned['api_secret']}")
    failures = []
    for param in API_FILTERS[path]:
        for value in HOSTILE:
            response = api.get(path, {param: value})
            if response.status_code == 200:
                continue
            if response.status_code != 422:
                failures.append(f"{param}={value[:40]!r}: {response.status_code}")
                continue
            error = assert_api_error(response, 422, f"{path}?{param}={value[:40]!r}")
            if error["field"] != param:
                failures.append(f"{param}={value[:40]!r}: names {error['field']!r}")
    assert not failures, f"{path}: {failures}"


def test_api_sqlish_filters_and_pagination_return_nothing_extra(owned, settings):
    settings.API_RATE_LIMITS = [(10_000, 1.0)]
    api = Client(HTTP_AUTHORIZATION=f"Bearer {owned['api_secret']}")
    assert api.get("/api/v1/orders").json()["count"] == 1
    for value in SQLISH:
        page = api.get("/api/v1/orders", {"symbol": value}).json()
        assert page["count"] == 0 and page["items"] == [], value
        if value not in ("%", "_"):
            assert api.get("/api/v1/instruments", {"q": value}).json()["items"] == [], value
    for limit, offset in [("501", "0"), ("0", "0"), ("50", "-1"), ("50", str(2**63))]:
        response = api.get("/api/v1/orders", {"limit": limit, "offset": offset})
        assert response.status_code == 422, (limit, offset, response.status_code)
    far = api.get("/api/v1/orders", {"offset": str(10**9)}).json()
    assert far["items"] == [] and far["count"] == 1


@pytest.mark.parametrize(
    "path", ["/api/v1/orders/{}", "/api/v1/baskets/{}", "/api/v1/scheduled/{}", "/api/v1/strategies/{}"]
)
def test_api_path_ids_out_of_range_are_a_clean_4xx(path, owned):
    api = Client(HTTP_AUTHORIZATION=f"Bearer {owned['api_secret']}")
    for value in ["99999999999999999999999999", "-1", "0", "1 OR 1=1", "1e3", "%00"]:
        response = api.get(path.format(value))
        assert response.status_code in (404, 422), (path, value, response.status_code)
        assert set(response.json()["error"]) == {"code", "message", "field"}


HUGE_NUMBERS = [str(2**70), "1e400", "-1e400", "99999999999999.999"]


def test_api_bodies_with_absurd_numbers_and_times_are_a_clean_422(owned, settings):
    settings.API_RATE_LIMITS = [(10_000, 1.0)]
    api = Client(HTTP_AUTHORIZATION=f"Bearer {owned['api_secret']}")
    order = {"account_id": owned["account"].pk, "tradingsymbol": "INFY", "side": "BUY", "quantity": 1}
    scheduled = {**order, "recurrence": "trading_days", "time_of_day": "10:15:00"}
    cases = [("/api/v1/orders", "post", order), ("/api/v1/scheduled", "post", scheduled)]
    cases += [(f"/api/v1/orders/{owned['order'].pk}", "patch", {})]
    signal = {name: value for name, value in order.items() if name != "account_id"}  # its strategy's accounts
    cases += [(f"/api/v1/strategies/{owned['strategy'].pk}/signal", "post", {**signal, "id": "s1"})]
    before = PaperOrder.objects.count()
    for path, method, body in cases:
        for field in ("quantity", "price") if method == "patch" else ("quantity", "price", "trigger_price"):
            for value in HUGE_NUMBERS:
                data = {**body, field: value}
                if "id" in data:  # a new signal each time (a repeated id is a replay)
                    data["id"] = f"{field}-{HUGE_NUMBERS.index(value)}"
                if method == "post":  # a new order of the type that takes the field (a change keeps the type)
                    data["order_type"] = {"quantity": "MARKET", "price": "LIMIT", "trigger_price": "SL-M"}[field]
                response = getattr(api, method)(path, data, content_type="application/json")
                error = assert_api_error(response, 422, f"{method} {path} {field}={value}")
                assert error["field"] == field, (path, field, value, error)
    for path in ("/api/v1/baskets", "/api/v1/strategies"):
        for ids in ([2**70], [-(2**70)], [0]):
            body = {"name": "n", "account_ids": ids, "items": [{"tradingsymbol": "INFY", "side": "BUY", "quantity": 1}]}
            error = assert_api_error(api.post(path, body, content_type="application/json"), 422, f"{path} {ids}")
            assert error["field"] == "account_ids.0", error
    for value in ["10:15:00+05:30", "10:15:00Z", "25:00:00", "10:15:00.5+14:00"]:
        response = api.post("/api/v1/scheduled", {**scheduled, "time_of_day": value}, content_type="application/json")
        assert assert_api_error(response, 422, value)["field"] == "time_of_day"
    assert PaperOrder.objects.count() == before


def test_page_forms_with_absurd_numbers_show_the_field_error(owned, trader_client):
    account, instrument = owned["account"], owned["instrument"]
    schedule = {"instrument": "INFY", "recurrence": "trading_days", "time_of_day": "10:15", "timezone": "UTC"}
    limits = {"label": "x", "copy_multiplier": "1", "allowed_products": ["MIS"]}
    before = PaperOrder.objects.count()
    for value in HUGE_NUMBERS:
        ticket = {
            "account": account.pk,
            "instrument": instrument.pk,
            "side": "BUY",
            "quantity": value,
            "order_type": "LIMIT",
            "product": "MIS",
            "validity": "DAY",
            "price": value,
            "token": owned["token"],
        }
        posts = [
            (reverse("orders:ticket"), ticket),
            (reverse("orders:modify", args=[owned["order"].pk]), {**ticket, "quantity": value}),
            (reverse("sources:scheduled_list"), {**ticket, **schedule}),
            (reverse("accounts:broker_edit", args=[account.pk]), {**limits, "max_quantity": value}),
            (reverse("accounts:broker_edit", args=[account.pk]), {**limits, "max_order_value": value}),
            (reverse("accounts:broker_edit", args=[account.pk]), {**limits, "copy_multiplier": value}),
        ]
        for url, data in posts:
            response = trader_client.post(url, data)
            assert response.status_code == 200, (url, value, response.status_code)
            assert 'class="error"' in response.content.decode() or "errorlist" in response.content.decode(), (
                url,
                value,
            )
    assert PaperOrder.objects.count() == before
