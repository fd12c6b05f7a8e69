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


def test_a_periodic_job_serves_each_beat_once_and_a_late_run_does_not_push_the_next_out():
    """Beats every 60 s: a second beat's delivery is skipped; one held up in the queue for 30 s
    serves its own beat, and the next beat, on time, still runs (a lock taken at the late run would
    have skipped it: no run for two minutes)."""
    claim = lambda now: locks.claim_beat("beat-test", interval_s=60, now=now)  # noqa: E731
    assert claim(1000.0)
    assert not claim(1001.0)  # a second beat's
    assert claim(1090.0)  # the 1060 beat, 30 s late in the queue
    assert claim(1120.0)  # the 1120 beat, on time
    assert not claim(1121.0)
    # A beat a little fast never drifts into the skip window.
    assert all(claim(1120.0 + 59.9 * k) for k in range(1, 200))
    # After a pause (beat down), the count starts again from the first delivery.
    last = 1120.0 + 59.9 * 199
    assert claim(last + 600) and not claim(last + 620) and claim(last + 660)


def test_a_beat_is_claimed_by_the_shared_clock_when_no_time_is_given():
    assert locks.claim_beat("clock-test", interval_s=60)
    assert not locks.claim_beat("clock-test", interval_s=60)  # the same beat (Redis's TIME, or the cache's)
