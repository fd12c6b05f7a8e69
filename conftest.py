import os
from datetime import date
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.core.cache import cache
from django.core.management import call_command
from django.db import connections
from django.test.testcases import LiveServerThread

from accounts.tests.factories import PASSWORD, make_broker_account, make_kite_account, make_user
from brokers import services as broker_services
from brokers.paper import engine
from brokers.paper.face_asgi import FaceWSGIHandler
from brokers.paper.models import PaperClient, PaperInstrument

INSTRUMENTS_CSV = Path(engine.__file__).resolve().parent / "data" / "instruments.csv"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """After each test, before its fixtures are torn down (a transactional test's flush): let the
    after-commit work its fills started on background threads finish (the fill fast path)."""
    from tradingplatform import background

    try:
        return (yield)
    finally:
        assert background.wait_idle(60), "background work still running 60 s after the test"


# The paper exchange's contracts (its instruments.csv) are those of late 2026. Tests judge which
# have expired as of a day of their life, so they do not start failing as the calendar passes an
# expiry (a time given explicitly is still read as it is).
PAPER_DATA_DAY = date(2026, 12, 3)


@pytest.fixture(autouse=True)
def _paper_contracts_day(monkeypatch):
    from brokers import base

    real = base.ist_today
    monkeypatch.setattr(base, "ist_today", lambda now=None: PAPER_DATA_DAY if now is None else real(now))


@pytest.fixture(autouse=True)
def _exchanges_open_at_any_hour(monkeypatch):
    """Tests run at any hour: every broker's exchanges trade then (their hours are tested on their
    own: brokers/tests/test_markets.py, monitoring/tests/test_carried_exits.py)."""
    from brokers.base import Broker

    monkeypatch.setattr(Broker, "next_open", classmethod(lambda cls, exchange, after: after))


@pytest.fixture(autouse=True)
def _openings_at_any_hour(settings):
    """Tests run at any hour: opening positions are taken whatever the time of day (the hour they
    are put off until is tested on its own)."""
    settings.OPENINGS_FROM = "00:00"


@pytest.fixture(autouse=True)
def _isolated_cache():
    """Each test starts with an empty cache and no locks (only this run's keys are touched)."""
    _clear_cache()
    yield
    _clear_cache()


def _clear_cache():
    from brokers import ratelimit
    from tradingplatform import memo

    ratelimit.reset_local()
    memo.clear_all()
    if settings.REDIS_URL:
        from tradingplatform.locks import redis_client

        client = redis_client()
        keys = list(client.scan_iter(match=f"*{settings.CACHE_KEY_PREFIX}*", count=1000))
        if keys:
            client.delete(*keys)
    else:
        cache.clear()


@pytest.fixture
def trader(db):
    return make_user("trader")


@pytest.fixture
def other_trader(db):
    return make_user("other")


@pytest.fixture
def staff(db):
    return make_user("staff", is_staff=True, is_superuser=True)


@pytest.fixture
def trader_client(client, trader):
    client.force_login(trader)
    return client


@pytest.fixture
def password():
    return PASSWORD


@pytest.fixture
def instruments(paper_market):
    """The platform's instruments, loaded from the paper exchange."""
    call_command("load_instruments", broker="paper")


@pytest.fixture
def account(trader, instruments, settings):
    """The trader's paper broker account (orders on it reach the in-process paper exchange)."""
    settings.ORDER_LOOKUP_DELAY_S = 0
    return make_broker_account(trader, broker="paper", client_id="PAPER-O1", label="Paper")


@pytest.fixture
def paper_market(db):
    """The paper exchange's instruments (a transactional test's flush removes the migration's rows)."""
    if not PaperInstrument.objects.exists():
        engine.instruments_load_csv(INSTRUMENTS_CSV)


class FaceServerThread(LiveServerThread):
    """The paper exchange's Kite face on a real port, in a thread sharing the test database."""

    def __init__(self, connections_override):
        super().__init__("127.0.0.1", static_handler=lambda _app: FaceWSGIHandler(), connections_override=None)
        self._override = connections_override

    def run(self):
        if self._override:
            for alias, conn in self._override.items():
                connections[alias] = conn
        super().run()


@pytest.fixture
def face_url(transactional_db, paper_market):
    """Base URL of a live Kite face (tests using it run with real commits)."""
    override = {}
    for conn in connections.all():
        if conn.vendor == "sqlite" and conn.is_in_memory_db():
            conn.inc_thread_sharing()
            override[conn.alias] = conn
    thread = FaceServerThread(override)
    thread.daemon = True
    thread.start()
    thread.is_ready.wait(10)
    if thread.error:
        raise thread.error
    yield f"http://127.0.0.1:{thread.port}"
    thread.terminate()
    for conn in override.values():
        conn.dec_thread_sharing()


def pytest_sessionfinish(session, exitstatus):
    """Django drops the SQLite test database's file, not its WAL and shared-memory files."""
    name = settings.DATABASES["default"].get("TEST", {}).get("NAME")
    if name and settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        for suffix in ("-wal", "-shm"):
            Path(f"{name}{suffix}").unlink(missing_ok=True)


@pytest.fixture
def kite_on_face(face_url, settings, trader, instruments):
    """A kite account connected to the paper exchange's Kite face, as the callback leaves it."""
    settings.KITE_API_URL = face_url
    exchange_client = PaperClient.objects.create(user_id="AB1234", password=make_password("pw-123456"))
    account = make_kite_account(
        trader, client_id="AB1234", api_key=exchange_client.api_key, api_secret=exchange_client.api_secret
    )
    _, request_token = engine.login_with_password(
        api_key=exchange_client.api_key, user_id="AB1234", password="pw-123456"
    )
    broker_services.connect_complete(account=account, request_token=request_token, actor=trader)
    return account


@pytest.fixture
def browser_page(live_server, client, trader):
    """A Chromium page signed in as the trader: (page, the dialogs it was shown), answering each
    confirm as ``page.answer`` says (True: yes). Skips without Playwright or Debian's Chromium
    (``E2E_CHROMIUM``)."""
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).exists():
        pytest.skip(f"no browser at {chromium}")
    client.force_login(trader)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium)
        context = browser.new_context(base_url=live_server.url)
        context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}])
        page = context.new_page()
        shown = []

        def answer(dialog):
            shown.append(dialog.message)
            dialog.accept() if page.answer else dialog.dismiss()

        page.on("dialog", answer)
        yield page, shown
        browser.close()
