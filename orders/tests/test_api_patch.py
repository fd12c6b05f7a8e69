"""PATCH of baskets, scheduled orders and strategies: only the fields sent change, checked as a PUT
is, under the row lock (two edits of different fields made at the same time both stay)."""

from datetime import date, timedelta

import pytest
from django.test import Client

from accounts import services as account_services
from accounts.tests.factories import make_broker_account
from orders import sources
from orders.models import Basket, BasketItem, ScheduledOrder, Strategy
from orders.tests.factories import sent_while_locked
from tradingplatform.testing import mariadb_only
from tradingplatform.tests.security import db_snapshot


def api_for(user) -> Client:
    _, secret = account_services.api_key_create(owner=user, name="bot")
    return Client(HTTP_AUTHORIZATION=f"Bearer {secret}")


@pytest.fixture
def api(trader):
    return api_for(trader)


def patch(api, path, data):
    return api.patch(path, data, content_type="application/json")


def create(api, path, data) -> dict:
    response = api.post(path, data, content_type="application/json")
    assert response.status_code == 201, response.json()
    return response.json()


def item(symbol="INFY", **overrides) -> dict:
    return {"tradingsymbol": symbol, "side": "BUY", "quantity": 1, **overrides}


def a_basket(api, account) -> dict:
    return create(api, "/api/v1/baskets", {"name": "Morning", "account_ids": [account.pk], "items": [item()]})


def a_strategy(api, account) -> dict:
    body = {"name": "Breakout", "account_ids": [account.pk], "stop_loss": "1", "max_retries": 2}
    return create(api, "/api/v1/strategies", {**body, "retryable_kinds": ["network"]})


def a_scheduled(api, account) -> dict:
    body = {**item(), "account_id": account.pk, "order_type": "LIMIT", "price": "1400", "time_of_day": "09:20"}
    return create(
        api, "/api/v1/scheduled", {**body, "run_on": str(date.today() + timedelta(days=3)), "timezone": "UTC"}
    )


MAKE = {"baskets": a_basket, "strategies": a_strategy, "scheduled": a_scheduled}


# --- Only what is sent changes ---------------------------------------------------------------


def test_a_basket_patch_keeps_what_it_does_not_send(api, account):
    basket = a_basket(api, account)
    url = f"/api/v1/baskets/{basket['id']}"
    renamed = patch(api, url, {"name": "Evening"})
    assert renamed.status_code == 200, renamed.json()
    assert renamed.json() == {**basket, "name": "Evening"}  # the items keep their ids: nothing else was rewritten
    emptied = patch(api, url, {"account_ids": []}).json()
    assert (emptied["name"], emptied["account_ids"], emptied["items"]) == ("Evening", [], basket["items"])
    replaced = patch(api, url, {"items": [item("TCS", side="SELL", quantity=2)]}).json()
    assert replaced["name"] == "Evening" and replaced["account_ids"] == []
    assert [(i["tradingsymbol"], i["side"], i["quantity"]) for i in replaced["items"]] == [("TCS", "SELL", 2)]
    assert patch(api, url, {}).json() == replaced  # nothing sent: nothing changed
    assert BasketItem.objects.count() == 1


def test_a_strategy_patch_keeps_what_it_does_not_send(api, account):
    strategy = a_strategy(api, account)
    url = f"/api/v1/strategies/{strategy['id']}"
    kept = {k: v for k, v in strategy.items() if k != "webhook_secret"}
    changed = patch(api, url, {"take_profit": "2.5", "is_active": False})
    assert changed.status_code == 200, changed.json()
    assert changed.json() == {**kept, "take_profit": "2.50", "is_active": False}
    cleared = patch(api, url, {"stop_loss": None}).json()  # null clears a setting that may be empty
    assert cleared == {**kept, "take_profit": "2.50", "is_active": False, "stop_loss": None}


def test_a_scheduled_patch_keeps_what_it_does_not_send(api, account):
    scheduled = a_scheduled(api, account)
    url = f"/api/v1/scheduled/{scheduled['id']}"
    changed = patch(api, url, {"quantity": 3, "grace_s": 30})
    assert changed.status_code == 200, changed.json()
    # A PUT without `timezone` would have moved it to the trader's zone; a PATCH keeps UTC.
    assert changed.json() == {**scheduled, "quantity": 3, "grace_s": 30}
    moved = patch(api, url, {"tradingsymbol": "TCS", "price": "3200"}).json()
    assert (moved["exchange"], moved["tradingsymbol"], moved["price"], moved["quantity"]) == (
        "NSE",
        "TCS",
        "3200.00",
        3,
    )
    assert (moved["time_of_day"], moved["run_on"], moved["timezone"]) == ("09:20:00", scheduled["run_on"], "UTC")


def test_a_scheduled_order_made_recurring_keeps_no_date_that_a_patch_back_to_once_would_reuse(api, account):
    """A date is a one-off's alone: kept on a recurring order (shown beside "every trading day"), a
    later PATCH back to once would place on that old date the trader no longer had in mind."""
    scheduled = a_scheduled(api, account)
    url = f"/api/v1/scheduled/{scheduled['id']}"
    recurring = patch(api, url, {"recurrence": "trading_days"})
    assert recurring.status_code == 200 and recurring.json()["run_on"] is None
    once = patch(api, url, {"recurrence": "once"})
    assert once.status_code == 422 and once.json()["error"]["field"] == "run_on"
    assert ScheduledOrder.objects.get(pk=scheduled["id"]).recurrence == "trading_days"


# --- A bad field: named, and nothing changes ----------------------------------------------------


@pytest.mark.parametrize(
    "kind, body, field",
    [
        ("baskets", {"name": "Renamed", "items": [item("NOPE")]}, "items.0.tradingsymbol"),
        ("baskets", {"name": "Renamed", "items": []}, "items"),
        ("baskets", {"account_ids": [1], "name": None}, "name"),
        ("baskets", {"name": "Renamed", "account_ids": [10**9]}, "account_ids"),
        ("baskets", {"name": "Renamed", "validity": "GTC"}, "validity"),
        ("strategies", {"max_retries": 5, "stop_loss": "150"}, "stop_loss"),  # a percent below 100
        ("strategies", {"max_retries": 5, "stop_loss_unit": "percent", "take_profit": "100"}, "take_profit"),
        ("strategies", {"is_active": False, "retryable_kinds": ["nope"]}, "retryable_kinds"),
        ("strategies", {"name": "Renamed", "max_retries": 21}, "max_retries"),
        ("scheduled", {"quantity": 5, "price": "1400.03"}, "price"),  # off the tick
        ("scheduled", {"quantity": 5, "order_type": "SL"}, "trigger_price"),  # with the stored price: needs a trigger
        ("scheduled", {"quantity": 5, "timezone": "Mars/Olympus"}, "timezone"),
        ("scheduled", {"quantity": 5, "recurrence": "weekdays"}, "weekdays"),
        ("scheduled", {"quantity": 5, "tradingsymbol": "NOPE"}, "tradingsymbol"),
    ],
)
def test_a_bad_field_is_named_and_nothing_changes(api, account, kind, body, field):
    url = f"/api/v1/{kind}/{MAKE[kind](api, account)['id']}"
    before, rows = api.get(url).json(), db_snapshot()
    response = patch(api, url, body)
    assert response.status_code == 422, response.json()
    assert response.json()["error"] == {
        "code": "invalid",
        "message": response.json()["error"]["message"],
        "field": field,
    }
    assert api.get(url).json() == before
    assert db_snapshot() == rows


def test_the_rules_between_fields_hold_for_the_result(api, account):
    """A trailing step needs a stop-loss: clearing the stored stop-loss of a strategy that trails is refused."""
    strategy = a_strategy(api, account)
    url = f"/api/v1/strategies/{strategy['id']}"
    assert patch(api, url, {"trailing_step": "0.5"}).status_code == 200  # the stored stop-loss counts
    response = patch(api, url, {"stop_loss": None})
    assert response.status_code == 422 and response.json()["error"]["field"] == "trailing_step"
    assert api.get(url).json()["stop_loss"] == "1.00"


def test_a_cancelled_scheduled_order_is_a_conflict(api, account):
    url = f"/api/v1/scheduled/{a_scheduled(api, account)['id']}"
    assert api.delete(url).status_code == 200
    response = patch(api, url, {"quantity": 2})
    assert response.status_code == 409 and response.json()["error"]["code"] == "conflict"
    assert ScheduledOrder.objects.get().quantity == 1


def test_another_traders_ids_are_404_and_change_nothing(api, account, other_trader):
    theirs = make_broker_account(other_trader, broker="paper", client_id="THEIRS")
    their_api = api_for(other_trader)
    for kind, body in [
        ("baskets", {"name": "hijacked"}),
        ("strategies", {"name": "hijacked"}),
        ("scheduled", {"quantity": 9}),
    ]:
        url = f"/api/v1/{kind}/{MAKE[kind](their_api, theirs)['id']}"
        before = db_snapshot()
        response = patch(api, url, body)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", (kind, response.json())
        assert db_snapshot() == before
    mine = a_scheduled(api, account)
    response = patch(api, f"/api/v1/scheduled/{mine['id']}", {"account_id": theirs.pk})  # their account in the body
    assert response.status_code == 422 and response.json()["error"]["field"] == "account_id"


def test_the_schema_shows_the_patch_operations(client, db):
    schema = client.get("/api/v1/openapi.json").json()
    for path, body in [
        ("/api/v1/baskets/{basket_id}", "BasketChangeIn"),
        ("/api/v1/strategies/{strategy_id}", "StrategyChangeIn"),
        ("/api/v1/scheduled/{scheduled_id}", "ScheduledChangeIn"),
    ]:
        operations = schema["paths"][path]
        assert {"put", "patch"} <= set(operations), path  # PUT still replaces the whole
        patch_op = operations["patch"]
        assert patch_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(f"/{body}")
        assert {"200", "404", "422"} <= set(patch_op["responses"])
        properties = schema["components"]["schemas"][body]
        assert "required" not in properties and all("default" not in p for p in properties["properties"].values())
        assert properties["additionalProperties"] is False


# --- Two edits at the same time -----------------------------------------------------------------

# Each: a change the test holds uncommitted, another field's change sent meanwhile, and what both leave.
AT_ONCE = {
    "baskets": (
        lambda owner, row: sources.basket_change(owner=owner, basket=row, name="Held"),
        {"account_ids": []},
        lambda row: (row.name, list(row.accounts.all())) == ("Held", []),
    ),
    "strategies": (
        lambda owner, row: sources.strategy_change(owner=owner, strategy=row, max_retries=7),
        {"take_profit": "3"},
        lambda row: (row.max_retries, str(row.take_profit)) == (7, "3.00"),
    ),
    "scheduled": (
        lambda owner, row: sources.scheduled_change(owner=owner, scheduled=row, quantity=4),
        {"grace_s": 45},
        lambda row: (row.quantity, row.grace_s) == (4, 45),
    ),
}
MODELS = {"baskets": Basket, "strategies": Strategy, "scheduled": ScheduledOrder}


@pytest.mark.parametrize("kind", sorted(AT_ONCE))
@pytest.mark.django_db(transaction=True)
def test_two_patches_of_different_fields_at_once_both_stay(kind, trader, account):
    """One edit holds its change uncommitted; a PATCH of another field comes meanwhile. The held edit
    commits once the PATCH sends its first statement that locks or writes the row. A PATCH that read
    the row before locking it would then write the old value of the first field back; this one waits
    for the row and reads it as committed: both changes stay."""
    mariadb_only()
    api = api_for(trader)
    pk = MAKE[kind](api, account)["id"]
    hold, body, both_stay = AT_ONCE[kind]
    with sent_while_locked(MODELS[kind], lambda: patch(api, f"/api/v1/{kind}/{pk}", body)) as (answers, start):
        hold(trader, MODELS[kind].objects.get(pk=pk))
        start()
    assert answers and answers[0].status_code == 200, answers and answers[0].json()
    assert both_stay(MODELS[kind].objects.get(pk=pk))


def test_a_strategy_saved_before_the_chase_cap_rule_can_still_be_paused(api, account):
    """A strategy saved before a chase needed a cap (``chase_after_s`` alone) must still be paused,
    the way to stop it, and renamed: a PATCH sends neither the chase nor its caps. Its chase stays
    refused once it is changed."""
    row = Strategy.objects.create(owner=account.owner, name="Old chaser", chase_after_s=5, webhook_secret_hash="x")
    row.accounts.set([account])
    response = patch(api, f"/api/v1/strategies/{row.pk}", {"is_active": False, "name": "Old chaser, paused"})
    assert response.status_code == 200, response.json()
    row.refresh_from_db()
    assert (row.is_active, row.name, row.chase_after_s) == (False, "Old chaser, paused", 5)
    response = patch(api, f"/api/v1/strategies/{row.pk}", {"chase_after_s": 10})
    assert response.status_code == 422 and response.json()["error"]["field"] == "chase_max_ticks"
    row.refresh_from_db()
    assert row.chase_after_s == 5


def test_a_put_of_a_strategy_must_say_whether_it_is_live(api, account):
    """A PUT is the whole strategy. One that left out is_active took its default, true: a client
    renaming a paused strategy with a PUT made it trade again on the next signal."""
    strategy = a_strategy(api, account)
    url = f"/api/v1/strategies/{strategy['id']}"
    assert patch(api, url, {"is_active": False}).json()["is_active"] is False
    body = {"name": "Renamed", "account_ids": [account.pk], "stop_loss": "1"}

    response = api.put(url, body, content_type="application/json")
    assert response.status_code == 422 and response.json()["error"]["field"] == "is_active"
    assert Strategy.objects.get(pk=strategy["id"]).is_active is False
    response = api.put(url, {**body, "is_active": False}, content_type="application/json")
    assert response.status_code == 200 and response.json()["is_active"] is False
    assert Strategy.objects.get(pk=strategy["id"]).name == "Renamed"
