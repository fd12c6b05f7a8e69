import pytest
from django.core.management import call_command

from accounts.tests.factories import make_broker_account


@pytest.fixture
def instruments(paper_market):
    call_command("load_instruments", broker="paper")


@pytest.fixture
def account(trader, instruments, settings):
    settings.ORDER_LOOKUP_DELAY_S = 0
    return make_broker_account(trader, broker="paper", client_id="PAPER-O1", label="Paper")
