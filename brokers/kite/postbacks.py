"""Kite's order postbacks, taken as a prompt to read the order from Kite, never as its state.

Kite's checksum signs only order_id + order_timestamp + the app's secret, not the status, fills or
prices: a captured genuine postback with an edited body verifies as well as the original. So a
verified postback only says "this order changed": its state is read from Kite through the
account's ``AccountBroker`` and that is applied. When it cannot be read now, the account's
monitoring run is asked for, and reconciles the order with Kite's book.
"""

import logging

from django.core.cache import cache

from accounts.models import BrokerAccount
from brokers import services
from brokers.client import AccountBroker
from brokers.errors import BrokerError
from tradingplatform import locks

logger = logging.getLogger(__name__)

# The hook answers Kite while it waits: a short wait for a rate-budget slot and one try; the
# monitoring run catches up when that is not enough.
READ_BUDGET_WAIT_S = 2.0


def postback_apply(*, account: BrokerAccount, order_id: str) -> bool:
    """Read the order a verified postback names and apply Kite's state of it. False when it could
    not be read (the account's run is queued instead).

    One read of an order at a time, and one more after it for the postbacks that came meanwhile:
    each postback marks the order due, and whoever holds the order's read lock reads it while it is
    due. A flood (Kite sending again, a replayed capture) then costs two reads, not one each, and a
    change told while a read was under way is still read. A flood that goes on through every read
    does not keep one request reading: after ``MAX_READS`` the account's run is asked for (it reads
    the whole book), and the next postback reads again."""
    if not order_id:
        return _not_read(account, order_id, "the postback names no order")
    name = f"kite:postback:{account.pk}:{order_id}"
    cache.set(_due(name), True, DUE_TTL_S)
    read, reads = True, 0
    while token := locks.acquire(name, ttl_s=READ_LOCK_TTL_S):
        if reads == MAX_READS:
            locks.release(name, token)
            logger.info("Kite postbacks for %s keep coming for order %s; running the account", account.pk, order_id)
            services.account_touched(account.pk)
            return read
        try:
            due = cache.delete(_due(name))
            if due:
                read, reads = _read(account, order_id), reads + 1
        except Exception:
            services.account_touched(account.pk)  # the postbacks that left their read to this one
            raise
        finally:
            locks.release(name, token)
        # One that came after the look above, while the lock was still held, left its read to us.
        if not due and not cache.get(_due(name)):
            return read
    return read  # the holder reads it (again) once it is done


# The read lock outlasts a read that waits for its budget and then for Kite's answer; a postback
# marks its order due for as long.
READ_LOCK_TTL_S = DUE_TTL_S = 30
# Reads one request makes at most (the first, and those for postbacks that came during the reads).
MAX_READS = 3


def _due(name: str) -> str:
    return f"{name}:due"


def _read(account: BrokerAccount, order_id: str) -> bool:
    try:
        state = AccountBroker(account, budget_timeout_s=READ_BUDGET_WAIT_S, attempts=1).order(order_id)
    except (BrokerError, KeyError, TypeError, ValueError, ArithmeticError) as exc:
        return _not_read(account, order_id, exc)
    services.broker_order_update(broker="kite", client_id=account.client_id, order=state)
    return True


def _not_read(account: BrokerAccount, order_id: str, why) -> bool:
    logger.warning(
        "Kite postback for %s: could not read order %s (%s); running the account", account.client_id, order_id, why
    )
    services.account_touched(account.pk)
    return False
