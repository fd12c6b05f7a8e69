from pathlib import Path

import pytest
from django.db import connections
from django.test.testcases import LiveServerThread

from accounts.tests.factories import make_broker_account
from brokers.paper import engine
from brokers.paper.face_asgi import FaceWSGIHandler
from brokers.paper.models import PaperInstrument

INSTRUMENTS_CSV = Path(engine.__file__).resolve().parent / "data" / "instruments.csv"


@pytest.fixture(autouse=True)
def _fast_lookups(settings):
    settings.ORDER_LOOKUP_DELAY_S = 0


@pytest.fixture
def paper_market(db):
    """The paper exchange's instruments (a transactional test's flush removes the migration's rows)."""
    if not PaperInstrument.objects.exists():
        engine.instruments_load_csv(INSTRUMENTS_CSV)


@pytest.fixture
def paper_account(trader, paper_market):
    return make_broker_account(trader, broker="paper", client_id="PAPER-T1", label="Paper one")


@pytest.fixture
def paper_client(paper_account):
    return engine.client_get_or_create(user_id=paper_account.client_id)


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
