"""The Kite face on a real port: the official kiteconnect client, and Kite's wire format field for field."""

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from django.contrib.auth.hashers import make_password
from django.utils import timezone
from kiteconnect import KiteConnect
from kiteconnect import exceptions as kite_errors

from brokers import base
from brokers.kite.adapter import KiteBroker
from brokers.paper import engine, kite_format
from brokers.paper.models import PaperClient, PaperInstrument, PaperOrder, PaperToken, PaperTrade
from tradingplatform.testing import database_url, free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[3]
MOCKS = Path(__file__).resolve().parents[2] / "kite" / "samples"
REDIRECT = "http://app.example/callback"


def mock(name):
    return json.loads((MOCKS / f"{name}.json").read_text())


@pytest.fixture
def kite_client(transactional_db, paper_market):
    return PaperClient.objects.create(
        user_id="AB1234", name="Paper Trader", password=make_password("pw-123456"), redirect_url=REDIRECT
    )


def browser_login(face_url, client, password="pw-123456", redirect_params=""):
    """What a trader does on the login page; returns the redirect Location."""
    session = requests.Session()
    page = session.get(f"{face_url}/connect/login", params={"api_key": client.api_key, "v": "3"})
    assert page.status_code == 200
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = session.post(
        f"{face_url}/connect/login?api_key={client.api_key}",
        data={
            "csrfmiddlewaretoken": csrf,
            "api_key": client.api_key,
            "user_id": client.user_id,
            "password": password,
            "redirect_params": redirect_params,
        },
        headers={"Referer": f"{face_url}/connect/login"},
        allow_redirects=False,
    )
    return response


def request_token_for(face_url, client):
    location = browser_login(face_url, client).headers["Location"]
    assert location.startswith(REDIRECT)
    return re.search(r"request_token=([^&]+)", location).group(1)


@pytest.fixture
def kite(face_url, kite_client):
    kite = KiteConnect(api_key=kite_client.api_key, root=face_url)
    session = kite.generate_session(request_token_for(face_url, kite_client), api_secret=kite_client.api_secret)
    kite.set_access_token(session["access_token"])
    return kite


def test_login_page_redirects_with_request_token_and_redirect_params(face_url, kite_client):
    response = browser_login(face_url, kite_client, redirect_params="state=abc")
    assert response.status_code == 302
    location = response.headers["Location"]
    assert "request_token=" in location and "status=success" in location and "state=abc" in location


def test_login_page_refuses_a_wrong_password(face_url, kite_client):
    response = browser_login(face_url, kite_client, password="wrong")
    assert response.status_code == 400 and "Invalid user id or password" in response.text


def test_request_tokens_are_one_time_and_need_the_checksum(face_url, kite_client):
    token = request_token_for(face_url, kite_client)
    kite = KiteConnect(api_key=kite_client.api_key, root=face_url)
    with pytest.raises(kite_errors.TokenException):
        kite.generate_session(token, api_secret="wrong-secret")
    kite.generate_session(token, api_secret=kite_client.api_secret)
    with pytest.raises(kite_errors.TokenException):
        kite.generate_session(token, api_secret=kite_client.api_secret)


def test_kiteconnect_places_modifies_cancels_and_lists(kite, kite_client):
    order_id = kite.place_order(
        variety=kite.VARIETY_REGULAR,
        exchange="NSE",
        tradingsymbol="INFY",
        transaction_type=kite.TRANSACTION_TYPE_BUY,
        quantity=2,
        product=kite.PRODUCT_MIS,
        order_type=kite.ORDER_TYPE_LIMIT,
        price=1450,
        tag="KC-1",
    )
    kite.modify_order(variety=kite.VARIETY_REGULAR, order_id=order_id, price=1455, quantity=3)
    history = kite.order_history(order_id)
    assert history[-1]["price"] == 1455 and history[-1]["quantity"] == 3 and history[-1]["status"] == "OPEN"
    kite.cancel_order(variety=kite.VARIETY_REGULAR, order_id=order_id)
    assert kite.order_history(order_id)[-1]["status"] == "CANCELLED"

    filled = kite.place_order(
        variety="regular", exchange="NSE", tradingsymbol="INFY", transaction_type="BUY",
        quantity=1, product="CNC", order_type="MARKET", market_protection=-1,
    )  # fmt: skip
    assert [o["order_id"] for o in kite.orders()] == [order_id, filled]
    assert kite.order_trades(filled)[0]["quantity"] == 1
    assert kite.trades()[0]["order_id"] == filled
    assert kite.positions()["net"][0]["quantity"] == 1
    assert kite.ltp("NSE:INFY")["NSE:INFY"]["last_price"] > 0
    assert kite.quote(["NSE:INFY", "NSE:TCS"])["NSE:TCS"]["depth"]["sell"][0]["price"] > 0
    assert kite.margins("equity")["available"]["cash"] > 0
    assert kite.profile()["user_id"] == "AB1234"
    instruments = kite.instruments("NSE")
    assert any(row["tradingsymbol"] == "INFY" and row["tick_size"] == 0.1 for row in instruments)


def test_the_order_and_trade_books_list_the_days_own_as_kites_do(kite, kite_client):
    """Kite's ``orders()`` and ``trades()`` are the day's; the face listed every day's. Yesterday's
    filled order and its fill are gone from today's books (its position is still carried in);
    today's are listed, and so is yesterday's order still resting, until its day's close ends it."""
    market = dict(variety="regular", exchange="NSE", tradingsymbol="INFY", quantity=1, market_protection=-1)
    old = kite.place_order(**market, transaction_type="BUY", product="MIS", order_type="MARKET")
    resting = kite.place_order(**market, transaction_type="BUY", product="MIS", order_type="LIMIT", price=1400)
    yesterday = engine.day_start() - timedelta(hours=2)
    PaperOrder.objects.filter(order_id__in=[old, resting]).update(placed_at=yesterday, updated_at=yesterday)
    PaperTrade.objects.update(filled_at=yesterday)
    today = kite.place_order(**market, transaction_type="SELL", product="MIS", order_type="MARKET")

    assert [o["order_id"] for o in kite.orders()] == [resting, today]
    assert [t["order_id"] for t in kite.trades()] == [today]
    (net,) = kite.positions()["net"]
    assert (net["quantity"], net["overnight_quantity"], net["sell_quantity"]) == (0, 1, 1)


def test_kiteconnect_sees_kite_errors(kite):
    with pytest.raises(kite_errors.InputException, match="tick size"):
        kite.place_order(
            variety="regular", exchange="NSE", tradingsymbol="INFY", transaction_type="BUY",
            quantity=1, product="MIS", order_type="LIMIT", price=1450.03,
        )  # fmt: skip
    bad = KiteConnect(api_key=kite.api_key, access_token="nope", root=kite.root)
    with pytest.raises(kite_errors.TokenException):
        bad.orders()


def test_fault_knobs_reach_the_wire(face_url, kite, kite_client):
    PaperClient.objects.filter(pk=kite_client.pk).update(error_rate=1)
    response = requests.get(
        f"{face_url}/orders", headers={"Authorization": f"token {kite.api_key}:{kite.access_token}"}
    )
    assert response.status_code == 503 and response.json()["error_type"] == "NetworkException"
    PaperClient.objects.filter(pk=kite_client.pk).update(error_rate=0, rate_limit_per_s=1)
    statuses = {
        requests.get(
            f"{face_url}/orders", headers={"Authorization": f"token {kite.api_key}:{kite.access_token}"}
        ).status_code
        for _ in range(3)
    }
    assert 429 in statuses


def keys(value):
    return set(value) if isinstance(value, dict) else set()


def test_responses_match_kites_samples_field_for_field(face_url, kite, kite_client):
    order_id = kite.place_order(
        variety="regular", exchange="NSE", tradingsymbol="SBIN", transaction_type="BUY",
        quantity=1, product="CNC", order_type="MARKET", market_protection=-1,
    )  # fmt: skip
    # A delivery bought yesterday shows as a holding today.
    PaperTrade.objects.update(filled_at=timezone.now() - timedelta(days=1))
    kite.place_order(
        variety="regular", exchange="NSE", tradingsymbol="INFY", transaction_type="SELL",
        quantity=1, product="MIS", order_type="MARKET", market_protection=-1,
    )  # fmt: skip
    auth = {"Authorization": f"token {kite.api_key}:{kite.access_token}", "X-Kite-Version": "3"}

    def get(path, **params):
        body = requests.get(f"{face_url}{path}", headers=auth, params=params).json()
        assert body["status"] == "success", body
        return body["data"]

    order = get("/orders")[0]
    expected_order = keys(mock("orders")["data"][0])
    assert keys(order) == expected_order
    assert keys(get(f"/orders/{order_id}")[0]) == expected_order
    assert keys(get("/trades")[0]) == keys(mock("trades")["data"][0])
    assert keys(get(f"/orders/{order_id}/trades")[0]) == keys(mock("order_trades")["data"][0])
    positions = get("/portfolio/positions")
    assert keys(positions) == {"net", "day"}
    assert keys(positions["net"][0]) == keys(mock("positions")["data"]["net"][0])
    holdings = get("/portfolio/holdings")
    assert keys(holdings[0]) == keys(mock("holdings")["data"][0])
    margins = get("/user/margins")
    sample = mock("margins")["data"]
    assert keys(margins) == keys(sample)
    assert keys(margins["equity"]["available"]) == keys(sample["equity"]["available"])
    assert keys(margins["equity"]["utilised"]) == keys(sample["equity"]["utilised"])
    quote = get("/quote", i="NSE:INFY")["NSE:INFY"]
    assert keys(quote) == keys(mock("quote")["data"]["NSE:INFY"])
    assert keys(quote["ohlc"]) == keys(mock("quote")["data"]["NSE:INFY"]["ohlc"])
    assert keys(get("/quote/ltp", i="NSE:INFY")["NSE:INFY"]) == keys(mock("ltp")["data"]["NSE:INFY"])
    assert keys(get("/quote/ohlc", i="NSE:INFY")["NSE:INFY"]) == keys(mock("ohlc")["data"]["NSE:INFY"])
    assert keys(get("/user/profile")) == keys(mock("profile")["data"])
    session = kite_format.session(kite_client, "token", timezone.now())
    assert keys(session) == keys(mock("generate_session")["data"])
    csv_header = requests.get(f"{face_url}/instruments", headers=auth).text.splitlines()[0]
    assert csv_header == (MOCKS / "instruments_nse.csv").read_text().splitlines()[0]


def test_postback_matches_kite_and_carries_a_valid_checksum(kite_client):
    client = engine.client_get_or_create(user_id=kite_client.user_id)
    order = engine.order_place(
        client=client, exchange="NSE", tradingsymbol="INFY", transaction_type="BUY",
        order_type="MARKET", quantity=1, product="MIS",
    )  # fmt: skip
    body = kite_format.postback(PaperOrder.objects.get(pk=order.pk))
    assert keys(body) == keys(mock("postback"))
    expected = hashlib.sha256(f"{body['order_id']}{body['order_timestamp']}{client.api_secret}".encode()).hexdigest()
    assert body["checksum"] == expected and body["status"] == "COMPLETE"
    assert body["unfilled_quantity"] == 0 and body["filled_quantity"] == 1
    assert Decimal(str(body["average_price"])) == PaperOrder.objects.get(pk=order.pk).average_price


def test_an_order_the_rms_rejected_never_reached_the_exchange_as_at_kite(db, paper_market):
    """Kite's REJECTED order (its RMS refused it: orders.json) has no exchange order id and no exchange
    timestamps, null; a Kite client tells an order the exchange never saw by them. The face gave
    each a value, as if the exchange had taken and then refused it."""
    client = engine.client_get_or_create(user_id="AB1234")
    common = dict(client=client, exchange="NSE", tradingsymbol="INFY", quantity=1, product="MIS")
    rejected = engine.order_place(transaction_type="BUY", order_type="LIMIT", price=Decimal("5000"), **common)
    assert rejected.status == PaperOrder.Status.REJECTED
    body = kite_format.order(PaperOrder.objects.select_related("client", "instrument").get(pk=rejected.pk))
    sample = next(order for order in mock("orders")["data"] if order["status"] == "REJECTED")
    fields = ("exchange_order_id", "exchange_timestamp", "exchange_update_timestamp")
    assert {name: body[name] for name in fields} == {name: sample[name] for name in fields} == dict.fromkeys(fields)
    assert body["order_timestamp"] == kite_format.kite_time(rejected.placed_at)
    assert kite_format.postback(PaperOrder.objects.get(pk=rejected.pk))["exchange_order_id"] is None
    filled = engine.order_place(transaction_type="BUY", order_type="MARKET", **common)
    body = kite_format.order(PaperOrder.objects.select_related("client", "instrument").get(pk=filled.pk))
    assert body["exchange_order_id"] == filled.exchange_order_id and body["exchange_timestamp"]


def test_fills_cancels_and_rejections_are_posted_back(kite_client, settings):
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    PaperClient.objects.filter(pk=kite_client.pk).update(postback_url=f"http://127.0.0.1:{server.server_port}/pb")
    client = PaperClient.objects.get(pk=kite_client.pk)
    settings.CELERY_TASK_ALWAYS_EAGER = True  # Celery reads the CELERY_ settings when a task is sent
    try:
        common = dict(client=client, exchange="NSE", tradingsymbol="INFY", quantity=1, product="MIS")
        engine.order_place(transaction_type="BUY", order_type="MARKET", **common)
        resting = engine.order_place(transaction_type="BUY", order_type="LIMIT", price=Decimal("1400"), **common)
        engine.order_cancel(client=client, order_id=resting.order_id)
        engine.order_place(transaction_type="BUY", order_type="LIMIT", price=Decimal("5000"), **common)
    finally:
        server.shutdown()
    assert [body["status"] for body in received] == ["COMPLETE", "CANCELLED", "REJECTED"]
    for body in received:
        expected = hashlib.sha256(f"{body['order_id']}{body['order_timestamp']}{client.api_secret}".encode())
        assert body["checksum"] == expected.hexdigest()


def test_the_kite_face_refuses_an_expired_contract(kite):
    PaperInstrument.objects.filter(tradingsymbol="NIFTY26DECFUT").update(expiry=base.ist_today() - timedelta(days=1))
    with pytest.raises(kite_errors.InputException, match="NIFTY26DECFUT expired on"):
        kite.place_order(
            variety="regular", exchange="NFO", tradingsymbol="NIFTY26DECFUT", transaction_type="SELL",
            quantity=75, product="NRML", order_type="MARKET", market_protection=-1,
        )  # fmt: skip
    assert not PaperOrder.objects.exists()


@pytest.mark.parametrize("value", ["NaN", "sNaN", "Infinity", "-inf"])
def test_a_price_or_trigger_that_is_no_finite_number_is_an_input_error_and_changes_nothing(kite, value):
    """Kite answers a price it cannot read with an InputException; it never reaches the funds check."""
    terms = {"variety": kite.VARIETY_REGULAR, "exchange": "NSE", "tradingsymbol": "INFY", "quantity": 1,
             "transaction_type": kite.TRANSACTION_TYPE_BUY, "product": kite.PRODUCT_MIS}  # fmt: skip
    with pytest.raises(kite_errors.InputException, match="Invalid `price`"):
        kite.place_order(**terms, order_type=kite.ORDER_TYPE_LIMIT, price=value)
    with pytest.raises(kite_errors.InputException, match="Invalid `trigger_price`"):
        kite.place_order(**terms, order_type=kite.ORDER_TYPE_SL, price=1600, trigger_price=value)
    order_id = kite.place_order(**terms, order_type=kite.ORDER_TYPE_LIMIT, price=1450)
    with pytest.raises(kite_errors.InputException, match="Invalid `price`"):
        kite.modify_order(variety=kite.VARIETY_REGULAR, order_id=order_id, price=value)
    (order,) = PaperOrder.objects.all()
    assert (order.price, order.modifications) == (Decimal("1450"), 0)


def test_a_checksum_with_characters_outside_ascii_is_refused_not_a_crash(face_url, kite_client):
    token = request_token_for(face_url, kite_client)
    with pytest.raises(engine.TokenException):
        engine.session_from_request_token(api_key=kite_client.api_key, request_token=token, checksum="é" * 64)


def test_the_face_process_writes_no_access_token_to_its_log(kite_client, settings, tmp_path):
    """The face as the Procfile starts it: the platform's Kite logout sends the access token in the
    query string (Kite's wire format), which daphne's own access line would write out."""
    token, _ = engine.session_open(client=kite_client)
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DJANGO_SETTINGS_MODULE": "tradingplatform.settings_test",
        "DATABASE_URL": database_url(),
        "PAPER_FACE_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    face_line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("face:"))
    log_path = tmp_path / "face.log"
    with log_path.open("w") as log:
        face = subprocess.Popen(  # noqa: S603
            ["bash", "-c", f"exec {face_line.partition(':')[2].strip()}"],  # noqa: S607
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                assert face.poll() is None, log_path.read_text()[-3000:]
                with contextlib.suppress(requests.RequestException):
                    requests.get(f"{base_url}/user/profile", timeout=2)
                    break
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
            settings.KITE_API_URL = base_url
            adapter = KiteBroker(
                client_id=kite_client.user_id,
                credentials={"api_key": kite_client.api_key, "api_secret": kite_client.api_secret},
                access_token=token,
            )
            adapter.logout()
            assert PaperToken.objects.get(kind=PaperToken.Kind.ACCESS).revoked_at is not None
        finally:
            stop_process_group(face)
    written = log_path.read_text(errors="replace")
    assert "DELETE /session/token 200" in written, written[-3000:]  # Django's access line, without the query
    assert token not in written, written[-3000:]
