"""Round trips closed and settled are marked done (``cycle.exits_settle``), so the cycle's exits stop
reading them; one that could still change (today's or yesterday's, an exit live or changed lately,
exits that closed less or more than the entry filled) is never marked."""

from datetime import datetime, timedelta
from decimal import Decimal

from accounts.tests.factories import make_broker_account
from brokers.base import IST, BrokerOrder
from monitoring import cycle
from monitoring.tests.test_strategy_exits import closed_by_hand, monitor
from orders import services, sources
from orders.models import Order, OrderEvent
from orders.tests.factories import instrument, orders_as_written

S = Order.Status
NOW = datetime(2026, 3, 26, 12, 0, tzinfo=IST)
TODAY = NOW.replace(hour=0)


def round_trip(account, guarded, infy, at, *, status=S.FILLED, filled=4, exits=(), changed=None):
    """A strategy entry of 4 written at ``at`` (``changed``: last changed then), and its exits: each
    (role, status, filled, last changed)."""
    common = {"account": account, "instrument": infy, "strategy": guarded, "source": "strategy", "created_at": at}
    (first,) = orders_as_written(
        [{**common, "quantity": 4, "filled_quantity": filled, "status": status, "updated_at": changed or at}]
    )
    orders_as_written(
        [
            {**common, "role": role, "parent": first, "quantity": 4, "filled_quantity": done, "status": state}
            | {"updated_at": when, "side": "SELL"}
            for role, state, done, when in exits
        ]
    )
    return first


def test_only_round_trips_closed_and_settled_before_yesterday_are_marked_done(trader, instruments):
    infy = instrument()
    account = make_broker_account(trader, broker="paper", client_id="PAPER-X1")
    guarded, _ = sources.strategy_save(owner=trader, name="Guarded", account_ids=[account.pk])
    old, yesterday = TODAY - timedelta(days=3) + timedelta(hours=10), TODAY - timedelta(hours=14)

    def closed(at, *, stop_changed=None, **kwargs):
        stop = ("stop_loss", S.FILLED, 4, stop_changed or at)
        return round_trip(account, guarded, infy, at, exits=[stop, ("take_profit", S.CANCELLED, 0, at)], **kwargs)

    settled = [closed(old), closed(TODAY - timedelta(hours=24, seconds=1))]

    def long_ago(*exits, **kwargs):
        return round_trip(account, guarded, infy, old, exits=exits, **kwargs)

    unsettled = [
        closed(NOW),  # today's
        closed(yesterday),  # yesterday's: a late word of it may yet come
        closed(old, changed=yesterday),  # the entry changed yesterday
        closed(old, stop_changed=NOW),  # its stop-loss changed today
        long_ago(("stop_loss", S.FILLED, 4, old), ("take_profit", S.OPEN, 0, old)),  # an exit still live
        # Its exits closed 2 of the 4 it filled, or 6: step 4's to look at.
        long_ago(("stop_loss", S.FILLED, 2, old)),
        long_ago(("stop_loss", S.FILLED, 4, old), ("take_profit", S.FILLED, 2, old)),
        long_ago(),  # carried, no exits yet
        long_ago(("stop_loss", S.FILLED, 2, old), status=S.PARTIALLY_FILLED, filled=2),  # still live
    ]
    looked_at = sorted(cycle._filled_entries(account=account).values_list("pk", flat=True))
    unchanged = {o.pk: o.updated_at for o in Order.objects.all()}

    assert cycle.exits_settle(now=NOW) == len(settled)
    assert cycle.exits_settle(now=NOW) == 0  # run again (a second beat, a redelivery): nothing more

    done = Order.objects.filter(exits_done=True)
    assert sorted(done.values_list("pk", flat=True)) == sorted(o.pk for o in settled)
    events = OrderEvent.objects.filter(kind=cycle.EXITS_DONE)
    assert sorted(events.values_list("order_id", flat=True)) == sorted(o.pk for o in settled)
    assert not done.filter(pk__in=[o.pk for o in unsettled]).exists()
    assert not any(o.pk in looked_at for o in settled)  # step 4 had nothing to do with them
    assert sorted(cycle._filled_entries(account=account).values_list("pk", flat=True)) == looked_at
    assert {o.pk: o.updated_at for o in Order.objects.all()} == unchanged  # marked done is no change of theirs


def test_an_entry_step_4_finds_done_is_marked_once(trader, account):
    """Closed by hand: step 4 marks it done, once, and reads it no more."""
    first = closed_by_hand(trader, account)
    monitor(account)
    first.refresh_from_db()
    assert first.exits_done
    assert first.events.filter(kind=cycle.EXITS_DONE).count() == 1
    assert not cycle._filled_entries(account=account).exists()


def test_a_late_word_that_an_exit_of_an_entry_done_had_filled_makes_step_4_look_again(trader, instruments):
    """Its take-profit, cancelled, had filled before the cancel (a broker's correction after the round
    trip was marked done): both exits filled, the position is reversed. Step 4 must see it again,
    not go on taking the entry as done."""
    infy = instrument()
    account = make_broker_account(trader, broker="paper", client_id="PAPER-X2")
    guarded, _ = sources.strategy_save(owner=trader, name="Guarded", account_ids=[account.pk])
    old = TODAY - timedelta(days=3)
    stop, cancelled = ("stop_loss", S.FILLED, 4, old), ("take_profit", S.CANCELLED, 0, old)
    first = round_trip(account, guarded, infy, old, exits=[stop, cancelled])
    assert cycle.exits_settle(now=NOW) == 1
    profit = first.children.get(role="take_profit")
    late = BrokerOrder(
        broker_order_id=profit.broker_order_id or "late-1",
        tag=profit.reference,
        exchange="NSE",
        tradingsymbol="INFY",
        side="SELL",
        order_type=profit.order_type,
        product=profit.product,
        validity=profit.validity,
        quantity=4,
        price=profit.price or Decimal("0"),
        trigger_price=profit.trigger_price or Decimal("0"),
        status="FILLED",
        filled_quantity=4,
        pending_quantity=0,
        cancelled_quantity=0,
        average_price=Decimal("1510"),
        status_message=None,
        placed_at=old,
        updated_at=old,
    )
    assert services.order_apply_broker_state(profit, late, cause="the broker's late word")
    first.refresh_from_db()
    assert not first.exits_done
    assert list(cycle._filled_entries(account=account).values_list("pk", flat=True)) == [first.pk]
