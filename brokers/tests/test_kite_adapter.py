"""The kite adapter over the real wire: against the paper exchange's Kite face on a real port."""

import re
import time
from decimal import Decimal
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from django.contrib.auth.hashers import make_password
from django.urls import reverse

from accounts.tests.factories import make_kite_account
from brokers.base import OrderChange, OrderRequest, Status
from brokers.client import AccountBroker
from brokers.errors import AuthError, BrokerUnavailable, InputError, OrderRejected, OutcomeUnknown, RejectKind
from brokers.models import BrokerSession
from brokers.paper import engine
from brokers.paper.models import PaperClient, PaperOrder


@pytest.fixture
def kite_setup(face_url, settings, trader):
    settings.KITE_API_URL = face_url
    settings.KITE_LOGIN_URL = f"{face_url}/connect/login"
    exchange_client = PaperClient.objects.create(
        user_id="ZX9999", password=make_password("pw-123456"), redirect_url="http://testserver/brokers/callback/"
    )
    account = make_kite_account(
        trader, client_id="ZX9999", api_key=exchange_client.api_key, api_secret=exchange_client.api_secret
    )
    return account, exchange_client


def connect_through_the_pages(client, face_url, account, exchange_client):
    """Connect on the accounts page, log in on the broker's page, come back to the callback."""
    login_url = client.post(reverse("brokers:connect", args=[account.pk])).url
    assert login_url.startswith(f"{face_url}/connect/login?")
    browser = requests.Session()
    page = browser.get(login_url)
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    redirect_params = re.search(r'name="redirect_params" value="([^"]*)"', page.text).group(1)
    back = browser.post(
        login_url,
        data={
            "csrfmiddlewaretoken": csrf,
            "api_key": exchange_client.api_key,
            "user_id": exchange_client.user_id,
            "password": "pw-123456",
            "redirect_params": redirect_params.replace("&amp;", "&"),
        },
        headers={"Referer": login_url},
        allow_redirects=False,
    ).headers["Location"]
    url = urlsplit(back)
    return client.get(url.path, dict(parse_qsl(url.query)))


def order(tag, **overrides):
    values = dict(exchange="NSE", tradingsymbol="INFY", side="BUY", quantity=1, order_type="MARKET", product="MIS")
    values.update(overrides)
    return OrderRequest(tag=tag, **values)


def test_connect_trade_and_read_over_the_wire(client, trader, face_url, kite_setup):
    account, exchange_client = kite_setup
    client.force_login(trader)
    response = connect_through_the_pages(client, face_url, account, exchange_client)
    assert response.status_code == 302
    session = BrokerSession.objects.get(account=account)
    assert session.status == "active" and session.broker_user_id == "ZX9999"

    broker = AccountBroker(account)
    filled = broker.place_order(order("KW-1"))
    assert broker.order(filled.broker_order_id).status == Status.FILLED
    resting = broker.place_order(order("KW-2", order_type="LIMIT", price=Decimal("1450")))
    broker.modify_order(resting.broker_order_id, OrderChange(price=Decimal("1451"), quantity=2))
    changed = broker.order(resting.broker_order_id)
    assert changed.price == Decimal("1451") and changed.quantity == 2 and changed.status == Status.OPEN
    broker.cancel_order(resting.broker_order_id)
    assert broker.order(resting.broker_order_id).status == Status.CANCELLED
    assert broker.find_by_tag("KW-2").broker_order_id == resting.broker_order_id
    assert broker.find_by_tag("NOPE") is None
    assert [t.broker_order_id for t in broker.trades()] == [filled.broker_order_id]
    assert broker.order_trades(filled.broker_order_id)[0].quantity == 1
    assert broker.positions()[0].quantity == 1
    quote = broker.quote(["NSE:INFY"])["NSE:INFY"]
    assert quote.bid < quote.last_price < quote.ask
    assert broker.ltp(["NSE:TCS"])["NSE:TCS"] > 0
    assert broker.margins().net > 0
    assert any(row.tradingsymbol == "INFY" for row in broker.instruments("NSE"))


def test_kite_errors_map_onto_ours(client, trader, face_url, kite_setup):
    account, exchange_client = kite_setup
    client.force_login(trader)
    connect_through_the_pages(client, face_url, account, exchange_client)
    broker = AccountBroker(account, sleep=lambda s: None)
    with pytest.raises(OrderRejected) as error:
        broker.place_order(order("KE-1", order_type="LIMIT", price=Decimal("1450.03")))
    assert error.value.kind == RejectKind.TICK_SIZE
    with pytest.raises(OrderRejected) as error:
        broker.place_order(order("KE-2", tradingsymbol="NOPE"))
    assert error.value.kind == RejectKind.INSTRUMENT
    with pytest.raises(InputError):
        broker.cancel_order("000")
    PaperClient.objects.filter(pk=exchange_client.pk).update(error_rate=1)
    with pytest.raises(BrokerUnavailable):
        broker.positions()
    PaperClient.objects.filter(pk=exchange_client.pk).update(error_rate=0, timeout_rate=1)
    placed = broker.place_order(order("KE-3"))  # 504 after the work: found by tag, not sent twice
    assert PaperOrder.objects.filter(tag="KE-3").count() == 1
    assert placed.broker_order_id == PaperOrder.objects.get(tag="KE-3").order_id


def test_an_expired_kite_session_asks_the_trader_to_reconnect(client, trader, face_url, kite_setup):
    account, exchange_client = kite_setup
    client.force_login(trader)
    connect_through_the_pages(client, face_url, account, exchange_client)
    engine.session_expire_now(client=exchange_client)
    with pytest.raises(AuthError, match="reconnect"):
        AccountBroker(account).orders()
    assert BrokerSession.objects.get(account=account).status == "expired"
    page = client.get(reverse("accounts:broker_list")).content.decode()
    assert "Expired" in page and "Reconnect" in page


def test_a_wrong_api_secret_fails_the_login_and_says_why(client, trader, face_url, kite_setup):
    account, exchange_client = kite_setup
    from accounts import services as account_services

    account_services.broker_account_update(account=account, actor=trader, credentials={"api_secret": "wrong"})
    client.force_login(trader)
    connect_through_the_pages(client, face_url, account, exchange_client)
    session = BrokerSession.objects.get(account=account)
    assert session.status == "failed" and "checksum" in session.last_error
    assert "Login failed" in client.get(reverse("accounts:broker_list")).content.decode()


def test_an_order_that_times_out_is_never_sent_twice(client, trader, face_url, kite_setup, settings):
    """The face is slow past our timeout, then quick again: the lookup by tag does not find the
    order yet (the first request is still being worked on), and it must not be sent again."""
    account, exchange_client = kite_setup
    client.force_login(trader)
    connect_through_the_pages(client, face_url, account, exchange_client)
    settings.KITE_TIMEOUT_S = 0.3
    slow = PaperClient.objects.filter(pk=exchange_client.pk)
    slow.update(latency_ms=1500)
    # The pause before the lookup: the slow spell ends (the first request is still sleeping).
    broker = AccountBroker(account, sleep=lambda s: slow.update(latency_ms=0))
    with pytest.raises(OutcomeUnknown):
        broker.place_order(order("KT-1"))
    deadline = time.monotonic() + 10
    while not PaperOrder.objects.filter(tag="KT-1").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # anything sent twice would have landed by now too
    assert PaperOrder.objects.filter(tag="KT-1").count() == 1


def test_a_gateway_5xx_to_a_placement_is_a_lost_answer_not_a_refusal(settings):
    """A 502/504 from a gateway in front of Kite may come after the order was placed: the
    adapter says the answer was lost (look it up, then reconcile), never "refused, send again";
    the same 5xx to a read is a plain unavailable broker."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from brokers.errors import NetworkError
    from brokers.kite.adapter import KiteBroker

    class Gateway(BaseHTTPRequestHandler):
        def _answer(self):
            self.send_response(504)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>504 Gateway Time-out</html>")

        do_GET = do_POST = _answer  # noqa: N815

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.KITE_API_URL = f"http://127.0.0.1:{server.server_port}"
    adapter = KiteBroker(client_id="GW1", credentials={"api_key": "k"}, access_token="t")
    try:
        with pytest.raises(NetworkError) as error:
            adapter.place_order(order("GW-1"))
        assert not isinstance(error.value, BrokerUnavailable)
        with pytest.raises(BrokerUnavailable):
            adapter.positions()
    finally:
        server.shutdown()
