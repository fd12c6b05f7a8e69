import pytest
from django.conf import settings
from django.core.cache import cache

from accounts.tests.factories import PASSWORD, make_user


@pytest.fixture(autouse=True)
def _isolated_cache():
    """Each test starts with an empty cache and no locks (only this run's keys are touched)."""
    _clear_cache()
    yield
    _clear_cache()


def _clear_cache():
    from brokers import ratelimit

    ratelimit.reset_local()
    if settings.REDIS_URL:
        from tradingplatform.locks import redis_client

        client = redis_client()
        keys = list(client.scan_iter(match=f"*{settings.CACHE_KEY_PREFIX}*", count=1000))
        if keys:
            client.delete(*keys)
    else:
        cache.clear()


@pytest.fixture
def trader(db):
    return make_user("trader")


@pytest.fixture
def other_trader(db):
    return make_user("other")


@pytest.fixture
def staff(db):
    return make_user("staff", is_staff=True, is_superuser=True)


@pytest.fixture
def trader_client(client, trader):
    client.force_login(trader)
    return client


@pytest.fixture
def password():
    return PASSWORD
