"""Who has a live page open: the websocket consumers note their connections here.

The monitoring cycle renders and pushes a trader's dashboard only when the trader has a
page open (rendering it costs more than the rest of an idle account's cycle). Each open
socket is a member of its user's set (Redis when configured, else this process); a socket
that closes leaves it. A server that dies without closing its sockets leaves stale members,
which only cost needless pushes until the set expires (a day after its last join).
"""

import threading
from collections import defaultdict

from django.conf import settings

from tradingplatform import locks

TTL_S = 24 * 3600
_local: dict[int, set[str]] = defaultdict(set)
_local_lock = threading.Lock()


def _key(user_id: int) -> str:
    return f"{settings.CACHE_KEY_PREFIX}:watching:{user_id}"


def joined(user_id: int, channel: str) -> None:
    if settings.REDIS_URL:
        redis = locks.redis_client()
        redis.pipeline(transaction=False).sadd(_key(user_id), channel).expire(_key(user_id), TTL_S).execute()
    else:
        with _local_lock:
            _local[user_id].add(channel)


def left(user_id: int, channel: str) -> None:
    if settings.REDIS_URL:
        locks.redis_client().srem(_key(user_id), channel)
    else:
        with _local_lock:
            _local[user_id].discard(channel)


def watching(user_ids) -> set[int]:
    """The users among ``user_ids`` with at least one page open (one round trip for all)."""
    user_ids = list(dict.fromkeys(user_ids))
    if not user_ids:
        return set()
    if settings.REDIS_URL:
        pipe = locks.redis_client().pipeline(transaction=False)
        for user_id in user_ids:
            pipe.exists(_key(user_id))
        return {user_id for user_id, found in zip(user_ids, pipe.execute(), strict=True) if found}
    with _local_lock:
        return {user_id for user_id in user_ids if _local.get(user_id)}
