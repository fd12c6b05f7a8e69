"""The per-account rate budget: sliding windows, atomic across threads and processes."""

import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from brokers import ratelimit
from brokers.markets import IST
from tradingplatform.testing import requires_redis


def test_each_window_is_enforced_and_says_when_a_slot_frees():
    limits = [(3, 1.0), (5, 60.0)]
    assert [ratelimit.take(1, "paper", "orders", limits) for _ in range(3)] == [0, 0, 0]
    wait = ratelimit.take(1, "paper", "orders", limits)
    assert 0 < wait <= 1.0
    # Another account has its own budget.
    assert ratelimit.take(2, "paper", "orders", limits) == 0


def test_the_day_limit_starts_again_at_midnight_in_india(monkeypatch):
    """Kite's 5000 orders a day are the trading day's (IST), not those of the last 24 hours: the
    orders of yesterday evening do not hold back this morning's."""
    limits = [(10, 1.0), (3, 86400.0)]
    evening = datetime(2026, 12, 3, 23, 59, 50, tzinfo=IST)
    monkeypatch.setattr(timezone, "now", lambda: evening)
    assert [ratelimit.take(6, "kite", "orders", limits) for _ in range(3)] == [0, 0, 0]
    wait = ratelimit.take(6, "kite", "orders", limits)
    assert 0 < wait <= 10  # the day's budget is used up until midnight, 10 s away
    monkeypatch.setattr(timezone, "now", lambda: evening + timedelta(seconds=11))
    assert ratelimit.take(6, "kite", "orders", limits) == 0


def test_waiting_callers_get_a_slot_when_it_frees():
    limits = [(2, 0.3)]
    ratelimit.acquire(3, "paper", "orders", limits, wait=False)
    ratelimit.acquire(3, "paper", "orders", limits, wait=False)
    waited = ratelimit.acquire(3, "paper", "orders", limits, wait=True, timeout_s=2)
    assert waited > 0


def test_threads_never_take_more_than_the_limit():
    limits = [(10, 30.0)]
    granted = []

    def worker():
        for _ in range(10):
            if ratelimit.take(4, "paper", "quote", limits) == 0:
                granted.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 10


def test_limits_come_from_the_broker_unless_settings_override(settings):
    defaults = {"orders": [(10, 1)], "other": [(10, 1)]}
    assert ratelimit.limits_for("paper", "orders", defaults) == [(10, 1)]
    assert ratelimit.limits_for("paper", "quote", defaults) == [(10, 1)]  # unknown kinds count as "other"
    settings.BROKER_RATE_LIMITS = {"paper": {"orders": [(1, 5)]}}
    assert ratelimit.limits_for("paper", "orders", defaults) == [(1, 5)]


SCRIPT = """
import django, sys
django.setup()
from brokers import ratelimit
granted = sum(ratelimit.take(77, "paper", "orders", [(25, 30.0)]) == 0 for _ in range(20))
print(granted)
"""


@requires_redis
def test_processes_share_one_budget_through_redis():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tradingplatform.settings_test"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT], env=env, cwd=settings.BASE_DIR, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    granted = [int(worker.communicate(timeout=60)[0].strip().splitlines()[-1]) for worker in workers]
    assert sum(granted) == 25  # 80 attempts, one shared window of 25


@requires_redis
def test_a_cached_entry_is_read_with_the_slot_and_a_missing_one_takes_nothing():
    from django.core.cache import cache

    from brokers.errors import RateLimited

    limits = [(2, 30.0)]
    assert ratelimit.acquire_if_cached("rl-test-entry", 91, "paper", "orders", limits, wait=False) == (None, None)
    assert ratelimit.take(91, "paper", "orders", limits) == 0  # nothing was taken: both slots are left
    cache.set("rl-test-entry", {"id": 7}, timeout=30)
    assert ratelimit.acquire_if_cached("rl-test-entry", 91, "paper", "orders", limits, wait=False) == ({"id": 7}, 0.0)
    with pytest.raises(RateLimited) as refused:  # the entry is read, but no slot is left
        ratelimit.acquire_if_cached("rl-test-entry", 91, "paper", "orders", limits, wait=False)
    assert 0 < refused.value.retry_after <= 30
    cache.delete("rl-test-entry")
