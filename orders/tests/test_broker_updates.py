"""A broker's word on one of our orders (a paper change, Kite's state read on its postback) is applied at once.

Only a strategy's order, or fills the broker did not hand over, queue the account's whole
monitoring run; a manual order is placed, opened, filled and recorded without one. These tests
commit for real (the paper exchange announces after its commit, on background threads) and wait
for the background work to finish instead of waiting for a time.
"""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import OperationalError, connection

from brokers import services as broker_services
from brokers.base import Status
from brokers.client import AccountBroker
from brokers.kite import postbacks as kite_postbacks
from brokers.paper import engine, kite_format
from brokers.paper.models import PaperClient, PaperOrder
from orders import services, sources
from orders.models import Order
from orders.tests.factories import broker_state, instrument, place, recording_fails_for
from portfolio.models import Position, Trade
from tradingplatform import background, locks

pytestmark = pytest.mark.django_db(transaction=True)
D = Decimal


@pytest.fixture
def runs_queued():
    """The account ids whose whole monitoring run was asked for."""
    seen: list[int] = []
    broker_services.account_activity_listeners.append(seen.append)
    yield seen
    broker_services.account_activity_listeners.remove(seen.append)


def settle():
    assert background.wait_idle(30), "the background work did not finish"


def set_price(last, symbol="INFY"):
    last = D(last)
    engine.market_set(exchange="NSE", tradingsymbol=symbol, last_price=last, bid=last - D("0.1"), ask=last + D("0.1"))


def statuses(order):
    return list(order.events.order_by("id").values_list("to_status", flat=True))


def test_a_manual_fill_is_applied_recorded_and_linked_without_a_monitoring_run(trader, account, runs_queued):
    order = place(trader, account, quantity=3)
    settle()
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED and order.filled_quantity == 3 and order.broker_order_id
    trade = Trade.objects.get(account=account)
    assert trade.order_id == order.pk  # linked at once: the order had its broker id before the fill was recorded
    assert Position.objects.get(account=account).net_quantity == 3
    # Filled by the exchange's answer, or by its update when that came first: once either way.
    filled = order.events.get(to_status=Order.Status.FILLED).cause.lower()
    assert filled in ("paper exchange's answer", "paper exchange's order update")
    assert runs_queued == []


def test_a_resting_order_opens_fills_and_cancels_by_the_exchanges_word(trader, account, runs_queued):
    set_price("1500")
    resting = place(trader, account, quantity=2, order_type="LIMIT", price=D("1490"))
    other = place(trader, account, quantity=2, order_type="LIMIT", price=D("1480"))
    settle()
    resting.refresh_from_db()
    assert resting.status == Order.Status.OPEN  # not left SUBMITTED until the next cycle

    set_price("1489")  # the ask crosses 1490: the exchange fills it on its next match
    engine.match_instrument(instrument_id=engine.instrument_lookup("NSE", "INFY").pk)
    services.order_cancel(order=other, actor=trader, cause="test")
    settle()
    resting.refresh_from_db()
    other.refresh_from_db()
    assert resting.status == Order.Status.FILLED and resting.filled_quantity == 2
    assert resting.events.get(to_status=Order.Status.FILLED).cause == "Paper exchange's order update"
    assert Trade.objects.get(account=account).order_id == resting.pk
    assert other.status == Order.Status.CANCELLED and statuses(other).count(Order.Status.CANCELLED) == 1
    assert runs_queued == []


def test_a_strategy_entry_fill_queues_the_accounts_run(trader, account, runs_queued):
    strategy, _ = sources.strategy_save(
        owner=trader, name="Guarded", account_ids=[account.pk], stop_loss=D("1"), take_profit=D("2")
    )
    entry = place(trader, account, quantity=1, strategy=strategy, source="strategy")
    settle()
    entry.refresh_from_db()
    assert entry.status == Order.Status.FILLED
    assert runs_queued == [account.pk]  # its exits are placed by the account's steps


@pytest.fixture
def resting(trader, account):
    set_price("1500")
    order = place(trader, account, quantity=10, order_type="LIMIT", price=D("1400"))
    settle()
    order.refresh_from_db()
    assert order.status == Order.Status.OPEN
    return order


def test_updates_arriving_out_of_order_never_move_an_order_back(account, resting):
    partly = broker_state(resting, status=Status.PARTIALLY_FILLED, filled_quantity=6, average_price=D("1400"))
    assert services.order_broker_update(account, partly, True)
    for stale in (
        broker_state(resting, status=Status.PARTIALLY_FILLED, filled_quantity=4, average_price=D("1400")),
        broker_state(resting),
    ):
        assert not services.order_broker_update(account, stale, True)
    resting.refresh_from_db()
    assert (resting.status, resting.filled_quantity) == (Order.Status.PARTIALLY_FILLED, 6)

    assert services.order_broker_update(account, broker_state(resting, status=Status.FILLED, filled_quantity=10), True)
    assert not services.order_broker_update(account, partly, True)
    resting.refresh_from_db()
    assert (resting.status, resting.filled_quantity) == (Order.Status.FILLED, 10)


def test_fills_told_without_their_average_keep_the_average_known(account, resting):
    """Kite documents ``average_price`` for complete orders only: a partly filled order may come
    with 0. It was taken as the price ("6/10 filled at 0", an average of 0 kept) until the order filled."""
    told = broker_state(resting, status=Status.PARTIALLY_FILLED, filled_quantity=4, average_price=D("1400"))
    assert services.order_broker_update(account, told, True)
    more = broker_state(resting, status=Status.PARTIALLY_FILLED, filled_quantity=6, average_price=D(0))
    assert services.order_broker_update(account, more, True)
    resting.refresh_from_db()
    assert (resting.filled_quantity, resting.average_price) == (6, D("1400"))
    assert resting.events.last().message == "6/10 filled at 1400.0000"


@pytest.mark.parametrize("asked_before", [False, True])
def test_a_final_state_with_fewer_fills_than_we_know_closes_the_order_with_ours(account, resting, asked_before):
    """A book read before an update we applied (Kite's book lagging its postbacks) can say
    CANCELLED with fewer fills than the update brought: the order is closed, its fills are never
    taken back (they are in the position already), through a sync that takes the book's terms too."""
    partly = broker_state(resting, status=Status.PARTIALLY_FILLED, filled_quantity=5, average_price=D("1401"))
    assert services.order_broker_update(account, partly, True)
    resting.refresh_from_db()
    stale = broker_state(resting, status=Status.CANCELLED, filled_quantity=3, average_price=D("1400"))
    asked_at = resting.updated_at + timedelta(seconds=1) if asked_before else None
    assert services.order_apply_broker_state(resting, stale, cause="the sync", asked_at=asked_at)
    resting.refresh_from_db()
    assert (resting.status, resting.filled_quantity, resting.average_price) == (
        Order.Status.CANCELLED,
        5,
        D("1401"),
    )


def test_an_update_that_loses_a_race_reads_again_and_lands(account, resting, monkeypatch):
    """Two updates of one order applied side by side: the one whose write finds the order
    changed under it re-reads it and applies its (later) state after all."""
    apply = services.order_apply_broker_state
    partly = broker_state(resting, status=Status.PARTIALLY_FILLED, filled_quantity=3, average_price=D("1400"))
    raced = []

    def racing(order, state, *, cause):
        if not raced:  # the other update commits between our read and our write
            raced.append(True)
            other = Order.objects.select_related("account", "instrument").get(pk=order.pk)
            assert apply(other, partly, cause="the other update")
        return apply(order, state, cause=cause)

    monkeypatch.setattr(services, "order_apply_broker_state", racing)
    filled = broker_state(resting, status=Status.FILLED, filled_quantity=10, average_price=D("1400"))
    assert services.order_broker_update(account, filled, True)
    resting.refresh_from_db()
    assert (resting.status, resting.filled_quantity) == (Order.Status.FILLED, 10)
    assert statuses(resting)[-2:] == [Order.Status.PARTIALLY_FILLED, Order.Status.FILLED]


def test_an_order_not_ours_is_left_to_the_cycle(account, resting):
    stranger = broker_state(
        resting, tag="SOMEONE-ELSE", broker_order_id="999", status=Status.FILLED, filled_quantity=10
    )
    assert not services.order_broker_update(account, stranger, True)
    resting.refresh_from_db()
    assert resting.status == Order.Status.OPEN


def _sent_order(account, *, quantity: int, **fields) -> Order:
    """A MARKET order of ours as a placer leaves it (NEW unless ``fields`` say otherwise)."""
    return Order.objects.create(
        reference=f"261121A{account.pk}N9",
        account=account,
        instrument=instrument(),
        side="BUY",
        quantity=quantity,
        order_type="MARKET",
        product="MIS",
        source=Order.Source.MANUAL,
        **fields,
    )


def _postback(client, body: dict, **edits):
    """POST Kite's postback body, edited as a replayer might: the checksum still verifies, as it
    signs only order_id + order_timestamp."""
    return client.post("/hooks/kite/postback/", json.dumps({**body, **edits}), content_type="application/json")


def _kite_order(trader, account, **fields) -> tuple[Order, dict]:
    set_price("1500")
    order = place(trader, account, **fields)
    order.refresh_from_db()
    assert order.status == Order.Status.SUBMITTED  # Kite's answer to a placement is its order id only
    return order, kite_format.postback(PaperOrder.objects.get(tag=order.reference))


def test_a_kite_postback_applies_kites_state_of_the_order_never_the_bodys(client, trader, kite_on_face, runs_queued):
    account = kite_on_face
    order, genuine = _kite_order(trader, account, quantity=5, order_type="LIMIT", price=D("1400"))
    runs_queued.clear()  # the placement's own (Kite tells us of an order only by postback)
    assert _postback(client, genuine).status_code == 200
    order.refresh_from_db()
    assert order.status == Order.Status.OPEN and runs_queued == []  # nothing to fetch for an opened order

    replayed = _postback(client, genuine, status="COMPLETE", filled_quantity=5, pending_quantity=0, average_price=1.05)
    assert replayed.status_code == 200
    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == (Order.Status.OPEN, 0)

    set_price("1390")  # the exchange fills it; a stale body still prompts the read
    assert _postback(client, genuine).status_code == 200
    order.refresh_from_db()
    paper = PaperOrder.objects.get(tag=order.reference)
    assert (order.status, order.filled_quantity) == (Order.Status.FILLED, 5)
    assert order.average_price == paper.average_price != D("1.05")
    assert runs_queued == [account.pk]  # Kite's postback has no fills: the account's run fetches them

    forged = _postback(client, genuine, checksum="0" * 64, status="CANCELLED")
    assert forged.status_code == 403
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED


def test_a_kite_postback_body_that_cannot_be_read_is_refused_not_a_500(client, db):
    for body in ["nonsense", "[1]", "[" * 100_000, '{"a": ' * 100_000]:  # the last two: nested too deep
        answer = client.post("/hooks/kite/postback/", body, content_type="application/json")
        assert answer.status_code == 403, body[:20]
        assert answer.json()["error"]["code"] == "forbidden"


def test_a_kite_postback_with_a_checksum_that_is_not_hex_is_refused_not_a_500(client, trader, kite_on_face):
    """A forged checksum with characters no SHA-256 hex digest has (é, a full-width digit) is a
    forgery like any other: 403, not a 500 from comparing it."""
    order, genuine = _kite_order(trader, kite_on_face, quantity=5, order_type="LIMIT", price=D("1400"))
    for checksum in ["é" * 64, "\uff10" * 64, genuine["checksum"][:-1] + "é"]:
        answer = _postback(client, genuine, checksum=checksum, status="CANCELLED")
        assert answer.status_code == 403, checksum
        assert answer.json()["error"]["code"] == "forbidden"
    order.refresh_from_db()
    assert order.status == Order.Status.SUBMITTED


def test_a_kite_postback_whose_order_cannot_be_read_runs_the_account_and_applies_nothing(
    client, trader, kite_on_face, runs_queued
):
    account = kite_on_face
    order, genuine = _kite_order(trader, account, quantity=5, order_type="LIMIT", price=D("1400"))
    runs_queued.clear()  # the placement's own (Kite tells us of an order only by postback)
    PaperClient.objects.filter(user_id="AB1234").update(error_rate=1)  # Kite answers 503
    response = _postback(client, genuine, status="COMPLETE", filled_quantity=5, average_price=1.05)
    assert response.status_code == 200
    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == (Order.Status.SUBMITTED, 0)
    assert runs_queued == [account.pk]  # the run reconciles it with Kite's book


def test_kites_postback_for_a_partial_fill_shows_the_order_partly_filled(client, trader, kite_on_face):
    order, _ = _kite_order(trader, kite_on_face, quantity=10, order_type="LIMIT", price=D("1400"))
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=D("1390"), tick_volume=4)
    body = kite_format.postback(PaperOrder.objects.get(tag=order.reference))
    assert body["status"] == "UPDATE"  # Kite's word for it
    assert _postback(client, body).status_code == 200
    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == (Order.Status.PARTIALLY_FILLED, 4)


def test_a_flood_of_postbacks_reads_the_order_once_and_once_more_for_those_that_came_meanwhile(
    trader, kite_on_face, monkeypatch
):
    order, _ = _kite_order(trader, kite_on_face, quantity=5, order_type="LIMIT", price=D("1400"))
    reads, first_read, go_on = [], threading.Event(), threading.Event()
    read = AccountBroker.order

    def counted(self, broker_order_id):
        reads.append(broker_order_id)
        state = read(self, broker_order_id)
        if len(reads) == 1:  # the first read has Kite's answer (OPEN) and is still applying it
            first_read.set()
            go_on.wait(10)
        return state

    def postback():
        try:
            return kite_postbacks.postback_apply(account=kite_on_face, order_id=order.broker_order_id)
        finally:
            connection.close()

    monkeypatch.setattr(AccountBroker, "order", counted)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(postback)
        assert first_read.wait(10)
        set_price("1390")  # the order fills while that read is under way; Kite sends it again and again
        assert [postback() for _ in range(10)] == [True] * 10
        assert len(reads) == 1  # each left the order due for the reader
        go_on.set()
        assert first.result(10) is True
    assert reads == [order.broker_order_id] * 2  # and the reader read it once more
    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == (Order.Status.FILLED, 5)


def test_a_flood_that_goes_on_through_every_read_does_not_keep_one_request_reading(
    trader, kite_on_face, monkeypatch, runs_queued
):
    """Kite (or a replayed capture) sends the order's postback again during every read: the request
    holding the read lock stops after ``MAX_READS`` reads and asks for the account's run instead of
    reading for as long as they come; the next postback reads again."""
    order, _ = _kite_order(trader, kite_on_face, quantity=5, order_type="LIMIT", price=D("1400"))
    runs_queued.clear()
    reads, others = [], []
    read = AccountBroker.order

    def flooded(self, broker_order_id):
        reads.append(broker_order_id)
        if len(reads) <= 20:  # another postback comes (another process) while this one reads
            others.append(kite_postbacks.postback_apply(account=kite_on_face, order_id=broker_order_id))
        return read(self, broker_order_id)

    monkeypatch.setattr(AccountBroker, "order", flooded)
    assert kite_postbacks.postback_apply(account=kite_on_face, order_id=order.broker_order_id)
    assert len(reads) == kite_postbacks.MAX_READS
    assert others == [True] * kite_postbacks.MAX_READS  # each left its read to the reader
    assert runs_queued == [kite_on_face.pk]  # whose last look is the account's run
    set_price("1390")  # the order fills; its postback reads it (the lock was let go)
    assert kite_postbacks.postback_apply(account=kite_on_face, order_id=order.broker_order_id)
    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == (Order.Status.FILLED, 5)


def test_a_postback_that_comes_as_the_reader_lets_go_is_read(trader, kite_on_face, monkeypatch):
    """The reader read, looked again, found nothing due and is letting go of the order's read lock
    when a postback (the order just filled) comes, finds the lock held and leaves the read to it:
    it reads once more."""
    order, _ = _kite_order(trader, kite_on_face, quantity=5, order_type="LIMIT", price=D("1400"))
    release, late, released = locks.release, [], []

    def release_after_a_postback(name, token):
        released.append(name)
        if name.startswith("kite:postback:") and len(released) == 2 and not late:
            set_price("1390")  # the order fills; Kite's postback for it comes (another process)
            late.append(kite_postbacks.postback_apply(account=kite_on_face, order_id=order.broker_order_id))
        return release(name, token)

    monkeypatch.setattr(locks, "release", release_after_a_postback)
    assert kite_postbacks.postback_apply(account=kite_on_face, order_id=order.broker_order_id)
    assert late == [True]
    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == (Order.Status.FILLED, 5)


def test_postbacks_left_to_a_reader_that_fails_run_the_account(trader, kite_on_face, monkeypatch, runs_queued):
    order, _ = _kite_order(trader, kite_on_face, quantity=5, order_type="LIMIT", price=D("1400"))
    runs_queued.clear()
    late = []

    def failing_apply(**kwargs):
        set_price("1390")  # the order fills while this read is applied; Kite tells us
        late.append(kite_postbacks.postback_apply(account=kite_on_face, order_id=order.broker_order_id))
        raise OperationalError("Deadlock found when trying to get lock")

    monkeypatch.setattr(broker_services, "broker_order_update", failing_apply)
    with pytest.raises(OperationalError):
        kite_postbacks.postback_apply(account=kite_on_face, order_id=order.broker_order_id)
    assert late == [True]  # it left its read to the failed one ...
    assert runs_queued == [kite_on_face.pk]  # ... whose failure has the account's run read the book


def _new_order(account) -> Order:
    """An order its placer has sent and is waiting for the broker's answer on."""
    return _sent_order(account, quantity=10)


def test_an_update_that_beats_the_answer_waits_for_the_placer_to_record_it(account, monkeypatch):
    monkeypatch.setattr(services, "UPDATE_WAIT_S", 0.05)
    order = _new_order(account)
    filled = broker_state(
        order, broker_order_id="B9", status=Status.FILLED, filled_quantity=10, average_price=D("1500")
    )
    assert not services.order_broker_update(account, filled, True)  # looked at again shortly
    assert Order.objects.get(pk=order.pk).status == Order.Status.NEW
    # The placer records the answer meanwhile (what the exchange said: filled).
    services._transition(order, Order.Status.SUBMITTED, kind="submitted", cause="test", broker_order_id="B9")
    services.order_apply_broker_state(order, filled, cause="the answer")
    settle()
    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == (Order.Status.FILLED, 10)
    assert list(order.events.values_list("kind", flat=True)) == ["submitted", "filled"]  # once


def test_an_update_applies_after_all_when_the_answer_was_lost(account, monkeypatch):
    monkeypatch.setattr(services, "UPDATE_WAIT_S", 0.05)
    order = _new_order(account)
    filled = broker_state(
        order, broker_order_id="B9", status=Status.FILLED, filled_quantity=10, average_price=D("1500")
    )
    assert not services.order_broker_update(account, filled, True)
    # The answer was lost: the placer leaves the order SUBMITTED with no broker id, to be found by its tag.
    services._transition(order, Order.Status.SUBMITTED, kind="outcome_unknown", cause="test")
    settle()
    order.refresh_from_db()
    assert (order.status, order.broker_order_id, order.filled_quantity) == (Order.Status.FILLED, "B9", 10)


def test_an_order_whose_lost_answer_is_found_still_pending_at_the_broker_is_not_told_as_filled_more(account):
    """An order whose answer was lost, found by its tag still pending at the broker (Kite's OPEN
    PENDING, CANCEL PENDING): only its broker id is news. Its timeline said "Filled more", with
    nothing filled."""
    order = _sent_order(account, quantity=10, status=Order.Status.SUBMITTED)
    pending = broker_state(order, broker_order_id="B9", status=Status.SUBMITTED)
    assert services.order_apply_broker_state(order, pending, cause="reconciled with the broker")
    order.refresh_from_db()
    assert (order.status, order.broker_order_id, order.filled_quantity) == (Order.Status.SUBMITTED, "B9", 0)
    assert order.events.last().kind == "updated"


def test_an_update_of_an_order_stuck_new_applies_in_the_end(account, monkeypatch):
    monkeypatch.setattr(services, "UPDATE_WAIT_S", 0.01)
    order = _new_order(account)
    filled = broker_state(
        order, broker_order_id="B9", status=Status.FILLED, filled_quantity=10, average_price=D("1500")
    )
    services.order_broker_update(account, filled, True)
    settle()  # its placer died: after the waits, the exchange's word is taken
    order.refresh_from_db()
    assert (order.status, order.broker_order_id) == (Order.Status.FILLED, "B9")


def test_a_placement_filled_on_arrival_pushes_its_row_once(trader, account):
    import asyncio

    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from monitoring import presence
    from monitoring.consumers import user_group

    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(user_group(trader.pk), channel)
    presence.joined(trader.pk, channel)  # a page is open
    order = place(trader, account, quantity=1)
    settle()

    async def drain():
        messages = []
        while True:
            try:
                messages.append(await asyncio.wait_for(layer.receive(channel), 0.5))
            except TimeoutError:
                return messages

    rows = [m["html"] for m in async_to_sync(drain)() if f'id="order-{order.pk}"' in m.get("html", "")]
    # On top of the book (#orders) only: filled, it is not one of the dashboard's open orders.
    assert len(rows) == 1 and "afterbegin:#orders #order-rows" in rows[0] and "Filled" in rows[0]


@pytest.fixture
def statements(monkeypatch):
    """Every SQL statement run meanwhile, by any thread (the updates come on background threads)."""
    from django.db.backends import utils

    seen: list[str] = []
    execute = utils.CursorWrapper._execute

    def recording(self, sql, *args):
        seen.append(sql)
        return execute(self, sql, *args)

    monkeypatch.setattr(utils.CursorWrapper, "_execute", recording)
    return seen


def test_the_exchanges_word_on_a_placement_it_answered_is_not_read_again(trader, account, statements):
    from django.db import connection

    set_price("1500")
    order = place(trader, account, quantity=2)  # filled on arrival: the answer says it all
    settle()
    by_reference = f"{connection.ops.quote_name('orders_order')}.{connection.ops.quote_name('reference')} ="
    assert [sql for sql in statements if by_reference in sql] == []  # the update matched the placer's answer
    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == (Order.Status.FILLED, 2)
    kinds = list(order.events.order_by("id").values_list("kind", "from_status", "to_status"))
    assert kinds == [("created", "", "NEW"), ("submitted", "NEW", "SUBMITTED"), ("filled", "SUBMITTED", "FILLED")]


def test_an_update_of_a_placement_that_says_more_than_its_answer_is_applied(trader, account):
    set_price("1500")
    order = place(trader, account, quantity=4, order_type="LIMIT", price=D("1490"))
    settle()
    order.refresh_from_db()
    assert order.status == Order.Status.OPEN  # the answer: resting
    later = broker_state(order, broker_order_id=order.broker_order_id, status=Status.FILLED, filled_quantity=4)
    assert services.order_broker_update(account, later, True)  # the placer's answer said less: applied
    order.refresh_from_db()
    assert (order.status, order.filled_quantity) == (Order.Status.FILLED, 4)
    # The same word again (a repeat) changes nothing.
    assert not services.order_broker_update(account, later, True)


@pytest.mark.parametrize("resting", [False, True], ids=["filled on arrival", "resting"])
def test_when_the_placer_fails_to_record_the_answer_the_exchanges_word_is_read_and_applied(
    trader, account, monkeypatch, resting
):
    from brokers.paper.models import PaperInstrument

    monkeypatch.setattr(services, "UPDATE_WAIT_S", 0.01)
    record = services._events

    def lost(order, steps):
        if steps[0][0] == "submitted":
            raise OperationalError(2013, "Lost connection to server during query")
        return record(order, steps)

    last = PaperInstrument.objects.get(exchange="NSE", tradingsymbol="INFY").last_price
    terms = {"order_type": "LIMIT", "price": last - 20} if resting else {}
    monkeypatch.setattr(services, "_events", lost)
    with pytest.raises(OperationalError):
        place(trader, account, quantity=2, **terms)  # at the exchange; our record of it rolled back
    monkeypatch.setattr(services, "_events", record)
    settle()
    order = Order.objects.get(account=account)
    # The exchange's word applied: open, or filled on arrival.
    expected = (Order.Status.OPEN, 0) if resting else (Order.Status.FILLED, 2)
    assert (order.status, order.filled_quantity) == expected and order.broker_order_id


# --- A modify whose answer is lost ------------------------------------------------------------


def _knobs(account, **values):
    from brokers.paper.models import PaperClient

    PaperClient.objects.filter(user_id=account.client_id).update(**values)


def _modify_lost(trader, account, order, **change):
    """Modify with every answer of the exchange lost (the exchange makes the change)."""
    from brokers.paper.models import PaperOrder

    _knobs(account, timeout_rate=1)
    with pytest.raises(services.OrderActionRefused, match="answer was lost"):
        services.order_modify(order=order, actor=trader, cause="test", **change)
    _knobs(account, timeout_rate=0)
    return PaperOrder.objects.get(order_id=order.broker_order_id)


def test_a_modify_whose_answer_was_lost_is_taken_from_the_brokers_book(trader, account):
    set_price("1500")
    order = place(trader, account, quantity=2, order_type="LIMIT", price=D("1480"))
    settle()
    at_exchange = _modify_lost(trader, account, order, quantity=4, price="1470.5")
    assert (at_exchange.quantity, at_exchange.price) == (4, D("1470.5"))  # the exchange made it
    order.refresh_from_db()
    assert (order.quantity, order.price) == (2, D("1480"))  # not known here yet
    assert order.events.last().kind == "modify_unknown"

    services.orders_sync_account(account=account)
    order.refresh_from_db()
    assert (order.quantity, order.price, order.status) == (4, D("1470.50"), Order.Status.OPEN)
    event = order.events.last()
    assert event.kind == "modified" and "found changed at the broker" in event.message
    assert services.orders_sync_account(account=account) == 0  # in line now: nothing more to do


def test_a_fill_beyond_our_quantity_takes_the_brokers_quantity(trader, account):
    """The lost modify raised the quantity and crossed the market: the exchange fills 5 of an
    order we knew as 2. The fill's update (and any sync) records it, with the broker's terms."""
    set_price("1500")
    order = place(trader, account, quantity=2, order_type="LIMIT", price=D("1480"))
    other = place(trader, account, quantity=1, order_type="LIMIT", price=D("1450"))
    settle()
    _modify_lost(trader, account, order, quantity=5, price="1500.5")
    engine.match_instrument(instrument_id=engine.instrument_lookup("NSE", "INFY").pk)
    settle()
    order.refresh_from_db()
    assert (order.status, order.quantity, order.filled_quantity) == (Order.Status.FILLED, 5, 5)
    assert Position.objects.get(account=account).net_quantity == 5
    # The account's other orders are still reconciled (one bad row used to stop them all).
    services.order_cancel(order=other, actor=trader, cause="test")
    assert services.orders_sync_account(account=account) == 0


def test_an_older_book_never_undoes_a_modify_recorded_since(trader, account):
    set_price("1500")
    order = place(trader, account, quantity=2, order_type="LIMIT", price=D("1480"))
    settle()
    asked_at = services.timezone.now()
    book = [broker_state(order)]  # the book as it was before the modify
    services.order_modify(order=order, actor=trader, cause="test", quantity=3)
    services.orders_sync_account(account=account, broker_orders=book, asked_at=asked_at)
    order.refresh_from_db()
    assert order.quantity == 3


def test_one_order_that_cannot_be_reconciled_does_not_stop_the_others(trader, account, monkeypatch):
    set_price("1500")
    first = place(trader, account, quantity=1, order_type="LIMIT", price=D("1480"))
    second = place(trader, account, quantity=1, order_type="LIMIT", price=D("1470"))
    settle()
    book = [broker_state(first, status=Status.CANCELLED), broker_state(second, status=Status.CANCELLED)]
    recording_fails_for(monkeypatch, first, "a bad row")
    with pytest.raises(RuntimeError, match="a bad row"):
        services.orders_sync_account(account=account, broker_orders=book)
    second.refresh_from_db()
    assert second.status == Order.Status.CANCELLED


def test_a_triggered_stop_shown_as_the_plain_order_it_became_stays_our_stop(trader, account):
    set_price("1500")
    stop = place(trader, account, side="SELL", quantity=2, order_type="SL-M", trigger_price=D("1480"))
    settle()
    stop.refresh_from_db()
    asked_at = services.timezone.now()
    triggered = broker_state(
        stop, order_type="MARKET", status=Status.FILLED, filled_quantity=2, average_price=D("1479.9")
    )
    services.orders_sync_account(account=account, broker_orders=[triggered], asked_at=asked_at)
    stop.refresh_from_db()
    assert (stop.status, stop.order_type, stop.trigger_price) == (Order.Status.FILLED, "SL-M", D("1480.00"))


def test_an_order_failed_by_a_sync_while_it_was_being_sent_is_brought_to_filled(trader, account):
    """Review: its answer's move loses (the order is no longer NEW), so the exchange's word, held
    back for the answer, is let go and brings it forward; its fill is recorded once."""
    from datetime import timedelta

    from django.utils import timezone

    class SlowSender(AccountBroker):
        def place_order(self, request, **kwargs):
            Order.objects.filter(reference=request.tag).update(created_at=timezone.now() - timedelta(seconds=120))
            services.orders_sync_account(account=account, cause="the cycle's sync")  # not at the broker yet
            assert Order.objects.get(reference=request.tag).status == Order.Status.FAILED
            return super().place_order(request, **kwargs)

    order = place(trader, account, quantity=2, broker=SlowSender(account))
    settle()
    order.refresh_from_db()
    assert PaperOrder.objects.get(tag=order.reference).filled_quantity == 2
    assert Trade.objects.get(account=account).order_id == order.pk
    assert Position.objects.get(account=account).net_quantity == 2
    assert (order.status, order.filled_quantity) == (Order.Status.FILLED, 2)
    assert (order.reject_kind, order.reject_reason) == ("", "")  # the sync's "never sent" was wrong


@pytest.mark.parametrize("listed", [True, False])
def test_a_day_order_the_broker_closed_after_the_last_sync_of_its_day_is_closed_here(
    trader, kite_on_face, monkeypatch, listed
):
    """A DAY order rests at Kite; the exchange closes it at the day's end, and no sync of the account
    ran before midnight (IST). The next sync closes it here too: from the broker's book where it is
    still listed, else (Kite lists today's orders only) as a day order its exchange closed."""
    from datetime import timedelta

    account = kite_on_face
    set_price("1500")
    order = place(trader, account, order_type="LIMIT", price="1400", quantity=3)
    settle()
    services.orders_sync_account(account=account)
    order.refresh_from_db()
    assert order.status == Order.Status.OPEN
    engine.order_cancel(client=PaperClient.objects.get(user_id=account.client_id), order_id=order.broker_order_id)
    Order.objects.filter(pk=order.pk).update(created_at=order.created_at - timedelta(days=1))
    if not listed:
        monkeypatch.setattr(AccountBroker, "orders", lambda broker: [])
    services.orders_sync_account(account=account)
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    if not listed:
        assert "closed by the exchange at that day's end" in order.events.get(kind="cancelled").message
    assert not services.orders_to_sync(account=account).exists()


def test_a_sync_judges_an_unsent_order_by_when_its_book_was_read_not_by_now(trader, account):
    """The cycle reads the book (step 1) and reconciles from it later (step 3): an order sent after
    that read, within ``SEND_WITHIN_S`` of being written, is not in it. A minute after it was written
    by the clock, but not a minute before the book was read, it is not failed (a strategy would
    place it again): the next read finds it."""
    from datetime import timedelta

    from django.utils import timezone

    seen = {}

    class SentAfterTheRead(AccountBroker):
        def place_order(self, request, **kwargs):
            # Written 61 s ago; the book read 30 s after that, before this send; step 3 runs now.
            book, now = AccountBroker(account).orders(), timezone.now()
            Order.objects.filter(reference=request.tag).update(created_at=now - timedelta(seconds=61))
            services.orders_sync_account(
                account=account, cause="the cycle's sync", broker_orders=book, asked_at=now - timedelta(seconds=31)
            )
            seen["status"] = Order.objects.get(reference=request.tag).status
            return super().place_order(request, **kwargs)

    order = place(trader, account, quantity=2, broker=SentAfterTheRead(account))
    settle()
    order.refresh_from_db()
    assert seen["status"] == Order.Status.NEW
    assert not order.events.filter(kind="failed").exists()
    assert (order.status, order.filled_quantity) == (Order.Status.FILLED, 2)
