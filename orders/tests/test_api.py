"""The orders JSON API: placing, idempotency, filters, errors, ownership, rate limits."""

import hashlib
from datetime import datetime
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts import services as account_services
from accounts.tests.factories import make_broker_account, make_user
from brokers.paper.models import PaperOrder
from orders.models import Basket, Order, ScheduledFire, ScheduledOrder, Strategy
from orders.tests.factories import place


@pytest.fixture
def api(client, trader):
    _, secret = account_services.api_key_create(owner=trader, name="bot")
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return client


def body(account, **overrides):
    data = {"account_id": account.pk, "tradingsymbol": "INFY", "side": "BUY", "quantity": 1}
    data.update(overrides)
    return data


def post(api, path, data, **headers):
    return api.post(path, data, content_type="application/json", **headers)


def test_place_each_order_type(api, account):
    # The answer says what the exchange said: filled on arrival, or resting (a stop waiting for its trigger).
    cases = [
        ({}, "FILLED"),
        ({"order_type": "LIMIT", "price": "1400.5"}, "OPEN"),
        ({"order_type": "SL", "side": "SELL", "price": "1390", "trigger_price": "1391"}, "OPEN"),
        ({"order_type": "SL-M", "trigger_price": "1510"}, "OPEN"),
    ]
    for case, status in cases:
        response = post(api, "/api/v1/orders", body(account, **case))
        assert response.status_code == 201, response.json()
        data = response.json()
        assert data["status"] == status and data["broker_order_id"]
        assert PaperOrder.objects.filter(tag=data["reference"]).count() == 1
    assert Order.objects.count() == 4


def test_idempotency_key_returns_the_same_order(api, account):
    first = post(api, "/api/v1/orders", body(account), HTTP_IDEMPOTENCY_KEY="abc-1")
    again = post(api, "/api/v1/orders", body(account), HTTP_IDEMPOTENCY_KEY="abc-1")
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert PaperOrder.objects.count() == 1
    conflict = post(api, "/api/v1/orders", body(account, quantity=2), HTTP_IDEMPOTENCY_KEY="abc-1")
    assert conflict.status_code == 409 and conflict.json()["error"]["field"] == "idempotency_key"


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"order_type": "LIMIT", "price": "1400.03"}, "price"),
        ({"quantity": 0}, "quantity"),
        ({"tradingsymbol": "NOPE"}, "tradingsymbol"),
        ({"order_type": "SL-M"}, "trigger_price"),
        ({"side": "HOLD"}, "side"),
    ],
)
def test_bad_input_is_422_naming_the_field(api, account, overrides, field):
    response = post(api, "/api/v1/orders", body(account, **overrides))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
    assert not PaperOrder.objects.exists()


def test_another_traders_ids_are_404_or_refused(api, account, other_trader, instruments):
    theirs = make_broker_account(other_trader, broker="paper", client_id="THEIRS")
    their_order = place(other_trader, theirs, order_type="LIMIT", price="1400")
    response = post(api, "/api/v1/orders", body(theirs))
    assert response.status_code == 422 and response.json()["error"]["field"] == "account_id"
    for method, path in [
        ("get", f"/api/v1/orders/{their_order.pk}"),
        ("get", f"/api/v1/orders/{their_order.pk}/events"),
        ("post", f"/api/v1/orders/{their_order.pk}/cancel"),
        ("patch", f"/api/v1/orders/{their_order.pk}"),
    ]:
        data = {"price": "1401"} if method == "patch" else None  # a GET's data would be its query
        response = getattr(api, method)(path, data, content_type="application/json")
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    assert PaperOrder.objects.get(tag=their_order.reference).status == "OPEN"


def test_list_filters_and_pagination(api, trader, account):
    for _ in range(3):
        place(trader, account, order_type="LIMIT", price="1400")
    place(trader, account, symbol="TCS")
    page = api.get("/api/v1/orders", {"limit": 2}).json()
    assert page["count"] == 4 and len(page["items"]) == 2
    assert api.get("/api/v1/orders", {"symbol": "TCS"}).json()["count"] == 1
    assert api.get("/api/v1/orders", {"status": "OPEN", "account_id": account.pk}).json()["count"] == 3
    assert api.get("/api/v1/orders", {"limit": 1000}).status_code == 422


def test_modify_cancel_and_events(api, account):
    order = post(api, "/api/v1/orders", body(account, order_type="LIMIT", price="1400")).json()
    changed = api.patch(f"/api/v1/orders/{order['id']}", {"price": "1401"}, content_type="application/json")
    assert changed.status_code == 200 and changed.json()["price"] == "1401.00"
    cancelled = api.post(f"/api/v1/orders/{order['id']}/cancel")
    assert cancelled.json()["status"] == "CANCELLED"
    again = api.post(f"/api/v1/orders/{order['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "refused"
    events = api.get(f"/api/v1/orders/{order['id']}/events").json()
    assert [event["kind"] for event in events] == [
        "created", "submitted", "opened", "modified", "cancel_requested", "cancelled"
    ]  # fmt: skip
    # What a modify changed and who asked for the cancel, as the order's page says (the message was
    # empty: an API client could not tell what changed).
    modified, asked = events[3], events[4]
    assert (modified["message"], modified["summary"]) == ("", "price 1401.00")
    assert modified["data"] == {"price": "1401.00"}
    assert asked["summary"] == "asked by the trader" and asked["data"]["by"] == "trader"


def test_a_modify_of_an_order_its_broker_has_not_answered_for_says_why_it_cannot_be_changed_yet(api, trader, account):
    """An order still being sent, or one whose placement's answer was lost (SUBMITTED, no broker id
    yet: it is being looked up), cannot be changed yet. The refusal said "Only an open order can be
    modified; this one is Submitted.": a submitted order is open to a trader, who sends it again."""
    from orders import services
    from orders.tests.factories import instrument

    def prepared():
        order, _fresh = services.order_prepare(
            actor=trader,
            account=account,
            instrument=instrument("INFY"),
            side="BUY",
            quantity=1,
            order_type="LIMIT",
            product="MIS",
            price="1400",
            source=Order.Source.MANUAL,
            cause="test",
        )
        return order

    sending, lost = prepared(), prepared()
    services.order_outcome_unknown(lost, "timed out")
    for order, why in ((sending, "being sent"), (lost, "answer for this order was lost")):
        answer = api.patch(f"/api/v1/orders/{order.pk}", {"price": "1401"}, content_type="application/json")
        assert answer.status_code == 409 and answer.json()["error"]["code"] == "refused"
        assert why in answer.json()["error"]["message"], answer.json()
        order.refresh_from_db()
        assert order.price == 1400 and not order.events.filter(kind__startswith="modif").exists()
    assert not PaperOrder.objects.exists()


def test_per_key_rate_limit_answers_429_with_retry_after(api, settings):
    settings.API_RATE_LIMITS = [(2, 10.0)]
    assert api.get("/api/v1/me").status_code == 200
    assert api.get("/api/v1/me").status_code == 200
    response = api.get("/api/v1/me")
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1 and response.json()["error"]["code"] == "rate_limited"


def test_a_key_budget_that_cannot_be_checked_is_503_to_retry_not_a_500(api, monkeypatch):
    """Redis unreachable when a key's budget is taken: the request is not served (no call without
    its slot), and the client is told to retry shortly in the one error shape, as an outage (503,
    which the SDK retries with the same idempotency key), not as the platform's bug."""
    from brokers.errors import RateLimited

    def unreachable(raw_key, ip=None):
        raise RateLimited("the rate budget for calls could not be checked (Error 111 connecting to redis:6379)")

    monkeypatch.setattr(account_services, "api_key_authenticate", unreachable)
    response = api.get("/api/v1/me")
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "unavailable" and "redis" not in response.content.decode()


def test_openapi_documents_the_busy_answers_every_operation_can_give_and_their_retry_after(client, db):
    """Every operation answers 503 (its key's budget could not be checked) and 429, each with a
    Retry-After to wait: a client generated from the document must know both, and the header."""
    schema = client.get("/api/v1/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for code in ("429", "503"):
                answer = operation["responses"].get(code)
                assert answer is not None, (method, path, code)
                assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
                assert answer["headers"]["Retry-After"]["schema"]["type"] == "integer", (method, path, code)


@pytest.mark.parametrize("wait, header", [(0.2, "1"), (1.3, "2"), (2.005, "3"), (2.01, "3"), (3.0, "3")])
def test_retry_after_is_never_shorter_than_the_wait(api, trader, monkeypatch, wait, header):
    """A client that waits Retry-After whole seconds must find a slot free: 2.005 s is "3", not "2"."""
    monkeypatch.setattr(
        account_services,
        "api_key_authenticate",
        lambda raw_key, ip=None: account_services.ApiKeyAuth(key_id=1, user=trader, retry_after=wait),
    )
    response = api.get("/api/v1/me")
    assert response.status_code == 429 and response["Retry-After"] == header


def test_instruments_search(api, instruments):
    page = api.get("/api/v1/instruments", {"q": "INF"}).json()
    assert [row["tradingsymbol"] for row in page["items"]] == ["INFY"]
    assert page["items"][0]["tick_size"] == "0.1000"


def test_openapi_schema_and_docs_are_served(client, db):
    schema = client.get("/api/v1/openapi.json").json()
    assert "/api/v1/orders" in schema["paths"] and "/api/v1/strategies/{strategy_id}/signal" in schema["paths"]
    assert client.get("/api/v1/docs").status_code == 200


def test_every_api_error_has_the_one_shape(api, db):
    for response in (
        api.get("/api/v1/no-such-thing"),
        api.put("/api/v1/orders", {}, content_type="application/json"),
        api.post("/api/v1/orders", "{not json", content_type="application/json"),
    ):
        assert response["Content-Type"].startswith("application/json"), response.content
        assert set(response.json()["error"]) == {"code", "message", "field"}
    assert api.put("/api/v1/orders", {}, content_type="application/json").status_code == 405


def test_a_refused_signal_does_not_use_up_its_id(api, trader, account):
    strategy = post(api, "/api/v1/strategies", {"name": "S", "account_ids": [account.pk]}).json()
    path = f"/api/v1/strategies/{strategy['id']}/signal"
    refused = post(api, path, {"id": "a1", "tradingsymbol": "NOPE", "side": "BUY", "quantity": 1})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "tradingsymbol"
    placed = post(api, path, {"id": "a1", "tradingsymbol": "INFY", "side": "BUY", "quantity": 1})
    assert placed.status_code == 201 and placed.json()["replayed"] is False
    assert PaperOrder.objects.count() == 1


def test_a_signal_id_used_for_another_signal_answers_409(api, trader, account):
    strategy = post(api, "/api/v1/strategies", {"name": "S", "account_ids": [account.pk]}).json()
    path = f"/api/v1/strategies/{strategy['id']}/signal"
    assert post(api, path, {"id": "a1", "tradingsymbol": "INFY", "side": "BUY", "quantity": 1}).status_code == 201
    assert post(api, path, {"id": "a1", "tradingsymbol": "INFY", "side": "BUY", "quantity": 1}).status_code == 200
    refused = post(api, path, {"id": "a1", "tradingsymbol": "INFY", "side": "SELL", "quantity": 1})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
    assert PaperOrder.objects.count() == 1


def test_a_retry_of_a_signal_after_its_instrument_changed_is_a_replay(api, trader, account):
    """A signal for one NIFTY lot is placed and its answer lost; the instruments are refreshed (the
    exchange revised the lot size), and the client sends the very same request again: a replay
    (200, the first signal's results), not refused as another signal, which would invite the client
    to send it again under a new id and place it twice."""
    from brokers import selectors
    from brokers.models import Instrument

    strategy = post(api, "/api/v1/strategies", {"name": "S", "account_ids": [account.pk]}).json()
    path = f"/api/v1/strategies/{strategy['id']}/signal"
    signal = {"id": "a1", "exchange": "NFO", "tradingsymbol": "NIFTY26DECFUT", "side": "BUY", "quantity": 75,
              "product": "NRML"}  # fmt: skip
    first = post(api, path, signal)
    assert first.status_code == 201, first.json()
    Instrument.objects.filter(exchange="NFO", tradingsymbol="NIFTY26DECFUT").update(lot_size=65)
    selectors.instruments_changed()
    retry = post(api, path, signal)
    assert retry.status_code == 200, retry.json()
    assert retry.json()["replayed"] is True and retry.json()["results"] == first.json()["results"]
    assert PaperOrder.objects.count() == 1


def test_long_basket_keys_are_not_cut_short(api, trader, account):
    basket = post(
        api,
        "/api/v1/baskets",
        {"name": "B", "account_ids": [account.pk], "items": [{"tradingsymbol": "INFY", "side": "BUY", "quantity": 1}]},
    ).json()
    path = f"/api/v1/baskets/{basket['id']}/place"
    common = "k" * 70
    first = post(api, path, {}, HTTP_IDEMPOTENCY_KEY=common + "1").json()
    second = post(api, path, {}, HTTP_IDEMPOTENCY_KEY=common + "2").json()
    assert first[0]["order_id"] != second[0]["order_id"]
    assert post(api, path, {}, HTTP_IDEMPOTENCY_KEY="x" * 101).status_code == 422


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"validty": "IOC"}, "validty"),  # a misspelt field is not ignored
        ({"quantity": "2"}, "quantity"),
        ({"quantity": True}, "quantity"),
        ({"quantity": 1.5}, "quantity"),
        ({"account_id": "1"}, "account_id"),  # a string is not read as an id
        ({"order_type": "LIMIT", "price": "1e20"}, "price"),
    ],
)
def test_loose_input_is_refused_naming_the_field(api, account, overrides, field):
    response = post(api, "/api/v1/orders", body(account, **overrides))
    assert response.status_code == 422, response.json()
    assert response.json()["error"]["field"] == field
    assert not PaperOrder.objects.exists()


def test_an_sl_m_order_on_an_option_is_refused_naming_the_order_type(api, account):
    """Kite blocks stop-loss market orders on F&O options: the platform sent one, and the broker
    rejected it. It is refused before anything is sent, saying why; an SL on it is placed."""
    option = {"exchange": "NFO", "tradingsymbol": "NIFTY26DEC26000CE", "quantity": 75, "product": "NRML"}
    response = post(api, "/api/v1/orders", body(account, **option, order_type="SL-M", trigger_price="260"))
    assert response.status_code == 422, response.json()
    error = response.json()["error"]
    assert error["field"] == "order_type" and "SL-M orders are blocked for F&O option contracts" in error["message"]
    assert not Order.objects.exists() and not PaperOrder.objects.exists()
    stop = post(api, "/api/v1/orders", body(account, **option, order_type="SL", trigger_price="260", price="268"))
    assert stop.status_code == 201 and stop.json()["status"] == "OPEN", stop.json()


def test_a_price_is_answered_as_stored(api, account):
    data = post(api, "/api/v1/orders", body(account, order_type="LIMIT", price="1.4E+3")).json()
    assert data["price"] == "1400.00"
    assert api.get(f"/api/v1/orders/{data['id']}").json()["price"] == "1400.00"


def test_an_order_its_broker_refused_is_answered_as_stored(api, account):
    """The answer to a placement the broker refused said ``"average_price": "0"``, where the same
    order read back says ``"0.0000"`` (as every placed order's answer does): the answer was the
    unsaved default, not the stored figure, so a client comparing the two saw the order change."""
    placed = post(api, "/api/v1/orders", body(account, order_type="SL", price="1401", trigger_price="1400"))
    assert placed.status_code == 201 and placed.json()["status"] == "REJECTED", placed.json()
    stored = api.get(f"/api/v1/orders/{placed.json()['id']}").json()
    assert placed.json()["average_price"] == stored["average_price"] == "0.0000"
    assert placed.json() == stored


def test_a_modify_with_a_price_its_type_takes_none_of_is_422(api, account):
    order = post(api, "/api/v1/orders", body(account, order_type="LIMIT", price="1400")).json()
    response = api.patch(f"/api/v1/orders/{order['id']}", {"trigger_price": "1390"}, content_type="application/json")
    assert response.status_code == 422 and response.json()["error"]["field"] == "trigger_price"


def test_list_filters_refuse_what_they_do_not_know(api, trader, account):
    place(trader, account, order_type="LIMIT", price="1400")
    place(trader, account)
    assert api.get("/api/v1/orders", {"status": "open"}).json()["count"] == 1
    for bad in ({"status": "BOGUS"}, {"source": "bogus"}, {"since": "2026-12-03T07:56:30"}):
        response = api.get("/api/v1/orders", bad)
        assert response.status_code == 422, bad
        assert response.json()["error"]["field"] == next(iter(bad))
    assert api.get("/api/v1/orders", {"since": "2026-12-03T07:56:30Z"}).status_code == 200


def test_a_time_filter_whose_plus_was_read_as_a_space_says_so(api, trader, account):
    """``?since=2026-12-03T09:15:00+05:30`` typed into a URL as it is: its '+' reaches the server as a
    space. The 422 said "unexpected extra characters at the end of the input", though the time was
    right as written; it must say to send the '+' as %2B."""
    place(trader, account)
    for path, name in (("/api/v1/orders", "since"), ("/api/v1/trades", "since"), ("/api/v1/trades", "until")):
        response = api.get(f"{path}?{name}=2026-12-03T09:15:00+05:30")
        assert response.status_code == 422, response.json()
        error = response.json()["error"]
        assert error["field"] == name and "%2B" in error["message"], error
    assert api.get("/api/v1/orders?since=2026-12-03T09:15:00%2B05:30").json()["count"] == 1
    assert api.get("/api/v1/orders?since=2026-12-03 09:15:00Z").json()["count"] == 1  # a space before the time is fine
    assert "offset" in api.get("/api/v1/orders?since=2026-12-03 09:15").json()["error"]["message"]


def test_a_filter_a_list_does_not_take_is_422_naming_it(api, trader, account, instruments):
    """A misspelt filter was dropped and the list answered unfiltered: ``acount_id`` listed every
    account's open orders (a script cancelling one account's would cancel them all)."""
    other = make_broker_account(trader, broker="paper", client_id="OTHER")
    place(trader, account, order_type="LIMIT", price="1400")
    place(trader, other, order_type="LIMIT", price="1400")
    assert api.get("/api/v1/orders", {"account_id": account.pk, "status": "open"}).json()["count"] == 1
    for path, bad in [
        ("/api/v1/orders", {"acount_id": account.pk, "status": "open"}),
        ("/api/v1/orders", {"statuses": "open"}),
        ("/api/v1/trades", {"account": account.pk}),
        ("/api/v1/positions", {"open": "true"}),
        ("/api/v1/instruments", {"query": "INF"}),
    ]:
        response = api.get(path, bad)
        assert response.status_code == 422, (path, bad, response.json())
        error = response.json()["error"]
        assert error["code"] == "invalid" and error["field"] in bad and "Unknown filter" in error["message"], error
    assert api.get("/api/v1/orders", {"limit": 1, "before_id": 10**6, "source": "manual"}).status_code == 200
    assert api.get("/api/v1/positions", {"account_id": account.pk, "open_only": "true"}).status_code == 200
    assert api.get("/api/v1/instruments", {"q": "INF", "limit": 5}).status_code == 200


def test_an_unexpected_error_is_answered_in_the_one_shape(api, account, monkeypatch):
    from orders import services

    def broken(**kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(services, "order_place", broken)
    response = post(api, "/api/v1/orders", body(account))
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal" and "a bug" not in response.content.decode()


def test_trades_and_positions_are_read_only_and_the_callers_own(api, trader, account, other_trader, instruments):
    from monitoring import cycle

    place(trader, account, quantity=2)
    place(trader, account, side="SELL", quantity=1)
    theirs = make_broker_account(other_trader, broker="paper", client_id="THEIRS")
    place(other_trader, theirs, quantity=5)
    for each in (account, theirs):  # the monitoring cycle records the fills
        cycle.account_monitor(account=each)
    trades = api.get("/api/v1/trades").json()
    assert trades["count"] == 2 and {t["account_id"] for t in trades["items"]} == {account.pk}
    assert [t["side"] for t in trades["items"]] == ["SELL", "BUY"]  # newest first
    for path in ("/api/v1/trades", "/api/v1/positions", "/api/v1/orders"):
        # Another trader's account is no filter of the caller's: an error naming it, not an empty list.
        refused = api.get(path, {"account_id": theirs.pk})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "account_id", path
        assert api.get(path, {"account_id": account.pk}).status_code == 200
    assert api.get("/api/v1/trades", {"symbol": "TCS"}).json()["count"] == 0
    assert api.get("/api/v1/trades", {"since": "2026-12-03T07:56:30"}).status_code == 422
    positions = api.get("/api/v1/positions").json()["items"]
    assert [(p["tradingsymbol"], p["net_quantity"]) for p in positions] == [("INFY", 1)]
    assert positions[0]["average_price"] == trades["items"][1]["price"][: len(positions[0]["average_price"])]
    assert api.post("/api/v1/trades", {}, content_type="application/json").status_code == 405


def test_a_signal_with_a_bad_field_does_not_use_up_its_id(api, trader, account):
    strategy = post(api, "/api/v1/strategies", {"name": "S", "account_ids": [account.pk]}).json()
    path = f"/api/v1/strategies/{strategy['id']}/signal"
    signal = {"id": "b1", "tradingsymbol": "INFY", "side": "BUY", "quantity": 1, "order_type": "LIMIT"}
    refused = post(api, path, {**signal, "price": "1400.05"})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "price"
    placed = post(api, path, {**signal, "price": "1400"})
    assert placed.status_code == 201 and placed.json()["replayed"] is False
    assert placed.json()["results"][0]["status"] == "OPEN"


def test_a_signal_whose_exchange_is_not_unicode_is_refused_naming_it_not_a_500(api, trader, account):
    """A lone surrogate escape ("\\ud800") in a signal's exchange reached the database: a 500. The
    order ticket's exchange (and the signal's symbol) are refused naming the field; so is this."""
    import json

    strategy = post(api, "/api/v1/strategies", {"name": "S", "account_ids": [account.pk]}).json()
    path = f"/api/v1/strategies/{strategy['id']}/signal"
    signal = {"id": "b1", "exchange": "HALF", "tradingsymbol": "INFY", "side": "BUY", "quantity": 1}
    refused = post(api, path, json.dumps(signal).replace('"HALF"', '"\\ud800"'))
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "exchange"
    assert not PaperOrder.objects.exists()


def test_a_body_that_is_not_sent_as_json_is_refused(api, account):
    import json

    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        response = api.post("/api/v1/orders", json.dumps(body(account)), content_type=content_type)
        assert response.status_code == 400 and "Content-Type: application/json" in response.json()["error"]["message"]
    twice = f'{{"account_id": {account.pk}, "tradingsymbol": "INFY", "side": "BUY", "quantity": 1, "quantity": 100}}'
    refused = api.post("/api/v1/orders", twice, content_type="application/json")
    assert refused.status_code == 400 and "'quantity' appears more than once" in refused.json()["error"]["message"]
    assert not PaperOrder.objects.exists()


def test_a_basket_placed_with_no_body_goes_to_its_own_accounts(api, account):
    basket = post(
        api,
        "/api/v1/baskets",
        {"name": "B", "account_ids": [account.pk], "items": [{"tradingsymbol": "INFY", "side": "BUY", "quantity": 1}]},
    ).json()
    response = api.generic("POST", f"/api/v1/baskets/{basket['id']}/place")  # no body at all
    assert response.status_code == 200, response.json()
    assert [row["account_id"] for row in response.json()] == [account.pk] and PaperOrder.objects.count() == 1


def test_a_basket_items_refused_row_says_which_item_it_is(api, account):
    """Two items alike but for their price (a ladder of limit buys); the account's order value limit
    refuses the second. Its row said "BUY 10 INFY: order value above the limit", as the first's said
    "BUY 10 INFY OPEN": the client could not tell which item was refused but by the rows' order, which
    follows the accounts' labels, not what it sent. Each row names its item's number in the basket."""
    account.max_order_value = Decimal("14500")
    account.save()
    ladder = [
        {"tradingsymbol": "INFY", "side": "BUY", "quantity": 10, "order_type": "LIMIT", "price": price}
        for price in ("1400", "1500")
    ]
    basket = post(api, "/api/v1/baskets", {"name": "Ladder", "account_ids": [account.pk], "items": ladder}).json()
    rows = post(api, f"/api/v1/baskets/{basket['id']}/place", {}).json()
    assert [(row["item"], row["status"], row["field"]) for row in rows] == [
        (1, "OPEN", None),
        (2, "INVALID", "quantity"),
    ], rows
    last = api.get(f"/api/v1/baskets/{basket['id']}").json()["last_results"]
    assert [row["item"] for row in last] == [1, 2]


def test_a_basket_placed_on_an_empty_list_of_accounts_places_nothing(api, trader, account):
    spare = make_broker_account(trader, broker="paper", client_id="SPARE", label="Spare")
    basket = post(
        api,
        "/api/v1/baskets",
        {
            "name": "B",
            "account_ids": [account.pk, spare.pk],
            "items": [{"tradingsymbol": "INFY", "side": "BUY", "quantity": 1}],
        },
    ).json()
    # The client chose no account (a filter that kept none): not "every account of the basket".
    response = post(api, f"/api/v1/baskets/{basket['id']}/place", {"account_ids": []})
    assert response.status_code == 422, response.json()
    assert response.json()["error"]["field"] == "account_ids"
    assert not PaperOrder.objects.exists()


def test_a_basket_create_sent_again_with_its_key_is_the_same_basket(api, account):
    """A retried create (its answer lost) was "name taken" by the basket the first had made."""
    body = {
        "name": "B",
        "account_ids": [account.pk],
        "items": [{"tradingsymbol": "INFY", "side": "BUY", "quantity": 1}],
    }
    first = post(api, "/api/v1/baskets", body, HTTP_IDEMPOTENCY_KEY="make-b")
    again = post(api, "/api/v1/baskets", body, HTTP_IDEMPOTENCY_KEY="make-b")
    assert (first.status_code, again.status_code) == (201, 200) and again.json() == first.json()
    other = post(api, "/api/v1/baskets", {**body, "name": "C"}, HTTP_IDEMPOTENCY_KEY="make-b")
    assert other.status_code == 409 and other.json()["error"]["field"] == "idempotency_key"
    taken = post(api, "/api/v1/baskets", body)  # no key: a new basket, whose name is taken
    assert taken.status_code == 422 and taken.json()["error"]["field"] == "name"
    assert list(Basket.objects.values_list("name", flat=True)) == ["B"]


def test_a_basket_key_reused_for_other_accounts_or_another_basket_is_a_conflict(api, trader, account):
    """The same Idempotency-Key with another body is a 409 (as for orders): not a placement on the
    accounts the retry names, nor of the other basket the key is sent to."""
    spare = make_broker_account(trader, broker="paper", client_id="SPARE", label="Spare")
    items = [{"tradingsymbol": "INFY", "side": "BUY", "quantity": 1}]
    basket = post(api, "/api/v1/baskets", {"name": "B", "account_ids": [account.pk, spare.pk], "items": items}).json()
    other = post(api, "/api/v1/baskets", {"name": "C", "account_ids": [account.pk], "items": items}).json()
    place = f"/api/v1/baskets/{basket['id']}/place"
    first = post(api, place, {"account_ids": [account.pk]}, HTTP_IDEMPOTENCY_KEY="run-1")
    assert first.status_code == 200 and PaperOrder.objects.count() == 1
    assert post(api, place, {"account_ids": [account.pk]}, HTTP_IDEMPOTENCY_KEY="run-1").json() == first.json()
    for path, payload in (
        (place, {"account_ids": [spare.pk]}),
        (place, {}),
        (f"/api/v1/baskets/{other['id']}/place", {}),
    ):
        conflict = post(api, path, payload, HTTP_IDEMPOTENCY_KEY="run-1")
        assert conflict.status_code == 409, conflict.json()
        assert conflict.json()["error"]["field"] == "idempotency_key"
    assert PaperOrder.objects.count() == 1
    # A new key is a new placement; the basket's own accounts when none are named.
    assert len(post(api, place, {}, HTTP_IDEMPOTENCY_KEY="run-2").json()) == 2 and PaperOrder.objects.count() == 3


def test_a_scheduled_orders_price_is_answered_as_stored(api, account):
    data = {**body(account), "order_type": "LIMIT", "price": "1.4E+3", "recurrence": "trading_days"}
    response = post(api, "/api/v1/scheduled", {**data, "time_of_day": "10:15:00"})
    assert response.status_code == 201, response.json()
    assert response.json()["price"] == "1400.00"


def test_a_scheduled_orders_validity_is_answered(api, account, client):
    """`validity` is taken, stored and used when the order is placed, but was never answered: a
    trader could set IOC and not read back which the order will be placed with."""
    data = {**body(account), "validity": "IOC", "recurrence": "trading_days", "time_of_day": "10:15:00"}
    created = post(api, "/api/v1/scheduled", data)
    assert created.status_code == 201, created.json()
    assert created.json().get("validity") == "IOC"
    assert api.get(f"/api/v1/scheduled/{created.json()['id']}").json()["validity"] == "IOC"
    changed = api.patch(
        f"/api/v1/scheduled/{created.json()['id']}", {"validity": "DAY"}, content_type="application/json"
    )
    assert changed.json()["validity"] == "DAY" == ScheduledOrder.objects.get().validity
    schema = client.get("/api/v1/openapi.json").json()["components"]["schemas"]["ScheduledOut"]
    assert "validity" in schema["required"]


def test_an_idempotency_key_makes_a_scheduled_order_once(api, account):
    """A client's retry of a create whose answer was lost must not schedule the order twice (it
    would be placed twice at every run)."""
    data = {**body(account), "recurrence": "trading_days", "time_of_day": "10:15:00"}
    first = post(api, "/api/v1/scheduled", data, HTTP_IDEMPOTENCY_KEY="sched-1")
    again = post(api, "/api/v1/scheduled", data, HTTP_IDEMPOTENCY_KEY="sched-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and ScheduledOrder.objects.count() == 1
    conflict = post(api, "/api/v1/scheduled", {**data, "quantity": 2}, HTTP_IDEMPOTENCY_KEY="sched-1")
    assert conflict.status_code == 409 and conflict.json()["error"]["field"] == "idempotency_key"
    too_long = post(api, "/api/v1/scheduled", data, HTTP_IDEMPOTENCY_KEY="k" * 101)
    assert too_long.status_code == 422 and too_long.json()["error"]["field"] == "idempotency_key"
    assert post(api, "/api/v1/scheduled", data).status_code == 201  # no key: a new one each time
    assert ScheduledOrder.objects.count() == 2


def test_a_repeat_of_a_scheduled_create_is_the_first_one_though_its_limits_changed_since(api, account, trader):
    """The retry comes after the account's limit was lowered (or its one-off time came): it is not
    checked again as a new order, or its sender, told 422, would schedule it a second time."""
    data = {**body(account, quantity=5), "recurrence": "trading_days", "time_of_day": "10:15:00"}
    first = post(api, "/api/v1/scheduled", data, HTTP_IDEMPOTENCY_KEY="sched-2")
    account_services.broker_account_update(account=account, actor=trader, max_quantity=1)
    again = post(api, "/api/v1/scheduled", data, HTTP_IDEMPOTENCY_KEY="sched-2")
    assert (first.status_code, again.status_code) == (201, 200), again.json()
    assert again.json()["id"] == first.json()["id"] and ScheduledOrder.objects.count() == 1
    new = post(api, "/api/v1/scheduled", data, HTTP_IDEMPOTENCY_KEY="sched-3")  # a new one is checked
    assert new.status_code == 422 and new.json()["error"]["field"] == "quantity"


def test_lists_page_newest_first_by_id_and_before_id_pages_without_repeats(api, trader, account):
    placed = [place(trader, account, order_type="LIMIT", price="1400").pk for _ in range(4)]
    # Newest first is by id: a clock that went back does not reorder the list (or a cursor on it).
    Order.objects.filter(pk=placed[0]).update(created_at=Order.objects.get(pk=placed[-1]).created_at)
    first = api.get("/api/v1/orders", {"limit": 2}).json()
    assert [o["id"] for o in first["items"]] == [placed[3], placed[2]]
    newer = [place(trader, account, order_type="LIMIT", price="1400").pk for _ in range(2)]  # arrive meanwhile
    rest = api.get("/api/v1/orders", {"limit": 2, "before_id": first["items"][-1]["id"]}).json()
    assert [o["id"] for o in rest["items"]] == [placed[1], placed[0]]
    assert (rest["count"], rest["offset"]) == (2, 0)
    assert [o["id"] for o in api.get("/api/v1/orders", {"limit": 2}).json()["items"]] == newer[::-1]
    after_one = api.get("/api/v1/orders", {"before_id": placed[3], "offset": 1}).json()
    assert [o["id"] for o in after_one["items"]] == [placed[1], placed[0]]
    for bad in (0, -1, "x"):
        response = api.get("/api/v1/orders", {"before_id": bad})
        assert response.status_code == 422 and response.json()["error"]["field"] == "before_id"


def test_trades_page_by_before_id(api, trader, account):
    from monitoring import cycle

    for _ in range(3):
        place(trader, account)
    cycle.account_monitor(account=account)  # records the fills
    every = [t["id"] for t in api.get("/api/v1/trades").json()["items"]]
    assert len(every) == 3 and every == sorted(every, reverse=True)
    page = api.get("/api/v1/trades", {"limit": 2}).json()
    rest = api.get("/api/v1/trades", {"limit": 2, "before_id": page["items"][-1]["id"]}).json()
    assert [t["id"] for t in page["items"] + rest["items"]] == every and rest["count"] == 1


def test_a_price_sent_as_a_json_number_is_read_exactly(api, account):
    import json

    def send(price: str, **overrides):
        data = json.dumps(body(account, order_type="LIMIT", **overrides))
        return api.post("/api/v1/orders", data[:-1] + f', "price": {price}}}', content_type="application/json")

    # Through a float this was 1400.0 and placed at 1400.00; it is not a multiple of the 0.1 tick.
    refused = send("1400.0000000000001")
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "price"
    assert not PaperOrder.objects.exists()
    placed = send("1400.5")
    assert placed.status_code == 201 and placed.json()["price"] == "1400.50"
    whole = send("1400.5", quantity=1.0)  # a quantity stays a whole JSON number
    assert whole.status_code == 422 and whole.json()["error"]["field"] == "quantity"
    assert PaperOrder.objects.count() == 1


def test_an_oversized_body_is_413_in_the_one_shape(api, account, settings, caplog):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = post(api, "/api/v1/orders", body(account, tradingsymbol="X" * 2000))
    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "payload_too_large",
        "message": "The body is too large: at most 1000 bytes.",
        "field": None,
    }
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not Order.objects.exists()


def test_a_strategy_create_retried_with_its_key_is_the_same_strategy_with_a_working_secret(api, trader, account):
    """A create whose answer was lost (a timeout) and was retried: the retry said "name taken" and
    the strategy's secret, in the lost answer only, could not be had. The retry with the same key is
    the same strategy (200) with a new secret, the one that then signs alerts."""
    create = {"name": "Trend", "account_ids": [account.pk], "stop_loss": "1.5"}
    first = post(api, "/api/v1/strategies", create, HTTP_IDEMPOTENCY_KEY="make-1")
    again = post(api, "/api/v1/strategies", create, HTTP_IDEMPOTENCY_KEY="make-1")
    assert (first.status_code, again.status_code) == (201, 200), again.json()
    assert again.json()["id"] == first.json()["id"] and Strategy.objects.count() == 1
    secret = again.json()["webhook_secret"]
    assert secret != first.json()["webhook_secret"]
    assert Strategy.objects.get().webhook_secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    conflict = post(api, "/api/v1/strategies", {**create, "stop_loss": "2"}, HTTP_IDEMPOTENCY_KEY="make-1")
    assert conflict.status_code == 409 and conflict.json()["error"]["field"] == "idempotency_key"
    # Another trader's key of the same text is theirs: a strategy of their own, not a replay of this one.
    other = make_user(username="other-bot")
    _, secret = account_services.api_key_create(owner=other, name="bot")
    theirs = post(api, "/api/v1/strategies", {"name": "Trend"}, HTTP_IDEMPOTENCY_KEY="make-1",
                  HTTP_AUTHORIZATION=f"Bearer {secret}")  # fmt: skip
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    assert post(api, "/api/v1/strategies", create).status_code == 422  # no key: the name is taken


def test_openapi_declares_the_idempotency_key_and_the_page_cursor(client, db):
    schema = client.get("/api/v1/openapi.json").json()
    for path in ("/api/v1/orders", "/api/v1/baskets/{basket_id}/place", "/api/v1/scheduled", "/api/v1/strategies"):
        operation = schema["paths"][path]["post"]
        [header] = [p for p in operation["parameters"] if p["in"] == "header"]
        assert header["name"] == "Idempotency-Key" and header["required"] is False and header["description"]
        assert header["schema"]["maxLength"] == 100
        assert "413" in operation["responses"]
    for path in ("/api/v1/orders", "/api/v1/trades"):
        [cursor] = [p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == "before_id"]
        assert cursor["in"] == "query" and "last id" in cursor["description"]


def test_a_query_with_too_many_parameters_is_400_in_the_one_shape_not_a_500(api, account, settings, caplog):
    """Django refuses a query string of more than ``DATA_UPLOAD_MAX_NUMBER_FIELDS`` parameters as
    suspicious (a 400 of its own); read inside the API it was answered as our failure, a 500 logged
    with its traceback."""
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    response = api.get("/api/v1/orders?" + "&".join(["status=open"] * 11))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request" and response.json()["error"]["field"] is None
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_a_query_parameter_an_endpoint_does_not_take_is_422_and_changes_nothing(api, trader, account):
    """Only the lists with filters refused a query parameter they do not take; every other endpoint
    dropped it. A basket placed with ``?account_ids=`` (the body's field sent in the URL) was placed
    on every account of the basket, and ``GET /scheduled?account_id=`` answered every account's
    scheduled orders (a script cancelling one account's would cancel them all)."""
    spare = make_broker_account(trader, broker="paper", client_id="SPARE", label="Spare")
    items = [{"tradingsymbol": "INFY", "side": "BUY", "quantity": 1}]
    basket = post(api, "/api/v1/baskets", {"name": "B", "account_ids": [account.pk, spare.pk], "items": items}).json()
    response = api.generic("POST", f"/api/v1/baskets/{basket['id']}/place?account_ids={spare.pk}")
    assert response.status_code == 422, response.json()
    assert response.json()["error"]["field"] == "account_ids"
    assert not PaperOrder.objects.exists()
    for path, bad in [
        ("/api/v1/scheduled", {"account_id": account.pk}),
        ("/api/v1/baskets", {"name": "B"}),
        ("/api/v1/strategies", {"is_active": "true"}),
        ("/api/v1/accounts", {"is_active": "false"}),
        ("/api/v1/me", {"x": "1"}),
    ]:
        response = api.get(path, bad)
        assert response.status_code == 422, (path, response.json())
        assert response.json()["error"]["field"] == next(iter(bad))
    assert api.get("/api/v1/scheduled").status_code == 200
    schema = api.get("/api/v1/openapi.json").json()
    assert "422" in schema["paths"]["/api/v1/scheduled"]["get"]["responses"]


def test_a_baskets_last_results_say_what_its_orders_are_now(api, trader, account):
    """A limit item rests at its exchange (OPEN), then its broker refuses it (a postback, a sync).
    ``GET /baskets`` and ``GET /baskets/{id}`` kept answering ``last_results`` as they were at the
    placement, OPEN with no reason, on every later read (the page shows each as it is now): an algo
    read the order as working at the exchange. They answer each placed row as its order is now."""
    from brokers.base import Status
    from orders import services
    from orders.tests.factories import broker_state

    item = {"tradingsymbol": "INFY", "side": "BUY", "quantity": 1, "order_type": "LIMIT", "price": "1400"}
    basket = post(api, "/api/v1/baskets", {"name": "Resting", "account_ids": [account.pk], "items": [item]}).json()
    placed = post(api, f"/api/v1/baskets/{basket['id']}/place", {}).json()
    assert [row["status"] for row in placed] == ["OPEN"]
    order = Order.objects.get()
    refused = broker_state(order, status=Status.REJECTED, status_message="RMS: margin exceeds", pending_quantity=0)
    services.order_apply_broker_state(order, refused, cause="postback")

    for answer in (api.get(f"/api/v1/baskets/{basket['id']}").json(), api.get("/api/v1/baskets").json()["items"][0]):
        [row] = answer["last_results"]
        assert (row["order_id"], row["status"], row["reason"]) == (order.pk, "REJECTED", "RMS: margin exceeds")


def test_a_filter_that_takes_one_value_given_twice_is_422_naming_it(api, trader, account, instruments):
    """``status`` takes several values (any of them); the other filters take one. Given twice, the
    last was used and the first dropped without a word: ``?account_id=1&account_id=2`` listed only
    account 2's open orders (a script cancelling both accounts' orders left account 1's resting)."""
    other = make_broker_account(trader, broker="paper", client_id="OTHER")
    place(trader, account, order_type="LIMIT", price="1400")
    place(trader, other, order_type="LIMIT", price="1400")
    both = f"account_id={account.pk}&account_id={other.pk}"
    for path, query, field in [
        ("/api/v1/orders", f"{both}&status=open", "account_id"),
        ("/api/v1/orders", "limit=1&limit=2", "limit"),
        ("/api/v1/trades", both, "account_id"),
        ("/api/v1/positions", both, "account_id"),
        ("/api/v1/positions", "open_only=true&open_only=false", "open_only"),
        ("/api/v1/instruments", "q=INF&q=TCS", "q"),
    ]:
        response = api.get(f"{path}?{query}")
        assert response.status_code == 422, (path, query, response.json())
        error = response.json()["error"]
        assert error["code"] == "invalid" and error["field"] == field and "once" in error["message"], error
    # A filter that takes several values still does.
    assert api.get("/api/v1/orders?status=open&status=FILLED").json()["count"] == 2
    assert api.get(f"/api/v1/orders?account_id={account.pk}&status=open").json()["count"] == 1


def test_openapi_states_the_bounds_of_prices_and_strategy_settings_in_json_schema(client, db):
    """A price (a number or its text) must be below 10^12 and a stop-loss above 0, but the schema said
    so as ``"lt": "1000000000000"`` and ``"gt": 0``, words JSON Schema does not have: a client generated
    or checked from it took any price, and learnt of the bound from a 422."""

    def leftovers(node, where="$"):
        if isinstance(node, dict):
            found = [f"{where}.{key}" for key in ("lt", "gt", "le", "ge") if key in node and "anyOf" in node]
            return found + [hit for key, value in node.items() for hit in leftovers(value, f"{where}.{key}")]
        if isinstance(node, list):
            return [hit for index, value in enumerate(node) for hit in leftovers(value, f"{where}[{index}]")]
        return []

    schema = client.get("/api/v1/openapi.json").json()
    assert leftovers(schema) == []
    schemas = schema["components"]["schemas"]

    def number_branch(field):
        options = field["anyOf"]
        while not any(option.get("type") == "number" for option in options):
            options = [nested for option in options for nested in option.get("anyOf", [])]
        return next(option for option in options if option.get("type") == "number")

    for name in ("OrderIn", "OrderChangeIn", "OrderSpecIn", "ScheduledIn", "SignalIn", "ScheduledChangeIn"):
        for field in ("price", "trigger_price"):
            assert number_branch(schemas[name]["properties"][field])["exclusiveMaximum"] == 10**12, (name, field)
    for field in ("stop_loss", "take_profit", "trailing_step", "chase_max_percent"):
        assert number_branch(schemas["StrategyIn"]["properties"][field])["exclusiveMinimum"] == 0, field


def test_cancelling_a_scheduled_order_while_a_run_is_being_placed_answers_that_runs_due_time(api, trader, account):
    created = post(
        api, "/api/v1/scheduled", {**body(account), "recurrence": "trading_days", "time_of_day": "10:15:00"}
    ).json()
    quiet = api.delete(f"/api/v1/scheduled/{created['id']}").json()
    assert quiet["status"] == "cancelled" and quiet["placing_due_at"] is None
    again = post(
        api, "/api/v1/scheduled", {**body(account), "recurrence": "trading_days", "time_of_day": "10:15:00"}
    ).json()
    due_at = timezone.now().replace(microsecond=0)
    ScheduledFire.objects.create(scheduled_id=again["id"], due_at=due_at, status=ScheduledFire.Status.PLACING)
    answer = api.delete(f"/api/v1/scheduled/{again['id']}").json()
    assert answer["status"] == "cancelled"
    assert datetime.fromisoformat(answer["placing_due_at"]) == due_at
    assert "placing_due_at" in api.get(f"/api/v1/scheduled/{again['id']}").json()  # null there: a cancel's only


def _add_rows(kind, owner, account, count):
    """``count`` new rows of ``owner``'s list ``kind`` (their ids, oldest first)."""
    from brokers.models import Instrument
    from orders import sources
    from orders.models import Basket
    from portfolio.models import Position

    made = []
    for _ in range(count):
        if kind == "accounts":
            made.append(make_broker_account(owner, broker="paper", client_id=f"PG{owner.pk}-{len(made)}-{count}").pk)
        elif kind == "baskets":
            made.append(Basket.objects.create(owner=owner, name=f"B{Basket.objects.count()}").pk)
        elif kind == "scheduled":
            spec = {"instrument": Instrument.objects.get(tradingsymbol="INFY", exchange="NSE"), "side": "BUY"}
            scheduled = sources.scheduled_save(
                owner=owner,
                account=account,
                spec={**spec, "quantity": 1, "order_type": "MARKET", "product": "MIS"},
                recurrence="trading_days",
                time_of_day=datetime.strptime("10:15", "%H:%M").time(),
                timezone_name="Asia/Kolkata",
            )
            made.append(scheduled.pk)
        elif kind == "strategies":
            made.append(Strategy.objects.create(owner=owner, name=f"S{Strategy.objects.count()}").pk)
        else:  # positions: one per instrument
            taken = list(Position.objects.values_list("instrument_id", flat=True))
            instrument = Instrument.objects.exclude(pk__in=taken).order_by("pk").first()
            made.append(Position.objects.create(account=account, instrument=instrument, product="MIS").pk)
    return made


GROWING_LISTS = ["accounts", "baskets", "scheduled", "strategies", "positions"]


@pytest.mark.parametrize("kind", GROWING_LISTS)
def test_every_growing_list_is_paged_newest_first_by_id_and_the_cursor_neither_repeats_nor_skips(
    api, trader, account, other_trader, kind
):
    """``GET /scheduled``, ``/baskets``, ``/strategies``, ``/accounts`` and ``/positions`` answered every
    row at once: years of them, ever slower and larger. They page as the orders list does: ``limit`` rows
    from ``offset``, newest first by id, below ``before_id``; rows added between two pages shift nothing."""
    theirs = make_broker_account(other_trader, broker="paper", client_id="THEIRS")
    _add_rows(kind, other_trader, theirs, 2)  # never listed
    already = [account.pk] if kind == "accounts" else []  # the trader's paper account is listed too
    mine = already + _add_rows(kind, trader, account, 4 - len(already))
    path = f"/api/v1/{kind}"
    first = api.get(path, {"limit": 2}).json()
    assert (first["count"], first["limit"], first["offset"]) == (4, 2, 0), first
    assert [row["id"] for row in first["items"]] == [mine[3], mine[2]]
    newer = _add_rows(kind, trader, account, 2)  # added between two pages
    rest = api.get(path, {"limit": 2, "before_id": first["items"][-1]["id"]}).json()
    assert [row["id"] for row in rest["items"]] == [mine[1], mine[0]] and rest["count"] == 2
    assert [row["id"] for row in api.get(path, {"limit": 2}).json()["items"]] == newer[::-1]
    every = api.get(path).json()
    assert [row["id"] for row in every["items"]] == (mine + newer)[::-1] and every["count"] == 6
    assert [row["id"] for row in api.get(path, {"offset": 5}).json()["items"]] == [mine[0]]
    for name, bad in [("limit", 0), ("limit", 501), ("offset", -1), ("before_id", 0), ("before_id", "x")]:
        response = api.get(path, {name: bad})
        assert response.status_code == 422, (name, bad, response.json())
        assert response.json()["error"]["field"] == name


def test_openapi_documents_every_growing_list_as_a_page_with_its_cursor(client, db):
    schema = client.get("/api/v1/openapi.json").json()
    for kind in GROWING_LISTS:
        operation = schema["paths"][f"/api/v1/{kind}"]["get"]
        names = {p["name"] for p in operation["parameters"]}
        assert {"limit", "offset", "before_id"} <= names, kind
        ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        page = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        assert set(page["required"]) == {"count", "limit", "offset", "items"}, kind
        assert page["properties"]["items"]["type"] == "array", kind
