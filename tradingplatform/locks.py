"""Short-lived locks shared by every process: Redis when configured, else the cache.

``acquire`` returns a token (truthy) when the lock was free, ``None`` when another
holder has it. Locks always expire, so a holder that crashes cannot block forever.
"""

import logging
import secrets
import threading
import time
from contextlib import contextmanager
from functools import cache

from django.conf import settings
from django.core.cache import cache as django_cache

logger = logging.getLogger(__name__)

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_EXTEND = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)


@cache
def redis_client():
    import redis

    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def _key(name: str) -> str:
    return f"{settings.CACHE_KEY_PREFIX}:lock:{name}"


def acquire(name: str, *, ttl_s: float) -> str | None:
    token = secrets.token_hex(8)
    if settings.REDIS_URL:
        ok = redis_client().set(_key(name), token, nx=True, px=max(1, int(ttl_s * 1000)))
    else:
        ok = django_cache.add(_key(name), token, timeout=max(1, round(ttl_s)))
    return token if ok else None


def remaining_s(name: str) -> float | None:
    """How long the lock has left (None when free, or when the cache cannot tell)."""
    if settings.REDIS_URL:
        ms = redis_client().pttl(_key(name))
        return ms / 1000 if ms >= 0 else None
    return None


def release(name: str, token: str) -> None:
    """Let the lock go if we still hold it. Never raises: with Redis away for a moment it expires
    on its own, and what its holder did stands (a failure here must not undo or fail it)."""
    release_many({name: token})


# Whether a periodic job's delivery at ARGV[1] (seconds; empty: Redis's clock, the same for every
# worker) serves a new beat of its interval ARGV[2] (``claim_beat``): KEYS[1] holds the time of the
# beat last served.
_BEAT = """
local last = tonumber(redis.call('get', KEYS[1]) or '')
local now, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
if not now then
  local clock = redis.call('time')
  now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
end
if last and now < last + 0.8 * interval then return 0 end
local served = now
if last and now > last + interval and now <= last + 2 * interval then served = last + interval end
redis.call('set', KEYS[1], tostring(served), 'px', math.ceil(3 * interval * 1000))
return 1
"""
_beat_lock = threading.Lock()


def claim_beat(name: str, *, interval_s: float, now: float | None = None) -> bool:
    """Whether a periodic job's delivery ``now`` serves a beat of its interval not served yet.

    A delivery within 80% of an interval of the beat last served is a second beat's, or a
    redelivery's: False. A delivery held up in the queue serves the beat it was sent for (one
    interval after the last), not its own arrival time: the next beat, on time, still runs (with a
    lock taken at the late run, the beat after it was skipped: a gap of two intervals). Early
    deliveries (a beat a little fast) serve their own time, so that none drifts into the skip
    window; after a pause of more than two intervals, the count starts again from now (Redis's
    clock: workers' clocks may differ). With two beats and a queue holding a delivery for most of
    an interval, a beat can be served twice: what the periodic jobs do is safe to do twice
    (per-account locks, atomic claims of due times)."""
    if settings.REDIS_URL:
        at = "" if now is None else repr(now)
        return bool(redis_client().eval(_BEAT, 1, _key(name), at, repr(float(interval_s))))
    now = time.time() if now is None else now
    with _beat_lock:  # the cache (one process without Redis): not atomic across processes
        last = django_cache.get(_key(name))
        if last is not None and now < last + 0.8 * interval_s:
            return False
        late = last is not None and last + interval_s < now <= last + 2 * interval_s
        django_cache.set(_key(name), last + interval_s if late else now, timeout=max(1, round(3 * interval_s)))
        return True


def acquire_many(names: list[str], *, ttl_s: float) -> dict[str, str | None]:
    """``acquire`` for each name, in one round trip to Redis: {name: token, or None when held}."""
    if not settings.REDIS_URL:
        return {name: acquire(name, ttl_s=ttl_s) for name in names}
    tokens = {name: secrets.token_hex(8) for name in names}
    pipe = redis_client().pipeline(transaction=False)
    for name, token in tokens.items():
        pipe.set(_key(name), token, nx=True, px=max(1, int(ttl_s * 1000)))
    return {name: (token if ok else None) for (name, token), ok in zip(tokens.items(), pipe.execute(), strict=True)}


def release_many(tokens: dict[str, str]) -> None:
    """``release`` for each {name: token}, in one round trip to Redis; never raises (``release``)."""
    if not tokens:
        return
    try:
        if not settings.REDIS_URL:
            for name, token in tokens.items():
                if django_cache.get(_key(name)) == token:
                    django_cache.delete(_key(name))
            return
        pipe = redis_client().pipeline(transaction=False)
        for name, token in tokens.items():
            pipe.eval(_RELEASE, 1, _key(name), token)
        pipe.execute()
    except Exception:
        logger.warning("could not release locks %s (they expire on their own)", sorted(tokens), exc_info=True)


@contextmanager
def held(name: str, *, ttl_s: float, wait_s: float = 0.0, keep: bool = False):
    """Hold the lock for the block; yields False if it could not be taken in ``wait_s``.
    ``keep``: renewed while the block runs, however long it takes (``kept``), so a slow holder
    (a broker call waiting out its budget, a session renewal and a timeout) is never overtaken by
    the next; it still expires ``ttl_s`` after a holder dies."""
    deadline = time.monotonic() + wait_s
    token = acquire(name, ttl_s=ttl_s)
    while token is None and time.monotonic() < deadline:
        time.sleep(0.05)
        token = acquire(name, ttl_s=ttl_s)
    try:
        if token is not None and keep:
            with kept({name: token}, ttl_s=ttl_s):
                yield True
        else:
            yield token is not None
    finally:
        if token is not None:
            release(name, token)


def extend_many(tokens: dict[str, str], *, ttl_s: float) -> None:
    """Give each lock we still hold ({name: token}) ``ttl_s`` more, in one round trip."""
    if not tokens:
        return
    if not settings.REDIS_URL:
        for name, token in tokens.items():
            if django_cache.get(_key(name)) == token:
                django_cache.touch(_key(name), timeout=ttl_s)
        return
    pipe = redis_client().pipeline(transaction=False)
    for name, token in tokens.items():
        pipe.eval(_EXTEND, 1, _key(name), token, max(1, int(ttl_s * 1000)))
    pipe.execute()


@contextmanager
def kept(tokens: dict[str, str], *, ttl_s: float):
    """Keep the locks ({name: token}) from expiring while the block runs, however long it takes
    (renewed every third of ``ttl_s``); they still expire ``ttl_s`` after a holder dies."""
    stop = threading.Event()

    def renew():
        while not stop.wait(ttl_s / 3):
            try:
                extend_many(tokens, ttl_s=ttl_s)
            except Exception:  # Redis away for a moment: try again at the next turn
                logger.warning("could not renew %s locks", len(tokens), exc_info=True)

    thread = threading.Thread(target=renew, name="lock-renewal", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
