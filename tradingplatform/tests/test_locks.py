"""Locks shared by every process (Redis when configured, else the cache)."""

import time

from tradingplatform import locks


def test_a_kept_lock_outlives_its_ttl_while_the_block_runs_and_no_longer():
    token = locks.acquire("kept-test", ttl_s=1)
    assert token
    with locks.kept({"kept-test": token}, ttl_s=1):
        time.sleep(2.5)  # two and a half TTLs: renewed every third of one
        assert locks.acquire("kept-test", ttl_s=1) is None  # still ours
    time.sleep(1.6)  # not renewed any more: it expires (a dead holder's lock frees itself)
    assert locks.acquire("kept-test", ttl_s=1)


def test_a_lock_taken_over_is_not_renewed_for_its_old_holder():
    token = locks.acquire("taken-test", ttl_s=1)
    locks.release("taken-test", token)
    other = locks.acquire("taken-test", ttl_s=30)
    locks.extend_many({"taken-test": token}, ttl_s=1)
    remaining = locks.remaining_s("taken-test")
    assert other and (remaining is None or remaining > 20)  # the new holder's TTL, untouched
