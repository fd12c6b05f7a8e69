"""Live dashboard pushes: after a monitoring run, the owner's open pages get fresh PnL, positions,
open orders, recent trades and monitoring errors, rendered from the partials the dashboard renders.

Coalesced per user, because a monitoring run can end many times a second (one per account, one
per fill): at most one immediate push per ``PUSH_INTERVAL_S``. A call inside that window does not
push; the first such call queues one trailing push for the end of the window, so the last state
of a burst always reaches the page (a strategy signal filling on ten accounts at once shows all
ten fills, not only the first), without waiting for the next monitoring cycle.
"""

import logging

from celery import shared_task
from django.db import transaction

from accounts.models import BrokerAccount, User
from monitoring.broadcast import push_fragment
from tradingplatform import locks

from .selectors import dashboard_of

logger = logging.getLogger(__name__)
PUSH_INTERVAL_S = 0.3
TEMPLATE = "portfolio/partials/dashboard_push.html"


def dashboard_push(account: BrokerAccount) -> bool:
    """Push the account owner's dashboard now, or queue the burst's trailing push; True if pushed now.

    Best effort: a push that fails is logged, never raised into the monitoring run that called it
    (a page that missed a push resynchronises when its websocket reconnects).
    """
    user_id = account.owner_id
    try:
        if locks.acquire(f"dashboard:push:{user_id}", ttl_s=PUSH_INTERVAL_S):
            _push(user_id)
            return True
        if locks.acquire(f"dashboard:push-trailing:{user_id}", ttl_s=PUSH_INTERVAL_S):
            transaction.on_commit(lambda: dashboard_push_trailing.apply_async((user_id,), countdown=PUSH_INTERVAL_S))
    except Exception:
        logger.exception("dashboard push failed for user %s", user_id)
    return False


@shared_task(ignore_result=True, soft_time_limit=20, time_limit=30)
def dashboard_push_trailing(user_id: int) -> None:
    """The end of a burst: push whatever the state is now (idempotent: a push only shows the state)."""
    _push(user_id)


def _push(user_id: int) -> None:
    user = User.objects.filter(pk=user_id).first()
    if user is None:
        return
    push_fragment(user_id=user_id, template=TEMPLATE, context={"dashboard": dashboard_of(user)})
