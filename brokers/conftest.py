import pytest

from accounts.tests.factories import make_broker_account
from brokers.paper import engine


@pytest.fixture(autouse=True)
def _fast_lookups(settings):
    settings.ORDER_LOOKUP_DELAY_S = 0


@pytest.fixture
def paper_account(trader, paper_market):
    return make_broker_account(trader, broker="paper", client_id="PAPER-T1", label="Paper one")


@pytest.fixture
def paper_client(paper_account):
    return engine.client_get_or_create(user_id=paper_account.client_id)
