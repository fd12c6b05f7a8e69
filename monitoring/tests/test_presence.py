"""Who has a page open: each process keeps its answers, and hears at once when one may have changed."""

import pytest
import redis
from django.conf import settings

from monitoring import presence
from tradingplatform import locks

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="the notices come from Redis")


def elsewhere() -> redis.Redis:
    """A connection of another process (a daphne worker's consumer)."""
    return redis.Redis.from_url(settings.REDIS_URL)


def no_redis_asked(monkeypatch):
    def refuse(user_ids):
        raise AssertionError(f"asked Redis about {user_ids}")

    monkeypatch.setattr(presence, "_ask", refuse)


def test_a_page_opened_in_another_process_is_seen_at_once(monkeypatch):
    assert presence.watching([7001]) == set()
    elsewhere().sadd(presence._key(7001), "their-socket")
    assert presence.watching([7001]) == {7001}  # the answer kept above was dropped by Redis's notice

    no_redis_asked(monkeypatch)
    assert presence.watching([7001]) == {7001}


def test_answers_are_kept_until_a_page_opens_or_closes(monkeypatch):
    presence.joined(7002, "a-socket")
    assert presence.watching([7002, 7003]) == {7002}
    with monkeypatch.context() as patched:
        no_redis_asked(patched)
        assert presence.watching([7003, 7002]) == {7002}  # no round trip for either

    presence.left(7002, "a-socket")
    assert presence.watching([7002]) == set()
    presence.joined(7003, "b-socket")
    assert presence.watching([7002, 7003]) == {7003}


def test_a_page_whose_set_expires_is_no_longer_watching():
    presence.joined(7004, "a-socket")
    assert presence.watching([7004]) == {7004}
    elsewhere().delete(presence._key(7004))  # as its expiry does
    assert presence.watching([7004]) == set()


def test_with_the_notices_broken_every_question_goes_to_redis(monkeypatch):
    assert presence.watching([7005]) == set()
    elsewhere().client_kill_filter(_id=presence._view._conn_id)
    elsewhere().sadd(presence._key(7005), "their-socket")  # its notice is lost with the connection
    asked = []
    real_ask = presence._ask
    monkeypatch.setattr(presence, "_ask", lambda user_ids: asked.append(user_ids) or real_ask(user_ids))
    monkeypatch.setattr(presence, "RETRY_S", 3600.0)
    assert presence.watching([7005]) == {7005}
    assert presence.watching([7005]) == {7005}
    assert asked == [[7005], [7005]]  # nothing kept without notices


def test_another_redis_is_asked_afresh(monkeypatch):
    assert presence.watching([7006]) == set()
    other = redis.Redis.from_url(settings.REDIS_URL)
    other.sadd(presence._key(7006), "x")
    monkeypatch.setattr(locks, "redis_client", lambda: other)
    # Not this process's answer from the other client's server (here the same server, so the set
    # is seen; what matters is that it was asked).
    assert presence.watching([7006]) == {7006}


def test_an_answer_is_kept_at_most_keep_s_even_when_no_notice_comes(monkeypatch):
    assert presence.watching([7010]) == set()
    # A notice connection that died silently (half-open): the join's notice never arrives.
    monkeypatch.setattr(presence._view._conn, "can_read", lambda timeout=0: False)
    elsewhere().sadd(presence._key(7010), "their-socket")
    assert presence.watching([7010]) == set()  # the kept answer, within KEEP_S
    monkeypatch.setattr(presence._view, "_known_since", presence._view._known_since - presence.KEEP_S - 1)
    assert presence.watching([7010]) == {7010}  # too old: asked again
