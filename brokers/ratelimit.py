"""Per-account rate budget, shared by every process through Redis.

Each account has one sliding window per limit (e.g. 10 orders/s, 400/min, 5000/day); a
window of a whole day (``DAY_S``) is the trading day's, from midnight IST, as a broker counts its
daily limit, not the last 24 hours' (yesterday evening's orders do not hold back this morning's).
Taking a slot checks every window and records the call in all of them in one Lua
script, so two workers can never both take the last slot. Without Redis (tests, a
single process) an in-process implementation with the same rules is used.

Callers choose: ``wait=True`` sleeps until a slot frees (up to ``timeout_s``), or
``wait=False`` raises ``RateLimited`` with the seconds until a slot frees.
"""

import contextlib
import functools
import secrets
import threading
import time
from collections import defaultdict, deque
from datetime import timedelta

import redis
from django.conf import settings
from django.core.cache import cache
from django.core.cache.backends import redis as django_redis_cache
from django.utils import timezone

from tradingplatform import metrics
from tradingplatform.locks import redis_client

from . import markets
from .errors import RateLimited

# A limit per day counts the calls of the trading day (IST): its window starts again at midnight.
DAY_S = 86400

# The windows are KEYS[first], KEYS[first + 1], ...: one sorted set per window. ARGV: member,
# then (limit, window_ms) per window. Returns 0 when the slot was taken, else the milliseconds
# until one frees.
_TAKE_FUNCTION = """
local function take(first)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local wait = 0
  for i = first, #KEYS do
    local j = i - first + 1
    local limit = tonumber(ARGV[2 * j])
    local window = tonumber(ARGV[2 * j + 1])
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
    local count = redis.call('ZCARD', KEYS[i])
    if count >= limit then
      local oldest = redis.call('ZRANGE', KEYS[i], count - limit, count - limit, 'WITHSCORES')
      local free_in = tonumber(oldest[2]) + window - now
      if free_in > wait then wait = free_in end
    end
  end
  if wait > 0 then return wait end
  for i = first, #KEYS do
    local j = i - first + 1
    redis.call('ZADD', KEYS[i], now, ARGV[1] .. ':' .. now)
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2 * j + 1]))
  end
  return 0
end
"""
_TAKE = _TAKE_FUNCTION + "return take(1)"
# KEYS[1] is read first, and a slot is taken only when it exists: {its value, the wait as above},
# or {false, 0} with nothing taken.
_TAKE_IF_PRESENT = (
    _TAKE_FUNCTION
    + """
local value = redis.call('GET', KEYS[1])
if not value then return {false, 0} end
return {value, take(2)}
"""
)


# How Django's Redis cache stores values, to read an entry a script returns.
_CACHE_VALUES = django_redis_cache.RedisSerializer()


@functools.cache
def _take_script():
    """The script, sent once to each Redis server and then called by its digest (EVALSHA)."""
    return redis_client().register_script(_TAKE)


@functools.cache
def _take_if_present_script():
    return redis_client().register_script(_TAKE_IF_PRESENT)


def limits_for(broker_code: str, kind: str, default: dict) -> list[tuple[int, float]]:
    """The broker's limits for a call kind, overridable with settings.BROKER_RATE_LIMITS."""
    overrides = getattr(settings, "BROKER_RATE_LIMITS", {}).get(broker_code, {})
    return list(overrides.get(kind, default.get(kind, default["other"])))


class _LocalWindows:
    """The same sliding windows, in this process only (no Redis configured)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._calls: dict[str, deque] = defaultdict(deque)

    def take(self, keys: list[str], limits: list[tuple[int, float]]) -> float:
        now = time.monotonic()
        with self._lock:
            wait = 0.0
            for key, (limit, window) in zip(keys, limits, strict=True):
                calls = self._calls[key]
                while calls and calls[0] <= now - window:
                    calls.popleft()
                if len(calls) >= limit:
                    wait = max(wait, calls[len(calls) - limit] + window - now)
            if wait > 0:
                return wait
            for key in keys:
                self._calls[key].append(now)
            return 0.0


_local = _LocalWindows()


def reset_local() -> None:
    """Forget the in-process windows (tests)."""
    global _local
    _local = _LocalWindows()


def _keys(account_id, kind: str, limits: list[tuple[int, float]]) -> list[str]:
    day = markets.trading_date().isoformat()  # a day's window holds that day's calls only
    return [
        f"{settings.CACHE_KEY_PREFIX}:rate:{account_id}:{kind}:{calls}/{window}"
        + (f":{day}" if window == DAY_S else "")
        for calls, window in limits
    ]


def _day_ends_in(limits: list[tuple[int, float]], free_in: float) -> float:
    """A wait no longer than the trading day has left when a day's window is among ``limits``: a
    full day frees at midnight. (A shorter window's longer wait is then cut short too, and the
    caller is told again when it asks.)"""
    if free_in <= 0 or not any(window == DAY_S for _calls, window in limits):
        return free_in
    now = timezone.now()
    return min(free_in, (markets.day_start(now) + timedelta(days=1) - now).total_seconds())


def _args(limits: list[tuple[int, float]]) -> list:
    args = [secrets.token_hex(6)]
    for calls, window in limits:
        args += [calls, int(window * 1000)]
    return args


def take(account_id: int, broker_code: str, kind: str, limits: list[tuple[int, float]]) -> float:
    """Try to take one slot; returns 0 on success, else the seconds until one frees."""
    keys = _keys(account_id, kind, limits)
    if not settings.REDIS_URL:
        return _day_ends_in(limits, _local.take(keys, limits))
    with _budget_unreachable(kind):
        waited_ms = _take_script()(keys=keys, args=_args(limits), client=redis_client())
    return _day_ends_in(limits, int(waited_ms) / 1000)


@contextlib.contextmanager
def _budget_unreachable(kind: str):
    """A Redis that cannot be asked: no call is made without its slot (the broker's limit holds),
    and the caller learns so as a refusal before the call (``RateLimited``), never as an error
    that may have come after it."""
    try:
        yield
    except redis.RedisError as error:
        raise RateLimited(f"the rate budget for {kind} calls could not be checked ({error})") from error


def take_if_cached(
    name: str, account_id, broker_code: str, kind: str, limits: list[tuple[int, float]]
) -> tuple[object | None, float]:
    """Read the Django cache entry ``name`` and, only if it is there, ``take`` a slot: one round trip.

    Returns the entry (None: missing, and nothing was taken) and the seconds until a slot frees (0:
    taken). For a caller that needs both at once (an API key's auth entry and its budget; a broker
    call's session and its account's budget). Needs Redis (``settings.REDIS_URL``) as the cache.
    """
    keys = [cache.make_and_validate_key(name), *_keys(account_id, kind, limits)]
    with _budget_unreachable(kind):
        raw, waited_ms = _take_if_present_script()(keys=keys, args=_args(limits), client=redis_client())
    return (None if raw is None else _CACHE_VALUES.loads(raw)), _day_ends_in(limits, int(waited_ms) / 1000)


def acquire_if_cached(name: str, *call, wait: bool, timeout_s: float = 10) -> tuple[object | None, float | None]:
    """``acquire`` (``call``: its account id, broker code, kind and limits), with the Django cache
    entry ``name`` read in the first try's round trip (``take_if_cached``). Returns the entry and
    the seconds spent waiting; when the entry is missing (or there is no Redis): (None, None), and
    no slot was taken. Raises ``RateLimited`` as ``acquire`` does."""
    if not settings.REDIS_URL:
        return None, None
    value, free_in = take_if_cached(name, *call)
    if value is None:
        return None, None
    return value, acquire(*call, wait=wait, timeout_s=timeout_s, first=free_in)


def acquire(
    account_id: int,
    broker_code: str,
    kind: str,
    limits: list[tuple[int, float]],
    *,
    wait: bool,
    timeout_s: float = 10,
    first: float | None = None,
) -> float:
    """Take a slot or fail. Returns the seconds spent waiting. ``first``: what a ``take`` just
    answered (0: the slot is taken), where the first try was made with another read."""
    deadline = time.monotonic() + timeout_s
    waited = 0.0
    while True:
        free_in = take(account_id, broker_code, kind, limits) if first is None else first
        first = None
        if free_in <= 0:
            metrics.rate_budget_waited(broker_code, kind, waited)
            return waited
        if not wait or time.monotonic() + free_in > deadline:
            metrics.rate_budget_exhausted(broker_code, kind)
            raise RateLimited(f"rate budget for {kind} calls is used up", retry_after=free_in)
        time.sleep(free_in)
        waited += free_in
