"""The per-user websocket: live fragments pushed to ``user.<id>``, and live prices."""

import asyncio
import hashlib
import json
import logging
from importlib import import_module

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.template.loader import render_to_string
from django.utils.crypto import constant_time_compare

from tradingplatform import metrics

from . import presence

MARKET_GROUP = "market"
MAX_PRICE_SUBSCRIPTIONS = 500
SESSION_RECHECK_S = 300  # an open socket reads its session again at least this often (and at its expiry)

logger = logging.getLogger(__name__)


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def session_user_pk(data: dict) -> str | None:
    """The pk (as text) of the user a session's data signs in, as a request would find it: none
    when the session is gone, or its user deleted, deactivated, or their password changed since
    (the session's hash no longer theirs). Reads only: the session is left as it is."""
    backend_path = data.get(BACKEND_SESSION_KEY)
    if data.get(SESSION_KEY) is None or backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    try:
        user_id = get_user_model()._meta.pk.to_python(data[SESSION_KEY])
    except Exception:
        return None
    user = load_backend(backend_path).get_user(user_id)  # None for an inactive user too
    if user is None:
        return None
    session_hash = data.get(HASH_SESSION_KEY)
    if not session_hash:
        return None
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    if not any(constant_time_compare(session_hash, known) for known in hashes):
        return None
    return str(user.pk)


def session_tag(session_key: str) -> str:
    """How a ``session.end`` event names a session: a hash, so no live session key goes through Redis."""
    return hashlib.sha256(session_key.encode()).hexdigest()[:32]


class UserConsumer(AsyncWebsocketConsumer):
    """Accepts only signed-in users and joins them to their own group.

    Events sent to the user's group carry rendered template fragments
    (``fragment.push``); the htmx ws extension swaps them into the page by their ids.
    A page showing prices sends ``{"subscribe": [instrument ids]}``; the consumer then
    joins the public ``market`` group (prices are market data, not user data) and
    forwards the subscribed instruments' price cells from each coalesced tick.

    The user is checked only on connect, so a ``session.end`` event (a logout, a deactivation,
    a password change) closes the socket. The htmx ws extension does not reconnect after a 4xxx
    close; the page's next load connects again if its session is still good. A session that
    ends otherwise (it expires, or is dropped by a sign-in as someone else), or whose ``session.end``
    was lost (Redis out as it was sent), is noticed by reading it again, and its user as a request
    would (still active, the same password), at its expiry and every ``SESSION_RECHECK_S``; each
    read that finds it good joins the socket to its groups and to ``presence`` again, as both forget
    a member a day after it joined.
    """

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Accepted to be closed at once with 4401, never joined: refused at the handshake (a 403),
            # a browser sees an abnormal close (1006), which htmx's ws extension tries again every few
            # seconds for as long as the page is open, and the page is never told its sign-in ended.
            await self.accept()
            await self.close(code=4401)
            return
        self.group = user_group(user.pk)
        self.session = session_tag(self.scope["session"].session_key)
        self.price_ids: set[str] = set()
        await self.channel_layer.group_add(self.group, self.channel_name)
        await sync_to_async(presence.joined)(user.pk, self.channel_name)
        await self.accept()
        metrics.websocket_opened(self)
        self.session_watch = asyncio.ensure_future(self._close_when_session_ends())

    async def disconnect(self, code):
        metrics.websocket_closed(self)
        if getattr(self, "session_watch", None) is not None:
            self.session_watch.cancel()
        if hasattr(self, "group"):
            await sync_to_async(presence.left)(self.scope["user"].pk, self.channel_name)
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await self.channel_layer.group_discard(MARKET_GROUP, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        # Commands go through HTTP with CSRF; the socket only takes price subscriptions.
        if not hasattr(self, "group"):
            return  # a socket without a signed-in user, being closed
        try:
            message = json.loads(text_data or "{}")
        except (ValueError, RecursionError):  # RecursionError: nested too deep to read
            return
        ids = message.get("subscribe") if isinstance(message, dict) else None
        if ids is None:
            return
        ids = [ids] if isinstance(ids, str | int) else ids
        if not isinstance(ids, list):
            return  # not a list of ids (a number with a fraction, an object): ignored
        self.price_ids = {str(i) for i in ids if str(i).isdigit()}
        self.price_ids = set(sorted(self.price_ids)[:MAX_PRICE_SUBSCRIPTIONS])
        if self.price_ids:
            await self.channel_layer.group_add(MARKET_GROUP, self.channel_name)
        else:
            await self.channel_layer.group_discard(MARKET_GROUP, self.channel_name)

    async def _close_when_session_ends(self):
        session = self.scope["session"]
        store = import_module(settings.SESSION_ENGINE).SessionStore
        key, user_pk = session.session_key, str(self.scope["user"].pk)
        # Read at once too: a session that ended after the socket's user was read, before it joined
        # its group, sent its ``session.end`` to no one (the socket would stay open until a recheck).
        first, delay = True, 0
        while True:
            if not first:
                await asyncio.sleep(min(max(delay, 1), SESSION_RECHECK_S))
            just_joined, first = first, False
            fresh = store(key)
            try:
                data = await database_sync_to_async(fresh.load)()  # {} once expired or deleted
                signed_in = await database_sync_to_async(session_user_pk)(data)
            except Exception:  # the store is down: the socket stays, read again later
                logger.warning("websocket: could not read its session", exc_info=True)
                delay = SESSION_RECHECK_S
                continue
            if signed_in != user_pk:
                await self.close(code=4401)
                return
            delay = fresh.get_expiry_age(expiry=data.get("_session_expiry"))
            if just_joined:
                continue
            try:
                await self._join_again()
            except Exception:  # Redis is down: joined at the next read (this watch must go on)
                logger.warning("websocket: could not join its groups again", exc_info=True)

    async def _join_again(self):
        # The channel layer drops a group's member (group_expiry) and the presence set expires a day
        # after the join: a page open longer would stop getting its pushes, with nothing to show it.
        await self.channel_layer.group_add(self.group, self.channel_name)
        if self.price_ids:
            await self.channel_layer.group_add(MARKET_GROUP, self.channel_name)
        await sync_to_async(presence.joined)(self.scope["user"].pk, self.channel_name)

    async def fragment_push(self, event):
        await self.send(text_data=event["html"])

    async def session_end(self, event):
        # Names a session on a logout; names none (every session of the user) otherwise.
        if event.get("session") in (None, self.session):
            await self.close(code=4401)

    async def prices_tick(self, event):
        rows = [(pk, price) for pk, price in event["prices"].items() if pk in self.price_ids]
        if rows:
            html = render_to_string("brokers/partials/price_push.html", {"rows": rows})
            await self.send(text_data=html)
