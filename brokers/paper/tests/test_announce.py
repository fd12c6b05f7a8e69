"""The paper exchange tells the platform of its committed changes in batches (``services.broker_orders_update``)."""

import contextvars
from decimal import Decimal

import pytest
from django.utils import timezone

from brokers import services
from brokers.base import BrokerOrder
from tradingplatform import logs

pytestmark = pytest.mark.django_db


def _state(tag: str) -> BrokerOrder:
    now = timezone.now()
    return BrokerOrder(
        broker_order_id=f"B-{tag}",
        tag=tag,
        exchange="NSE",
        tradingsymbol="INFY",
        side="BUY",
        order_type="MARKET",
        product="MIS",
        validity="DAY",
        quantity=1,
        price=Decimal(0),
        trigger_price=Decimal(0),
        status="OPEN",
        filled_quantity=0,
        pending_quantity=1,
        cancelled_quantity=0,
        average_price=Decimal(0),
        status_message=None,
        placed_at=now,
        updated_at=now,
    )


def _change(tag: str, request_id: str):
    """A change as ``order_announce`` gathers it: made while serving the request ``request_id``."""
    token = logs.request_id_var.set(request_id)
    try:
        return contextvars.copy_context(), "PAPER-O1", _state(tag), []
    finally:
        logs.request_id_var.reset(token)


def test_each_change_is_told_in_its_own_requests_context_and_a_failing_one_does_not_stop_the_rest(
    account, monkeypatch, caplog
):
    told = []

    def listener(to_account, state, fills_follow):
        if state.tag == "BAD":
            raise RuntimeError("this change cannot be applied")
        told.append((to_account.pk, state.tag, logs.current_request_id()))

    monkeypatch.setattr(services, "order_update_listeners", [listener])
    changes = [_change("FIRST", "req-1"), _change("BAD", "req-2"), _change("LAST", "req-3")]
    services.broker_orders_update(broker="paper", changes=changes)

    assert told == [(account.pk, "FIRST", "req-1"), (account.pk, "LAST", "req-3")]
    assert "telling the platform of order B-BAD failed" in caplog.text
    assert logs.current_request_id() is None  # nothing leaks into the caller's context
