"""Pages and API lists of orders and their sources read in a fixed number of queries, however many
rows a trader has (a query per row makes them slower as the trader's history grows)."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts import services as account_services
from orders import services
from orders.models import Basket, Order


@pytest.fixture
def api(client, trader):
    _, secret = account_services.api_key_create(owner=trader, name="bot")
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return client


def queries_of(client, url) -> tuple[int, object]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, response.content
    return len(queries), response


def test_basket_list_reads_every_baskets_last_results_in_a_fixed_number_of_queries(api, trader, account):
    """Each basket's last results show its orders as they are now; they were read basket by basket
    (one or two queries each), so the list took 30 more queries for 30 more baskets."""
    items = [{"tradingsymbol": "INFY", "side": "BUY", "quantity": 1, "order_type": "LIMIT", "price": "1400"}]
    first = api.post(
        "/api/v1/baskets", {"name": "B0", "account_ids": [account.pk], "items": items}, content_type="application/json"
    ).json()
    placed = api.post(f"/api/v1/baskets/{first['id']}/place", {}, content_type="application/json").json()
    order = Order.objects.get(pk=placed[0]["order_id"])
    results = Basket.objects.get(pk=first["id"]).last_results
    # A row whose order could not be read when placed: shown by its key once there is one.
    lost = {**results[0], "order_id": None, "reference": None, "status": "UNKNOWN", "key": order.idempotency_key}

    def add(count):
        for _ in range(count):
            number = Basket.objects.count()
            basket = Basket.objects.create(owner=trader, name=f"B{number}", last_results=[*results, lost])
            basket.accounts.add(account)

    add(2)
    queries_of(api, "/api/v1/baskets")  # the key's first use is recorded once, not on every request
    few, _ = queries_of(api, "/api/v1/baskets")
    add(27)
    services.order_cancel(order=order, actor=trader, cause="test")
    many, response = queries_of(api, "/api/v1/baskets")
    assert many == few
    baskets = response.json()
    assert len(baskets) == 30
    # Every basket's rows are its order as it is now (cancelled since), the one by key too.
    assert {(row["order_id"], row["status"]) for basket in baskets for row in basket["last_results"]} == {
        (order.pk, "CANCELLED")
    }
