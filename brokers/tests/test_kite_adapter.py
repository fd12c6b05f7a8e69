"""The kite adapter over the real wire: against the paper exchange's Kite face on a real port."""

import json
import re
import threading
import time
from datetime import timedelta
from decimal import Decimal
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from django.contrib.auth.hashers import make_password
from django.urls import reverse
from django.utils import timezone

from accounts.crypto import Sealed
from accounts.models import BrokerAccount
from accounts.tests.factories import make_kite_account
from brokers.base import OrderChange, OrderRequest, Status
from brokers.client import AccountBroker
from brokers.errors import (
    AuthError,
    BrokerUnavailable,
    InputError,
    NetworkError,
    OrderRejected,
    OutcomeUnknown,
    RateLimited,
    RejectKind,
    classify_rejection,
)
from brokers.kite.adapter import KiteBroker
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


def connect_through_the_pages(client, face_url, account, exchange_client, *, before_callback=lambda: None):
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
    before_callback()
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


def test_an_account_deactivated_during_its_login_gets_no_session(client, trader, face_url, kite_setup):
    account, exchange_client = kite_setup
    client.force_login(trader)
    deactivate = lambda: BrokerAccount.objects.filter(pk=account.pk).update(is_active=False)  # noqa: E731
    response = connect_through_the_pages(client, face_url, account, exchange_client, before_callback=deactivate)
    assert response.status_code == 302
    assert not BrokerSession.objects.filter(account=account).exists()
    assert "deactivated" in client.get(reverse("accounts:broker_list")).content.decode()


@pytest.mark.parametrize(
    "message, kind",
    [
        ("RMS:Margin Exceeds,Required:1500, Available:20", RejectKind.FUNDS),
        ("RMS:Blocked for nrml on securities as per exchange norms", RejectKind.RMS),
        ("Order blocked by RMS", RejectKind.RMS),
        ("Order not allowed as per the terms of the scheme", RejectKind.OTHER),
        ("Blocked as per exchange norms", RejectKind.OTHER),
        ("Market orders are not allowed on this platforms segment", RejectKind.OTHER),
    ],
)
def test_a_rejection_is_the_brokers_risk_check_only_where_it_says_rms(message, kind):
    """RMS rejections are retried by strategies (margin can free up); "terms", "norms" or
    "platforms" say nothing of it: an order refused for them is not sent again."""
    assert classify_rejection(message) == kind


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


def test_a_login_as_another_kite_user_is_refused_audited_and_explained(client, trader, face_url, kite_setup):
    """The account is ZX9999; the trader logs in to Kite as YY1111. Stored, that session would
    trade in YY1111's Kite account: it is refused, and its token logged out at Kite."""
    from accounts.models import AuditLog
    from brokers.paper.models import PaperToken

    account, exchange_client = kite_setup
    PaperClient.objects.filter(pk=exchange_client.pk).update(user_id="YY1111")
    exchange_client.refresh_from_db()
    client.force_login(trader)
    response = connect_through_the_pages(client, face_url, account, exchange_client)
    session = BrokerSession.objects.get(account=account)
    assert session.status == "failed" and "YY1111" in session.last_error and "ZX9999" in session.last_error
    assert AuditLog.objects.filter(action="broker_session_failed", target_id=str(account.pk)).count() == 1
    assert not PaperToken.objects.filter(client=exchange_client, kind="access", revoked_at__isnull=True).exists()
    page = client.get(response.url).content.decode()
    assert "You logged in to the broker as YY1111" in page and "Login failed" in page
    with pytest.raises(AuthError):
        AccountBroker(account).orders()


def test_a_failed_reconnect_shows_the_session_still_live_and_lets_it_be_disconnected(
    client, trader, face_url, kite_setup
):
    """Connected, the trader reconnects and the login fails (here as another Kite user): the
    session from before is still the account's and still trades, so the page says Connected and
    offers Disconnect, not "Login failed" (which reads as not connected)."""
    account, exchange_client = kite_setup
    client.force_login(trader)
    connect_through_the_pages(client, face_url, account, exchange_client)
    live = BrokerSession.objects.get(account=account, status="active")
    PaperClient.objects.filter(pk=exchange_client.pk).update(user_id="YY1111")
    exchange_client.refresh_from_db()
    response = connect_through_the_pages(client, face_url, account, exchange_client)
    assert BrokerSession.objects.filter(account=account, status="failed").count() == 1
    assert BrokerSession.objects.get(pk=live.pk).status == "active"
    page = client.get(response.url).content.decode()
    assert "You logged in to the broker as YY1111" in page  # the failure is still said, as a message
    row = page[page.index(f'id="session-{account.pk}"') :].split("</td>")[0]
    assert "Login failed" not in row
    assert ("Connected" in row or "Expiring soon" in row) and "Disconnect" in row


def test_a_login_as_the_accounts_user_matches_whatever_the_case(client, trader, face_url, kite_setup):
    account, exchange_client = kite_setup
    from accounts.models import BrokerAccount

    BrokerAccount.objects.filter(pk=account.pk).update(client_id="zx9999")
    account.refresh_from_db()
    client.force_login(trader)
    connect_through_the_pages(client, face_url, account, exchange_client)
    assert BrokerSession.objects.get(account=account).status == "active"


# --- Kite at the HTTP boundary ---------------------------------------------------------------

SAMPLES = Path(__file__).resolve().parents[1] / "kite" / "samples"
PROXY_PAGE = (200, "text/html", b"<html><body>Request received</body></html>")


class FakeKite(BaseHTTPRequestHandler):
    """Kite's order routes on a real port: the orders it takes kept as Kite's JSON (the samples'
    order row), each route answering Kite's success, or what ``answers[method]`` says (a
    proxy's page in front of Kite); for the methods in ``cut``, the answer breaks off midway."""

    book: list = []
    forms: list = []
    answers: dict = {}
    headers: dict = {}
    cut: set = set()
    # For the methods in ``trickle``, the answer comes a byte at a time: all of it ("whole": the
    # status line and headers too) or its body ("body"), each byte quicker than the read timeout.
    trickle: dict = {}
    trickled: list = []  # of each trickled answer: (bytes that got out, its length)
    trickle_gap_s, trickle_bytes = 0.1, 1
    trickle_done = threading.Event()

    def _form(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return dict(parse_qsl(self.rfile.read(length).decode()))

    def do_POST(self):  # noqa: N802
        form = self._form()
        FakeKite.forms.append(form)
        row = json.loads((SAMPLES / "orders.json").read_text())["data"][0]
        row.update(
            order_id=f"26120300000{len(FakeKite.book) + 1:04d}",
            tag=form["tag"],
            status="OPEN",
            exchange=form["exchange"],
            tradingsymbol=form["tradingsymbol"],
            order_type=form["order_type"],
            product=form["product"],
            quantity=int(form["quantity"]),
            price=float(form.get("price") or 0),
            pending_quantity=int(form["quantity"]),
            cancelled_quantity=0,
        )
        FakeKite.book.append(row)
        self._answer("POST", {"order_id": row["order_id"]})

    def do_PUT(self):  # noqa: N802
        FakeKite.forms.append(self._form())
        self._answer("PUT", {"order_id": self.path.rsplit("/", 1)[-1]})

    def do_DELETE(self):  # noqa: N802
        self._answer("DELETE", {"order_id": self.path.rsplit("/", 1)[-1]})

    def do_GET(self):  # noqa: N802
        self._answer("GET", FakeKite.book)

    def _answer(self, method, data):
        status, content_type, body = FakeKite.answers.get(
            method, (200, "application/json", json.dumps({"status": "success", "data": data}).encode())
        )
        if method in FakeKite.trickle:
            return self._trickle(FakeKite.trickle[method], status, content_type, body)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in FakeKite.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if method in FakeKite.cut:  # the connection drops halfway through the answer
            body, self.close_connection = body[: len(body) // 2], True
        self.wfile.write(body)

    def _trickle(self, part, status, content_type, body):
        head = f"HTTP/1.1 {status} OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        answer, sent = head.encode() + body, 0
        self.close_connection = True
        try:
            if part == "body":
                self.wfile.write(answer[: len(head)])
                sent = len(head)
            while sent < len(answer):
                time.sleep(FakeKite.trickle_gap_s)
                piece = answer[sent : sent + FakeKite.trickle_bytes]
                self.wfile.write(piece)
                sent += len(piece)
        except OSError:  # the caller hung up
            pass
        finally:
            FakeKite.trickled.append((sent, len(answer)))
            FakeKite.trickle_done.set()

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_kite(settings):
    FakeKite.book, FakeKite.forms, FakeKite.answers, FakeKite.headers, FakeKite.cut = [], [], {}, {}, set()
    FakeKite.trickle, FakeKite.trickled, FakeKite.trickle_gap_s, FakeKite.trickle_bytes = {}, [], 0.1, 1
    FakeKite.trickle_done = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKite)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.KITE_API_URL = f"http://127.0.0.1:{server.server_port}"
    yield FakeKite
    server.shutdown()


@pytest.fixture
def connected_kite_account(trader, instruments):
    """A kite account with a live session (as the callback stores it)."""
    account = make_kite_account(trader, client_id="KT0001")
    BrokerSession.objects.create(
        account=account,
        tokens=Sealed.seal({"access_token": "kite-token", "refresh_token": None}),
        status=BrokerSession.Status.ACTIVE,
        active_for=account.pk,
        broker_user_id="KT0001",
        expires_at=timezone.now() + timedelta(hours=1),
    )
    return account


def adapter():
    return KiteBroker(client_id="KT0001", credentials={"api_key": "k"}, access_token="t")


@pytest.mark.parametrize(
    ("order_type", "fields", "protection"),
    [
        ("MARKET", {}, "-1"),
        ("SL-M", {"trigger_price": Decimal("1390")}, "-1"),
        ("LIMIT", {"price": Decimal("1400")}, None),
        ("SL", {"price": Decimal("1389"), "trigger_price": Decimal("1390")}, None),
    ],
)
def test_market_and_stop_market_orders_ask_for_kites_market_protection(fake_kite, order_type, fields, protection):
    """Since April 2026 Kite refuses API orders of type MARKET and SL-M without it."""
    adapter().place_order(order("MP-1", side="SELL", order_type=order_type, **fields))
    assert fake_kite.forms[-1].get("market_protection") == protection


@pytest.mark.parametrize(
    ("change", "protection"),
    [
        (OrderChange(order_type="MARKET"), "-1"),
        (OrderChange(order_type="SL-M", trigger_price=Decimal("1390")), "-1"),
        (OrderChange(price=Decimal("1401")), None),
    ],
)
def test_a_modify_to_market_or_stop_market_asks_for_market_protection(fake_kite, change, protection):
    adapter().modify_order("261203000000001", change)
    assert fake_kite.forms[-1].get("market_protection") == protection


@pytest.mark.parametrize(
    "answer",
    [
        PROXY_PAGE,
        (403, "text/html", b"<html>Forbidden</html>"),
        # A gateway's or firewall's own JSON in front of Kite: JSON, but not Kite's answer.
        (403, "application/json", b'{"message": "Forbidden"}'),
        (404, "application/json", b'{"error": "no route"}'),
    ],
)
def test_an_unreadable_answer_to_an_order_call_is_a_lost_answer_and_to_a_read_a_passing_fault(fake_kite, answer):
    fake_kite.answers = {"POST": answer, "PUT": answer, "DELETE": answer, "GET": answer}
    for call in (
        lambda: adapter().place_order(order("UA-1")),
        lambda: adapter().modify_order("261203000000001", OrderChange(price=Decimal("1401"))),
        lambda: adapter().cancel_order("261203000000001"),
    ):
        with pytest.raises(NetworkError) as error:
            call()
        assert not isinstance(error.value, BrokerUnavailable)  # not "refused": the order may have changed
    with pytest.raises(BrokerUnavailable):
        adapter().orders()


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [
        ("7", 7, 7),
        ("2.5", 2.5, 2.5),
        # RFC 9110 allows an HTTP date too; a past date means now.
        (lambda now: format_datetime(now + timedelta(seconds=30), usegmt=True), 25, 31),
        (lambda now: format_datetime(now - timedelta(hours=1), usegmt=True), 0, 0),
        # What cannot be read (or is not a wait) is the default second, never an error.
        ("soon", 1, 1),
        ("nan", 1, 1),
        ("-5", 1, 1),
        ("inf", 1, 1),
    ],
)
def test_kites_retry_after_as_seconds_or_a_date_is_how_long_to_wait(fake_kite, retry_after, low, high):
    if callable(retry_after):
        retry_after = retry_after(timezone.now())
    fake_kite.answers = {"GET": (429, "application/json", b'{"status": "error", "message": "Too many requests"}')}
    fake_kite.headers = {"Retry-After": retry_after}
    with pytest.raises(RateLimited) as limited:
        adapter().orders()
    assert low <= limited.value.retry_after <= high


def test_a_placement_answered_by_a_proxys_page_is_found_by_tag_not_rejected(trader, connected_kite_account, fake_kite):
    from orders.models import Order
    from orders.tests.factories import place

    fake_kite.answers = {"POST": PROXY_PAGE}
    placed = place(trader, connected_kite_account, quantity=10, order_type="LIMIT", price=Decimal("1400"))
    placed.refresh_from_db()
    assert [row["tag"] for row in fake_kite.book] == [placed.reference]  # sent once
    # Found resting in the book: OPEN, as the look-up says.
    assert placed.status == Order.Status.OPEN and placed.broker_order_id == fake_kite.book[0]["order_id"]


def test_a_lookup_by_tag_answered_by_a_proxys_page_leaves_the_outcome_unknown(
    trader, connected_kite_account, fake_kite
):
    from orders.models import Order
    from orders.tests.factories import place

    fake_kite.answers = {"POST": PROXY_PAGE, "GET": (403, "text/html", b"<html>Forbidden</html>")}
    with pytest.raises(OutcomeUnknown):
        AccountBroker(connected_kite_account, sleep=lambda s: None).place_order(order("LU-1"))
    placed = place(trader, connected_kite_account, quantity=10, order_type="LIMIT", price=Decimal("1400"))
    placed.refresh_from_db()
    assert placed.status != Order.Status.REJECTED and not placed.reject_kind
    assert len(fake_kite.book) == 2  # each sent once, never again blindly


def test_an_answer_cut_off_midway_is_a_lost_answer_found_by_tag(trader, connected_kite_account, fake_kite):
    """The connection drops while Kite's answer comes in (``requests`` raises neither a timeout
    nor a ConnectionError then): the order call may have been done, so it is a lost answer, and a
    placement is looked up by its tag, never taken for a refusal or sent again."""
    from brokers.errors import BrokerError, NetworkError

    fake_kite.cut = {"POST", "PUT", "DELETE"}
    for call in (
        lambda: adapter().place_order(order("CA-1")),
        lambda: adapter().modify_order("261203000000001", OrderChange(price=Decimal("1401"))),
        lambda: adapter().cancel_order("261203000000001"),
    ):
        with pytest.raises(NetworkError) as error:
            call()
        assert not isinstance(error.value, BrokerUnavailable)
    placed = AccountBroker(connected_kite_account, sleep=lambda s: None).place_order(order("CA-2"))
    assert [row["tag"] for row in fake_kite.book] == ["CA-1", "CA-2"]  # each sent once
    assert placed.broker_order_id == fake_kite.book[1]["order_id"]
    fake_kite.cut = {"GET"}
    with pytest.raises(BrokerError):
        adapter().orders()


@pytest.mark.parametrize(
    "body",
    [
        {"status": "error", "message": "Something went wrong.", "error_type": "GeneralException"},
        {"status": "error", "message": "Insufficient funds.", "error_type": "GeneralException"},
        {"status": "error", "message": "Something went wrong."},  # no type: Kite's general error
    ],
)
@pytest.mark.parametrize("status", [400, 500])
def test_a_general_exception_to_a_placement_is_looked_up_by_tag_not_a_refusal(
    trader, connected_kite_account, fake_kite, body, status
):
    """Kite's GeneralException is unclassified: it does not say the order was not placed, whatever
    its HTTP status. The order is looked up by its tag (here Kite has it), never rejected."""
    fake_kite.answers = {"POST": (status, "application/json", json.dumps({**body, "data": None}).encode())}
    placed = AccountBroker(connected_kite_account, sleep=lambda s: None).place_order(order("GE-1"))
    assert [row["tag"] for row in fake_kite.book] == ["GE-1"]  # sent once
    assert placed.broker_order_id == fake_kite.book[0]["order_id"]


@pytest.mark.parametrize(
    ("error_type", "message", "kind"),
    [
        # Kite's own types say why, whatever the wording: a refusal for funds (retried by the
        # strategies that retry "funds") or for holdings, never a malformed request.
        ("MarginException", "Margin shortfall: required 95417.84, available 74251.80.", RejectKind.FUNDS),
        ("MarginException", "Insufficient funds. Required margin is 95417.84.", RejectKind.FUNDS),
        ("HoldingException", "You do not have enough shares of INFY to sell.", RejectKind.OTHER),
    ],
)
def test_kites_margin_and_holding_exceptions_to_a_placement_are_refusals_of_their_kind(
    fake_kite, error_type, message, kind
):
    body = {"status": "error", "message": message, "error_type": error_type, "data": None}
    fake_kite.answers = {"POST": (400, "application/json", json.dumps(body).encode())}
    with pytest.raises(OrderRejected) as error:
        adapter().place_order(order("ME-1"))
    assert error.value.kind == kind and error.value.message == message


def test_kites_quote_carries_the_circuit_limits_and_none_where_it_gives_none(fake_kite):
    """Kite's quote sample: INFY's circuit limits (1250.7 - 1528.6), which an option stop's limit is
    clamped to. A row without them (an index's 0s, an answer of another shape) has none, not 0 - 0,
    which would clamp every limit to 0."""
    fake_kite.answers = {"GET": (200, "application/json", (SAMPLES / "quote.json").read_bytes())}
    quote = adapter().quote(["NSE:INFY"])["NSE:INFY"]
    assert (quote.lower_circuit, quote.upper_circuit) == (Decimal("1250.7"), Decimal("1528.6"))
    assert quote.circuit == (Decimal("1250.7"), Decimal("1528.6"))

    body = json.loads((SAMPLES / "quote.json").read_text())
    row = body["data"]["NSE:INFY"]
    body["data"] = {
        "NSE:INFY": {key: value for key, value in row.items() if not key.endswith("_circuit_limit")},
        "NSE:NIFTY 50": {**row, "lower_circuit_limit": 0, "upper_circuit_limit": 0},
    }
    fake_kite.answers = {"GET": (200, "application/json", json.dumps(body).encode())}
    quotes = adapter().quote(["NSE:INFY", "NSE:NIFTY 50"])
    assert [(q.lower_circuit, q.upper_circuit, q.circuit) for q in quotes.values()] == [(None, None, None)] * 2


# --- The start of the day's figures ----------------------------------------------------------------


def test_a_kite_holding_bought_on_the_last_trading_day_counts_its_unsettled_shares_once(fake_kite):
    """Kite documents a holding's ``quantity`` as "T+1 + realised", while accounts are seen
    answering ``quantity`` 0, ``t1_quantity`` 5 for shares bought on the last trading day: read
    either way, the unsettled shares are held, and counted once."""
    body = json.loads((SAMPLES / "holdings.json").read_text())
    aaron, sbin = body["data"]
    seen = {**aaron, "quantity": 0, "t1_quantity": 5, "realised_quantity": 0}
    documented = {**aaron, "tradingsymbol": "DOCS", "quantity": 5, "t1_quantity": 5, "realised_quantity": 0}
    mixed_seen = {**sbin, "quantity": 16, "t1_quantity": 4, "realised_quantity": 16}
    mixed_documented = {**sbin, "tradingsymbol": "DOCS2", "quantity": 20, "t1_quantity": 4, "realised_quantity": 16}
    body["data"] = [seen, documented, mixed_seen, mixed_documented]
    fake_kite.answers = {"GET": (200, "application/json", json.dumps(body).encode())}
    held = [(h.tradingsymbol, h.quantity) for h in adapter().holdings()]
    assert held == [("AARON", 5), ("DOCS", 5), ("SBIN", 20), ("DOCS2", 20)]


def test_kites_positions_and_holdings_carry_the_start_of_the_days_figures(fake_kite):
    """Kite's samples: each position's quantity carried into the day and today's buys and sells
    (GOLDGUINEA: 3 carried in, 1 bought and 4 sold today, flat now), each holding's opening
    quantity; an answer without them (an older API, another broker's shape) has none, not zeros."""
    fake_kite.answers = {"GET": (200, "application/json", (SAMPLES / "positions.json").read_bytes())}
    positions = {p.tradingsymbol: p for p in adapter().positions()}
    figures = lambda p: (  # noqa: E731
        p.quantity,
        p.overnight_quantity,
        p.day_buy_quantity,
        p.day_buy_value,
        p.day_sell_quantity,
        p.day_sell_value,
    )
    assert figures(positions["GOLDGUINEA17DECFUT"]) == (0, 3, 1, Decimal("23388"), 4, Decimal("93360"))
    assert figures(positions["LEADMINI17DECFUT"]) == (1, 0, 1, Decimal("161050"), 0, Decimal("0"))
    assert figures(positions["SBIN"]) == (0, 0, 1, Decimal("311"), 1, Decimal("309"))
    assert all(p.day_figures for p in positions.values())
    fake_kite.answers = {"GET": (200, "application/json", (SAMPLES / "holdings.json").read_bytes())}
    assert [(h.tradingsymbol, h.quantity) for h in adapter().holdings()] == [("AARON", 1), ("SBIN", 16)]

    keys = ["overnight_quantity", "day_buy_quantity", "day_buy_value"]
    body = json.loads((SAMPLES / "positions.json").read_text())
    for row in body["data"]["net"]:
        for key in keys:
            del row[key]
    fake_kite.answers = {"GET": (200, "application/json", json.dumps(body).encode())}
    read = adapter().positions()
    assert read and all(getattr(row, key) is None for row in read for key in keys)
    assert not any(p.day_figures for p in read)
    assert read[0].day_sell_quantity is not None  # what was there is still read


@pytest.mark.django_db(transaction=True)
def test_the_paper_exchange_reports_the_start_of_the_days_figures_from_its_fills(kite_on_face):
    """Its figures by trading day (Asia/Kolkata), alike in-process and on its Kite face: NIFTY NRML
    bought 150 three days ago and sold 75 two days ago (75 carried in), then bought 75 and sold 150
    today (flat now); INFY CNC bought 10 two days ago (its holding opened with 10) and 4 sold today
    (a delivery position of today's only: nothing carried in)."""
    from brokers.paper.adapter import PaperBroker
    from brokers.paper.models import PaperTrade

    client = PaperClient.objects.get(user_id="AB1234")
    PaperClient.objects.filter(pk=client.pk).update(cash=Decimal("100000000"))

    def fill(symbol, side, quantity, price, *, days_ago, exchange="NFO", product="NRML"):
        price = Decimal(price)
        engine.market_set(exchange=exchange, tradingsymbol=symbol, last_price=price, bid=price, ask=price)
        placed = engine.order_place(
            client=client, exchange=exchange, tradingsymbol=symbol,
            transaction_type=side, order_type="MARKET", quantity=quantity, product=product,
        )  # fmt: skip
        assert placed.status == "COMPLETE", placed.status_message
        PaperTrade.objects.filter(order=placed).update(filled_at=timezone.now() - timedelta(days=days_ago))

    fill("NIFTY26DECFUT", "BUY", 150, "24000", days_ago=3)
    fill("NIFTY26DECFUT", "SELL", 75, "24100", days_ago=2)
    fill("INFY", "BUY", 10, "1400", days_ago=2, exchange="NSE", product="CNC")
    fill("NIFTY26DECFUT", "BUY", 75, "24010", days_ago=0)
    fill("NIFTY26DECFUT", "SELL", 150, "24020", days_ago=0)
    fill("INFY", "SELL", 4, "1410", days_ago=0, exchange="NSE", product="CNC")

    # The in-process view of the same client (a Kite face client: no paper account signs in to it).
    paper = PaperBroker(client_id="AB1234", access_token=engine.session_open(client=client)[0])
    for broker in (paper, AccountBroker(kite_on_face)):
        positions = {p.product: p for p in broker.positions()}
        future, delivery = positions["NRML"], positions["CNC"]
        assert (future.quantity, future.overnight_quantity) == (0, 75)
        assert (future.day_buy_quantity, future.day_buy_value) == (75, Decimal("1800750"))
        assert (future.day_sell_quantity, future.day_sell_value) == (150, Decimal("3603000"))
        assert (delivery.quantity, delivery.overnight_quantity, delivery.day_sell_quantity) == (-4, 0, 4)
        assert [(h.tradingsymbol, h.quantity) for h in broker.holdings()] == [("INFY", 10)]


@pytest.mark.django_db(transaction=True)
def test_an_order_filled_at_two_prices_has_the_same_average_on_the_kite_face_as_in_process(kite_on_face):
    """Kite's ``average_price`` is the fills' average, unrounded (88.08333 for fills at 88.05, 88.10
    and 88.10): the face rounded it to the paisa, so a Kite account showed 1400.17 for an order the
    in-process adapter (and the fills) put at 1400.1667."""
    from brokers.paper.adapter import PaperBroker

    client = PaperClient.objects.get(user_id="AB1234")
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=Decimal("1500"), tick_volume=1)
    placed = engine.order_place(
        client=client, exchange="NSE", tradingsymbol="INFY", transaction_type="BUY",
        order_type="LIMIT", price=Decimal("1400.1"), quantity=3, product="MIS",
    )  # fmt: skip
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=Decimal("1400"), tick_volume=1)  # 1 at 1400.1
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=Decimal("1500"))
    engine.order_modify(client=client, order_id=placed.order_id, price=Decimal("1400.2"))
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=Decimal("1400.1"), tick_volume=10)  # 2 at 1400.2
    placed.refresh_from_db()
    assert placed.filled_quantity == 3 and placed.average_price == Decimal("1400.1667")

    paper = PaperBroker(client_id="AB1234", access_token=engine.session_open(client=client)[0])
    assert paper.order(placed.order_id).average_price == Decimal("1400.1667")
    assert AccountBroker(kite_on_face).order(placed.order_id).average_price == Decimal("1400.1667")


@pytest.mark.parametrize("part", ["whole", "body"])
def test_a_placement_answered_a_byte_at_a_time_is_cut_off_at_the_timeout_and_found_by_tag(
    trader, connected_kite_account, fake_kite, settings, part
):
    """Each byte comes quicker than the read timeout, so ``requests`` alone would wait for all of
    them (here 1-2 s a call with a 0.5 s timeout, with Kite for as long as it trickles). The call
    is cut off at its timeout as a timeout: the order is looked up by its tag, not rejected,
    failed or sent again."""
    from orders.models import Order
    from orders.tests.factories import place

    settings.KITE_TIMEOUT_S = 0.5
    fake_kite.trickle = {"POST": part}
    placed = place(trader, connected_kite_account, quantity=10, order_type="LIMIT", price=Decimal("1400"))
    assert fake_kite.trickle_done.wait(timeout=30)
    [(sent, length)] = fake_kite.trickled
    assert sent < length  # cut off before the whole answer was out
    placed.refresh_from_db()
    assert [row["tag"] for row in fake_kite.book] == [placed.reference]  # sent once
    assert placed.status == Order.Status.OPEN and placed.broker_order_id == fake_kite.book[0]["order_id"]


@pytest.mark.parametrize("method", ["DELETE", "GET"])
def test_a_cancel_or_a_read_answered_a_byte_at_a_time_is_a_timeout(fake_kite, settings, method):
    """A cancel's outcome is unknown then (a lost answer, never "refused"); a read is a transient
    network error, retried, like any other timeout."""
    settings.KITE_TIMEOUT_S = 0.5
    fake_kite.trickle = {method: "whole"}
    call = adapter().cancel_order if method == "DELETE" else lambda _id: adapter().orders()
    with pytest.raises(NetworkError) as error:
        call("261203000000001")
    assert not isinstance(error.value, BrokerUnavailable)
    assert "did not answer within" in str(error.value)
    assert fake_kite.trickle_done.wait(timeout=30)
    [(sent, length)] = fake_kite.trickled
    assert sent < length


def test_the_instrument_dump_has_longer_than_a_calls_timeout_to_come_in(fake_kite, settings):
    """Megabytes once a day: cut off at a call's timeout, it would never load on a slow line."""
    dump = (SAMPLES / "instruments_nse.csv").read_bytes()
    settings.KITE_TIMEOUT_S, settings.KITE_INSTRUMENTS_TIMEOUT_S = 0.3, 120
    fake_kite.answers = {"GET": (200, "text/csv", dump)}
    # 20 pieces, each well within the read timeout, all of them past the call's.
    fake_kite.trickle, fake_kite.trickle_gap_s, fake_kite.trickle_bytes = {"GET": "body"}, 0.05, len(dump) // 19
    rows = adapter().instruments("NSE")
    assert fake_kite.trickle_done.wait(timeout=30)  # the server's thread notes it after its last write
    [(sent, length)] = fake_kite.trickled
    assert sent == length
    assert len(rows) == dump.count(b"\n") - 1 and rows[0].tradingsymbol == "CENTRALBK-BE"


@pytest.mark.django_db(transaction=True)
def test_a_stop_is_trigger_pending_until_the_market_crosses_it_then_open_and_triggered(kite_on_face):
    """Kite's status of a stop order is TRIGGER PENDING until it triggers and OPEN after: both are
    an open order to the platform, told apart by ``triggered``, alike on the Kite face and in-process
    (the paper exchange's triggered SL is the LIMIT it became, with the trigger it had). Its trigger
    can no longer be changed then: the exchange refuses a new one rather than ignore it."""
    from brokers.kite.adapter import stop_triggered
    from brokers.paper.adapter import PaperBroker

    client = PaperClient.objects.get(user_id="AB1234")
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=Decimal("1500"), bid="1499.9", ask="1500.1")
    placed = engine.order_place(
        client=client, exchange="NSE", tradingsymbol="INFY", transaction_type="BUY",
        order_type="SL", trigger_price=Decimal("1510"), price=Decimal("1515"), quantity=1, product="MIS",
    )  # fmt: skip
    paper = PaperBroker(client_id="AB1234", access_token=engine.session_open(client=client)[0])
    kite = AccountBroker(kite_on_face)
    assert kite.order(placed.order_id).raw["status"] == "TRIGGER PENDING"
    for broker in (paper, kite):
        pending = broker.order(placed.order_id)
        assert (pending.status, pending.triggered) == (Status.OPEN, False)

    # Crossed: it is a LIMIT at 1515 now, under the market, so it rests.
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=Decimal("1520"), bid="1519.9", ask="1520.1")
    assert kite.order(placed.order_id).raw["status"] == "OPEN"
    for broker in (paper, kite):
        triggered = broker.order(placed.order_id)
        assert (triggered.status, triggered.triggered, triggered.filled_quantity) == (Status.OPEN, True, 0)
    with pytest.raises(InputError, match="[Tt]rigger"):
        kite.modify_order(placed.order_id, OrderChange(trigger_price=Decimal("1530")))
    kite.modify_order(placed.order_id, OrderChange(price=Decimal("1516")))  # its price still changes
    after = kite.order(placed.order_id)
    assert (after.price, after.trigger_price, after.triggered) == (Decimal("1516"), Decimal("1510"), True)

    # Kite's own samples: a real SL keeps its type once triggered; a plain order says nothing.
    assert stop_triggered({"order_type": "SL", "status": "TRIGGER PENDING", "trigger_price": 10}) is False
    assert stop_triggered({"order_type": "SL-M", "status": "OPEN", "trigger_price": 10}) is True
    assert stop_triggered({"order_type": "SL", "status": "UPDATE", "trigger_price": 10, "filled_quantity": 1}) is True
    # Kite's UPDATE postback of a modify of a stop still pending says nothing of its trigger.
    assert stop_triggered({"order_type": "SL", "status": "UPDATE", "trigger_price": 10}) is None
    assert stop_triggered({"order_type": "SL", "status": "CANCELLED", "trigger_price": 10}) is None
    assert stop_triggered({"order_type": "LIMIT", "status": "OPEN", "trigger_price": 0}) is None
