"""Reads for accounts: always scoped to the user who asks."""

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from .models import ApiKey, AuditLog, BrokerAccount


def broker_accounts_of(user) -> QuerySet[BrokerAccount]:
    return BrokerAccount.objects.filter(owner=user)


def broker_account_of(user, pk) -> BrokerAccount:
    """The user's own account; another trader's id is a 404, never a 403."""
    return get_object_or_404(broker_accounts_of(user), pk=pk)


def api_keys_of(user) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(owner=user)


def api_key_of(user, pk) -> ApiKey:
    return get_object_or_404(api_keys_of(user), pk=pk)


def recent_activity_of(user, limit: int = 20) -> QuerySet[AuditLog]:
    return AuditLog.objects.filter(actor=user)[:limit]
