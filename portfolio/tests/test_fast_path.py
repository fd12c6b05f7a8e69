"""The fill fast path: a paper fill is recorded once and pushed to its trader's dashboard after commit.

These tests commit for real (the fast path starts after a commit, on background threads) and wait
for the background work to finish instead of waiting for a time.
"""

import asyncio
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.tests.factories import make_broker_account
from brokers.base import BrokerTrade
from monitoring import cycle, presence
from monitoring.consumers import user_group
from orders.models import Order
from orders.tests.factories import place
from portfolio import services
from portfolio.models import Position, Trade
from tradingplatform import background

pytestmark = pytest.mark.django_db(transaction=True)
D = Decimal
PNL = 'id="pnl-summary"'


class Inbox:
    """A channel in a trader's group: what their open pages would receive."""

    def __init__(self, user):
        self.layer = get_channel_layer()
        self.channel = async_to_sync(self.layer.new_channel)()
        async_to_sync(self.layer.group_add)(user_group(user.pk), self.channel)
        presence.joined(user.pk, self.channel)  # as the consumer notes an open page

    def next_pnl_push(self, timeout_s: float = 10.0) -> str:
        """The next message carrying the PnL summary (order-row pushes in between are skipped)."""

        async def receive():
            while True:
                message = await asyncio.wait_for(self.layer.receive(self.channel), timeout_s)
                if PNL in message.get("html", ""):
                    return message["html"]

        return async_to_sync(receive)()


def settle():
    assert background.wait_idle(30), "the background work did not finish"


def test_a_paper_fill_is_recorded_once_by_the_fast_path_and_the_cycle_alike(trader, account):
    order = place(trader, account, quantity=3)
    settle()
    trade = Trade.objects.get(account=account)
    position = Position.objects.get(account=account)
    assert trade.quantity == 3 and position.net_quantity == 3 and position.last_trade_id == trade.pk

    # The monitoring run sees the same fill at the broker: nothing recorded or applied twice,
    # and the fill is linked to its order (recorded before the order had its broker id).
    result = cycle.account_monitor(account=account)
    assert result.errors == []
    assert Trade.objects.filter(account=account).count() == 1
    position.refresh_from_db()
    assert position.net_quantity == 3 and position.last_trade_id == trade.pk
    assert Trade.objects.get(account=account).order_id == order.pk


def test_the_fill_is_pushed_after_commit_to_its_trader_only(trader, other_trader, account):
    their_account = make_broker_account(other_trader, broker="paper", client_id="PAPER-O2", label="Theirs")
    mine, theirs = Inbox(trader), Inbox(other_trader)

    with transaction.atomic():
        place(trader, account, symbol="INFY", quantity=2)
        # Filled at the exchange, but nothing is recorded or pushed before the commit.
        assert not Trade.objects.exists()
    settle()
    pushed = mine.next_pnl_push()
    assert "INFY" in pushed and 'id="positions"' in pushed and 'id="recent-trades"' in pushed

    # The other trader's first PnL push is about their own fill, never the first trader's.
    place(other_trader, their_account, symbol="WIPRO", quantity=1)
    settle()
    their_push = theirs.next_pnl_push()
    assert "WIPRO" in their_push and "INFY" not in their_push


def test_a_burst_of_fills_pushes_now_and_once_more_with_the_last_state(trader, account, settings):
    # Long enough that the whole burst falls in one interval whatever the machine's speed.
    settings.DASHBOARD_PUSH_INTERVAL_S = 2.0
    inbox = Inbox(trader)
    for _ in range(4):
        place(trader, account, symbol="TCS", quantity=1)
    settle()

    first, last = inbox.next_pnl_push(), inbox.next_pnl_push()
    assert Position.objects.get(account=account).net_quantity == 4
    assert 'class="num up">4<' in _positions(last)  # the trailing push shows all four fills
    assert first != last
    with pytest.raises(TimeoutError):
        inbox.next_pnl_push(timeout_s=0.5)  # and nothing more: the burst made two pushes


def _positions(html: str) -> str:
    start = html.index('id="positions"')
    return html[start : html.index("</section>", start)]


def _fill(n: int, side: str, quantity: int, price: str) -> BrokerTrade:
    return BrokerTrade(
        trade_id=f"T{n}",
        broker_order_id=f"O{n}",
        exchange="NSE",
        tradingsymbol="INFY",
        side=side,
        product="MIS",
        quantity=quantity,
        price=D(price),
        filled_at=timezone.now() + timedelta(milliseconds=n),
    )


def test_recorders_running_at_once_record_and_apply_each_fill_once(account):
    """The fast path and a monitoring run (or two workers) recording overlapping fills of one position at once."""
    fills = [_fill(n, "BUY" if n % 3 else "SELL", n % 4 + 1, f"{1500 + n}") for n in range(12)]
    batches = [fills[k::3] for k in range(3)] + [fills[:6], fills[6:], fills[::-1]]
    errors, start = [], threading.Barrier(len(batches))

    def record(batch):
        try:
            start.wait()
            services.trades_record(account=account, broker_trades=batch)
        except Exception as error:  # reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=record, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert Trade.objects.filter(account=account).count() == 12
    position = Position.objects.get(account=account)
    net = sum(f.quantity if f.side == "BUY" else -f.quantity for f in fills)
    assert position.net_quantity == net
    assert position.last_trade_id == Trade.objects.filter(account=account).latest("pk").pk


def test_fills_of_several_accounts_are_recorded_together_and_a_bad_one_fails_alone(trader, other_trader, account):
    """The gathered fills of a busy process: one account's bad fill (a side no column takes) fails
    the batch's transaction, then only that account's; the others are recorded."""
    other = make_broker_account(other_trader, broker="paper", client_id="PAPER-O2", label="Other")
    bad = _fill(1, "HOLD", 1, "1500")
    good = [_fill(2, "BUY", 2, "1500"), _fill(3, "SELL", 1, "1510")]
    applied = services.fills_fast_path([(other, [bad]), (account, good)])

    assert [t.broker_trade_id for t in applied[account.pk]] == ["T2", "T3"]
    assert other.pk not in applied
    assert Trade.objects.filter(account=account).count() == 2
    assert Position.objects.get(account=account).net_quantity == 1
    assert not Trade.objects.filter(account=other).exists()


def test_a_fill_is_valued_at_the_markets_latest_price_not_its_own(trader, account):
    from brokers.models import Instrument
    from brokers.paper import engine

    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=D("1500"), bid=D("1499.9"), ask=D("1500.1"))
    place(trader, account, quantity=2, order_type="LIMIT", price=D("1490"))
    settle()
    # The market falls through the limit; the platform's last price has the move already.
    Instrument.objects.filter(exchange="NSE", tradingsymbol="INFY").update(last_price=D("1480"))
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=D("1480"), bid=D("1479.9"), ask=D("1480.1"))
    settle()
    position = Position.objects.get(account=account)
    assert position.net_quantity == 2 and position.average_price == D("1490")
    assert position.last_price == D("1480") and position.unrealized_pnl == D("-20")  # not 0 at the fill's price


def test_a_fill_of_an_order_placed_here_finds_its_order_without_reading_it(trader, other_trader, account):
    from orders.services import placed_order_ids

    order = place(trader, account, symbol="INFY", quantity=2)
    settle()
    assert Trade.objects.get(account=account).order_id == order.pk
    assert placed_order_ids({(account.pk, order.reference)}) == {(account.pk, order.reference): order.pk}
    # Another account's fill naming that reference is not this order's.
    theirs = make_broker_account(other_trader, broker="paper", client_id="PAPER-O3", label="Theirs")
    assert placed_order_ids({(theirs.pk, order.reference)}) == {}

    def fill(account_id, tag, broker_order_id="elsewhere-1"):
        trade = BrokerTrade(
            trade_id="T1",
            broker_order_id=broker_order_id,
            exchange="NSE",
            tradingsymbol="INFY",
            side="BUY",
            product="CNC",
            quantity=1,
            price=D("1"),
            filled_at=timezone.now(),
            order_tag=tag,
        )
        return {(account_id, broker_order_id, "T1"): trade}

    with CaptureQueriesContext(connection) as queries:
        assert services._orders_of(fill(account.pk, order.reference)) == {(account.pk, order.reference): order.pk}
    assert len(queries) == 0
    # An order not placed here (or another account's) is read, by its broker id or its reference.
    with CaptureQueriesContext(connection) as queries:
        assert services._orders_of(fill(theirs.pk, order.reference)) == {}
        assert services._orders_of(fill(account.pk, None, order.broker_order_id)) == {
            (account.pk, order.broker_order_id): order.pk,
            (account.pk, order.reference): order.pk,
        }
    assert len(queries) == 2


def test_an_order_sent_inside_a_callers_transaction_is_read_not_taken_from_memory(trader, account):
    from orders import services as orders
    from orders.tests.factories import instrument

    terms = dict(actor=trader, account=account, side="BUY", quantity=1, order_type="MARKET", product="MIS")
    with transaction.atomic():
        order, _fresh = orders.order_prepare(**terms, instrument=instrument("TCS"), source="manual", cause="test")
        orders._answers.sending(order)
        # Not committed: the caller's transaction could still roll its row back.
        assert orders.placed_order_ids({(account.pk, order.reference)}) == {}
    order = place(trader, account, symbol="TCS", quantity=1)
    with transaction.atomic():
        place(trader, account, symbol="TCS", quantity=1)
    settle()
    assert orders.placed_order_ids({(account.pk, order.reference)}) == {(account.pk, order.reference): order.pk}
    filled = Order.objects.filter(account=account, status="FILLED").values_list("pk", flat=True)
    assert len(filled) == 2
    assert sorted(Trade.objects.filter(account=account).values_list("order_id", flat=True)) == sorted(filled)


@pytest.fixture
def announced(monkeypatch):
    """The paper exchange's announcements, as they are handed to the background (and still are)."""
    from brokers.paper import adapter

    told = []
    add = adapter._announced.add

    def spy(change, **kwargs):
        told.append(change)
        add(change, **kwargs)

    monkeypatch.setattr(adapter._announced, "add", spy)
    return told


def test_a_fill_on_arrival_is_recorded_with_its_answer_in_one_transaction(trader, account, announced):
    with CaptureQueriesContext(connection) as queries:
        order = place(trader, account, symbol="INFY", quantity=2)
    # Recorded by the time the placement returns, with no announcement of it to record after.
    assert announced == []
    trade = Trade.objects.get(account=account)
    position = Position.objects.get(account=account)
    assert order.status == "FILLED" and trade.order_id == order.pk and trade.quantity == 2
    assert position.net_quantity == 2 and position.last_trade_id == trade.pk
    assert list(order.events.values_list("kind", flat=True)) == ["created", "submitted", "filled"]
    # The fill's rows and the answer's move went in one transaction: no commit between them.
    sql = [q["sql"] for q in queries]
    first = next(
        i for i, s in enumerate(sql) if "INSERT INTO `portfolio_trade`" in s or 'INSERT INTO "portfolio_trade"' in s
    )
    moved = next(i for i, s in enumerate(sql) if i > first and s.startswith("UPDATE") and "orders_order" in s)
    assert not any(s.upper().startswith("COMMIT") for s in sql[first:moved])
    settle()
    assert Trade.objects.filter(account=account).count() == 1
    position.refresh_from_db()
    assert position.net_quantity == 2 and position.last_trade_id == trade.pk


def test_a_resting_order_is_not_announced_and_its_later_fill_is(trader, account, announced):
    from brokers.paper import engine
    from brokers.paper.models import PaperInstrument

    last = PaperInstrument.objects.get(exchange="NSE", tradingsymbol="INFY").last_price
    order = place(trader, account, symbol="INFY", quantity=1, order_type="LIMIT", price=last - 20)
    assert order.status == "OPEN" and announced == []  # the answer said all its announcement would
    settle()
    assert not Trade.objects.exists()
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=last - 30)  # through its price
    settle()
    assert [change[2].status for change in announced] == ["FILLED"]
    order.refresh_from_db()
    assert order.status == "FILLED" and Trade.objects.get(account=account).order_id == order.pk


def test_when_the_fill_cannot_go_with_its_answer_the_answer_goes_alone_and_the_fill_after(
    trader, account, announced, monkeypatch
):
    from django.db import OperationalError

    locked = services._positions_locked
    calls = []

    def deadlocked_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError(1213, "Deadlock found when trying to get lock")
        return locked(*args, **kwargs)

    monkeypatch.setattr(services, "_positions_locked", deadlocked_once)
    order = place(trader, account, symbol="TCS", quantity=3)
    # The answer is recorded once, as it would be alone.
    assert order.status == "FILLED"
    assert list(order.events.values_list("kind", flat=True)) == ["created", "submitted", "filled"]
    settle()
    # The exchange's word, let go, has the fill recorded and applied once.
    trade = Trade.objects.get(account=account)
    position = Position.objects.get(account=account)
    assert trade.order_id == order.pk and trade.quantity == 3
    assert position.net_quantity == 3 and position.last_trade_id == trade.pk
    assert len(calls) == 2 and [change[2].status for change in announced] == ["FILLED"]


def test_when_only_the_commits_answer_is_lost_nothing_is_recorded_twice(trader, account, announced, monkeypatch):
    from contextlib import contextmanager

    from django.db import OperationalError

    from orders import services as orders

    real_atomic, real_recorder = transaction.atomic, orders.placed_fills_recorder
    armed = []

    def recorder(*args):
        armed.append(True)  # the next plain atomic() is the answer's and its fills' transaction
        return real_recorder(*args)

    @contextmanager
    def atomic(*args, **kwargs):
        lose = armed and not args and not kwargs
        if lose:
            armed.clear()
        with real_atomic(*args, **kwargs):
            yield
        if lose:  # committed, but the connection went before the server said so
            raise OperationalError(2013, "Lost connection to server during query")

    monkeypatch.setattr(orders, "placed_fills_recorder", recorder)
    monkeypatch.setattr(orders.transaction, "atomic", atomic)
    order = place(trader, account, symbol="SBIN", quantity=4)
    monkeypatch.undo()
    settle()
    # The answer is not recorded again over itself, and the fill, told after all, is not recorded twice.
    order.refresh_from_db()
    assert order.status == "FILLED"
    assert list(order.events.values_list("kind", flat=True)) == ["created", "submitted", "filled"]
    trade = Trade.objects.get(account=account)
    position = Position.objects.get(account=account)
    assert trade.order_id == order.pk and position.net_quantity == 4 and position.last_trade_id == trade.pk


def test_a_dashboard_push_that_cannot_start_does_not_undo_the_answer(trader, account, announced, monkeypatch, caplog):
    def redis_down(*args, **kwargs):
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(services, "_dashboards_push", redis_down)
    order = place(trader, account, symbol="INFY", quantity=1)
    assert order.status == "FILLED" and announced == []
    assert list(order.events.values_list("kind", flat=True)) == ["created", "submitted", "filled"]
    assert Trade.objects.get(account=account).order_id == order.pk
    assert "together failed" not in caplog.text
