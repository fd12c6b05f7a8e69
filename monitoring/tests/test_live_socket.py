"""The websocket consumer over a real socket: daphne in its own process, the `websockets` client.

daphne serves the whole platform (``tradingplatform.asgi``) from this run's test database, cache
prefix and channel layer (Redis when ``REDIS_URL`` is set; otherwise its in-process layer, so the
fills these tests make go through daphne's own HTTP API and are pushed from daphne's process).
"""

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.test import Client
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from accounts import services as account_services
from accounts.tests.factories import PASSWORD, make_broker_account
from tradingplatform.testing import database_url, free_port, stop_process_group

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]
PNL = 'id="pnl-summary"'
WAIT_S = 30  # a guard against a hang, never a latency assert


@pytest.fixture
def daphne(instruments):
    """Base URL of a daphne process serving the platform on a free port; stopped after the test."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tradingplatform.settings_test",
        "DATABASE_URL": database_url(),
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tempfile.NamedTemporaryFile(prefix="daphne_test_", suffix=".log", delete=False)  # noqa: SIM115
    # A generous handshake timeout: on a busy shared machine a hundred sockets authenticating at
    # once (two queries each, on one database thread) can take longer than daphne's default 5 s.
    cmd = [sys.executable, "-m", "daphne", "-v", "0", "--websocket_connect_timeout", "60"]
    cmd += ["-b", "127.0.0.1", "-p", str(port), "tradingplatform.asgi:application"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"daphne exited:\n{Path(log.name).read_text()[-3000:]}"
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"daphne did not start:\n{Path(log.name).read_text()[-3000:]}"
            time.sleep(0.2)
        yield base
    finally:
        print(f"daphne's log (shown when the test fails):\n{Path(log.name).read_text(errors='replace')[-5000:]}")
        stop_process_group(proc)
        log.close()
        with contextlib.suppress(OSError):
            os.unlink(log.name)


def login_over_http(base: str, username: str) -> str:
    """Sign in through the login page like a browser; the session cookie."""
    browser = requests.Session()
    browser.get(f"{base}/login/", timeout=10)
    answer = browser.post(
        f"{base}/login/",
        data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
        headers={"Referer": f"{base}/login/"},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 302, answer.text[:500]
    return browser.cookies[settings.SESSION_COOKIE_NAME]


def place_over_api(base: str, raw_key: str, account_id: int, symbol: str) -> str:
    answer = requests.post(
        f"{base}/api/v1/orders",
        json={"account_id": account_id, "tradingsymbol": symbol, "side": "BUY", "quantity": 1},
        headers={"Authorization": f"Bearer {raw_key}"},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["reference"]


def dashboard(base: str, cookie: str | None):
    ws_url = base.replace("http://", "ws://") + "/ws/"
    headers = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={cookie}"} if cookie else {}
    return connect(ws_url, origin=base, additional_headers=headers, open_timeout=WAIT_S, max_size=None)


async def next_pnl_push(ws, seen: list[str]) -> str:
    """The next message with the PnL summary; every message read is kept in ``seen``."""
    async with asyncio.timeout(WAIT_S):
        while True:
            message = await ws.recv()
            seen.append(message)
            if PNL in message:
                return message


def test_a_fill_reaches_its_traders_socket_and_no_one_elses(daphne, trader, other_trader):
    mine = make_broker_account(trader, broker="paper", client_id="PAPER-WS1", label="Mine")
    theirs = make_broker_account(other_trader, broker="paper", client_id="PAPER-WS2", label="Theirs")
    _, my_key = account_services.api_key_create(owner=trader, name="ws test")
    _, their_key = account_services.api_key_create(owner=other_trader, name="ws test")
    my_cookie, their_cookie = login_over_http(daphne, trader.username), login_over_http(daphne, other_trader.username)

    async def scenario():
        async with dashboard(daphne, None) as anonymous:  # told why (4401), then closed: never joined
            with pytest.raises(ConnectionClosed) as refused:
                await anonymous.recv()
        assert refused.value.rcvd.code == 4401

        async with dashboard(daphne, my_cookie) as my_ws, dashboard(daphne, their_cookie) as their_ws:
            my_seen, their_seen = [], []
            my_ref = await asyncio.to_thread(place_over_api, daphne, my_key, mine.pk, "INFY")
            push = await next_pnl_push(my_ws, my_seen)
            assert "INFY" in push and 'id="positions"' in push and 'id="recent-trades"' in push

            # The other trader's first PnL push is about their own fill: mine never reached them.
            their_ref = await asyncio.to_thread(place_over_api, daphne, their_key, theirs.pk, "WIPRO")
            their_push = await next_pnl_push(their_ws, their_seen)
            assert "WIPRO" in their_push
            assert not any("INFY" in m or my_ref in m or "Mine" in m for m in their_seen)
            assert not any(their_ref in m or "Theirs" in m for m in my_seen)

    asyncio.run(scenario())


def test_a_hundred_and_twenty_dashboards_open_at_once_all_get_the_push(daphne, trader):
    """As after a restart: every page reconnects at the same moment (each joins its group at once)."""
    account = make_broker_account(trader, broker="paper", client_id="PAPER-WS3", label="Busy")
    _, raw_key = account_services.api_key_create(owner=trader, name="ws test")
    browser = Client()
    browser.force_login(trader)
    cookie = browser.cookies[settings.SESSION_COOKIE_NAME].value

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            sockets = await asyncio.gather(*(stack.enter_async_context(dashboard(daphne, cookie)) for _ in range(120)))
            await asyncio.to_thread(place_over_api, daphne, raw_key, account.pk, "TCS")
            pushes = await asyncio.gather(*(next_pnl_push(ws, []) for ws in sockets))
            assert len(pushes) == 120 and all("TCS" in push for push in pushes)

    asyncio.run(scenario())


def test_a_socket_whose_session_has_ended_is_closed_with_4401_not_refused_at_the_handshake(daphne, trader):
    """A page whose sign-in ended while its socket was down (a server restart; a sign-out or a password
    change meanwhile; Back to a page after signing out) connects again. Its socket was refused at the
    handshake (403), which a browser sees as an abnormal close (1006): htmx's ws extension tried again
    every few seconds for as long as the page stayed open, and the page never said its orders and PnL
    were no longer live (that notice is for a close with 4401)."""
    cookie = login_over_http(daphne, trader.username)
    signed_out = requests.post(
        f"{daphne}/logout/",
        cookies={settings.SESSION_COOKIE_NAME: cookie, "csrftoken": "x" * 32},
        headers={"X-CSRFToken": "x" * 32, "Referer": f"{daphne}/"},
        allow_redirects=False,
        timeout=10,
    )
    assert signed_out.status_code == 302, signed_out.text[:500]

    async def scenario():
        for session in (cookie, None):  # signed out, and no session at all
            async with dashboard(daphne, session) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
            assert closed.value.rcvd.code == 4401

    asyncio.run(scenario())
