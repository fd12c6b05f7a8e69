"""The order pushed to a trader's open pages: a new one goes on top of the book and takes away its empty line."""

import asyncio
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from monitoring import presence
from monitoring.tests.test_consumer import connect
from orders import services
from orders.tests.factories import broker_state, place

EMPTY_LINE = '<p class="empty" id="orders-empty">'
DELETE_EMPTY_LINE = '<p id="orders-empty" hx-swap-oob="delete"></p>'


def pushes_to(user, action) -> list[str]:
    """The fragments pushed to ``user``'s open pages while ``action`` runs and its transaction commits."""
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(f"user.{user.pk}", channel)
    presence.joined(user.pk, channel)
    try:
        action()

        async def received() -> list[str]:
            html = []
            while True:
                try:
                    html.append((await asyncio.wait_for(layer.receive(channel), 2))["html"])
                except TimeoutError:
                    return html

        return async_to_sync(received)()
    finally:
        presence.left(user.pk, channel)


def test_the_first_order_pushed_to_an_empty_book_deletes_its_empty_line(
    trader_client, trader, account, django_capture_on_commit_callbacks
):
    assert EMPTY_LINE in trader_client.get(reverse("orders:book")).content.decode()

    def place_and_commit():
        with django_capture_on_commit_callbacks(execute=True):
            place(trader, account, order_type="LIMIT", price="1400")

    [created] = [html for html in pushes_to(trader, place_and_commit) if "afterbegin:#order-rows" in html]
    assert DELETE_EMPTY_LINE in created


def test_a_changed_order_push_leaves_the_books_lines_alone(
    trader_client, trader, account, django_capture_on_commit_callbacks
):
    order = place(trader, account, order_type="LIMIT", price="1400")

    def cancel_and_commit():
        with django_capture_on_commit_callbacks(execute=True):
            services.order_cancel(order=order, actor=trader, cause="test")

    pushed = pushes_to(trader, cancel_and_commit)
    assert pushed and f'id="order-{order.pk}"' in pushed[0]
    assert not any("orders-empty" in html for html in pushed)


def test_a_narrowed_empty_book_keeps_its_line_when_an_order_is_pushed(trader_client, account):
    # The push's new row lands in a hidden tbody there, so the line must not be the one the push deletes.
    narrowed = trader_client.get(reverse("orders:book"), {"status": "CANCELLED"}).content.decode()
    assert "No orders match these filters." in narrowed and 'id="orders-empty"' not in narrowed


def test_the_first_order_pushed_to_the_dashboard_deletes_its_no_open_orders_line(
    trader_client, trader, account, django_capture_on_commit_callbacks
):
    # The dashboard's open orders take the pushed new order on top of their #order-rows, as the book
    # does: their "No open orders." line must be the one the push deletes, or it stays above the order.
    dashboard = trader_client.get(reverse("portfolio:dashboard")).content.decode()
    assert '<p class="empty" id="open-orders-empty">No open orders.</p>' in dashboard

    def place_and_commit():
        with django_capture_on_commit_callbacks(execute=True):
            place(trader, account, order_type="LIMIT", price="1400")

    [created] = [html for html in pushes_to(trader, place_and_commit) if "afterbegin:#order-rows" in html]
    assert '<p id="open-orders-empty" hx-swap-oob="delete"></p>' in created


def test_a_price_the_broker_tells_with_one_place_is_pushed_with_two_as_the_page_shows_it(
    trader_client, trader, account, django_capture_on_commit_callbacks
):
    # A broker's JSON number (Kite: 1401.5) is the order's price as it was read: the pushed row said
    # 1401.5 where the book, read from the column, says 1401.50.
    order = place(trader, account, order_type="LIMIT", price="1400")
    state = broker_state(order, price=Decimal("1401.5"))

    def changed_at_the_broker():
        with django_capture_on_commit_callbacks(execute=True):
            services.order_apply_broker_state(
                order, state, cause="test", asked_at=timezone.now() + timedelta(seconds=1)
            )

    [pushed] = [html for html in pushes_to(trader, changed_at_the_broker) if f'id="order-{order.pk}"' in html]
    cell = '<td data-label="Price" class="num">1401.50</td>'
    assert cell in pushed
    assert cell in trader_client.get(reverse("orders:book")).content.decode()


@pytest.mark.django_db(transaction=True)
async def test_a_pushed_rows_average_over_the_socket_is_the_one_a_reload_of_the_book_shows(trader, account):
    # The broker's average (Kite's, not rounded) kept more places than its column (four): the row was
    # rendered from the value as given (1399.95) where the book, reading the column (1399.9550), says 1399.96.
    order = await sync_to_async(place)(trader, account, order_type="LIMIT", price="1400", quantity=3)
    state = broker_state(order, filled_quantity=1, pending_quantity=2, average_price=Decimal("1399.954995005"))
    communicator, connected, _ = await connect(trader)
    assert connected
    try:
        await sync_to_async(services.order_apply_broker_state)(order, state, cause="test")
        row = f'id="order-{order.pk}"'
        pushed = await communicator.receive_from(timeout=5)
        while row not in pushed:
            pushed = await communicator.receive_from(timeout=5)
    finally:
        await communicator.disconnect()
    book = await sync_to_async(_book_of)(trader)
    assert _avg_cell(book, order) == _avg_cell(pushed, order) == "1399.96"


def _book_of(user) -> str:
    client = Client()
    client.force_login(user)
    return client.get(reverse("orders:book")).content.decode()


def _avg_cell(html: str, order) -> str:
    row = re.search(rf'<tr id="order-{order.pk}".*?</tr>', html, re.S).group(0)
    return re.search(r'data-label="Avg" class="num">([^<]*)<', row).group(1)
