"""Live dashboard pushes: the owner's open pages get fresh PnL, positions, open orders, recent trades
and monitoring errors, rendered from the partials the dashboard renders, after a fill is recorded
(the fill fast path) and after each monitoring run.

Coalesced per trader, because fills and runs can come many times a second: a push goes out at once
when none went out in the last ``DASHBOARD_PUSH_INTERVAL_S``; a push asked for inside that window
becomes one trailing push at its end, which reads the state then, so the last state of a burst
always reaches the page (a strategy signal filling on ten accounts at once shows all ten fills)
and a fill waits at most one interval for its push.

The trailing push runs on this process's background threads (``tradingplatform.background``):
it is a few milliseconds away, too close for a Celery countdown to be worth its round trip. If
the process dies first, the account's monitoring run (queued on Celery by the same fill) pushes.
"""

import logging

from django.conf import settings
from django.db import transaction

from accounts.models import BrokerAccount, User
from monitoring.broadcast import push_fragment
from tradingplatform import background, locks

from .selectors import dashboard_of

logger = logging.getLogger(__name__)
TEMPLATE = "portfolio/partials/dashboard_push.html"
# A trailing slot outlives its push by this much if the process that took it dies.
TRAILING_SLOT_SPARE_S = 5.0


def _window(user_id: int) -> str:
    return f"dashboard:push:{user_id}"


def _trailing(user_id: int) -> str:
    return f"dashboard:push-trailing:{user_id}"


def dashboard_push(account: BrokerAccount) -> bool:
    """Push the account owner's dashboard now, or have the window's trailing push cover it; True if pushed now.

    Call it after the change is committed (or inside the transaction: the push is sent after
    commit). Best effort: a push that fails is logged, never raised into the fill or run that
    called it (a page that missed a push resynchronises when its websocket reconnects).
    """
    user_id = account.owner_id
    interval = settings.DASHBOARD_PUSH_INTERVAL_S
    try:
        if locks.acquire(_window(user_id), ttl_s=interval):
            _push(user_id, owner=account.owner if BrokerAccount.owner.is_cached(account) else None)
            return True
        # Someone pushed within the interval: a trailing push, once the change is committed (a
        # change rolled back holds no slot, which would make the next one within the window skip
        # its push).
        transaction.on_commit(lambda: _trail(user_id))
    except Exception:
        logger.exception("dashboard push failed for user %s", user_id)
    return False


def _trail(user_id: int) -> None:
    """One trailing push per window: if its slot is taken, that push has not read the state yet (it
    frees the slot first), so it will include this change."""
    interval = settings.DASHBOARD_PUSH_INTERVAL_S
    try:
        token = locks.acquire(_trailing(user_id), ttl_s=interval + TRAILING_SLOT_SPARE_S)
        if token:
            delay = locks.remaining_s(_window(user_id)) or interval
            background.submit(_push_trailing, user_id, token, delay_s=delay)
    except Exception:
        logger.exception("dashboard push failed for user %s", user_id)


def _push_trailing(user_id: int, token: str) -> None:
    """The end of a window: push whatever the state is now, and open a new window."""
    # Free the slot before reading the state: a change committed after this asks for its own push.
    locks.release(_trailing(user_id), token)
    locks.acquire(_window(user_id), ttl_s=settings.DASHBOARD_PUSH_INTERVAL_S)
    _push(user_id)


def _push(user_id: int, owner: User | None = None) -> None:
    user = owner or User.objects.filter(pk=user_id).first()
    if user is None:
        return
    push_fragment(user_id=user_id, template=TEMPLATE, context={"dashboard": dashboard_of(user)})
