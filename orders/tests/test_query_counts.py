"""Pages and API lists of orders and their sources read in a fixed number of queries, however many
rows a trader has (a query per row makes them slower as the trader's history grows)."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts import services as account_services
from accounts.tests.factories import make_broker_account, make_user
from orders import services, sources
from orders.models import Basket, Order
from orders.tests.factories import instrument


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
    baskets = response.json()["items"]
    assert len(baskets) == 30
    # Every basket's rows are its order as it is now (cancelled since), the one by key too.
    assert {(row["order_id"], row["status"]) for basket in baskets for row in basket["last_results"]} == {
        (order.pk, "CANCELLED")
    }


def test_admin_basket_and_strategy_pages_do_not_list_every_traders_accounts_and_users(client, staff, trader, account):
    """A basket's or strategy's page in the admin offered every broker account of every trader, and
    every user as its owner, in <select>s: a page that grows with the whole customer base (and
    shows staff every trader's accounts to pick one). Only the chosen ones are rendered; others
    are searched for."""
    strangers = [make_user(f"stranger{n}") for n in range(3)]
    for stranger in strangers:
        make_broker_account(stranger, label=f"Account of {stranger.username}")
    basket = sources.basket_save(
        owner=trader,
        name="Morning",
        items=[{"instrument": instrument("INFY"), "side": "BUY", "quantity": 1}],
        account_ids=[account.pk],
    )
    strategy, _ = sources.strategy_save(owner=trader, name="Breakout", account_ids=[account.pk])
    client.force_login(staff)
    pages = [
        reverse("admin:orders_basket_change", args=[basket.pk]),
        reverse("admin:orders_basket_add"),
        reverse("admin:orders_strategy_change", args=[strategy.pk]),
        reverse("admin:orders_strategy_add"),
    ]
    for page in pages:
        html = client.get(page).content.decode()
        assert not [stranger.username for stranger in strangers if stranger.username in html], page
    for page in pages[0], pages[2]:  # its own account and owner are still shown
        html = client.get(page).content.decode()
        assert account.label in html and trader.username in html
    for model in "basket", "strategy":  # and staff find the others by a search
        query = {"app_label": "orders", "model_name": model, "field_name": "accounts", "term": "stranger1"}
        found = client.get(reverse("admin:autocomplete"), query).json()["results"]
        assert [row["text"] for row in found] == [str(strangers[1].broker_accounts.get())]


def test_scheduled_page_lists_a_page_of_scheduled_orders_not_every_one_ever(client, trader, account):
    """Done and cancelled one-offs stay on the list for good: the page rendered every scheduled
    order the trader ever made (and read every one's last order). It shows a page of them, those
    still to run first, and links to the rest."""
    from orders.models import ScheduledOrder
    from orders.tests.test_sources import make_scheduled

    active = [make_scheduled(trader, account), make_scheduled(trader, account, recurrence="trading_days")]
    done = []
    for _ in range(58):
        row = ScheduledOrder.objects.get(pk=active[0].pk)
        row.pk = row.idempotency_key = row.next_run_at = None
        row.status = ScheduledOrder.Status.DONE
        done.append(row)
    ScheduledOrder.objects.bulk_create(done)
    client.force_login(trader)
    url = reverse("sources:scheduled_list")
    first = client.get(url).content.decode()
    shown = re.findall(r'<tr id="scheduled-(\d+)"', first)
    assert len(shown) == 50
    assert {str(row.pk) for row in active} <= set(shown)  # those still to run, first
    later = re.findall(r'<tr id="scheduled-(\d+)"', client.get(url, {"page": 2}).content.decode())
    assert len(later) == 10 and not set(later) & set(shown)
    assert "Page 1 of 2" in first
