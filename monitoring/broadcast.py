"""Push rendered fragments to a user's websocket group, after the transaction commits.

Sending is fire-and-forget through one event loop thread per process, so a request or a
task never waits on Redis for a push and never builds an event loop per message
(``async_to_sync`` does both, which cost ~10 ms a push). A push that fails is logged;
a page that missed one resynchronises when its websocket reconnects.
"""

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
from collections.abc import Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.core.cache import cache
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from . import presence
from .consumers import MARKET_GROUP, session_tag, user_group

logger = logging.getLogger(__name__)


class _Sender:
    def __init__(self):
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._pid = None
        self._in_flight: set[concurrent.futures.Future] = set()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            # A forked child (a prefork worker) has the loop but not its thread: start its own.
            if self._loop is None or self._loop.is_closed() or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="channel-layer-sender", daemon=True).start()
                self._loop, self._pid, self._in_flight = loop, os.getpid(), set()
            return self._loop

    def group_send(self, group: str, message: dict) -> None:
        layer = get_channel_layer()
        if isinstance(layer, InMemoryChannelLayer):
            # In-process queues belong to the consumers' loop: hand over directly.
            async_to_sync(layer.group_send)(group, message)
            return
        future = asyncio.run_coroutine_threadsafe(layer.group_send(group, message), self._running_loop())
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._sent)

    def _sent(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._in_flight.discard(future)
        if future.exception() is not None:
            logger.warning("websocket push failed: %r", future.exception())

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait for the pushes still being sent; False if some were not sent within ``timeout_s``.

        Run at exit: the sender's thread is a daemon, so a short-lived process (a management
        command, a script) would otherwise end before its last pushes left.
        """
        with self._lock:
            in_flight = list(self._in_flight) if self._pid == os.getpid() else []
        return not concurrent.futures.wait(in_flight, timeout=timeout_s).not_done


_sender = _Sender()
atexit.register(_sender.flush)


# Kept in the shared cache, not in each process: a trader who changes their timezone sees their pages
# in it at once, and every process's pushes must follow (``user_timezone_forget``), not the old one
# for as long as each process would keep it.
TIMEZONE_KEEP_S = 60


def _timezone_key(user_id: int) -> str:
    return f"push-timezone:{user_id}"


def _user_timezone(user_id: int) -> ZoneInfo:
    """The user's timezone, remembered for a minute (pushes render times as the pages do)."""
    name = cache.get(_timezone_key(user_id))
    if name is None:
        from accounts.models import User

        name = User.objects.filter(pk=user_id).values_list("timezone", flat=True).first() or "Asia/Kolkata"
        cache.set(_timezone_key(user_id), name, TIMEZONE_KEEP_S)
    try:
        return ZoneInfo(name)
    except ZoneInfoNotFoundError:
        return ZoneInfo("Asia/Kolkata")


def user_timezone_forget(user_id: int) -> None:
    """The user's timezone was saved: every process's next push reads it again (after commit).

    Never raises, as ``user_sockets_close``: a save of the user (a profile, a deactivation in the
    admin) must not fail because Redis is down; the old timezone then lasts ``TIMEZONE_KEEP_S``."""

    def forget():
        try:
            cache.delete(_timezone_key(user_id))
        except Exception:
            logger.warning("forgetting the timezone of user %s failed", user_id, exc_info=True)

    transaction.on_commit(forget)


def push_fragment(*, user_id: int, template: str, context: dict | Callable[[], dict | None]) -> None:
    """Render ``template`` (a fragment with a stable id) in the user's timezone and send it after commit.

    ``context``: a callable is called then, after commit, to read what the fragment shows as the
    database holds it (as a reload of the page would read it); None from it sends nothing.

    Only to a user with a page open (``presence``): an algo trading through the API with no page
    open costs no render per order. A page opened later renders the current state itself.

    Never raises: outside a transaction the push is made at once, inside the caller (an order's
    placement, its broker's answer just recorded), which must not fail because Redis is out for a
    moment or a fragment does not render (it is logged; the page catches up when it reconnects).
    """

    def send():
        try:
            if not presence.watching([user_id]):
                return
            values = context() if callable(context) else context
            if values is None:
                return
            with timezone.override(_user_timezone(user_id)):
                html = render_to_string(template, values)
            _sender.group_send(user_group(user_id), {"type": "fragment.push", "html": html})
        except Exception:
            logger.warning("pushing %s to user %s failed", template, user_id, exc_info=True)

    transaction.on_commit(send)


def push_prices(prices: dict[str, dict]) -> None:
    """Send one coalesced price tick ({instrument id: {last, change, pct}}) to subscribed pages, after commit."""
    transaction.on_commit(lambda: _sender.group_send(MARKET_GROUP, {"type": "prices.tick", "prices": prices}))


def user_sockets_close(*, user_id: int, session_key: str | None = None) -> None:
    """Close the user's open websockets after commit: those of ``session_key`` (a logout), else all.

    Never raises: a logout or a save of the user must not fail because Redis is down (it is logged).
    """
    event = {"type": "session.end", "session": session_tag(session_key) if session_key else None}

    def send():
        try:
            _sender.group_send(user_group(user_id), event)
        except Exception:
            logger.warning("closing the websockets of user %s failed", user_id, exc_info=True)

    transaction.on_commit(send)
