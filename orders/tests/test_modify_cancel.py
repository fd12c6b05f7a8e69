"""Modify and cancel when things overlap: two tabs, a double click, a stale page, a lost answer."""

import dataclasses
import html
import threading
import time
from decimal import Decimal

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from brokers import services as broker_services
from brokers.client import AccountBroker
from brokers.kite.adapter import KiteBroker, to_order
from brokers.paper import adapter, engine
from brokers.paper.models import PaperClient, PaperOrder
from orders import services
from orders.models import Order
from orders.tests.factories import modify_answered_after_its_fills, place
from tradingplatform import background

pytestmark = pytest.mark.django_db(transaction=True)
D = Decimal


def settle():
    assert background.wait_idle(30)


def set_price(last, volume=None):
    last = D(last)
    engine.market_set(
        exchange="NSE", tradingsymbol="INFY", last_price=last, bid=last - D("0.1"), ask=last + D("0.1"),
        tick_volume=volume,
    )  # fmt: skip


def knobs(account, **values):
    PaperClient.objects.filter(user_id=account.client_id).update(**values)


def resting(trader, account, quantity=2, price="1400"):
    set_price("1500")
    order = place(trader, account, order_type="LIMIT", price=price, quantity=quantity)
    settle()
    return order


def at_broker(order):
    return PaperOrder.objects.get(order_id=order.broker_order_id)


def test_a_modify_and_a_cancel_done_while_redis_is_away_are_answered_done(trader, account, monkeypatch):
    """The broker took the change (or the cancel) and it is recorded; then Redis went away for a
    moment, and freeing the order's lock (or its modify note) raised: the answer was a 500 a trader
    would take for a refusal and send again. It expires on its own; the answer is what was done."""
    from tradingplatform import locks

    def away(*args, **kwargs):
        raise ConnectionError("Error 111 connecting to redis")

    class LetGoFails:  # the lock is taken; its release (a pipeline) finds Redis gone
        def __init__(self, client):
            self.client = client

        def __getattr__(self, name):
            return getattr(self.client, name)

        pipeline = away

    order = place(trader, account, order_type="LIMIT", price="1400", quantity=2)
    if settings.REDIS_URL:
        failing = LetGoFails(locks.redis_client())
        monkeypatch.setattr(locks, "redis_client", lambda: failing)
    monkeypatch.setattr(services.cache, "delete", away)  # the modify note's; without Redis, the lock's too
    # The modify's lock, not freed, expires on its own: the cancel (which waits for a modify of the
    # order to be done) takes it then.
    monkeypatch.setattr(services, "MODIFY_LOCK_TTL_S", 1.0)
    services.order_modify(order=order, actor=trader, cause="test", price=D("1401"))
    order.refresh_from_db()
    assert (order.price, PaperOrder.objects.get(order_id=order.broker_order_id).price) == (D("1401"), D("1401"))
    services.order_cancel(order=order, actor=trader, cause="test")
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED


def test_two_overlapping_modifies_each_change_only_what_they_asked(trader, account):
    order = resting(trader, account)
    tab_a, tab_b = Order.objects.get(pk=order.pk), Order.objects.get(pk=order.pk)  # read before either
    services.order_modify(order=tab_a, actor=trader, cause="A", price="1401")
    services.order_modify(order=tab_b, actor=trader, cause="B", quantity=3)
    settle()
    order.refresh_from_db()
    assert (at_broker(order).quantity, at_broker(order).price) == (3, D("1401"))
    assert (order.quantity, order.price) == (3, D("1401"))


def test_a_modify_from_an_order_read_before_a_raise_and_a_fill_is_made_on_the_order_as_it_is(trader, account):
    order = resting(trader, account)
    stale = Order.objects.get(pk=order.pk)  # the monitoring cycle's read
    services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="trader", quantity=10)
    set_price("1390", volume=5)  # 5 of 10 fill
    settle()
    services.order_modify(order=stale, actor=trader, cause="chase", price="1385")
    settle()
    order.refresh_from_db()
    assert (order.quantity, order.price, order.filled_quantity) == (10, D("1385"), 5)
    assert (at_broker(order).quantity, at_broker(order).price) == (10, D("1385"))


def test_a_double_submitted_modify_is_made_once(trader, account, monkeypatch):
    order = resting(trader, account)
    real = AccountBroker.modify_order

    def slow(self, broker_order_id, change):
        real(self, broker_order_id, change)
        time.sleep(0.5)  # the answer on its way back while the second click arrives

    monkeypatch.setattr(AccountBroker, "modify_order", slow)
    barrier, errors = threading.Barrier(2), []

    def click():
        try:
            barrier.wait()
            services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="page", price="1401")
        except Exception as error:  # noqa: BLE001 - the test reports it
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=click) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    settle()
    assert errors == []
    assert at_broker(order).modifications == 1
    assert list(Order.objects.get(pk=order.pk).events.values_list("kind", flat=True)).count("modified") == 1


def test_a_modify_slower_than_its_lock_is_not_overtaken_by_the_next(trader, account, monkeypatch):
    """A modify can outlast its lock's time (a budget wait, a session renewal, a timeout and a
    lookup): the lock is kept while it runs, so a second change of the order (a trail, the trader)
    is refused, not sent beside it."""
    order = resting(trader, account)
    monkeypatch.setattr(services, "MODIFY_LOCK_TTL_S", 0.3)
    monkeypatch.setattr(services, "MODIFY_LOCK_WAIT_S", 0)
    real, sending = AccountBroker.modify_order, threading.Event()

    def slow(self, broker_order_id, change):
        sending.set()
        time.sleep(1.0)  # three times the lock's time
        return real(self, broker_order_id, change)

    monkeypatch.setattr(AccountBroker, "modify_order", slow)

    def first():
        try:
            services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="page", price="1401")
        finally:
            connection.close()

    thread = threading.Thread(target=first)
    thread.start()
    assert sending.wait(10)
    time.sleep(0.6)  # the lock's time has passed twice
    with pytest.raises(services.OrderActionRefused, match="still being made"):
        services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="trail", price="1402")
    thread.join()
    settle()
    assert at_broker(order).modifications == 1 and at_broker(order).price == Decimal("1401")


def test_the_page_sends_only_what_the_trader_changed_and_refuses_a_form_older_than_the_order(trader, account, client):
    """The page was opened at 1400; a chase moved the price to 1410. Its form is refused (what the
    trader left as shown is not the order any more); shown afresh, changing only the quantity keeps
    the price the chase set."""
    client.force_login(trader)
    order = resting(trader, account)

    def form_as_shown():
        form = client.get(reverse("orders:detail", args=[order.pk])).context["modify_form"]
        shown = {name: "" if form[name].value() is None else form[name].value() for name in form.fields}
        return {**shown, **{f"initial-{name}": value for name, value in shown.items()}}

    stale = form_as_shown()
    services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="chase", price="1410")
    settle()
    refused = client.post(reverse("orders:modify", args=[order.pk]), {**stale, "quantity": 4})
    assert "This order has changed since this form was shown (price)" in refused.content.decode()
    order.refresh_from_db()
    assert (order.quantity, order.price) == (2, D("1410"))
    client.post(reverse("orders:modify", args=[order.pk]), {**form_as_shown(), "quantity": 4})
    settle()
    order.refresh_from_db()
    assert (order.quantity, order.price) == (4, D("1410"))
    assert (at_broker(order).quantity, at_broker(order).price) == (4, D("1410"))


def test_a_modify_whose_answer_was_lost_and_that_filled_takes_the_brokers_terms(trader, account):
    order = resting(trader, account, quantity=5, price="1480")
    knobs(account, timeout_rate=1)
    with pytest.raises(services.OrderActionRefused, match="answer was lost"):
        services.order_modify(order=order, actor=trader, cause="test", quantity=3, price="1510")  # crosses: fills
    knobs(account, timeout_rate=0)
    settle()
    services.orders_sync_account(account=account)  # what the queued run does
    settle()
    order.refresh_from_db()
    assert at_broker(order).status == "COMPLETE" and at_broker(order).quantity == 3
    assert (order.status, order.quantity, order.filled_quantity, order.price) == ("FILLED", 3, 3, D("1510"))


def test_a_cancel_whose_answer_was_lost_is_looked_up_at_once(trader, account, client, monkeypatch):
    """At a broker that does not tell each change (Kite), a cancel whose answer is lost queues the
    account's reconciliation, and the trader is told the order's state follows."""
    order = resting(trader, account, quantity=3)
    monkeypatch.setattr(adapter.PaperBroker, "tells_order_updates", False)
    monkeypatch.setattr(adapter, "order_announce", lambda *a, **k: None)
    queued = []
    broker_services.account_activity_listeners.append(queued.append)
    try:
        knobs(account, timeout_rate=1)
        client.force_login(trader)
        answer = client.post(reverse("orders:cancel", args=[order.pk]), HTTP_HX_REQUEST="true")
        knobs(account, timeout_rate=0)
        settle()
    finally:
        broker_services.account_activity_listeners.remove(queued.append)
    assert at_broker(order).status == "CANCELLED"
    assert queued == [account.pk]
    assert "will show what the broker holds shortly" in answer.content.decode()
    assert order.events.filter(kind="cancel_unknown").exists()


@pytest.mark.parametrize("raw_status", ["MODIFY VALIDATION PENDING", "MODIFY PENDING", "MODIFIED", "OPEN"])
def test_a_book_read_while_a_change_is_validated_is_not_taken_for_the_brokers_terms(trader, account, raw_status):
    """Kite's book shows the old terms until a modify is through (its order history: MODIFY
    VALIDATION PENDING, MODIFY PENDING and MODIFIED at the old price, then OPEN at the new)."""
    order = resting(trader, account)
    services.order_modify(order=order, actor=trader, cause="trader", price="1405")
    order.refresh_from_db()
    state = AccountBroker(account).order(order.broker_order_id)
    kite_row = to_order({"order_id": order.broker_order_id, "status": raw_status})  # as Kite's adapter reads it
    old_terms = dataclasses.replace(state, price=D("1400"), terms_settled=kite_row.terms_settled)
    services.order_apply_broker_state(order, old_terms, cause="sync", asked_at=timezone.now())
    order.refresh_from_db()
    assert order.price == (D("1400") if raw_status == "OPEN" else D("1405"))


def test_a_kite_order_is_cancelled_when_kite_says_so_not_when_it_takes_the_request(
    trader,
    kite_on_face,
    client,
    monkeypatch,
):
    """Kite answers a cancel once it has the request; the exchange may still fill the order or refuse
    the cancel. The order is read back: cancelled when Kite has closed it, else left as Kite holds it."""
    account = kite_on_face
    first, second = (resting(trader, account, quantity=3) for _ in range(2))
    services.order_cancel(order=first, actor=trader, cause="test")
    assert first.status == Order.Status.CANCELLED  # Kite's book says so already

    real = KiteBroker.order
    monkeypatch.setattr(KiteBroker, "order", lambda self, i: dataclasses.replace(real(self, i), status="OPEN"))
    client.force_login(trader)
    answer = client.post(reverse("orders:cancel", args=[second.pk]), HTTP_HX_REQUEST="true").content.decode()
    second.refresh_from_db()
    assert second.status != Order.Status.CANCELLED and "has not closed it yet" in answer
    assert second.events.filter(kind="cancel_requested").exists()


@pytest.mark.parametrize("first", ["taken_then_refused_by_the_exchange", "never_sent"])
def test_a_kite_cancel_that_did_not_take_lets_a_later_one_be_sent(trader, kite_on_face, client, monkeypatch, first):
    """Kite took the first cancel and the exchange refused it, or it never left (the worker failed
    between recording it and sending it): the order is still open at the broker. A cancel asked
    while the first may still be processed is not sent again; one asked later is, and closes it."""
    order = resting(trader, kite_on_face, quantity=3)
    if first == "never_sent":
        monkeypatch.setattr(AccountBroker, "cancel_order", lambda self, i: (_ for _ in ()).throw(RuntimeError))
        with pytest.raises(RuntimeError):
            services.order_cancel(order=order, actor=trader, cause="first click")
    else:
        monkeypatch.setattr(KiteBroker, "cancel_order", lambda self, i: None)
        services.order_cancel(order=order, actor=trader, cause="first click")
    monkeypatch.undo()
    order.refresh_from_db()
    assert at_broker(order).status == "OPEN" and order.status != Order.Status.CANCELLED
    services.order_cancel(order=order, actor=trader, cause="a click at once")  # the first may still be at work
    assert at_broker(order).status == "OPEN"
    monkeypatch.setattr(services, "CANCEL_PENDING_S", 0)  # later
    client.force_login(trader)
    client.post(reverse("orders:cancel", args=[order.pk]), HTTP_HX_REQUEST="true")
    order.refresh_from_db()
    assert at_broker(order).status == "CANCELLED" and order.status == Order.Status.CANCELLED


def cash(account):
    return PaperClient.objects.get(user_id=account.client_id).cash


@pytest.mark.parametrize("change", [{"quantity": 1000}, {"price": "1785"}])
def test_a_modify_needs_the_funds_a_new_order_would(trader, account, change):
    """10,00,000 of cash: 600 x 1400 rests (8.4 lakh). Raising it to 1000, or its price to 1785
    (10.71 lakh), is refused for funds; cut back, it passes (its own block is freed for it)."""
    order = resting(trader, account, quantity=600)
    with pytest.raises(services.OrderActionRefused, match="Insufficient funds"):
        services.order_modify(order=order, actor=trader, cause="test", **change)
    order.refresh_from_db()
    assert (order.quantity, order.price) == (600, D("1400"))
    services.order_modify(order=order, actor=trader, cause="test", quantity=700)  # 9.8 lakh: fits
    set_price("1390", volume=10**6)
    settle()
    assert cash(account) >= 0


def test_a_modify_checks_the_trigger_against_the_price_band(trader, account):
    set_price("1500")
    order = place(trader, account, order_type="SL-M", trigger_price="1510", quantity=1)
    settle()
    far = (at_broker(order).instrument.previous_close * D("1.5")).quantize(D("1"))
    with pytest.raises(services.OrderActionRefused, match="band"):
        services.order_modify(order=order, actor=trader, cause="test", trigger_price=str(far))


def test_a_stop_the_market_triggered_shows_triggered_and_its_trigger_is_no_longer_changed(trader, account, client):
    """The paper exchange turns a triggered SL into the LIMIT it became: the order showed SL and
    Open, and a trader who moved its trigger saw "Modified" while the exchange ignored the trigger
    (the order could fill at once at the new limit). It shows triggered now, and a new trigger is
    refused naming the field, nothing sent; its price still changes."""
    from accounts import services as account_services

    set_price("1500")
    stop = place(trader, account, order_type="SL", trigger_price="1510", price="1515", quantity=1)
    settle()
    set_price("1520")  # crossed: a LIMIT at 1515 at the exchange, under the market, resting
    settle()
    services.orders_sync_account(account=account)
    stop.refresh_from_db()
    assert (stop.status, stop.order_type, stop.trigger_price) == ("OPEN", "SL", D("1510"))
    assert stop.triggered_at is not None and stop.status_text == "Open (triggered)"
    assert list(stop.events.filter(kind="triggered").values_list("to_status", flat=True)) == ["OPEN"]

    with pytest.raises(services.OrderActionRefused, match="triggered") as refused:
        services.order_modify(order=stop, actor=trader, cause="test", trigger_price="1530")
    assert refused.value.field == "trigger_price"
    assert at_broker(stop).modifications == 0 and stop.trigger_price == D("1510")
    with pytest.raises(services.OrderActionRefused, match="triggered") as refused:
        services.order_modify(order=stop, actor=trader, cause="test", order_type="SL-M")
    assert refused.value.field == "order_type" and at_broker(stop).modifications == 0
    services.order_modify(order=stop, actor=trader, cause="test", price="1516")
    assert (at_broker(stop).price, at_broker(stop).trigger_price) == (D("1516"), D("1510"))
    services.orders_sync_account(account=account)  # told once
    assert stop.events.filter(kind="triggered").count() == 1

    client.force_login(trader)
    assert "Open (triggered)" in client.get(reverse("orders:detail", args=[stop.pk])).content.decode()
    _, secret = account_services.api_key_create(owner=trader, name="bot")
    shown = client.get(f"/api/v1/orders/{stop.pk}", HTTP_AUTHORIZATION=f"Bearer {secret}").json()
    assert shown["status"] == "OPEN" and shown["triggered_at"] is not None
    moved = client.patch(
        f"/api/v1/orders/{stop.pk}", {"trigger_price": "1530"}, content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )  # fmt: skip
    assert (moved.status_code, moved.json()["error"]["field"]) == (409, "trigger_price"), moved.content
    assert at_broker(stop).modifications == 1


def test_a_market_order_kite_shows_as_the_limit_of_its_protection_stays_a_market_order(trader, account):
    set_price("1500")
    order = place(trader, account, quantity=2)  # MARKET
    settle()
    order.refresh_from_db()
    state = AccountBroker(account).order(order.broker_order_id)
    protected = dataclasses.replace(state, order_type="LIMIT", price=D("1575.00"))
    services.order_apply_broker_state(order, protected, cause="sync", asked_at=timezone.now())
    order.refresh_from_db()
    assert (order.order_type, order.price) == ("MARKET", None)


def test_the_inline_modify_says_nothing_changed_when_the_broker_took_no_change(trader, account, client):
    """A trigger price typed on a LIMIT row is dropped (a LIMIT takes none): nothing reaches the
    broker, and the notice says so rather than "Modified"."""
    client.force_login(trader)
    order = resting(trader, account)
    opened = client.get(reverse("orders:modify", args=[order.pk]), HTTP_HX_REQUEST="true")
    assert 'hx-disabled-elt="find button[type=submit]"' in opened.content.decode()  # a double click sends once
    form = opened.context["form"]
    shown = {name: "" if form[name].value() is None else form[name].value() for name in form.fields}
    data = {**shown, **{f"initial-{name}": value for name, value in shown.items()}, "trigger_price": "1390"}
    answer = client.post(reverse("orders:modify", args=[order.pk]), data, HTTP_HX_REQUEST="true").content.decode()
    assert "Nothing to change on" in answer and "Modified" not in answer
    assert at_broker(order).modifications == 0
    data.update(trigger_price="", price="1401")
    answer = client.post(reverse("orders:modify", args=[order.pk]), data, HTTP_HX_REQUEST="true").content.decode()
    assert f"Modified {order.reference}." in answer and 'hx-disabled-elt="find button[type=submit]"' not in answer


def _cut_to_50_after_30_filled(trader, account):
    """100 rest at 1400, 30 fill, and the trader cuts the order to 50 (the broker takes it)."""
    order = resting(trader, account, quantity=100)
    set_price("1390", volume=30)
    settle()
    set_price("1500")
    services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="trader", quantity=50)
    settle()
    order.refresh_from_db()
    assert (order.quantity, order.filled_quantity) == (50, 30)
    return order


@pytest.mark.parametrize("path", ["sync", "order_update", "read_back"])
def test_a_cut_overtaken_by_fills_while_kite_validates_it_keeps_the_brokers_quantity(trader, account, path):
    """Kite took the cut to 50, but 40 more filled before the exchange had it: its book still shows
    the change as being validated (old terms: 100), with 70 filled. The order is not left at 50
    with 70 filled (no such row can be written): it takes the quantity Kite holds, and says why."""
    order = _cut_to_50_after_30_filled(trader, account)
    state = dataclasses.replace(
        AccountBroker(account).order(order.broker_order_id),
        quantity=100,
        filled_quantity=70,
        pending_quantity=30,
        status="PARTIALLY_FILLED",
        average_price=D("1400"),
        terms_settled=False,  # MODIFY VALIDATION PENDING
    )
    if path == "sync":
        services.orders_sync_account(account=account, broker_orders=[state], asked_at=timezone.now())
    elif path == "order_update":
        assert services.order_broker_update(account, state, True)
    else:
        services.order_apply_broker_state(order, state, cause="read back")
    order.refresh_from_db()
    assert (order.status, order.quantity, order.filled_quantity) == ("PARTIALLY_FILLED", 100, 70)
    assert "quantity 100" in order.events.order_by("-pk").first().message


def test_a_cut_the_broker_takes_after_more_filled_than_it_leaves_is_not_written(trader, account, monkeypatch):
    """Kite answers a modify once it has the request. Its word of 40 more fills (70 of 100) came
    while the cut to 50 was on its way: the exchange refuses that cut, so it is not written over
    the fills (no such row can be), and the trader is told."""
    order = resting(trader, account, quantity=100)
    set_price("1390", volume=30)
    settle()
    state = AccountBroker(account).order(order.broker_order_id)
    filled_meanwhile = dataclasses.replace(state, filled_quantity=70, pending_quantity=30, status="PARTIALLY_FILLED")

    def taken(self, broker_order_id, change):
        assert services.order_broker_update(account, filled_meanwhile, True)

    monkeypatch.setattr(AccountBroker, "modify_order", taken)
    with pytest.raises(services.OrderActionRefused, match="70 were filled while it was sent"):
        services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="trader", quantity=50)
    order.refresh_from_db()
    assert (order.quantity, order.filled_quantity) == (100, 70)
    assert order.events.filter(kind="modify_rejected").exists()


def test_a_cut_the_broker_takes_after_fills_reached_the_quantity_it_leaves_is_not_written(trader, account, monkeypatch):
    """As above, but the fills told while the cut to 50 was on its way reach exactly 50: a cut to
    no more than what filled is refused (here before it is sent, and by the exchange), so the order
    is not written as 50 of 50 filled and still open, nor the trader told it was modified."""
    order = resting(trader, account, quantity=100)
    set_price("1390", volume=30)
    settle()
    state = AccountBroker(account).order(order.broker_order_id)
    filled_meanwhile = dataclasses.replace(state, filled_quantity=50, pending_quantity=50, status="PARTIALLY_FILLED")

    def taken(self, broker_order_id, change):
        assert services.order_broker_update(account, filled_meanwhile, True)

    monkeypatch.setattr(AccountBroker, "modify_order", taken)
    with pytest.raises(services.OrderActionRefused, match="50 were filled while it was sent"):
        services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="trader", quantity=50)
    order.refresh_from_db()
    assert (order.quantity, order.filled_quantity) == (100, 50)
    assert not order.events.filter(kind="modified").exists()


def test_a_modify_the_broker_refuses_has_the_order_looked_up(trader, account, monkeypatch):
    """At a broker that does not tell each change (Kite), a refused modify usually means the order
    moved on (filled, cancelled) unheard: the account's reconciliation is queued, as for a refused
    cancel, and brings the order in line at once rather than at the next cycle."""
    order = resting(trader, account)
    monkeypatch.setattr(adapter.PaperBroker, "tells_order_updates", False)
    monkeypatch.setattr(adapter, "order_announce", lambda *a, **k: None)
    set_price("1390")  # fills at the exchange; not told
    settle()
    assert at_broker(order).status == "COMPLETE"
    queued = []
    broker_services.account_activity_listeners.append(queued.append)
    try:
        with pytest.raises(services.OrderActionRefused, match="refused the change"):
            services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="trader", price="1401")
    finally:
        broker_services.account_activity_listeners.remove(queued.append)
    assert order.events.filter(kind="modify_rejected").exists()
    assert queued == [account.pk]
    services.orders_sync_account(account=account)  # what the queued run does
    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == ("FILLED", 2)


@pytest.mark.parametrize("first_taken", [True, False])
def test_a_platform_cancel_refused_as_already_cancelled_is_the_platforms_if_its_first_one_took(
    trader, kite_on_face, monkeypatch, first_taken
):
    """Step 4 cancels an exit; Kite takes the request, the exchange closes the order only after the
    next cycle's sync read it open, and that cycle's cancel is refused (already cancelled). The
    cancel is still the platform's (its exit is put back if it was owed one, and no "cancelled at
    the broker" is reported). Cancelled at the broker with no request of ours before, it is not."""
    order = resting(trader, kite_on_face, quantity=3)
    if first_taken:
        monkeypatch.setattr(KiteBroker, "cancel_order", lambda self, i: None)  # taken, not closed yet
        services.order_cancel(order=order, actor=trader, cause="step 4", by_trader=False)
        monkeypatch.undo()
        order.refresh_from_db()
        assert order.status == Order.Status.OPEN and services.cancel_asked_by_platform(order)
    client = PaperClient.objects.get(user_id=kite_on_face.client_id)
    engine.order_cancel(client=client, order_id=order.broker_order_id)  # the exchange closes it
    monkeypatch.setattr(services, "CANCEL_PENDING_S", 0)  # the next cycle
    with pytest.raises(services.OrderActionRefused, match="refused to cancel"):
        services.order_cancel(order=order, actor=trader, cause="step 4 again", by_trader=False)
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED and order.events.filter(kind="cancel_refused").exists()
    assert services.cancel_asked_by_platform(order) is first_taken


def test_a_traders_cancel_sent_again_after_the_first_took_answers_the_order_cancelled(
    trader, kite_on_face, monkeypatch
):
    """The trader's cancel reached Kite but its answer was lost (or the page was slow), the exchange
    closed the order, and the trader (or the SDK's retry) cancels again: Kite refuses it as already
    cancelled. What the trader asked for is done, so the answer is the order, cancelled, not a
    refusal (a 409 to an API client that then has to look the order up)."""
    order = resting(trader, kite_on_face, quantity=3)
    monkeypatch.setattr(KiteBroker, "cancel_order", lambda self, i: None)  # taken, not closed yet
    services.order_cancel(order=order, actor=trader, cause="trader", by_trader=True)
    monkeypatch.undo()
    client = PaperClient.objects.get(user_id=kite_on_face.client_id)
    engine.order_cancel(client=client, order_id=order.broker_order_id)  # the exchange closes it
    monkeypatch.setattr(services, "CANCEL_PENDING_S", 0)
    again = services.order_cancel(order=Order.objects.get(pk=order.pk), actor=trader, cause="trader", by_trader=True)
    assert again.status == Order.Status.CANCELLED
    assert again.events.filter(kind="cancel_refused").exists()  # what the broker said stays on record
    # Refused because it filled (unheard: Kite tells no fills): a refusal still, the order filled.
    filled = resting(trader, kite_on_face, quantity=3)
    set_price("1390")
    settle()
    assert at_broker(filled).status == "COMPLETE"
    with pytest.raises(services.OrderActionRefused, match="refused to cancel"):
        services.order_cancel(order=Order.objects.get(pk=filled.pk), actor=trader, cause="trader", by_trader=True)
    assert Order.objects.get(pk=filled.pk).status == Order.Status.FILLED


def test_a_cancel_the_broker_closes_at_once_answers_and_pushes_what_filled_before_it(trader, account, monkeypatch):
    """The page (or an API client) read the order partly filled; more filled before its cancel
    took. The cancelled order it is answered with, and pushed to the pages, holds every fill."""
    order = resting(trader, account, quantity=10)
    set_price("1399.5", volume=3)
    settle()
    as_read = Order.objects.select_related("account", "instrument").get(pk=order.pk)
    assert (as_read.status, as_read.filled_quantity) == (Order.Status.PARTIALLY_FILLED, 3)
    set_price("1399.5", volume=2)  # two more, told and recorded before the cancel
    set_price("1500")
    settle()
    pushed = []
    broadcast = services._broadcast

    def recorded(pushed_order, **kwargs):
        pushed.append((pushed_order.status, pushed_order.filled_quantity))
        broadcast(pushed_order, **kwargs)

    monkeypatch.setattr(services, "_broadcast", recorded)
    cancelled = services.order_cancel(order=as_read, actor=trader, cause="trader")
    settle()
    assert at_broker(order).filled_quantity == 5
    assert (cancelled.status, cancelled.filled_quantity) == (Order.Status.CANCELLED, 5)
    assert pushed[-1] == (Order.Status.CANCELLED, 5)


def test_two_cancels_at_once_the_one_that_closed_the_order_is_the_one_recorded(trader, account, monkeypatch):
    """Step 4 cancels an exit as the trader cancels it on a page. The broker closes it with one of
    them; which one decides whether the cycle puts the exit back (the platform's cancel) or leaves
    it cancelled (the trader's): the trader's cancel is never taken for the platform's."""
    order = resting(trader, account)
    real = AccountBroker.cancel_order
    platform_sending, trader_done, closed_by = threading.Event(), threading.Event(), []

    def cancel(self, broker_order_id):
        if threading.current_thread().name == "platform":
            platform_sending.set()
            trader_done.wait(3)  # the trader's cancel overtakes it, unless it waits for this one
        real(self, broker_order_id)
        closed_by.append(threading.current_thread().name)

    monkeypatch.setattr(AccountBroker, "cancel_order", cancel)

    def step_4():
        try:
            services.order_cancel(order=Order.objects.get(pk=order.pk), actor=trader, cause="step 4", by_trader=False)
        except services.OrderActionRefused:
            pass
        finally:
            connection.close()

    platform = threading.Thread(target=step_4, name="platform")
    platform.start()
    assert platform_sending.wait(10)
    try:
        services.order_cancel(order=Order.objects.get(pk=order.pk), actor=trader, cause="page")
    except services.OrderActionRefused:
        pass
    trader_done.set()
    platform.join(30)
    settle()
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED and len(closed_by) == 1
    assert services.cancel_asked_by_platform(order) == (closed_by == ["platform"]), closed_by
    assert order.events.filter(kind="cancelled").count() == 1


def test_a_cancel_made_while_a_modify_is_on_its_way_waits_for_it_and_answers_the_order_as_changed(
    trader, account, monkeypatch
):
    """The trader re-prices an order to 1401 and, while the broker's answer is on its way, cancels it
    (another tab, the API). The broker had the order at 1401 when it cancelled it: the cancel was
    answered with 1400, and the order's events said it was modified after it was cancelled."""
    order = resting(trader, account)
    real = AccountBroker.modify_order
    sent = threading.Event()

    def slow(self, broker_order_id, change):
        real(self, broker_order_id, change)
        sent.set()
        time.sleep(0.5)  # the broker took it; its answer is still on its way back

    monkeypatch.setattr(AccountBroker, "modify_order", slow)
    answers = []

    def modify():
        try:
            answers.append(
                services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="page", price="1401")
            )
        finally:
            connection.close()

    thread = threading.Thread(target=modify)
    thread.start()
    assert sent.wait(10)
    cancelled = services.order_cancel(order=Order.objects.get(pk=order.pk), actor=trader, cause="API")
    thread.join(30)
    settle()
    assert (cancelled.status, cancelled.price) == (Order.Status.CANCELLED, D("1401"))
    assert answers and answers[0].price == D("1401")
    order.refresh_from_db()
    assert (order.status, order.price) == (Order.Status.CANCELLED, D("1401"))
    kinds = list(order.events.order_by("pk").values_list("kind", flat=True))
    assert kinds[-3:] == ["modified", "cancel_requested", "cancelled"], kinds


def test_a_cut_that_fills_the_order_told_before_its_answer_is_answered_done(trader, account, monkeypatch):
    """100 rest at 1400 and 30 fill; the trader cuts the order to 40 at 1510, across the market: the
    broker takes it and the other 10 fill at once. The broker's word of that fill (the order as our
    modify asked, 40 of 40 filled) is recorded before the modify's answer. The change took: the
    trader is answered with the filled order and a "modified" event, not "the change cannot take"."""
    order = resting(trader, account, quantity=100)
    set_price("1390", volume=30)
    set_price("1500")
    settle()
    modify_answered_after_its_fills(monkeypatch)
    changed = services.order_modify(
        order=Order.objects.get(pk=order.pk), actor=trader, cause="trader", quantity=40, price="1510"
    )
    settle()
    assert (at_broker(order).status, at_broker(order).quantity) == ("COMPLETE", 40)
    assert (changed.status, changed.quantity, changed.filled_quantity, changed.price) == ("FILLED", 40, 40, D("1510"))
    kinds = list(order.events.values_list("kind", flat=True))
    assert "modify_rejected" not in kinds and kinds.count("modified") == 1


@pytest.mark.parametrize("inline", [True, False])
def test_a_cancel_whose_answer_was_lost_is_not_said_not_done(trader, account, client, inline):
    """The broker's answer to the cancel was lost: it may have cancelled the order (the paper
    exchange did). The page does not say "Could not cancel" in red beside an order that turns
    Cancelled a moment later: it says the cancel was sent and its answer lost."""
    order = resting(trader, account)
    knobs(account, timeout_rate=1)
    client.force_login(trader)
    extra = {"HTTP_HX_REQUEST": "true"} if inline else {"follow": True}
    answer = client.post(reverse("orders:cancel", args=[order.pk]), **extra)
    knobs(account, timeout_rate=0)
    settle()
    assert at_broker(order).status == "CANCELLED"
    if inline:
        said = html.unescape(answer.content.decode())
        assert "notice-warning" in said and "notice-error" not in said
    else:
        said = " ".join(str(message) for message in answer.context["messages"])
    assert "Could not cancel" not in said
    assert f"Cancel of {order.reference} sent, but the broker's answer was lost" in said


@pytest.mark.parametrize("action", ["cancel", "modify"])
def test_a_change_stopped_at_its_login_is_not_said_sent(trader, account, client, monkeypatch, action):
    """The account's session had to be made again and its login timed out, before the cancel (or
    the modify) was ever sent: the broker cannot have it. It is not "sent, but the broker's answer
    was lost" (409 ``outcome_unknown``, the SDK's AnswerLost, the page's "Cancel of ... sent"), which
    has the trader wait for a change that never comes: it was not done (409 ``refused``)."""
    from accounts.services import api_key_create
    from brokers.errors import NetworkError

    order = resting(trader, account)
    broker_services.session_revoke(account, reason="test")

    def timed_out(self):
        raise NetworkError("the login timed out")

    monkeypatch.setattr(adapter.PaperBroker, "login", timed_out)
    with pytest.raises(services.OrderActionRefused) as refused:
        if action == "cancel":
            services.order_cancel(order=Order.objects.get(pk=order.pk), actor=trader, cause="test")
        else:
            services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="test", price="1401")
    assert not refused.value.outcome_unknown and "answer was lost" not in refused.value.message
    kinds = list(order.events.values_list("kind", flat=True))
    assert f"{action}_failed" in kinds and f"{action}_unknown" not in kinds
    _, secret = api_key_create(owner=trader, name="bot")
    path, method = (f"/api/v1/orders/{order.pk}/cancel", client.post)
    if action == "modify":
        path, method = (f"/api/v1/orders/{order.pk}", client.patch)
    body = {} if action == "cancel" else {"price": "1402"}
    answer = method(path, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "refused", answer.json()
    assert (at_broker(order).status, at_broker(order).price) == ("OPEN", D("1400"))


@pytest.mark.parametrize("inline", [True, False])
def test_a_modify_whose_answer_was_lost_is_not_left_as_an_error_to_send_again(trader, account, client, inline):
    """The twin of the cancel's: the broker's answer to the change was lost (the paper exchange made
    it). The page does not leave the form open with the answer as a red error and the typed terms
    to save again: it shows the order, and says the change was sent and its answer lost."""
    order = resting(trader, account)
    knobs(account, timeout_rate=1)
    client.force_login(trader)
    extra = {"HTTP_HX_REQUEST": "true"} if inline else {"follow": True}
    form = client.get(reverse("orders:detail", args=[order.pk])).context["modify_form"]
    shown = {name: "" if form[name].value() is None else form[name].value() for name in form.fields}
    data = {**shown, **{f"initial-{name}": value for name, value in shown.items()}, "price": "1405"}
    answer = client.post(reverse("orders:modify", args=[order.pk]), data, **extra)
    knobs(account, timeout_rate=0)
    settle()
    assert at_broker(order).price == D("1405")
    said = html.unescape(answer.content.decode())
    if inline:
        assert "notice-warning" in said and 'role="alert"' not in said and "<form" not in said
    else:
        assert answer.redirect_chain and answer.redirect_chain[-1][0] == reverse("orders:detail", args=[order.pk])
        said = " ".join(str(message) for message in answer.context["messages"])
    assert f"Change of {order.reference} sent, but the broker's answer was lost" in said


@pytest.mark.parametrize("action", ["cancel", "modify"])
@pytest.mark.parametrize("knob", ["rate_limit_per_s", "error_rate"])
def test_a_change_the_broker_refused_before_taking_it_for_a_moment_is_sent_again(
    trader, account, monkeypatch, action, knob
):
    """The broker turned the cancel (or the modify) away before it took it: a 429 (its rate limit),
    or a 503 from the paper exchange. Nothing was done, so sending it again after the wait is safe,
    as a placement is: the trader's cancel, or a step's cancel of an exit's other leg once one
    filled, is not refused as "Could not reach the broker" (the other leg left live a minute, to
    fill against a position gone), nor said to have had its answer lost."""
    order = resting(trader, account)
    real, refused = engine.faults_before, []

    def once_refused(client, *, write=False, rng=None):
        if write and not refused:  # as the knob does, once
            refused.append(knob)
            if knob == "rate_limit_per_s":
                raise engine.RateLimitExceeded("Too many requests")
            raise engine.ServerError("Service unavailable (error_rate knob)")
        return real(client, write=write, rng=rng)

    monkeypatch.setattr(engine, "faults_before", once_refused)
    if action == "cancel":
        services.order_cancel(order=Order.objects.get(pk=order.pk), actor=trader, cause="trader")
        assert at_broker(order).status == "CANCELLED"
    else:
        services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="trader", price="1401")
        assert at_broker(order).price == D("1401")
    assert refused == [knob]
    kinds = list(order.events.values_list("kind", flat=True))
    assert f"{action}_failed" not in kinds and f"{action}_unknown" not in kinds, kinds


@pytest.mark.parametrize("limit", ["max_quantity", "max_order_value"])
def test_a_cut_of_an_order_placed_before_its_accounts_limit_was_lowered_is_not_refused_for_it(trader, account, limit):
    """10 rest at 1400 (14,000); staff then lower the account's limit to 5 (or 7,000). The trader
    cuts the order to 8, or re-prices it lower: it opens less than it did, so the limit, which caps
    what an order may open, does not refuse it (it refused every change of the order, the cut the
    trader made to come within it too). A raise past the limit is still refused, naming the field."""
    from accounts import services as account_services

    order = resting(trader, account, quantity=10)
    lowered = {"max_quantity": 5} if limit == "max_quantity" else {"max_order_value": D("7000")}
    account_services.broker_account_update(account=account, actor=trader, **lowered)
    services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="trader", quantity=8)
    services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="trader", price="1390")
    assert (at_broker(order).quantity, at_broker(order).price) == (8, D("1390"))
    with pytest.raises(ValidationError) as refused:
        services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="trader", quantity=9)
    assert "quantity" in refused.value.message_dict
    if limit == "max_order_value":
        with pytest.raises(ValidationError, match="above this account's limit"):
            services.order_modify(order=Order.objects.get(pk=order.pk), actor=trader, cause="trader", price="1395")
    assert (at_broker(order).quantity, at_broker(order).price) == (8, D("1390"))
