import itertools
import threading
from contextlib import contextmanager
from dataclasses import replace
from decimal import Decimal

from django.db import connection, transaction

from brokers.base import BrokerOrder, Status
from brokers.models import Instrument
from orders import services
from orders.models import Order


def instrument(symbol="INFY", exchange="NSE") -> Instrument:
    return Instrument.objects.get(exchange=exchange, tradingsymbol=symbol)


def place(actor, account, *, symbol="INFY", side="BUY", quantity=1, order_type="MARKET", product="MIS", **kwargs):
    kwargs.setdefault("source", "manual")
    kwargs.setdefault("cause", "test")
    return services.order_place(
        actor=actor,
        account=account,
        instrument=instrument(symbol, kwargs.pop("exchange", "NSE")),
        side=side,
        quantity=quantity,
        order_type=order_type,
        product=product,
        **kwargs,
    )


def nrml_on_equity_as_taken_before(trader, account, **terms):
    """An NRML order on equity placed when that was still taken (a position carried from then)."""
    infy = instrument("INFY")
    infy.instrument_type = "FUT"  # in memory only: spec_check's rule passed as it did before
    terms = {"side": "BUY", "quantity": 10, "order_type": "MARKET", "source": "manual", "cause": "test", **terms}
    return services.order_place(actor=trader, account=account, instrument=infy, product="NRML", **terms)


_WRITTEN = itertools.count(1)


def orders_as_written(rows) -> list[Order]:
    """Orders as given (field values; side BUY, source manual where not given), with their times
    as written, not the time of the test (``created_at`` and ``updated_at`` are stamped when saved):
    a history of earlier days, inserted as a busy desk would have left it."""
    orders = [Order(**{"reference": f"W{next(_WRITTEN)}", "side": "BUY", "source": "manual", **row}) for row in rows]
    created, updated = Order._meta.get_field("created_at"), Order._meta.get_field("updated_at")
    created.auto_now_add = updated.auto_now = False
    try:
        return Order.objects.bulk_create(orders, batch_size=1000)
    finally:
        created.auto_now_add = updated.auto_now = True


@contextmanager
def sent_while_locked(model, request):
    """Run ``request()`` (an API call) on a thread of its own while the block holds ``model``'s row
    lock (in the block's transaction): the thread is started once the block has taken it, and the
    block ends (committing) once the request reaches that row (a ``FOR UPDATE`` or an ``UPDATE``
    of its table, where it waits). Yields the list the request's answer is put in once it is done."""
    table, reached, answers = f"`{model._meta.db_table}`", threading.Event(), []

    def at_the_row(execute, sql, params, many, context):
        if table in sql and ("FOR UPDATE" in sql or sql.lstrip().upper().startswith("UPDATE")):
            reached.set()
        return execute(sql, params, many, context)

    def send():
        try:
            with connection.execute_wrapper(at_the_row):
                answers.append(request())
        finally:
            reached.set()
            connection.close()

    thread = threading.Thread(target=send)
    with transaction.atomic():
        yield answers, thread.start
        assert reached.wait(60), "the request never came to the row"
    thread.join(60)


def broker_state(order, **changes) -> BrokerOrder:
    """What the broker's book says of ``order``: resting, nothing filled, unless ``changes`` say more."""
    base = BrokerOrder(
        broker_order_id=order.broker_order_id or "X1",
        tag=order.reference,
        exchange="NSE",
        tradingsymbol="INFY",
        side=order.side,
        order_type=order.order_type,
        product=order.product,
        validity="DAY",
        quantity=order.quantity,
        price=order.price or Decimal(0),
        trigger_price=Decimal(0),
        status=Status.OPEN,
        filled_quantity=0,
        pending_quantity=order.quantity,
        cancelled_quantity=0,
        average_price=Decimal(0),
        status_message=None,
        placed_at=None,
        updated_at=None,
    )
    return replace(base, **changes)


def modify_answered_after_its_fills(monkeypatch) -> None:
    """Each modify's answer is recorded only after the exchange's update of the fills it caused
    (the broker's word of a fill comes first)."""
    from brokers.client import AccountBroker
    from tradingplatform import background

    real = AccountBroker.modify_order

    def answered_after_the_fill_is_told(self, broker_order_id, change):
        real(self, broker_order_id, change)
        assert background.wait_idle(30)  # the fill's update is applied before the answer is recorded

    monkeypatch.setattr(AccountBroker, "modify_order", answered_after_the_fill_is_told)


def recording_fails_for(monkeypatch, order, error: str = "deadlock found when trying to get lock"):
    """Recording a broker's state of ``order``, and of no other, raises ``error``: one order a sync
    could not reconcile (a deadlock, a bad row). Returns the real function, to put back."""
    apply = services.order_apply_broker_state

    def fails(target, state, **options):
        if target.pk == order.pk:
            raise RuntimeError(error)
        return apply(target, state, **options)

    monkeypatch.setattr(services, "order_apply_broker_state", fails)
    return apply


def placed_then_database_lost(monkeypatch):
    """order_place places the order, then the database connection is lost: its answer raises, and
    so does this thread's next statement (the look for the order by its key). Returns the real
    order_place, to put back."""
    from django.db import OperationalError

    place = services.order_place

    def placed_then_lost(**order):
        place(**order)
        here = connection  # this thread's: its next statement fails too

        def gone(execute, sql, params, many, context):
            here.execute_wrappers.remove(gone)
            raise OperationalError(2006, "MySQL server has gone away")

        here.execute_wrappers.append(gone)
        raise OperationalError(2013, "Lost connection to MySQL server during query")

    monkeypatch.setattr(services, "order_place", placed_then_lost)
    return place
