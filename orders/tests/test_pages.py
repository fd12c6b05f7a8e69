"""The order pages: ticket, instrument search, book, detail, modify and cancel, against the paper exchange."""

import re
import uuid
import zoneinfo
from datetime import datetime, time, timedelta
from decimal import Decimal
from urllib.parse import quote

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from accounts import services as account_services
from accounts.tests.factories import make_broker_account
from brokers.client import AccountBroker
from brokers.errors import OutcomeUnknown
from brokers.paper.models import PaperOrder
from monitoring import cycle
from orders import services
from orders.models import Order
from orders.tests.factories import instrument, nrml_on_equity_as_taken_before, place

D = Decimal


def ticket_data(account, **overrides):
    data = {
        "token": str(uuid.uuid4()),
        "account": account.pk,
        "instrument": instrument("INFY").pk,
        "side": "BUY",
        "quantity": "1",
        "order_type": "MARKET",
        "product": "MIS",
        "validity": "DAY",
        "price": "",
        "trigger_price": "",
    }
    data.update(overrides)
    return data


def page_messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def product_options(html: str, name: str = "product") -> list[str]:
    select = re.search(rf'<select name="{name}"[^>]*>(.*?)</select>', html, re.S).group(1)
    return re.findall(r'<option value="([^"]*)"', select)


def shown_form(html: str, action: str) -> dict:
    """What a browser would send from the form posting to ``action`` as the page shows it."""
    form = re.search(rf'<form[^>]*(?:action|hx-post)="{re.escape(action)}".*?</form>', html, re.S).group(0)
    values = {}
    for tag in re.findall(r"<input[^>]*>", form):
        name = re.search(r'name="([^"]*)"', tag).group(1)
        value = re.search(r'value="([^"]*)"', tag)
        values[name] = value.group(1) if value else ""
    for name, options in re.findall(r'<select name="([^"]*)"[^>]*>(.*?)</select>', form, re.S):
        values[name] = re.search(r'<option value="([^"]*)" selected>', options).group(1)
    values.pop("csrfmiddlewaretoken", None)
    return values


def resting_order(trader, account, **kwargs):
    kwargs.setdefault("order_type", "LIMIT")
    kwargs.setdefault("price", "1400")
    return place(trader, account, **kwargs)


# --- Ticket ------------------------------------------------------------------------------------


def test_ticket_renders_a_one_time_token_and_only_active_accounts(trader_client, trader, account):
    switched_off = make_broker_account(trader, broker="paper", client_id="PAPER-OFF", label="Switched off")
    account_services.broker_account_set_active(account=switched_off, actor=trader, active=False)
    first = trader_client.get(reverse("orders:ticket"))
    second = trader_client.get(reverse("orders:ticket"))
    assert first.status_code == 200
    tokens = [response.context["form"]["token"].value() for response in (first, second)]
    assert tokens[0] and tokens[0] != tokens[1]
    assert list(first.context["form"].fields["account"].queryset) == [account]
    assert b"Switched off" not in first.content


@pytest.mark.parametrize(
    ("order_fields", "status"),
    [
        ({"order_type": "MARKET"}, Order.Status.FILLED),  # on arrival
        ({"order_type": "LIMIT", "price": "1400"}, Order.Status.OPEN),  # resting
        ({"order_type": "SL", "price": "1515", "trigger_price": "1510"}, Order.Status.OPEN),  # waiting for its trigger
        ({"order_type": "SL-M", "trigger_price": "1510"}, Order.Status.OPEN),
    ],
)
def test_each_order_type_from_the_ticket_places_one_order_at_the_exchange(
    trader_client, trader, account, order_fields, status
):
    data = ticket_data(account, **order_fields)
    response = trader_client.post(reverse("orders:ticket"), data)
    order = Order.objects.get()
    assert response.status_code == 302 and response.url == reverse("orders:detail", args=[order.pk])
    assert order.order_type == order_fields["order_type"] and order.status == status
    assert order.source == Order.Source.MANUAL and order.placed_by == trader
    assert order.idempotency_key == f"{trader.pk}:ui:{data['token']}"
    assert order.events.first().cause == "ticket by trader"
    at_exchange = PaperOrder.objects.get()
    assert at_exchange.order_id == order.broker_order_id and at_exchange.order_type == order_fields["order_type"]
    page = trader_client.get(response.url)
    assert any(f"Placed {order.reference}" in text for text in page_messages(page))


def test_a_double_submit_with_one_token_places_one_order(trader_client, account):
    data = ticket_data(account, order_type="LIMIT", price="1400")
    first = trader_client.post(reverse("orders:ticket"), data)
    second = trader_client.post(reverse("orders:ticket"), data)
    assert first.status_code == second.status_code == 302 and first.url == second.url
    assert Order.objects.count() == 1 and PaperOrder.objects.count() == 1


def test_a_second_submit_while_the_first_is_still_sending_says_it_is_being_sent_not_lost(
    trader_client, trader, account, settings
):
    # The first click's request is still sending the order (it is NEW, its broker not asked yet):
    # the second click's page, the one the trader sees, said its answer was lost.
    settings.REPLAY_WAIT_S = 0.1
    data = ticket_data(account, order_type="LIMIT", price="1400")
    spec = {name: data[name] for name in ("side", "quantity", "order_type", "product", "validity", "price")}
    sending, fresh = services.order_prepare(
        actor=trader,
        account=account,
        instrument=instrument("INFY"),
        **spec,
        source=Order.Source.MANUAL,
        cause="ticket by trader",
        idempotency_key=f"ui:{data['token']}",
    )
    assert fresh
    response = trader_client.post(reverse("orders:ticket"), data, follow=True)
    assert Order.objects.get() == sending and Order.objects.get().status == Order.Status.NEW
    said = " ".join(page_messages(response))
    assert sending.reference in said and "lost" not in said and "being sent" in said
    assert not PaperOrder.objects.exists()


def test_a_used_token_with_changed_fields_places_nothing_and_renews_the_token(trader_client, account):
    data = ticket_data(account, order_type="LIMIT", price="1400")
    trader_client.post(reverse("orders:ticket"), data)
    response = trader_client.post(reverse("orders:ticket"), {**data, "quantity": "5"})
    assert response.status_code == 200 and response.context["form"].non_field_errors()
    assert response.context["form"]["token"].value() != data["token"]
    assert Order.objects.count() == 1 and PaperOrder.objects.count() == 1


def test_a_used_token_with_changed_fields_names_the_order_the_ticket_already_placed(trader_client, account):
    """A ticket sent again with changed fields (a resubmitted page, a form edited after its send
    went through) said "This key was already used for a different order": a trader has no key, and
    was not told an order had been placed, so the renewed ticket sent again placed a second one."""
    data = ticket_data(account, order_type="LIMIT", price="1400")
    trader_client.post(reverse("orders:ticket"), data)
    placed = Order.objects.get()
    response = trader_client.post(reverse("orders:ticket"), {**data, "quantity": "5"})
    errors = response.context["form"].non_field_errors()
    assert any(placed.reference in error and "already placed" in error for error in errors), errors
    assert not any("key" in error for error in errors), errors
    assert placed.reference in response.content.decode()
    assert Order.objects.count() == 1 and PaperOrder.objects.count() == 1


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"order_type": "LIMIT", "price": "1500.03"}, "price"),
        ({"order_type": "LIMIT", "price": ""}, "price"),
        ({"order_type": "MARKET", "price": "1500"}, "price"),
        ({"order_type": "SL", "price": "1490", "trigger_price": "1500"}, "price"),
        ({"order_type": "SL-M", "trigger_price": ""}, "trigger_price"),
        ({"order_type": "SL-M", "trigger_price": "1510.05"}, "trigger_price"),
        ({"order_type": "LIMIT", "price": "abc"}, "price"),
        ({"quantity": "0"}, "quantity"),
        ({"instrument": "NFO-FUT", "quantity": "10", "product": "NRML"}, "quantity"),
        ({"instrument": ""}, "instrument"),
        ({"side": "HOLD"}, "side"),
    ],
)
def test_bad_input_is_shown_on_its_field_and_nothing_is_sent(trader_client, account, overrides, field):
    if overrides.get("instrument") == "NFO-FUT":
        overrides["instrument"] = instrument("NIFTY26DECFUT", "NFO").pk
    response = trader_client.post(reverse("orders:ticket"), ticket_data(account, **overrides))
    assert response.status_code == 200
    form = response.context["form"]
    assert field in form.errors, form.errors
    assert 'class="error" role="alert"' in response.content.decode()
    assert not Order.objects.exists() and not PaperOrder.objects.exists()


def test_a_future_offers_no_cnc_and_cnc_on_it_is_refused(trader_client, account):
    future = instrument("NIFTY26DECFUT", "NFO")
    page = trader_client.get(reverse("orders:ticket"), {"instrument": future.pk})
    html = page.content.decode()
    assert product_options(html) == ["MIS", "NRML"]
    assert f'name="instrument" value="{future.pk}"' in html and f'id="ltp-{future.pk}"' in html
    assert page.context["form"]["quantity"].value() == 75
    response = trader_client.post(
        reverse("orders:ticket"), ticket_data(account, instrument=future.pk, quantity="75", product="CNC")
    )
    assert response.status_code == 200 and "product" in response.context["form"].errors
    assert not PaperOrder.objects.exists()


def test_a_future_is_placed_in_lots_as_nrml(trader_client, account):
    future = instrument("NIFTY26DECFUT", "NFO")
    data = ticket_data(account, instrument=future.pk, quantity="150", product="NRML")
    response = trader_client.post(reverse("orders:ticket"), data)
    assert response.status_code == 302
    at_exchange = PaperOrder.objects.get()
    assert at_exchange.quantity == 150 and at_exchange.product == "NRML"


def test_equity_offers_delivery_and_intraday_but_no_carry_forward(trader_client, account):
    html = trader_client.get(reverse("orders:ticket"), {"instrument": instrument("INFY").pk}).content.decode()
    assert product_options(html) == ["CNC", "MIS"]


def test_an_option_offers_no_sl_m_and_an_sl_m_on_it_is_refused_naming_the_order_type(trader_client, account):
    """Kite blocks stop-loss market orders on F&O options: the ticket offered SL-M on one and sent
    it, for the broker to reject. It offers SL there (picking an option turns a chosen SL-M into
    SL), and an SL-M posted anyway is refused on the order type, nothing sent."""
    option = instrument("NIFTY26DEC26000CE", "NFO")
    html = trader_client.get(reverse("orders:ticket"), {"instrument": option.pk}).content.decode()
    assert product_options(html, "order_type") == ["MARKET", "LIMIT", "SL"]
    picked = trader_client.get(reverse("orders:instrument_pick", args=[option.pk]), {"order_type": "SL-M"})
    assert 'id="field-order_type" hx-swap-oob="true"' in picked.content.decode()
    assert re.search(r'<option value="SL" selected>', picked.content.decode())
    equity = trader_client.get(reverse("orders:instrument_pick", args=[instrument("INFY").pk]), {"order_type": "SL-M"})
    assert re.search(r'<option value="SL-M" selected>', equity.content.decode())
    data = ticket_data(
        account,
        instrument=option.pk,
        quantity="75",
        product="NRML",
        side="SELL",
        order_type="SL-M",
        trigger_price="240",
    )
    response = trader_client.post(reverse("orders:ticket"), data)
    assert response.status_code == 200
    assert "SL-M orders are blocked for F&O option contracts" in response.context["form"].errors["order_type"][0]
    assert not Order.objects.exists() and not PaperOrder.objects.exists()


def test_an_nrml_equity_position_held_from_before_the_rule_can_be_closed_from_the_ticket(
    trader_client, trader, account
):
    """NRML is refused on equity, but a position taken in it before stays, and only a SELL NRML
    closes it (an MIS sell opens a short beside it): the service takes that order, so the ticket
    offers NRML on the equity such a position is held in, and places it."""
    nrml_on_equity_as_taken_before(trader, account)
    cycle.account_monitor(account=account)  # its fill in the position (NRML, 10)
    infy = instrument("INFY")
    html = trader_client.get(reverse("orders:ticket"), {"instrument": infy.pk}).content.decode()
    assert product_options(html) == ["CNC", "MIS", "NRML"]
    picked = trader_client.get(reverse("orders:instrument_pick", args=[infy.pk]), {"product": "NRML"})
    assert re.search(r'<option value="NRML" selected>', picked.content.decode())
    data = ticket_data(account, side="SELL", quantity="10", product="NRML")
    response = trader_client.post(reverse("orders:ticket"), data)
    assert response.status_code == 302, response.context["form"].errors
    closing = Order.objects.latest("pk")
    assert (closing.side, closing.product, closing.status) == ("SELL", "NRML", Order.Status.FILLED)


def test_the_ticket_offers_the_products_the_chosen_account_allows_and_refuses_another_naming_it(
    trader_client, trader, account
):
    """The ticket offered every product the instrument takes, whatever the account allowed: the
    trader chose one the account does not allow and was refused only after submitting. It offers
    what both take, on the ticket, on choosing an account and on choosing an instrument; a product
    sent anyway is still refused by the service, on the product."""
    infy, future = instrument("INFY"), instrument("NIFTY26DECFUT", "NFO")
    # "Delivery" is listed before "Paper": the ticket shows it chosen.
    delivery = make_broker_account(trader, client_id="PAPER-CNC", label="Delivery", allowed_products=["CNC", "NRML"])
    page = trader_client.get(reverse("orders:ticket"), {"instrument": infy.pk}).content.decode()
    assert product_options(page) == ["CNC"] and '<option value="CNC" selected>' in page
    assert f'<option value="{delivery.pk}" selected>' in page
    assert 'hx-get="' + reverse("orders:account_pick") + '"' in page

    chosen = trader_client.get(
        reverse("orders:account_pick"), {"account": account.pk, "instrument": infy.pk, "product": "CNC"}
    ).content.decode()
    assert 'id="field-product" hx-swap-oob="true"' in chosen
    assert product_options(chosen) == ["CNC", "MIS"] and '<option value="CNC" selected>' in chosen
    back = trader_client.get(
        reverse("orders:account_pick"), {"account": delivery.pk, "instrument": infy.pk, "product": "MIS"}
    ).content.decode()
    assert product_options(back) == ["CNC"] and '<option value="CNC" selected>' in back
    no_instrument = trader_client.get(reverse("orders:account_pick"), {"account": delivery.pk}).content.decode()
    assert product_options(no_instrument) == ["CNC", "NRML"]

    picked = trader_client.get(
        reverse("orders:instrument_pick", args=[future.pk]), {"account": delivery.pk, "product": "MIS"}
    ).content.decode()
    assert product_options(picked) == ["NRML"] and '<option value="NRML" selected>' in picked

    response = trader_client.post(reverse("orders:ticket"), ticket_data(delivery, product="MIS"))
    assert response.status_code == 200
    assert response.context["form"].errors["product"] == ["MIS is not allowed on Delivery."]
    assert product_options(response.content.decode()) == ["CNC"]
    assert not Order.objects.exists() and not PaperOrder.objects.exists()


def test_an_account_that_allows_no_product_the_instrument_takes_offers_none_and_says_why(
    trader_client, trader, account
):
    make_broker_account(trader, client_id="PAPER-CNC", label="Delivery", allowed_products=["CNC"])
    future = instrument("NIFTY26DECFUT", "NFO")
    page = trader_client.get(reverse("orders:ticket"), {"instrument": future.pk}).content.decode()
    assert product_options(page) == []
    assert "Delivery allows CNC, none of which NIFTY26DECFUT takes" in page


def test_choosing_another_traders_account_on_the_ticket_shows_nothing_of_it(
    trader_client, trader, other_trader, account
):
    theirs = make_broker_account(other_trader, client_id="THEIRS", label="Theirs", allowed_products=["CNC"])
    account_services.broker_account_update(account=account, actor=trader, allowed_products=["MIS", "NRML"])
    chosen = trader_client.get(
        reverse("orders:account_pick"), {"account": theirs.pk, "instrument": instrument("INFY").pk}
    ).content.decode()
    assert product_options(chosen) == ["MIS"]  # the trader's own account's, not theirs


def test_a_broker_rejection_shows_its_reason(trader_client, account):
    response = trader_client.post(
        reverse("orders:ticket"), ticket_data(account, order_type="LIMIT", price="2500"), follow=True
    )
    order = Order.objects.get()
    assert order.status == Order.Status.REJECTED
    assert any("rejected" in text and order.reject_reason in text for text in page_messages(response))
    assert order.reject_reason in response.content.decode()


def test_an_order_whose_answer_was_lost_says_so_in_the_book_and_on_its_page(trader_client, account, monkeypatch):
    # It is SUBMITTED with no broker id, offering no Modify or Cancel: "Submitted" alone reads as at the broker.
    def lost(self, request, **options):
        raise OutcomeUnknown("timed out reading the answer")

    monkeypatch.setattr(AccountBroker, "place_order", lost)
    trader_client.post(reverse("orders:ticket"), ticket_data(account))
    order = Order.objects.get()
    assert order.status == Order.Status.SUBMITTED and not order.broker_order_id
    row = re.search(
        rf'<tr id="order-{order.pk}".*?</tr>', trader_client.get(reverse("orders:book")).content.decode(), re.S
    )
    assert escape(Order.ANSWER_LOST) in row.group(0)
    detail = trader_client.get(reverse("orders:detail", args=[order.pk])).content.decode()
    assert 'id="answer-lost"' in detail and escape(Order.ANSWER_LOST) in detail


def test_another_traders_account_is_refused_on_the_ticket(trader_client, account, other_trader):
    theirs = make_broker_account(other_trader, broker="paper", client_id="PAPER-THEIRS")
    response = trader_client.post(reverse("orders:ticket"), ticket_data(theirs))
    assert response.status_code == 200 and "account" in response.context["form"].errors
    assert not Order.objects.exists() and not PaperOrder.objects.exists()


def test_csrf_is_enforced_on_the_ticket(trader, account):
    client = Client(enforce_csrf_checks=True)
    client.force_login(trader)
    assert client.post(reverse("orders:ticket"), ticket_data(account)).status_code == 403
    assert not Order.objects.exists() and not PaperOrder.objects.exists()


# --- Instrument search ---------------------------------------------------------------------------


def test_instrument_search_returns_matches_that_choose_an_instrument(trader_client, instruments):
    infy = instrument("INFY")
    response = trader_client.get(reverse("orders:instrument_options"), {"q": "inf"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html
    assert "INFY" in html and "RELIANCE" not in html
    assert f'hx-get="{reverse("orders:instrument_pick", args=[infy.pk])}"' in html


def test_instrument_search_with_nothing_typed_or_nothing_found(trader_client, instruments):
    assert b"<button" not in trader_client.get(reverse("orders:instrument_options"), {"q": " "}).content
    response = trader_client.get(reverse("orders:instrument_options"), {"q": "<script>x"})
    assert b"No instrument matches" in response.content and b"<script>" not in response.content


def test_picking_an_instrument_sets_it_subscribes_its_price_and_fits_the_fields(trader_client, instruments):
    future = instrument("NIFTY26DECFUT", "NFO")
    response = trader_client.get(
        reverse("orders:instrument_pick", args=[future.pk]), {"product": "CNC", "quantity": "1"}
    )
    html = response.content.decode()
    assert f'<input type="hidden" name="instrument" value="{future.pk}">' in html
    assert f'id="ltp-{future.pk}"' in html and f'id="chg-{future.pk}"' in html
    assert re.search(rf'<form id="price-subscription" ws-send[^>]*>.*name="subscribe" value="{future.pk}"', html)
    assert 'id="chosen-lot">75<' in html and 'id="chosen-tick">0.1<' in html
    assert 'id="field-product" hx-swap-oob="true"' in html and product_options(html) == ["MIS", "NRML"]
    assert re.search(r'name="quantity" value="75"', html)


def test_picking_keeps_a_product_and_quantity_that_still_fit(trader_client, instruments):
    infy = instrument("INFY")
    html = trader_client.get(
        reverse("orders:instrument_pick", args=[infy.pk]), {"product": "CNC", "quantity": "7"}
    ).content.decode()
    assert re.search(r'<option value="CNC" selected>', html)
    assert re.search(r'name="quantity" value="7"', html)


def test_picking_an_unknown_instrument_is_404(trader_client, instruments):
    assert trader_client.get(reverse("orders:instrument_pick", args=[999999])).status_code == 404


def test_an_instrument_id_or_quantity_of_digits_that_are_no_number_is_refused_not_a_500(trader_client, account):
    """A "²" is a digit to ``str.isdigit`` but no number to ``int``: the id is not found, the quantity not kept."""
    assert trader_client.get(reverse("orders:ticket"), {"instrument": "²"}).status_code == 200
    response = trader_client.post(reverse("orders:ticket"), ticket_data(account, instrument="²"))
    assert response.status_code == 200 and "instrument" in response.context["form"].errors
    assert not Order.objects.exists() and not PaperOrder.objects.exists()
    picked = trader_client.get(reverse("orders:instrument_pick", args=[instrument("INFY").pk]), {"quantity": "²"})
    assert picked.status_code == 200 and re.search(r'name="quantity" value="1"', picked.content.decode())


def test_an_instrument_id_or_quantity_of_thousands_of_digits_is_refused_not_a_500(trader_client, account):
    """Python reads no more than 4300 digits as a number: such an id is not found, such a quantity not kept."""
    huge = "9" * 5000
    assert trader_client.get(reverse("orders:ticket"), {"instrument": huge}).status_code == 200
    response = trader_client.post(reverse("orders:ticket"), ticket_data(account, instrument=huge))
    assert response.status_code == 200 and "instrument" in response.context["form"].errors
    response = trader_client.post(reverse("orders:ticket"), ticket_data(account, quantity=huge))
    assert response.status_code == 200 and "quantity" in response.context["form"].errors
    assert not Order.objects.exists() and not PaperOrder.objects.exists()
    picked = trader_client.get(reverse("orders:instrument_pick", args=[instrument("INFY").pk]), {"quantity": huge})
    assert picked.status_code == 200 and re.search(r'name="quantity" value="1"', picked.content.decode())


# --- Order book ----------------------------------------------------------------------------------


def test_book_shows_only_the_traders_orders_in_the_live_tbody(trader_client, trader, other_trader, account):
    mine = place(trader, account)
    theirs_account = make_broker_account(other_trader, broker="paper", client_id="PAPER-T2", label="Theirs")
    theirs = place(other_trader, theirs_account)
    html = trader_client.get(reverse("orders:book")).content.decode()
    assert '<tbody id="order-rows">' in html
    assert f'id="order-{mine.pk}"' in html and mine.reference in html
    assert f'id="order-{theirs.pk}"' not in html and "Theirs" not in html


def test_book_filters(trader_client, trader, account):
    other_account = make_broker_account(trader, broker="paper", client_id="PAPER-O9", label="Second")
    filled = place(trader, account)  # MARKET: the paper exchange fills it on arrival
    resting = resting_order(trader, account, symbol="RELIANCE")
    on_second = resting_order(trader, other_account, source="strategy")
    old = resting_order(trader, account)
    Order.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))

    def shown(**params):
        page = trader_client.get(reverse("orders:book"), params).context["page"]
        return {order.pk for order in page}

    assert shown() == {filled.pk, resting.pk, on_second.pk}
    assert shown(date="all") == {filled.pk, resting.pk, on_second.pk, old.pk}
    assert shown(status="open") == {resting.pk, on_second.pk}
    assert shown(status="FILLED") == {filled.pk}
    assert shown(symbol="rel") == {resting.pk}
    assert shown(account=other_account.pk) == {on_second.pk}
    assert shown(source="strategy") == {on_second.pk}
    assert shown(source="manual", status="open", date="all") == {resting.pk, old.pk}


def test_todays_book_lists_an_order_written_just_before_midnight_for_a_time_after_it(trader_client, trader, account):
    """A scheduled order due just after midnight IST is written (prepared) seconds before it, and is
    numbered for, and sent on, the day of its time: that day's book lists it. An order of the day
    before, written at the same moment, is not today's."""
    midnight = services.trading_date()
    start = datetime.combine(midnight, time.min, tzinfo=services.IST)
    ahead = resting_order(trader, account)  # numbered for today (its reference's day)
    yesterdays = resting_order(trader, account)
    Order.objects.filter(pk__in=[ahead.pk, yesterdays.pk]).update(created_at=start - timedelta(seconds=2))
    Order.objects.filter(pk=yesterdays.pk).update(
        reference=services.reference_for(account, midnight - timedelta(days=1), 999)
    )
    page = trader_client.get(reverse("orders:book")).context["page"]
    assert {order.pk for order in page} == {ahead.pk}


def test_book_ignores_another_traders_account_in_the_filter(trader_client, trader, other_trader, account):
    mine = place(trader, account)
    theirs_account = make_broker_account(other_trader, broker="paper", client_id="PAPER-T3")
    place(other_trader, theirs_account)
    response = trader_client.get(reverse("orders:book"), {"account": theirs_account.pk})
    assert response.status_code == 200 and "account" in response.context["filters"].errors
    assert {order.pk for order in response.context["page"]} == {mine.pk}


def test_book_paginates_fifty_a_page(trader_client, trader, account):
    first = resting_order(trader, account)
    copies = [
        Order(
            reference=f"X{n:06d}",
            account=account,
            instrument=first.instrument,
            side="BUY",
            quantity=1,
            source="manual",
            status=Order.Status.FILLED,
        )
        for n in range(55)
    ]
    Order.objects.bulk_create(copies)
    page_one = trader_client.get(reverse("orders:book"))
    page_two = trader_client.get(reverse("orders:book"), {"page": 2, "status": "FILLED"})
    assert len(page_one.context["page"].object_list) == 50
    assert page_one.context["page"].paginator.count == 56
    assert 'href="?page=2"' in page_one.content.decode()
    assert len(page_two.context["page"].object_list) == 5
    assert "status=FILLED" in page_two.content.decode()


# --- Detail ------------------------------------------------------------------------------------


def test_detail_shows_the_order_and_its_timeline_in_the_users_timezone(trader_client, trader, account):
    trader.timezone = "America/New_York"
    trader.save()
    order = resting_order(trader, account)
    response = trader_client.get(reverse("orders:detail", args=[order.pk]))
    html = response.content.decode()
    assert order.reference in html and order.broker_order_id in html
    events = list(order.events.all())
    assert [event.kind for event in events] == ["created", "submitted", "opened"]
    for event in events:
        local = timezone.localtime(event.created_at, zoneinfo.ZoneInfo("America/New_York"))
        assert f"{local:%d %b %Y %H:%M:%S}" in html
    assert html.index(f'id="event-{events[0].pk}"') < html.index(f'id="event-{events[1].pk}"')
    assert "NEW → SUBMITTED" in html and '<td data-label="Cause">test</td>' in html
    assert ">Sent to the broker</td>" in html and ">Open at the broker</td>" in html  # not "submitted"
    assert '<td data-label="Message">price 1400.00</td>' in html  # what it was placed at
    assert f'<td data-label="Message">broker order {order.broker_order_id}</td>' in html
    assert 'id="modify"' in html and reverse("orders:modify", args=[order.pk]) in html


def test_detail_links_parent_and_children(trader_client, trader, account):
    parent = resting_order(trader, account)
    child = place(
        trader, account, side="SELL", order_type="SL-M", trigger_price="1300", parent=parent, role="stop_loss"
    )
    parent_html = trader_client.get(reverse("orders:detail", args=[parent.pk])).content.decode()
    child_html = trader_client.get(reverse("orders:detail", args=[child.pk])).content.decode()
    assert f'href="{reverse("orders:detail", args=[child.pk])}"' in parent_html
    assert f'href="{reverse("orders:detail", args=[parent.pk])}" id="parent-link"' in child_html


def test_detail_of_a_final_order_offers_no_modify_or_cancel(trader_client, trader, account):
    order = place(trader, account)
    services.orders_sync_account(account=account)
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED
    html = trader_client.get(reverse("orders:detail", args=[order.pk])).content.decode()
    assert 'id="modify"' not in html and reverse("orders:cancel", args=[order.pk]) not in html


# --- Modify ------------------------------------------------------------------------------------


def test_modify_from_the_page_changes_the_order_at_the_exchange(trader_client, trader, account):
    order = resting_order(trader, account, quantity=2)
    data = {"quantity": "3", "order_type": "LIMIT", "price": "1401.5", "trigger_price": ""}
    response = trader_client.post(reverse("orders:modify", args=[order.pk]), data, follow=True)
    assert response.redirect_chain == [(reverse("orders:detail", args=[order.pk]), 302)]
    assert any("Modified" in text for text in page_messages(response))
    at_exchange = PaperOrder.objects.get(order_id=order.broker_order_id)
    assert at_exchange.quantity == 3 and at_exchange.price == D("1401.5")
    order.refresh_from_db()
    assert order.quantity == 3 and order.price == D("1401.5")
    assert order.events.last().cause == "trader via the order page"


@pytest.mark.parametrize(
    "data, field",
    [
        ({"quantity": "2", "order_type": "LIMIT", "price": "1400.03"}, "price"),
        ({"quantity": "2", "order_type": "SL", "price": "1400", "trigger_price": "1399"}, "order_type"),
        ({"quantity": "", "order_type": "LIMIT", "price": "1400"}, "quantity"),
        ({"quantity": "2", "order_type": "LIMIT", "price": "2500"}, None),  # outside the band: the broker refuses
    ],
)
def test_modify_errors_are_shown_inline_and_change_nothing(trader_client, trader, account, data, field):
    order = resting_order(trader, account, quantity=2)
    response = trader_client.post(reverse("orders:modify", args=[order.pk]), data)
    assert response.status_code == 200
    form = response.context["modify_form"]
    assert (field or "__all__") in form.errors, form.errors
    html = response.content.decode()
    assert 'id="modify"' in html and form.errors[field or "__all__"][0] in html.replace("&#x27;", "'")
    at_exchange = PaperOrder.objects.get(order_id=order.broker_order_id)
    assert at_exchange.price == D("1400") and at_exchange.quantity == 2


@pytest.mark.parametrize(
    "order_fields, cleared",
    [
        ({"order_type": "LIMIT", "price": "1400"}, "price"),
        ({"order_type": "SL", "price": "1515", "trigger_price": "1510"}, "price"),
        ({"order_type": "SL", "price": "1515", "trigger_price": "1510"}, "trigger_price"),
    ],
)
def test_a_price_cleared_in_the_modify_form_is_refused_on_its_field_not_nothing_to_change(
    trader_client, trader, account, order_fields, cleared
):
    """A trader who emptied the price (or trigger) of a LIMIT or SL order and saved was told "Nothing
    to change": the order kept its price, and the trader was not told the field needs one."""
    order = resting_order(trader, account, **order_fields)
    url = reverse("orders:modify", args=[order.pk])
    sent = {**shown_form(trader_client.get(reverse("orders:detail", args=[order.pk])).content.decode(), url)}
    response = trader_client.post(url, {**sent, cleared: "", "quantity": "2"})
    assert response.status_code == 200
    assert "needs a" in response.context["modify_form"].errors[cleared][0]
    at_exchange = PaperOrder.objects.get(order_id=order.broker_order_id)
    assert at_exchange.quantity == 1 and at_exchange.modifications == 0


def test_modifying_a_filled_order_is_refused_on_the_page(trader_client, trader, account):
    order = place(trader, account)
    services.orders_sync_account(account=account)
    response = trader_client.post(reverse("orders:modify", args=[order.pk]), {"quantity": "2", "order_type": "MARKET"})
    assert response.status_code == 200
    assert "Only an open order can be modified" in response.content.decode()
    assert PaperOrder.objects.get().quantity == 1


# --- Cancel ------------------------------------------------------------------------------------


def test_cancel_from_the_detail_page_redirects_with_a_message(trader_client, trader, account):
    order = resting_order(trader, account)
    response = trader_client.post(reverse("orders:cancel", args=[order.pk]), follow=True)
    assert response.redirect_chain == [(reverse("orders:detail", args=[order.pk]), 302)]
    assert any(f"Cancelled {order.reference}" in text for text in page_messages(response))
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    assert PaperOrder.objects.get(order_id=order.broker_order_id).status == "CANCELLED"


def test_htmx_cancel_returns_the_row(trader_client, trader, account):
    order = resting_order(trader, account)
    response = trader_client.post(reverse("orders:cancel", args=[order.pk]), HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html
    assert html.lstrip().startswith(f'<tr id="order-{order.pk}"') and "Cancelled" in html
    assert 'hx-swap-oob="afterbegin"' in html  # the notice
    assert reverse("orders:cancel", args=[order.pk]) not in html  # no cancel button on a cancelled row
    assert PaperOrder.objects.get(order_id=order.broker_order_id).status == "CANCELLED"


def test_htmx_cancel_of_a_filled_order_returns_the_row_and_the_refusal(trader_client, trader, account):
    order = place(trader, account)
    response = trader_client.post(reverse("orders:cancel", args=[order.pk]), HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200 and f'id="order-{order.pk}"' in html
    assert "Could not cancel" in html and "notice-error" in html
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED


@pytest.mark.parametrize("inline", [True, False])
def test_cancel_on_a_deactivated_account_says_so_instead_of_could_not_reach_the_broker(
    trader_client, trader, account, inline
):
    """Cancel of an order still open on an account the trader deactivated answered "Could not reach
    the broker: The broker account is deactivated." (nothing was sent) and wrote a cancel the trader
    asked and one that failed into the order's timeline: the trader was told neither what happened
    nor where the order can still be cancelled."""
    order = resting_order(trader, account)
    account_services.broker_account_set_active(account=account, actor=trader, active=False)
    headers = {"HTTP_HX_REQUEST": "true"} if inline else {}
    response = trader_client.post(reverse("orders:cancel", args=[order.pk]), follow=not inline, **headers)
    said = response.content.decode().replace("&#x27;", "'")
    assert "Could not reach the broker" not in said
    assert "Paper is deactivated" in said and "reactivate" in said and "Paper exchange" in said
    order.refresh_from_db()
    assert order.status == Order.Status.OPEN
    assert [event.kind for event in order.events.all()] == ["created", "submitted", "opened"]
    assert PaperOrder.objects.get(order_id=order.broker_order_id).status == "OPEN"


def test_the_row_offers_cancel_only_while_open_at_the_broker(trader_client, trader, account):
    filled = place(trader, account)
    services.orders_sync_account(account=account)
    resting = resting_order(trader, account)
    html = trader_client.get(reverse("orders:book")).content.decode()
    assert reverse("orders:cancel", args=[resting.pk]) in html
    assert reverse("orders:cancel", args=[filled.pk]) not in html


# --- Access ------------------------------------------------------------------------------------

VIEWS = [
    ("orders:book", False, ["post"]),
    ("orders:ticket", False, ["put", "delete"]),
    ("orders:instrument_options", False, ["post"]),
    ("orders:account_pick", False, ["post"]),
    ("orders:detail", True, ["post"]),
    ("orders:modify", True, ["put", "delete"]),
    ("orders:row", True, ["post"]),
    ("orders:rows", False, ["post"]),
    ("orders:cancel", True, ["get"]),
]


@pytest.mark.parametrize("name, takes_order, methods", VIEWS)
def test_wrong_http_method_is_405(trader_client, trader, account, name, takes_order, methods):
    args = [resting_order(trader, account).pk] if takes_order else []
    for method in methods:
        assert getattr(trader_client, method)(reverse(name, args=args)).status_code == 405


def test_instrument_pick_is_get_only(trader_client, instruments):
    assert trader_client.post(reverse("orders:instrument_pick", args=[instrument("INFY").pk])).status_code == 405


@pytest.mark.parametrize(
    "name, method",
    [
        ("orders:book", "get"),
        ("orders:ticket", "get"),
        ("orders:ticket", "post"),
        ("orders:instrument_options", "get"),
        ("orders:instrument_pick", "get"),
        ("orders:account_pick", "get"),
        ("orders:detail", "get"),
        ("orders:modify", "post"),
        ("orders:cancel", "post"),
        ("orders:rows", "get"),
    ],
)
def test_anonymous_is_sent_to_login(client, trader, account, name, method):
    order = resting_order(trader, account)
    args = {"orders:detail": [order.pk], "orders:modify": [order.pk], "orders:cancel": [order.pk]}.get(name, [])
    if name == "orders:instrument_pick":
        args = [order.instrument_id]
    response = getattr(client, method)(reverse(name, args=args), ticket_data(account) if method == "post" else {})
    assert response.status_code == 302 and response.url.startswith("/login/")
    assert Order.objects.count() == 1 and PaperOrder.objects.get().status == "OPEN"


@pytest.mark.parametrize(
    "name, method, data",
    [
        ("orders:detail", "get", {}),
        ("orders:modify", "post", {"quantity": "5", "order_type": "LIMIT", "price": "1405"}),
        ("orders:cancel", "post", {}),
    ],
)
def test_another_traders_order_is_404_and_untouched(client, trader, other_trader, account, name, method, data):
    order = resting_order(trader, account)
    client.force_login(other_trader)
    assert getattr(client, method)(reverse(name, args=[order.pk]), data).status_code == 404
    htmx = client.post(reverse("orders:cancel", args=[order.pk]), HTTP_HX_REQUEST="true")
    assert htmx.status_code == 404
    at_exchange = PaperOrder.objects.get(order_id=order.broker_order_id)
    assert at_exchange.status == "OPEN" and at_exchange.quantity == 1 and at_exchange.price == D("1400")
    order.refresh_from_db()
    assert order.status == Order.Status.OPEN and list(order.events.values_list("kind", flat=True)) == [
        "created",
        "submitted",
        "opened",
    ]


@pytest.mark.parametrize(
    "name, method, takes_order",
    [
        ("orders:cancel", "post", True),
        ("orders:modify", "get", True),
        ("orders:modify", "post", True),
        ("orders:row", "get", True),
        ("orders:instrument_options", "get", False),
    ],
)
def test_an_htmx_request_after_the_session_ended_sends_the_page_to_login_instead_of_into_the_row(
    client, trader, account, name, method, takes_order
):
    """Signed out in another tab (or the session expired), the book's Cancel was followed to the login
    page and that whole page was swapped in place of the order's row (the row was gone)."""
    order = resting_order(trader, account)
    page = reverse("orders:book") + "?status=open&date=all"
    headers = {"HX-Request": "true", "HX-Current-URL": f"http://testserver{page}"}
    url = reverse(name, args=[order.pk] if takes_order else [])
    response = getattr(client, method)(url, {"q": "INF"} if not takes_order else {}, headers=headers)
    assert response.status_code == 204 and not response.content
    assert response["HX-Redirect"] == "/login/?next=" + quote(page)
    assert PaperOrder.objects.get().status == "OPEN"
    # A request not from htmx is sent to the login page as before; an htmx one from another site's page
    # comes back to the page it asked for.
    assert client.post(reverse("orders:cancel", args=[order.pk])).url.startswith("/login/?next=")
    elsewhere = {"HX-Request": "true", "HX-Current-URL": f"https://evil.example{page}"}
    response = client.post(reverse("orders:cancel", args=[order.pk]), headers=elsewhere)
    assert response["HX-Redirect"] == "/login/"


def test_csrf_is_enforced_on_modify_and_cancel(trader, account):
    order = resting_order(trader, account)
    client = Client(enforce_csrf_checks=True)
    client.force_login(trader)
    modify = {"quantity": "5", "order_type": "LIMIT", "price": "1405"}
    assert client.post(reverse("orders:modify", args=[order.pk]), modify).status_code == 403
    assert client.post(reverse("orders:cancel", args=[order.pk])).status_code == 403
    assert PaperOrder.objects.get().status == "OPEN"


def test_an_account_label_is_escaped_on_book_and_detail(trader_client, trader, instruments, settings):
    settings.ORDER_LOOKUP_DELAY_S = 0
    account = make_broker_account(trader, broker="paper", client_id="PAPER-XSS", label="<script>alert(1)</script>")
    order = place(trader, account)
    for url in (reverse("orders:book"), reverse("orders:detail", args=[order.pk]), reverse("orders:ticket")):
        html = trader_client.get(url).content.decode()
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_nav_links_to_orders_and_the_ticket(trader_client, account):
    html = trader_client.get(reverse("orders:book")).content.decode()
    assert f'href="{reverse("orders:book")}" aria-current="page">Orders<' in html
    assert f'href="{reverse("orders:ticket")}"' in html and f'href="{reverse("brokers:instruments")}"' in html


# --- Inline modify in the book, and what a filtered book does with new orders ----------------------


def test_inline_modify_opens_in_the_row_and_answers_with_the_row(trader_client, trader, account):
    order = resting_order(trader, account, quantity=2)
    url = reverse("orders:modify", args=[order.pk])
    book = trader_client.get(reverse("orders:book")).content.decode()
    assert f'hx-get="{url}"' in book  # the row's Modify opens the form in place
    opened = trader_client.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert opened.lstrip().startswith(f'<tr id="order-{order.pk}"') and f'hx-post="{url}"' in opened
    assert f'id="modify_{order.pk}_quantity"' in opened and "<html" not in opened
    data = {"quantity": "3", "order_type": "LIMIT", "price": "1401.5", "trigger_price": ""}
    saved = trader_client.post(url, data, HTTP_HX_REQUEST="true").content.decode()
    assert saved.lstrip().startswith(f'<tr id="order-{order.pk}"') and "Modified" in saved and "<form" not in saved
    assert PaperOrder.objects.get(order_id=order.broker_order_id).price == D("1401.5")
    closed = trader_client.get(reverse("orders:row", args=[order.pk])).content.decode()
    assert closed.lstrip().startswith(f'<tr id="order-{order.pk}"') and "1401.5" in closed
    # Without htmx, the row's Modify link shows the order's page with its form.
    assert 'id="modify"' in trader_client.get(url).content.decode()


def test_inline_modify_errors_stay_in_the_row_and_change_nothing(trader_client, trader, account):
    order = resting_order(trader, account)
    url = reverse("orders:modify", args=[order.pk])
    data = {"quantity": "1", "order_type": "LIMIT", "price": "1400.03", "trigger_price": ""}
    answer = trader_client.post(url, data, HTTP_HX_REQUEST="true")
    html = answer.content.decode()
    assert answer.status_code == 200 and f'hx-post="{url}"' in html and "multiple of the tick size" in html
    assert 'value="1400.03"' in html  # what the trader typed is kept
    assert PaperOrder.objects.get(order_id=order.broker_order_id).price == D("1400")


def test_inline_modify_of_an_order_closed_meanwhile_answers_with_its_row_not_a_form(trader_client, trader, account):
    # A book row still shown open (cancelled in another tab, its push missed): its Modify, and a form
    # opened before the cancel, answer with the row as it is now and why, not a form the order can no
    # longer take (a row open for editing takes no pushes: it would stay open on a closed order).
    order = resting_order(trader, account, quantity=2)
    url = reverse("orders:modify", args=[order.pk])
    shown = shown_form(trader_client.get(url, HTTP_HX_REQUEST="true").content.decode(), url)
    services.order_cancel(order=order, actor=trader, cause="another tab")
    assert order.status == Order.Status.CANCELLED
    opened = trader_client.get(url, HTTP_HX_REQUEST="true").content.decode()
    saved = trader_client.post(url, {**shown, "quantity": "3"}, HTTP_HX_REQUEST="true").content.decode()
    for html in (opened, saved):
        assert html.lstrip().startswith(f'<tr id="order-{order.pk}" class="status-cancelled"')
        assert "<form" not in html and "Only an open order can be modified; this one is Cancelled." in html
    assert PaperOrder.objects.get(order_id=order.broker_order_id).quantity == 2


def test_a_triggered_stops_trigger_is_shown_fixed_and_a_form_from_before_is_refused_not_dropped(
    trader_client, trader, account
):
    """A triggered stop's form shows its trigger and type fixed. A form shown before it triggered
    and sent after, with a new trigger, is answered with the refusal on that field: a disabled
    field's value would have been dropped, and the trader told "Nothing to change"."""
    order = resting_order(trader, account, order_type="SL", price="1605", trigger_price="1600")
    url = reverse("orders:modify", args=[order.pk])
    shown = shown_form(trader_client.get(url, HTTP_HX_REQUEST="true").content.decode(), url)
    Order.objects.filter(pk=order.pk).update(triggered_at=timezone.now())  # as a sync records it
    opened = trader_client.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert re.search(r'<select name="order_type"[^>]*disabled', opened)
    assert re.search(r'<input[^>]*name="trigger_price"[^>]*disabled', opened)
    sent = trader_client.post(url, {**shown, "trigger_price": "1601"}, HTTP_HX_REQUEST="true").content.decode()
    assert "This stop has triggered; its trigger can no longer be changed" in sent
    assert PaperOrder.objects.get(order_id=order.broker_order_id).trigger_price == D("1600")


def sent_by_a_browser(html: str, action: str, *, script: bool) -> dict:
    """What a browser sends from the form posting to ``action``: not its disabled fields (nor their
    hidden initials); with ``script``, order_form.js enables the price and trigger the type takes,
    so those are sent (their hidden initials stay disabled)."""
    form = re.search(rf'<form[^>]*(?:action|hx-post)="{re.escape(action)}".*?</form>', html, re.S).group(0)
    disabled = set(re.findall(r'<(?:input|select)[^>]*name="([^"]*)"[^>]*disabled', form))
    if script:
        disabled -= {"price", "trigger_price"}
    return {name: value for name, value in shown_form(html, action).items() if name not in disabled}


@pytest.mark.parametrize("script", [False, True])
@pytest.mark.parametrize("inline", [False, True])
def test_a_triggered_stops_price_is_modified_from_the_form_shown_after_it_triggered(
    trader_client, trader, account, inline, script
):
    """A triggered stop's price and quantity still change, but its form, which shows the trigger
    and type fixed (disabled, so not sent), could not be saved: "This field is required" on the
    order type, and the form shown back had the trigger blank and the fields no longer fixed."""
    order = resting_order(trader, account, order_type="SL", price="1605", trigger_price="1600")
    Order.objects.filter(pk=order.pk).update(triggered_at=timezone.now())  # as a sync records it
    url = reverse("orders:modify", args=[order.pk])
    htmx = {"HTTP_HX_REQUEST": "true"} if inline else {}
    page = trader_client.get(url, **htmx) if inline else trader_client.get(reverse("orders:detail", args=[order.pk]))
    sent = sent_by_a_browser(page.content.decode(), url, script=script)
    assert "order_type" not in sent  # shown fixed
    response = trader_client.post(url, {**sent, "price": "1610"}, **htmx)
    assert response.status_code in (200, 302) and 'class="error"' not in response.content.decode()
    at_exchange = PaperOrder.objects.get(order_id=order.broker_order_id)
    assert (at_exchange.price, at_exchange.trigger_price, at_exchange.order_type) == (D("1610"), D("1600"), "SL")
    order.refresh_from_db()
    assert (order.price, order.trigger_price, order.order_type) == (D("1610"), D("1600"), "SL")


def test_a_filtered_book_takes_new_orders_out_of_sight(trader_client, trader, account):
    resting_order(trader, account)
    plain = trader_client.get(reverse("orders:book")).content.decode()
    assert '<tbody id="order-rows">' in plain  # today's first page: a new order goes on top
    for params in ({"status": "CANCELLED"}, {"symbol": "TCS"}, {"source": "basket", "date": "all"}):
        narrowed = trader_client.get(reverse("orders:book"), params).content.decode()
        assert '<tbody id="order-rows" hidden></tbody>' in narrowed, params


def test_zeros_after_a_prices_two_places_are_not_places(trader_client, account):
    data = ticket_data(account, order_type="LIMIT", price="1400.5000")
    response = trader_client.post(reverse("orders:ticket"), data)
    assert response.status_code == 302, response.content.decode()[:500]
    assert Order.objects.get().price == D("1400.50")
    refused = trader_client.post(reverse("orders:ticket"), ticket_data(account, order_type="LIMIT", price="1400.505"))
    assert refused.status_code == 200 and Order.objects.count() == 1


def test_a_price_longer_than_decimal_arithmetic_is_a_field_error_not_a_500(trader_client, account):
    """28 digits and more cannot be rounded to two places (``decimal.InvalidOperation``): refused on
    the price, with nothing placed."""
    data = ticket_data(account, order_type="LIMIT", price="1234567890123456789012345678.125")
    response = trader_client.post(reverse("orders:ticket"), data)
    assert response.status_code == 200 and "no more than 14 digits" in response.content.decode()
    assert not Order.objects.exists()


@pytest.mark.parametrize("inline", [True, False])
def test_a_modify_form_whose_shown_price_is_no_number_is_refused_not_a_500(trader_client, trader, account, inline):
    """A signalling NaN ("sNaN") cannot even be compared: the form it was shown with is out of date."""
    order = resting_order(trader, account)
    data = {"quantity": "1", "order_type": "LIMIT", "price": "1401", "trigger_price": ""}
    shown = {f"initial-{name}": value for name, value in {**data, "price": "sNaN"}.items()}
    headers = {"HTTP_HX_REQUEST": "true"} if inline else {}
    response = trader_client.post(reverse("orders:modify", args=[order.pk]), {**data, **shown}, **headers)
    assert response.status_code == 200 and "has changed since this form was shown (price)" in response.content.decode()
    assert PaperOrder.objects.get(order_id=order.broker_order_id).price == D("1400")


@pytest.mark.parametrize("inline", [True, False])
def test_a_form_refused_as_older_than_the_order_is_shown_again_as_the_order_is_now(
    trader_client, trader, account, inline
):
    """Another tab moved the price while the form was open: the form is refused, and the one shown
    with the refusal compares with the order as it is now, so saving it again changes the order
    (what the trader changed is kept; what they left as shown shows the order's value now)."""
    order = resting_order(trader, account, quantity=2)
    url = reverse("orders:modify", args=[order.pk])
    headers = {"HTTP_HX_REQUEST": "true"} if inline else {}
    page = trader_client.get(url, **headers) if inline else trader_client.get(reverse("orders:detail", args=[order.pk]))
    stale = shown_form(page.content.decode(), url)
    services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="another tab", price="1410")
    refused = trader_client.post(url, {**stale, "quantity": "4"}, **headers)
    assert "has changed since this form was shown (price)" in refused.content.decode()
    again = shown_form(refused.content.decode(), url)
    assert again["quantity"] == "4" and D(again["price"]) == D("1410")
    trader_client.post(url, again, **headers)
    order.refresh_from_db()
    assert (order.quantity, order.price) == (4, D("1410"))
    at_exchange = PaperOrder.objects.get(order_id=order.broker_order_id)
    assert (at_exchange.quantity, at_exchange.price) == (4, D("1410"))


def test_a_books_rows_are_read_again_in_one_request_and_only_the_traders_own(
    trader_client, trader, account, other_trader
):
    """A book whose socket connected again reads the rows its fresh copy no longer lists (pushed
    beyond its first page, a filtered book's finished ones): one request for them all, not one a
    row (hundreds from a book open all day), in a fixed number of queries; another trader's
    ids are left out; ids that are not ids are refused naming the parameter."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    mine = [place(trader, account, order_type="LIMIT", price="1400") for _ in range(3)]
    theirs = place(other_trader, make_broker_account(other_trader, broker="paper", client_id="PAPER-X"))
    url = reverse("orders:rows")

    def rows(ids):
        with CaptureQueriesContext(connection) as queries:
            answer = trader_client.get(url, {"id": ids})
        return answer, len(queries)

    answer, few = rows([mine[0].pk, theirs.pk])
    page = answer.content.decode()
    assert answer.status_code == 200 and f'id="order-{mine[0].pk}"' in page
    assert f'id="order-{theirs.pk}"' not in page and theirs.reference not in page
    more = [place(trader, account, order_type="LIMIT", price="1400") for _ in range(12)]
    answer, many = rows([order.pk for order in mine + more])
    assert answer.content.decode().count('<tr id="order-') == 15 and many == few
    for bad in ([], ["1", "x"], ["²"], [str(n) for n in range(101)]):
        refused = trader_client.get(url, {"id": bad})
        assert refused.status_code == 400 and refused.content.decode().startswith("id:"), bad
