"""Who has a live page open: the websocket consumers note their connections here.

The monitoring cycle renders and pushes a trader's dashboard only when the trader has a
page open (rendering it costs more than the rest of an idle account's cycle), and an order's
row is pushed only then. Each open socket is a member of its user's set (Redis when
configured, else this process); a socket that closes leaves it. A server that dies without
closing its sockets leaves stale members, which only cost needless pushes until the set
expires (a day after its last join).

Asked on every order (for a trader who mostly has no page open), so each process keeps the
answers it got, and Redis tells it at once when one may have changed: its own connection has
Redis track the presence keys (``CLIENT TRACKING ... BCAST PREFIX``, the key-change notices
redirected to itself and subscribed to), so a join, leave or expiry in any process drops this
process's answer for that user before its next question is answered (the pending notices are
read first; they reach the socket before the joining consumer's SADD returns). Until that
connection is up, or after it breaks, every question goes to Redis as before.
"""

import logging
import os
import threading
import time
from collections import defaultdict

from django.conf import settings

from tradingplatform import locks

logger = logging.getLogger(__name__)
TTL_S = 24 * 3600
RETRY_S = 5.0  # a broken notice connection is opened again at most this often
# Answers are kept at most this long even without a notice: a notice connection that died
# silently (a half-open socket never reads as closed) cannot keep a stale answer for longer.
KEEP_S = 5.0
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
    """The users among ``user_ids`` with at least one page open (this process's answers where
    nothing changed since; one round trip for the others).

    Never raises: with Redis away (the channel layer with it, so no push could go), nobody is
    watching; its callers have recorded a run or fills, which must not fail for it. Pages catch up
    when they reconnect."""
    user_ids = list(dict.fromkeys(user_ids))
    if not user_ids:
        return set()
    if settings.REDIS_URL:
        try:
            return _view.watching(user_ids)
        except Exception:
            logger.warning("presence: could not tell who is watching; no push this time", exc_info=True)
            return set()
    with _local_lock:
        return {user_id for user_id in user_ids if _local.get(user_id)}


def _ask(user_ids: list[int]) -> dict[int, bool]:
    pipe = locks.redis_client().pipeline(transaction=False)
    for user_id in user_ids:
        pipe.exists(_key(user_id))
    return {user_id: bool(found) for user_id, found in zip(user_ids, pipe.execute(), strict=True)}


class _View:
    """This process's answers, {user id: watching}, each dropped when Redis notices its key change."""

    def __init__(self):
        self._lock = threading.Lock()
        self._conn = None  # the notice connection: tracking redirected to itself, subscribed
        self._conn_id = None
        self._source = None  # (the Redis client, the keys' prefix) the notices are about
        self._pid = None
        self._retry_at = 0.0
        self._known: dict[int, bool] = {}
        self._known_since = 0.0
        self._epoch = 0  # notices read so far: an answer asked for before one is not kept

    def watching(self, user_ids: list[int]) -> set[int]:
        source = (locks.redis_client(), _key(0)[:-1])
        with self._lock:
            tracked = self._fresh(source)
            known = self._known
            missing = [user_id for user_id in user_ids if user_id not in known] if tracked else user_ids
            found = {user_id for user_id in user_ids if known.get(user_id)} if tracked else set()
            epoch = self._epoch
        if missing:
            asked = _ask(missing)
            found.update(user_id for user_id, yes in asked.items() if yes)
            with self._lock:
                # Kept only if no notice came meanwhile (it may be about one of these keys, read
                # by the notices' reader before we could keep the answer it undoes).
                if tracked and self._fresh(source) and self._epoch == epoch:
                    known.update(asked)
        return found

    def _fresh(self, source: tuple) -> bool:
        """Read the pending notices (under the lock); False if there is no notice connection."""
        if self._pid != os.getpid() or self._source != source:
            # A forked child has its parent's socket; another Redis or prefix, other keys.
            self._drop()
            self._pid, self._source, self._retry_at = os.getpid(), source, 0.0
        if self._conn is None and not self._connect(*source):
            return False
        if time.monotonic() - self._known_since > KEEP_S:
            self._known.clear()
            self._known_since = time.monotonic()
        try:
            while self._conn.can_read(timeout=0):
                message = self._conn.read_response()
                self._epoch += 1
                keys = message[2] if isinstance(message, list) and len(message) == 3 else None
                if message[0] != b"message" or keys is None:  # a flush of the database: all of them
                    self._known.clear()
                    continue
                for key in keys:
                    user_id = key.rsplit(b":", 1)[-1]
                    self._known.pop(int(user_id) if user_id.isdigit() else None, None)
        except Exception:
            logger.warning("presence: the notice connection broke; asking Redis until it is back", exc_info=True)
            self._drop()
            return False
        return True

    def _connect(self, client, prefix: str) -> bool:
        if time.monotonic() < self._retry_at:
            return False
        self._retry_at = time.monotonic() + RETRY_S
        pool = client.connection_pool
        # RESP2: the notices come as plain pub/sub messages on a connection subscribed to them.
        conn = pool.connection_class(**{**pool.connection_kwargs, "protocol": 2})
        try:
            conn.connect()
            conn.send_command("CLIENT", "ID")
            own_id = conn.read_response()
            conn.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", own_id, "BCAST", "PREFIX", prefix)
            conn.read_response()
            conn.send_command("SUBSCRIBE", "__redis__:invalidate")
            conn.read_response()
        except Exception:
            logger.warning("presence: no key-change notices from Redis; asking it every time", exc_info=True)
            conn.disconnect()
            return False
        self._conn, self._conn_id = conn, own_id
        return True

    def _drop(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.disconnect()
        self._conn = None
        self._known.clear()
        self._epoch += 1


_view = _View()
