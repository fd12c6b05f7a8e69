"""Reads for accounts: always scoped to the user who asks."""

import functools

from django.db import connection
from django.db.models import QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404

from tradingplatform.db import PlainRows

from .models import ApiKey, AuditLog, BrokerAccount

MAX_ID = 2**63 - 1  # a 64-bit primary key


def broker_accounts_of(user) -> QuerySet[BrokerAccount]:
    return BrokerAccount.objects.filter(owner=user)


# Every order the API places starts with this read, so it is written out once: Django building
# the query anew each time cost more than running it.
_ACCOUNTS = PlainRows(BrokerAccount)


@functools.cache
def _account_of_owner_sql() -> str:
    # Only the model's column names are put in the text; values go as parameters.
    return f"SELECT {_ACCOUNTS.columns('a')} FROM accounts_brokeraccount a WHERE a.id = %s AND a.owner_id = %s"  # noqa: S608


def broker_account_of(user, pk) -> BrokerAccount:
    """The user's own account; another trader's id is a 404, never a 403."""
    try:
        pk = int(pk)
    except (TypeError, ValueError):
        raise Http404 from None
    if user.pk is None or not 0 < pk <= MAX_ID:
        raise Http404
    with connection.cursor() as cursor:
        cursor.execute(_account_of_owner_sql(), [pk, user.pk])
        row = cursor.fetchone()
    if row is None:
        raise Http404
    return _ACCOUNTS.make(row)


def api_keys_of(user) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(owner=user)


def api_key_of(user, pk) -> ApiKey:
    return get_object_or_404(api_keys_of(user), pk=pk)


def recent_activity_of(user, limit: int = 20) -> QuerySet[AuditLog]:
    return AuditLog.objects.filter(actor=user)[:limit]


def live_orders_left(account) -> str | None:
    """What a deactivated account's trader (or staff) must know of its orders still live at the broker."""
    from orders.selectors import live_orders_count  # orders builds on accounts

    live = live_orders_count(account)
    if not live:
        return None
    return (
        f"{live} order{'' if live == 1 else 's'} of it still live at the broker: the platform no longer"
        " follows them (their fills are not recorded, and a stop-loss and its take-profit no longer"
        " cancel each other). Cancel them, or reactivate the account."
    )
