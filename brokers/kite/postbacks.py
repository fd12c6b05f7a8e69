"""Kite's order postbacks, taken as a prompt to read the order from Kite, never as its state.

Kite's checksum signs only order_id + order_timestamp + the app's secret, not the status, fills or
prices: a captured genuine postback with an edited body verifies as well as the original. So a
verified postback only says "this order changed": its state is read from Kite through the
account's ``AccountBroker`` and that is applied. When it cannot be read now, the account's
monitoring run is asked for, and reconciles the order with Kite's book.
"""

import logging

from accounts.models import BrokerAccount
from brokers import services
from brokers.client import AccountBroker
from brokers.errors import BrokerError

logger = logging.getLogger(__name__)

# The hook answers Kite while it waits: a short wait for a rate-budget slot and one try; the
# monitoring run catches up when that is not enough.
READ_BUDGET_WAIT_S = 2.0


def postback_apply(*, account: BrokerAccount, order_id: str) -> bool:
    """Read the order a verified postback names and apply Kite's state of it. False when it could
    not be read (the account's run is queued instead)."""
    try:
        if not order_id:
            raise ValueError("the postback names no order")
        state = AccountBroker(account, budget_timeout_s=READ_BUDGET_WAIT_S, attempts=1).order(order_id)
    except (BrokerError, KeyError, TypeError, ValueError, ArithmeticError) as exc:
        logger.warning(
            "Kite postback for %s: could not read order %s (%s); running the account", account.client_id, order_id, exc
        )
        services.account_touched(account.pk)
        return False
    services.broker_order_update(broker="kite", client_id=account.client_id, order=state)
    return True
