"""Traders for the benchmarks: a user with a connected paper account, an API key and a signed-in session.

Runs inside Django (``django.setup()`` done by the caller, with the bench's database). Shared by
``bench/order_api.py``, ``bench/load.py``, ``bench/fill_latency.py`` and ``e2e/faults.py``; every step
is a get-or-create, so calling it again for the same name (a kept database, a larger load step)
reuses what is there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

# Enough paper cash that no benchmark order is refused for funds.
BENCH_CASH = Decimal("1000000000000")


@dataclass
class SeededTrader:
    user_id: int
    account_id: int
    key: str  # the raw API key ("" when none was asked for)
    cookie: str = ""  # the session cookie's value, when a login was asked for
    client_id: str = ""  # the paper exchange's client id


def paper_trader(
    *,
    username: str,
    client_id: str | Callable[[int], str],
    label: str,
    known_key: str | None = None,
    api_key: bool = True,
    key_name: str = "bench",
    login: bool = False,
) -> SeededTrader:
    """The trader ``username`` with a paper account (client ``client_id``) connected through the session
    manager (the exchange client, a real token, a live ``BrokerSession``) and a valid API key.

    ``known_key``: the raw key from an earlier run, kept when the trader still has an unrevoked key (a
    raw key cannot be read back); otherwise the trader's keys are replaced by a new one. ``login``: also
    sign the user in (``force_login``) and return the session cookie, for websockets and pages.
    ``client_id`` may be a function of the user's pk; ``api_key=False``: no key (``key`` is "").
    """
    from django.conf import settings
    from django.test import Client

    from accounts import services as account_services
    from accounts.models import ApiKey, BrokerAccount, User
    from brokers.services import session_live

    user = User.objects.filter(username=username).first()
    if user is None:
        user = User.objects.create_user(username=username, password=None)
    account = BrokerAccount.objects.filter(owner=user, broker="paper").first()
    if callable(client_id):
        client_id = client_id(user.pk)
    if account is None:
        account = account_services.broker_account_create(
            owner=user, broker="paper", client_id=client_id, label=label, credentials={}
        )
    raw = known_key or ""
    if api_key and (not raw or not ApiKey.objects.filter(owner=user, revoked_at__isnull=True).exists()):
        ApiKey.objects.filter(owner=user).delete()
        _, raw = account_services.api_key_create(owner=user, name=key_name)
    session_live(account)  # the first login creates the exchange client (and the session)
    cookie = ""
    if login:
        client = Client()
        client.force_login(user)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    return SeededTrader(user.pk, account.pk, raw, cookie, account.client_id)


def fund_paper_clients(client_id_prefix: str, cash: Decimal = BENCH_CASH, **fields) -> int:
    """Give every paper exchange client whose id starts with the prefix ``cash`` (and set ``fields``:
    ``latency_ms``, ``opening_funds``, ...); returns how many."""
    from brokers.paper.models import PaperClient

    return PaperClient.objects.filter(user_id__startswith=client_id_prefix).update(cash=cash, **fields)
