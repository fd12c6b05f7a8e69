"""The paper exchange's admin pages: what staff set there is held to what the exchange needs."""

import pytest
from django.test import Client
from django.urls import reverse

from brokers.paper import engine
from brokers.paper.models import PaperInstrument, PaperOrder
from brokers.paper.tests.test_engine import place, quote
from tradingplatform.testing import page_form_data

pytestmark = pytest.mark.django_db


@pytest.fixture
def paper_client(db, paper_market):
    quote(last="1500", volume=1000)
    return engine.client_get_or_create(user_id="C1")


@pytest.mark.parametrize(
    ("field", "value"),
    [("tick_size", "0"), ("lot_size", "0"), ("ask", "-1"), ("last_price", "-5"), ("bid", "-0.05")],
)
def test_staff_cannot_give_a_paper_instrument_a_tick_lot_or_price_the_exchange_cannot_use(
    paper_client, staff, field, value
):
    """Review: a tick size of 0 typed on an instrument's admin page was saved, and the next market
    tick divided by it: every tick failed, so no price of any instrument moved and no resting order
    or stop filled; a lot size of 0 made every order in it fail (``quantity % 0``); a negative ask
    filled a resting BUY at once. Refused, naming the field, and nothing is written."""
    resting = place(paper_client, side="BUY", order_type="LIMIT", quantity=10, price="1400")
    instrument = resting.instrument
    before = PaperInstrument.objects.values().get(pk=instrument.pk)
    browser = Client()
    browser.force_login(staff)
    change = reverse("admin:paper_paperinstrument_change", args=[instrument.pk])
    answer = browser.post(change, {**page_form_data(browser.get(change)), field: [value]})
    assert answer.status_code == 200
    assert field in answer.context["adminform"].form.errors
    assert PaperInstrument.objects.values().get(pk=instrument.pk) == before
    resting.refresh_from_db()
    assert resting.status == PaperOrder.Status.OPEN and resting.filled_quantity == 0
    engine.market_tick(rng_seed=1)  # the market goes on ticking

    # A price, tick and lot the exchange can use are still set.
    data = page_form_data(browser.get(change))
    answer = browser.post(change, {**data, "last_price": ["1450.00"], "tick_size": ["0.05"], "lot_size": ["1"]})
    assert answer.status_code == 302, answer.context["adminform"].form.errors
    instrument.refresh_from_db()
    assert (instrument.last_price, str(instrument.tick_size)) == (1450, "0.0500")


@pytest.mark.parametrize("field", ["error_rate", "timeout_rate", "rejection_rate"])
@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_a_paper_clients_fault_share_outside_0_to_1_is_refused_naming_it(paper_client, staff, field, value):
    """Review: a share of 1.5 typed in a client's fault knob came back as "Constraint
    “paperclient_error_rate” is violated." at the top of the page (the database's constraint's
    name), no field marked: staff had to guess which of the three shares it meant. The field says it."""
    browser = Client()
    browser.force_login(staff)
    change = reverse("admin:paper_paperclient_change", args=[paper_client.pk])
    answer = browser.post(change, {**page_form_data(browser.get(change)), field: [value]})
    assert answer.status_code == 200
    errors = answer.context["adminform"].form.errors
    assert list(errors) == [field], errors
    paper_client.refresh_from_db()
    assert getattr(paper_client, field) == 0
    answer = browser.post(change, {**page_form_data(browser.get(change)), field: ["0.25"]})
    assert answer.status_code == 302, answer.context["adminform"].form.errors
    paper_client.refresh_from_db()
    assert getattr(paper_client, field) == 0.25
