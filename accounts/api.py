"""API-key authentication and the accounts endpoints of the JSON API."""

import logging
from decimal import Decimal

import redis
from django.core.exceptions import ValidationError
from django.http import Http404
from ninja import Query, Router, Schema
from ninja.security import APIKeyHeader as NinjaAPIKeyHeader
from ninja.security import HttpBearer

from brokers.errors import RateLimited
from tradingplatform.schemas import PageFilters, page_of, page_schema

from . import selectors, services
from .utils import client_ip

logger = logging.getLogger(__name__)


def account_for(request, account_id: int | None):
    """The caller's account (None for None); another trader's id is a field error, the same as an
    unknown one (a filter too: not an empty answer that looks like no orders)."""
    if account_id is None:
        return None
    try:
        return selectors.broker_account_of(request.user, account_id)
    except Http404:
        raise ValidationError({"account_id": "No such broker account."}) from None


class ApiRateLimited(Exception):
    def __init__(self, retry_after: float):
        self.retry_after = retry_after


class ApiBudgetUnavailable(Exception):
    """The key's rate budget could not be checked (its Redis unreachable): nothing is served."""


def _authenticate(request, raw_key: str | None):
    if not raw_key:  # this scheme's header is absent (ninja asks every scheme): not a guess
        return None
    try:
        auth = services.api_key_authenticate(raw_key, ip=client_ip(request))
    except services.ApiKeyLocked as exc:
        raise ApiRateLimited(exc.retry_after_s) from None
    except (RateLimited, redis.RedisError) as exc:
        # The budget's Redis could not be asked, or the keys' cache in it (a key this process has
        # not seen yet is read from the cache before its budget is taken): an outage, not a bug.
        logger.warning("API key budget not checked: %s", exc)
        raise ApiBudgetUnavailable from None
    if auth is None:
        return None
    if auth.retry_after > 0:  # each key has its own budget (API_RATE_LIMITS), shared by every process
        raise ApiRateLimited(auth.retry_after)
    request.user = auth.user
    request.api_key_id = auth.key_id
    return auth.user


class ApiKeyBearer(HttpBearer):
    """``Authorization: Bearer <key>``."""

    def authenticate(self, request, token):
        return _authenticate(request, token)


class ApiKeyHeader(NinjaAPIKeyHeader):
    """``X-API-Key: <key>``."""

    param_name = "X-API-Key"

    def authenticate(self, request, key):
        return _authenticate(request, key)


router = Router(tags=["accounts"])


class MeOut(Schema):
    id: int
    username: str
    timezone: str


class BrokerAccountOut(Schema):
    """A broker account as the API shows it: credentials are never part of it."""

    id: int
    broker: str
    client_id: str
    label: str
    is_active: bool
    max_order_value: Decimal | None
    max_quantity: int | None
    max_open_orders: int | None
    allowed_products: list[str]
    copy_multiplier: Decimal
    has_credentials: bool


@router.get("/me", response=MeOut)
def me(request):
    return request.user


BrokerAccountPage = page_schema(
    "BrokerAccountPage", BrokerAccountOut, counted="All your broker accounts (below `before_id`, when given)."
)


@router.get("/accounts", response=BrokerAccountPage)
def account_list(request, filters: Query[PageFilters]):
    """Your broker accounts, newest first (by id). To page through all of them, pass the last id of each
    page as `before_id` for the next."""
    return page_of(selectors.broker_accounts_of(request.user), filters)


@router.get("/accounts/{account_id}", response=BrokerAccountOut)
def account_detail(request, account_id: int):
    return selectors.broker_account_of(request.user, account_id)
