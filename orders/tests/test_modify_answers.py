"""The broker's terms of an order after a modify of ours: a lost answer, and a fill faster than the answer.

A MARKET order Kite holds as the LIMIT of its market protection stays MARKET here, unless our own
modify, whose answer was lost, asked for that very LIMIT. A modify that fills at once is told by
the fill's update before its answer is recorded: the fill does not say the broker changed it.
"""

import dataclasses
import threading
from decimal import Decimal

import pytest
from django.db import connection

from brokers.base import Status
from brokers.client import AccountBroker
from brokers.paper import adapter, engine
from brokers.paper.models import PaperClient, PaperOrder
from orders import services
from orders.models import Order
from orders.tests.factories import modify_answered_after_its_fills, place
from tradingplatform import background
from tradingplatform.testing import mariadb_only

pytestmark = pytest.mark.django_db(transaction=True)
D = Decimal


def settle():
    assert background.wait_idle(30)


def set_price(last):
    last = D(last)
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=last, bid=last - D("0.1"), ask=last + D("0.1"))


def knobs(account, **values):
    PaperClient.objects.filter(user_id=account.client_id).update(**values)


def at_broker(order):
    return PaperOrder.objects.get(order_id=order.broker_order_id)


def protected_market_order(trader, account, band="1400"):
    """A MARKET buy the broker holds as the LIMIT at its protection band, resting (the market is
    above the band): a LIMIT at the band at the exchange, our MARKET order here."""
    set_price("1500")
    order = place(trader, account, order_type="LIMIT", price=band, quantity=2)
    settle()
    Order.objects.filter(pk=order.pk).update(order_type="MARKET", price=None)
    services.orders_sync_account(account=account)
    order.refresh_from_db()
    assert (order.status, order.order_type, order.price) == (Order.Status.OPEN, "MARKET", None)  # still ours
    return order


def modify_lost(trader, account, order, **change):
    """A modify whose every answer is lost (the exchange makes the change)."""
    knobs(account, timeout_rate=1)
    with pytest.raises(services.OrderActionRefused, match="answer was lost"):
        services.order_modify(order=order, actor=trader, cause="trader", **change)
    knobs(account, timeout_rate=0)
    settle()


def test_a_market_order_changed_to_a_limit_whose_answer_was_lost_takes_the_limit_kite_holds(trader, kite_on_face):
    account = kite_on_face
    order = protected_market_order(trader, account)
    modify_lost(trader, account, order, order_type="LIMIT", price="1405")
    assert (at_broker(order).order_type, at_broker(order).price) == ("LIMIT", D("1405"))
    order.refresh_from_db()
    assert order.events.last().data == {"order_type": "LIMIT", "price": "1405.00"}  # what the lost modify asked

    services.orders_sync_account(account=account)  # what the queued run does
    order.refresh_from_db()
    assert (order.order_type, order.price, order.status) == ("LIMIT", D("1405"), Order.Status.OPEN)
    found = order.events.last()
    assert "found changed at the broker: order type LIMIT, price 1405" in found.message
    assert found.data[services.CHANGED_AT_BROKER] == {"order_type": "LIMIT", "price": "1405"}
    assert services.orders_sync_account(account=account) == 0  # in line now


def test_a_lost_modify_to_a_limit_the_broker_does_not_hold_leaves_the_market_order(trader, kite_on_face):
    """The lost modify asked 1405; Kite shows the protection's 1400: the modify did not take."""
    account = kite_on_face
    order = protected_market_order(trader, account)
    modify_lost(trader, account, order, order_type="LIMIT", price="1405")
    PaperOrder.objects.filter(order_id=order.broker_order_id).update(price=D("1400"))  # as if it never arrived
    services.orders_sync_account(account=account)
    order.refresh_from_db()
    assert (order.order_type, order.price) == ("MARKET", None)


def test_a_lost_modify_superseded_by_an_answered_one_does_not_make_a_protected_order_a_limit(trader, account):
    """A lost modify asked LIMIT 1405; answered ones then made the order LIMIT 1410 and MARKET again.
    Kite's protection showing that MARKET order as a LIMIT at 1405 is not the lost modify's."""
    order = protected_market_order(trader, account)
    modify_lost(trader, account, order, order_type="LIMIT", price="1405")
    services.order_modify(order=order, actor=trader, cause="trader", order_type="LIMIT", price="1410")
    services.order_modify(order=order, actor=trader, cause="trader", order_type="MARKET")  # fills
    settle()
    order.refresh_from_db()
    assert (order.status, order.order_type) == (Order.Status.FILLED, "MARKET")
    state = AccountBroker(account).order(order.broker_order_id)
    protected = dataclasses.replace(state, order_type="LIMIT", price=D("1405"))
    services.order_apply_broker_state(order, protected, cause="sync", asked_at=services.timezone.now())
    order.refresh_from_db()
    assert (order.order_type, order.price) == ("MARKET", None)


def test_a_change_to_market_whose_fill_is_told_before_its_answer_is_not_said_changed_at_the_broker(
    trader, account, monkeypatch
):
    set_price("1500")
    order = place(trader, account, order_type="LIMIT", price="1400", quantity=2)
    settle()
    modify_answered_after_its_fills(monkeypatch)
    services.order_modify(order=order, actor=trader, cause="trader", order_type="MARKET")
    settle()
    order.refresh_from_db()
    assert (order.status, order.filled_quantity, order.order_type, order.price) == ("FILLED", 2, "MARKET", None)
    filled = order.events.get(kind="filled")
    assert "at the broker" not in filled.message and "2/2 filled at" in filled.message
    assert order.events.get(kind="modified").data == {"order_type": "MARKET"}


def test_a_fill_read_on_an_order_row_older_than_its_recorded_modify_is_not_said_changed_at_the_broker(
    trader, account, monkeypatch
):
    """The fill's update read the order just before its modify was recorded (the fill came first)."""
    set_price("1500")
    order = place(trader, account, order_type="LIMIT", price="1400", quantity=2)
    settle()
    as_read = Order.objects.get(pk=order.pk)
    monkeypatch.setattr(adapter, "order_announce", lambda *a, **k: None)  # the update is ours to apply
    services.order_modify(order=order, actor=trader, cause="trader", order_type="MARKET")
    services.order_apply_broker_state(as_read, AccountBroker(account).order(order.broker_order_id), cause="update")
    order.refresh_from_db()
    assert (order.status, order.filled_quantity, order.order_type, order.price) == ("FILLED", 2, "MARKET", None)
    assert "at the broker" not in order.events.get(kind="filled").message


def test_a_change_made_at_the_broker_itself_is_still_said_so(trader, account, monkeypatch):
    """Not ours: the trader changed the order in the broker's own app, and it filled."""
    set_price("1500")
    order = place(trader, account, order_type="LIMIT", price="1400", quantity=2)
    settle()
    services.order_modify(order=order, actor=trader, cause="trader", price="1401")  # ours, recorded
    monkeypatch.setattr(adapter, "order_announce", lambda *a, **k: None)
    client = PaperClient.objects.get(user_id=account.client_id)
    engine.order_modify(client=client, order_id=order.broker_order_id, order_type="MARKET")  # fills
    services.orders_sync_account(account=account)
    order.refresh_from_db()
    assert (order.status, order.order_type, order.price) == ("FILLED", "MARKET", None)
    filled = order.events.get(kind="filled")
    assert "found changed at the broker: order type MARKET, price -" in filled.message
    assert filled.data[services.CHANGED_AT_BROKER] == {"order_type": "MARKET", "price": None}
    assert filled.data[services.BROKER_AT]


def test_a_change_at_the_broker_back_to_what_an_old_modify_of_ours_asked_is_taken(trader, account, monkeypatch):
    set_price("1500")
    order = place(trader, account, order_type="LIMIT", price="1400", quantity=10)
    settle()
    services.order_modify(order=order, actor=trader, cause="trader", price="1401")  # ours, recorded
    monkeypatch.setattr(adapter, "order_announce", lambda *a, **k: None)  # only syncs tell us (as at Kite)
    client = PaperClient.objects.get(user_id=account.client_id)
    engine.order_modify(client=client, order_id=order.broker_order_id, price=D("1420"))  # in the broker's app
    engine.market_set(
        exchange="NSE", tradingsymbol="INFY", last_price=D("1415"), bid=D("1414.9"), ask=D("1415.1"), tick_volume=4
    )
    set_price("1500")
    services.orders_sync_account(account=account)  # both at once: the change and a part fill
    order.refresh_from_db()
    assert (order.status, order.filled_quantity, order.price) == (Order.Status.PARTIALLY_FILLED, 4, D("1420"))

    engine.order_modify(client=client, order_id=order.broker_order_id, price=D("1401"))  # back, in the app
    services.orders_sync_account(account=account)
    order.refresh_from_db()
    assert at_broker(order).price == order.price == D("1401")
    assert "found changed at the broker: price 1401" in order.events.latest("pk").message


def test_a_fill_written_after_a_modify_recorded_meanwhile_is_pushed_as_the_newer_row(trader, account, monkeypatch):
    """The fill's update read the order and took its time; a modify of the order was recorded (and
    its row pushed) before the fill's write. The fill's row must be pushed as newer than the
    modify's, with the modify's price: the page keeps the newest row, and would keep "Open"."""
    mariadb_only()  # a second writer while the fill's transaction is open
    set_price("1500")
    order = place(trader, account, order_type="LIMIT", price="1400", quantity=2)
    settle()
    filled = dataclasses.replace(
        AccountBroker(account).order(order.broker_order_id),
        price=D("1401"),  # the broker filled it as modified
        status=Status.FILLED,
        filled_quantity=2,
        pending_quantity=0,
        average_price=D("1401"),
    )
    pushed = []
    broadcast = services._broadcast

    def recorded(pushed_order, **kwargs):
        pushed.append((pushed_order.status, pushed_order.updated_at, pushed_order.price))
        broadcast(pushed_order, **kwargs)

    def modify_elsewhere():
        try:
            services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="trader", price="1401")
        finally:
            connection.close()

    update = services._ORDER_UPDATE.update
    modified = []

    def after_a_modify(pk, values, **kwargs):
        if values.get("status") == Order.Status.FILLED and not modified:
            modified.append(True)  # the modify is recorded between the fill's read and its write
            thread = threading.Thread(target=modify_elsewhere)
            thread.start()
            thread.join()
        return update(pk, values, **kwargs)

    monkeypatch.setattr(services, "_broadcast", recorded)
    monkeypatch.setattr(services._ORDER_UPDATE, "update", after_a_modify)
    assert services.order_broker_update(account, filled, True)
    order.refresh_from_db()
    assert (order.status, order.filled_quantity, order.price) == (Order.Status.FILLED, 2, D("1401"))
    assert [status for status, _version, _price in pushed] == [Order.Status.OPEN, Order.Status.FILLED]
    (_, modify_version, _), (_, fill_version, fill_price) = pushed
    assert fill_version > modify_version and fill_price == D("1401")
    assert order.updated_at == fill_version  # the stored version never goes back either


def test_changes_found_at_the_broker_before_they_were_data_are_read_from_their_message():
    """Migration 0008 writes the terms of earlier "found changed at the broker" events into their data."""
    import importlib

    migration = importlib.import_module("orders.migrations.0008_broker_changed_data")
    assert migration.terms("found changed at the broker: trigger price 1490.10, quantity 5; 2/5 filled at 1490") == {
        "trigger_price": "1490.10",
        "quantity": "5",
    }
    assert migration.terms("found changed at the broker: order type MARKET, price -") == {
        "order_type": "MARKET",
        "price": None,
    }
