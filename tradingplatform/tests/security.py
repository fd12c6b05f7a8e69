"""Shared pieces of the security sweep (``test_security_*.py``): the traders' objects and a database snapshot."""

import uuid
from datetime import time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.apps import apps
from django.utils import timezone

from accounts import services as account_services
from accounts.tests.factories import make_broker_account
from orders import sources
from orders.tests.factories import instrument, place

IST = ZoneInfo("Asia/Kolkata")

# Every table a request could change, by app. Fields that a harmless read may touch are left out.
SNAPSHOT_APPS = ("accounts", "brokers", "paper", "orders", "portfolio", "monitoring")
VOLATILE_FIELDS = {"accounts.apikey": {"last_used_at"}, "accounts.user": {"last_login"}}


def db_snapshot(*, besides: dict[str, set[str]] | None = None) -> dict:
    """Every row of every platform table (and the paper exchange's), to compare before and after;
    ``besides``: more fields left out ({model label: field names}), for a change the caller checks."""
    snapshot = {}
    for model in apps.get_models():
        if model._meta.app_label not in SNAPSHOT_APPS:
            continue
        label = model._meta.label_lower
        skip = VOLATILE_FIELDS.get(label, set()) | (besides or {}).get(label, set())
        fields = [field.attname for field in model._meta.concrete_fields if field.attname not in skip]
        snapshot[label] = [
            {name: str(value) for name, value in row.items()} for row in model.objects.order_by("pk").values(*fields)
        ]
    return snapshot


def assert_unchanged(before: dict, after: dict, what: str) -> None:
    changed = [label for label in before if before[label] != after[label]]
    assert not changed, f"{what} changed {changed}"


def scheduled_spec(**overrides) -> dict:
    spec = {
        "instrument": instrument("INFY"),
        "side": "BUY",
        "quantity": 1,
        "order_type": "MARKET",
        "product": "MIS",
        "validity": "DAY",
        "price": None,
        "trigger_price": None,
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def owned(trader, account, other_trader):
    """One of each thing the first trader owns, with the secrets that go with them.

    The other trader has an account and an API key of their own, so their requests are
    ordinary signed-in requests that simply name someone else's ids.
    """
    order = place(trader, account, order_type="LIMIT", price="1400")  # rests at the paper exchange
    assert order.status == "OPEN" and order.broker_order_id
    basket = sources.basket_save(
        owner=trader,
        name="Morning",
        items=[{"instrument": instrument("INFY"), "side": "BUY", "quantity": 1, "order_type": "MARKET"}],
        account_ids=[account.pk],
    )
    soon = timezone.now().astimezone(IST) + timedelta(days=1)
    scheduled = sources.scheduled_save(
        owner=trader,
        account=account,
        spec=scheduled_spec(),
        recurrence="once",
        time_of_day=time(9, 30),
        timezone_name="Asia/Kolkata",
        run_on=soon.date(),
    )
    strategy, strategy_secret = sources.strategy_save(owner=trader, name="Breakout", account_ids=[account.pk])
    api_key, api_secret = account_services.api_key_create(owner=trader, name="algo")
    their_account = make_broker_account(other_trader, broker="paper", client_id="PAPER-X1", label="Theirs")
    _, their_api_secret = account_services.api_key_create(owner=other_trader, name="theirs")
    return {
        "account": account,
        "order": order,
        "basket": basket,
        "scheduled": scheduled,
        "strategy": strategy,
        "strategy_secret": strategy_secret,
        "api_key": api_key,
        "api_secret": api_secret,
        "instrument": instrument("INFY"),
        "their_account": their_account,
        "their_api_secret": their_api_secret,
        "token": uuid.uuid4().hex,
    }
