"""The session manager and the other broker-layer writes.

``session_live(account)`` is how everything gets a session: a cached valid one when
there is one, else the active row from the database, else a new login (for brokers
that allow it unattended). Logging in happens under a per-account Redis lock, and a
caller whose call failed with ``AuthError`` asks ``session_renew(account, failed=...)``,
which logs in again only if nobody else already did: two workers never log in for the
same account at once, and a burst of failures causes one login, not many.
Every login, renewal, expiry and failure is written to the audit log.
"""

import contextlib
import contextvars
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from accounts.crypto import Sealed
from accounts.models import AuditLog, BrokerAccount
from accounts.services import audit_record
from monitoring.broadcast import push_prices
from tradingplatform import locks
from tradingplatform.memo import Memo

from . import ratelimit, registry, selectors
from .base import Broker, BrokerOrder, SessionTokens
from .errors import AuthError, BrokerError, BrokerUnavailable
from .models import BrokerSession

logger = logging.getLogger(__name__)
Action = AuditLog.Action
LOGIN_LOCK_TTL_S = 60
LOGIN_LOCK_WAIT_S = 30


@dataclass(frozen=True)
class LiveSession:
    """What a broker call needs: the session row's id and its access token."""

    session_id: int
    access_token: str
    expires_at: datetime

    def __repr__(self):
        return f"LiveSession(session_id={self.session_id}, expires_at={self.expires_at!r})"


def _cache_key(account_id: int) -> str:
    return f"brokersession:{account_id}"


def adapter_for(account: BrokerAccount, access_token: str | None = None) -> Broker:
    """A fresh adapter instance for an account (credentials revealed only here)."""
    credentials = account.credentials.reveal() if account.credentials else {}
    return registry.get(account.broker)(client_id=account.client_id, credentials=credentials, access_token=access_token)


def _as_live(session: BrokerSession) -> LiveSession:
    return LiveSession(
        session_id=session.pk, access_token=session.tokens.reveal()["access_token"], expires_at=session.expires_at
    )


def _cached_form(session: BrokerSession) -> dict:
    # The cache holds the sealed token, never the plaintext.
    return {"id": session.pk, "tokens": session.tokens.token, "expires_at": session.expires_at.timestamp()}


# A sealed token always opens to the same access token, so each is opened once per process, not
# on every broker call. Which session is live is still asked of the cache on every call (an ended
# session stops at once); this only remembers what a given ciphertext says, for a few minutes.
_opened_tokens = Memo("opened session tokens", ttl_s=300)


def _from_cache(cached: dict) -> LiveSession:
    sealed = cached["tokens"]
    return LiveSession(
        session_id=cached["id"],
        access_token=_opened_tokens.get(sealed, lambda: Sealed(sealed).reveal()["access_token"]),
        expires_at=datetime.fromtimestamp(cached["expires_at"], tz=UTC),
    )


def _remember(account_id: int, session: BrokerSession) -> LiveSession:
    live = _as_live(session)
    ttl = min(settings.BROKER_SESSION_CACHE_TTL_S, max(1, int((session.expires_at - timezone.now()).total_seconds())))
    cache.set(_cache_key(account_id), _cached_form(session), timeout=ttl)
    _forget_ended({_cache_key(account_id): session.pk})
    return live


def _forget_ended(cached: dict[str, int]) -> None:
    """Drop from the cache those just put there ({key: session id}) whose session ended meanwhile:
    its end forgot it before they were set (a disconnect, new credentials), and every call would
    use it until the entry's timeout. Asked after the set, so an end after the ask forgets it."""
    if not cached:
        return
    active = set(
        BrokerSession.objects.filter(pk__in=cached.values(), status=BrokerSession.Status.ACTIVE).values_list(
            "pk", flat=True
        )
    )
    ended = [key for key, session_id in cached.items() if session_id not in active]
    if ended:
        cache.delete_many(ended)


def _forget(account_id: int) -> None:
    cache.delete(_cache_key(account_id))


def sessions_forget() -> None:
    """Drop every live session the cache remembers (their rows were sealed again: a key rotation),
    so that none is read sealed with a key about to be dropped; the next call reads its row."""
    live = BrokerSession.objects.filter(status=BrokerSession.Status.ACTIVE).values_list("account_id", flat=True)
    cache.delete_many([_cache_key(account_id) for account_id in live])


def _active(account_id: int) -> BrokerSession | None:
    return BrokerSession.objects.filter(account_id=account_id, status=BrokerSession.Status.ACTIVE).first()


def _end(session: BrokerSession, status: str, error: str = "") -> bool:
    """End an active session (conditional update: only one caller wins)."""
    ended = BrokerSession.objects.filter(pk=session.pk, status=BrokerSession.Status.ACTIVE).update(
        status=status, active_for=None, ended_at=timezone.now(), last_error=error[:1000]
    )
    _forget(session.account_id)
    return bool(ended)


def session_live(account: BrokerAccount) -> LiveSession:
    """A live session for the account, logging in unattended when needed and allowed.

    Raises ``AuthError`` when the account needs the trader to (re)connect, or is inactive.
    """
    if not account.is_active:
        raise AuthError("The broker account is deactivated.")
    cached = cache.get(_cache_key(account.pk))
    now = timezone.now()
    if cached and cached["expires_at"] > now.timestamp():
        return _from_cache(cached)
    session = _active(account.pk)
    if session is not None and session.expires_at > now:
        return _remember(account.pk, session)
    if session is not None:
        session_expire(session=session)
    return session_renew(account, failed_session_id=session.pk if session else None)


def session_cached_taking(
    account: BrokerAccount, kind: str, limits: list[tuple[int, float]], *, wait: bool, timeout_s: float
) -> tuple[LiveSession | None, float | None]:
    """A slot of the account's rate budget for ``kind`` calls (``ratelimit.acquire``) taken in the
    round trip that reads its cached session: a broker call needs both. Returns the session (None:
    not cached, or expired: ``session_live`` finds it) and the seconds spent waiting, or (None,
    None) when nothing was taken (no cached session, or no Redis): then take it as usual."""
    cached, waited = ratelimit.acquire_if_cached(
        _cache_key(account.pk), account.pk, account.broker, kind, limits, wait=wait, timeout_s=timeout_s
    )
    if cached and cached["expires_at"] > timezone.now().timestamp():
        return _from_cache(cached), waited
    return None, waited


def sessions_live(accounts: list[BrokerAccount]) -> dict[int, LiveSession]:
    """``session_live`` for many accounts at once: the cached sessions in one cache read, the
    rest in one query ({account id: session}). Accounts left out (inactive, no live session)
    go through ``session_live`` one by one when used, which logs in or says why not.
    """
    now = timezone.now().timestamp()
    wanted = {_cache_key(a.pk): a.pk for a in accounts if a.is_active}
    live = {}
    for key, cached in cache.get_many(list(wanted)).items():
        if cached and cached["expires_at"] > now:
            live[wanted[key]] = _from_cache(cached)
    missing = [pk for pk in wanted.values() if pk not in live]
    if missing:
        fresh = {}
        for session in BrokerSession.objects.filter(account_id__in=missing, status=BrokerSession.Status.ACTIVE):
            if session.expires_at.timestamp() > now:
                live[session.account_id] = _as_live(session)
                fresh[_cache_key(session.account_id)] = _cached_form(session)
        cache.set_many(fresh, timeout=settings.BROKER_SESSION_CACHE_TTL_S)  # readers check expires_at
        _forget_ended({key: form["id"] for key, form in fresh.items()})
    return live


def sessions_ready(accounts: list[BrokerAccount]) -> None:
    """Log in ahead of their use the accounts that log in unattended (the paper exchange) and have
    no live session, so that a send at a due time finds them at hand (``sessions_live``). A login
    that fails is left to the call that needs the session, which meets it again and says why."""
    live = sessions_live(accounts)
    for account in accounts:
        if account.pk in live or not account.is_active or registry.get(account.broker).interactive_login:
            continue
        try:
            session_live(account)
        except BrokerError as error:
            logger.info("account %s: no session ahead of its orders (%s)", account.pk, error)


@contextlib.contextmanager
def _login_locked(account: BrokerAccount):
    """The account's login lock, for the block: every login to an account (a worker's renewal, the
    trader's Connect and its Kite callback) is made under it, so two never run at once (two
    sessions racing for the one active slot, one ending the other's just made). ``BrokerUnavailable``
    when another holds it for longer than ``LOGIN_LOCK_WAIT_S``."""
    lock = f"broker-login:{account.pk}"
    with locks.held(lock, ttl_s=LOGIN_LOCK_TTL_S, wait_s=LOGIN_LOCK_WAIT_S, keep=True) as got:
        if not got:
            raise BrokerUnavailable("Another worker is logging in to this account; try again shortly.")
        yield


def session_renew(account: BrokerAccount, *, failed_session_id: int | None, error: str = "") -> LiveSession:
    """Replace a session that failed (or is missing), once, under the account's login lock.

    If another worker renewed it while we waited for the lock, its session is returned.
    """
    with _login_locked(account):
        current = _active(account.pk)
        if current is not None and current.pk != failed_session_id and current.expires_at > timezone.now():
            return _remember(account.pk, current)
        if current is not None:
            if error:
                _end(current, BrokerSession.Status.EXPIRED, error)
                audit_record(action=Action.BROKER_SESSION_EXPIRED, target=account, data={"reason": error[:200]})
            else:
                session_expire(session=current)
        adapter = adapter_for(account)
        if adapter.interactive_login:
            raise AuthError(f"{account.label} needs you to reconnect it on the accounts page.")
        try:
            tokens = adapter.login()
        except BrokerError as exc:
            _record_failure(account, exc)
            raise
        session = _store(account, tokens)
        audit_record(
            action=Action.BROKER_SESSION_REFRESHED if failed_session_id else Action.BROKER_SESSION_LOGIN,
            target=account,
            data={"session": session.pk, "expires_at": session.expires_at.isoformat()},
        )
        return _remember(account.pk, session)


def _store(account: BrokerAccount, tokens: SessionTokens) -> BrokerSession:
    with transaction.atomic():
        for stale in BrokerSession.objects.select_for_update().filter(
            account=account, status=BrokerSession.Status.ACTIVE
        ):
            _end(stale, BrokerSession.Status.REVOKED, "replaced by a new login")
        return BrokerSession.objects.create(
            account=account,
            tokens=Sealed.seal({"access_token": tokens.access_token, "refresh_token": tokens.refresh_token}),
            status=BrokerSession.Status.ACTIVE,
            active_for=account.pk,
            broker_user_id=tokens.user_id,
            expires_at=tokens.expires_at,
            last_validated_at=timezone.now(),
        )


def _record_failure(account: BrokerAccount, exc: BrokerError, *, actor=None) -> None:
    BrokerSession.objects.create(
        account=account,
        status=BrokerSession.Status.FAILED,
        last_error=str(exc)[:1000],
        ended_at=timezone.now(),
    )
    audit_record(action=Action.BROKER_SESSION_FAILED, actor=actor, target=account, data={"error": str(exc)[:200]})
    logger.warning("broker login failed for account %s: %s", account.pk, type(exc).__name__)


def session_expire(*, session: BrokerSession, actor=None, ip: str | None = None) -> bool:
    """End a session as expired; ``actor``: who ended it (staff in admin), None for its expiry.
    One staff end is also logged out at the broker, as the trader's Disconnect is: staff end a
    session whose token may have leaked, and Kite's would be good until 06:00."""
    if _end(session, BrokerSession.Status.EXPIRED, "ended by staff" if actor is not None else "expired"):
        audit_record(
            action=Action.BROKER_SESSION_EXPIRED,
            actor=actor,
            target=session.account,
            data={"session": session.pk},
            ip=ip,
        )
        if actor is not None:
            _broker_logout(session.account, session)
        return True
    return False


def _broker_logout(account: BrokerAccount, session: BrokerSession) -> None:
    """Log ``session``'s token out at its broker, already ended here; a failure is logged, not raised."""
    try:
        adapter_for(account, session.tokens.reveal()["access_token"]).logout()
    except BrokerError:
        logger.info("broker logout failed for account %s; the session is ended here anyway", account.pk)


def sessions_expire_due() -> int:
    """Periodic: mark every active session past its expiry as expired (and say so once)."""
    due = BrokerSession.objects.filter(status=BrokerSession.Status.ACTIVE, expires_at__lte=timezone.now())
    return sum(session_expire(session=session) for session in due.select_related("account"))


SHOWN_ANY = object()  # ``session_connect``'s ``replaces`` not given: whatever session is live


def session_connect(*, account: BrokerAccount, actor, replaces: int | None | object = SHOWN_ANY) -> LiveSession | None:
    """The trader's Connect / Reconnect for an unattended broker: log in now (under the login lock).

    ``replaces``: the live session the trader's page showed (its id, None for none). A live session
    made since (the same form's first send: a double click, another tab; a worker's renewal) is
    kept and None returned: logging in again would end the session just made, not the one the
    trader meant to replace."""
    with _login_locked(account):
        current = _active(account.pk)
        if (
            replaces is not SHOWN_ANY
            and current is not None
            and current.pk != replaces
            and current.expires_at > timezone.now()
        ):
            return None
        if current is not None:
            _end(current, BrokerSession.Status.REVOKED, "replaced by a reconnect")
        return _logged_in(account, actor, adapter_for(account).login)


def _logged_in(account: BrokerAccount, actor, login) -> LiveSession:
    """The account's session from ``login()`` (an adapter's login, under the login lock), stored
    and audited; its failure recorded before it is raised."""
    try:
        tokens = login()
    except BrokerError as exc:
        _record_failure(account, exc, actor=actor)
        raise
    session = _store(account, tokens)
    audit_record(action=Action.BROKER_SESSION_LOGIN, actor=actor, target=account, data={"session": session.pk})
    return _remember(account.pk, session)


# --- Interactive (Kite-style) login ------------------------------------------------------


def _state_signature(csrf_secret: str, nonce: str, account_id: int) -> str:
    key = f"{settings.SECRET_KEY}:{csrf_secret}".encode()
    return hmac.new(key, f"{nonce}:{account_id}".encode(), "sha256").hexdigest()[:32]


def connect_state_issue(*, account: BrokerAccount, csrf_secret: str, pending: dict) -> str:
    """A one-time ``state`` for the broker redirect, bound to this browser's CSRF secret.

    ``pending`` is the caller's session storage; the nonce is kept there until used.
    """
    nonce = secrets.token_urlsafe(16)
    pending[nonce] = {"account": account.pk, "at": timezone.now().timestamp()}
    return f"{nonce}.{_state_signature(csrf_secret, nonce, account.pk)}"


def connect_state_check(*, state: str, csrf_secret: str, pending: dict) -> int | None:
    """The account id the state was issued for, or None when forged, replayed or stale."""
    nonce, _, signature = (state or "").partition(".")
    entry = pending.pop(nonce, None)
    if entry is None or timezone.now().timestamp() - entry["at"] > 900:
        return None
    expected = _state_signature(csrf_secret, nonce, entry["account"])
    return entry["account"] if hmac.compare_digest(expected.encode(), signature.encode()) else None


def connect_login_url(*, account: BrokerAccount, state: str) -> str:
    return adapter_for(account).login_url(state=state)


def _check_login_user(account: BrokerAccount, tokens: SessionTokens, adapter: Broker) -> None:
    """Refuse a login as another broker user than the account's client id: stored, its session
    would trade in someone else's account. Its token is logged out, as it is never used."""
    logged_in = (tokens.user_id or "").strip()
    if logged_in.casefold() == account.client_id.strip().casefold():
        return
    try:
        adapter.logout()
    except BrokerError:
        logger.info("could not log out the refused login for account %s", account.pk)
    raise AuthError(
        f"You logged in to the broker as {logged_in or 'an unknown user'}, but this account is"
        f" {account.client_id}. Log in as {account.client_id} to connect it."
    )


def connect_complete(*, account: BrokerAccount, request_token: str, actor) -> LiveSession:
    """Exchange the broker's one-time request token for a session (the callback). An account
    deactivated since the trader went to the broker's login page gets none."""
    with _login_locked(account):
        account.refresh_from_db(fields=["is_active"])
        if not account.is_active:
            raise AuthError("The broker account is deactivated.")
        adapter = adapter_for(account)

        def login():
            tokens = adapter.complete_login(request_token=request_token)
            _check_login_user(account, tokens, adapter)
            return tokens

        return _logged_in(account, actor, login)


def session_revoke(account: BrokerAccount, *, reason: str) -> bool:
    """End the account's live session here, not at the broker (its credentials changed: the old
    token is not theirs, and a logout would go with the new ones). Returns whether one was live."""
    current = _active(account.pk)
    return current is not None and _end(current, BrokerSession.Status.REVOKED, reason)


def session_disconnect(*, account: BrokerAccount, actor) -> bool:
    current = _active(account.pk)
    if current is None:
        return False
    # Ended here before its token is logged out at the broker: a call in flight with it then fails
    # on a session already ended (its renewal finds none to end), not on one it would end as
    # "expired" before this end, which then found nothing to end (no word of the disconnect).
    if not _end(current, BrokerSession.Status.REVOKED, "disconnected by the trader"):
        return False
    audit_record(action=Action.BROKER_SESSION_LOGOUT, actor=actor, target=account)
    _broker_logout(account, current)
    return True


# --- Reads for pages ---------------------------------------------------------------------


@dataclass(frozen=True)
class SessionState:
    state: str  # none, active, expiring, expired, failed
    label: str
    expires_at: datetime | None = None
    reason: str = ""
    live_id: int | None = None  # the account's active session row, shown or not (what Reconnect replaces)


def session_states(accounts) -> dict[int, SessionState]:
    """The session state of each account, for the accounts page (two queries in all)."""
    ids = [account.pk for account in accounts]
    now = timezone.now()
    warn = now + timedelta(seconds=settings.BROKER_SESSION_WARN_S)
    latest: dict[int, BrokerSession] = {}
    live_ids: dict[int, int] = {}
    for session in BrokerSession.objects.filter(account_id__in=ids).order_by("account_id", "-created_at", "-id"):
        shown = latest.setdefault(session.account_id, session)
        if session.status == BrokerSession.Status.ACTIVE:
            live_ids.setdefault(session.account_id, session.pk)
        # The live session, if any, over a later failed login (a reconnect that failed leaves it
        # trading): the page says what the account trades on, the failure was said as a message.
        live = session.status == BrokerSession.Status.ACTIVE and session.expires_at > now
        if live and shown.status != BrokerSession.Status.ACTIVE:
            latest[session.account_id] = session
    states = {}
    for account_id in ids:
        session = latest.get(account_id)
        if session is None:
            states[account_id] = SessionState("none", "Not connected")
        elif session.status == BrokerSession.Status.ACTIVE and session.expires_at > warn:
            states[account_id] = SessionState("active", "Connected", session.expires_at)
        elif session.status == BrokerSession.Status.ACTIVE and session.expires_at > now:
            states[account_id] = SessionState("expiring", "Expiring soon", session.expires_at)
        elif session.status == BrokerSession.Status.FAILED:
            states[account_id] = SessionState("failed", "Login failed", None, session.last_error)
        elif session.status == BrokerSession.Status.REVOKED:
            states[account_id] = SessionState("none", "Disconnected", session.ended_at, session.last_error)
        else:
            states[account_id] = SessionState("expired", "Expired", session.expires_at, session.last_error)
    return {account_id: replace(state, live_id=live_ids.get(account_id)) for account_id, state in states.items()}


# --- Instruments ---------------------------------------------------------------------------


def instruments_load(rows) -> tuple[int, int]:
    """Upsert broker instrument rows (``InstrumentInfo``) by exchange and symbol. Returns (created, updated).

    Rows with no tick or no lot (Kite's indices: segment INDICES, tick 0, lot 0) cannot be
    ordered and are left out, so that they do not make the whole refresh fail.
    """
    from .models import Instrument

    given = list(rows)
    rows = [row for row in given if row.tick_size > 0 and row.lot_size > 0]
    if len(rows) < len(given):
        logger.info("instruments: %d rows with no tick or lot size left out", len(given) - len(rows))
    existing = {
        (i.exchange, i.tradingsymbol): i
        for i in Instrument.objects.filter(tradingsymbol__in={row.tradingsymbol for row in rows})
    }
    now = timezone.now()
    fields = [
        "name",
        "segment",
        "instrument_type",
        "instrument_token",
        "exchange_token",
        "expiry",
        "strike",
        "tick_size",
        "lot_size",
        "updated_at",
    ]
    create, update = [], []
    for row in rows:
        values = {
            "name": row.name,
            "segment": row.segment,
            "instrument_type": row.instrument_type,
            "instrument_token": row.instrument_token,
            "exchange_token": row.exchange_token,
            "expiry": row.expiry,
            "strike": row.strike,
            "tick_size": row.tick_size,
            "lot_size": row.lot_size,
            "updated_at": now,
        }
        instrument = existing.get((row.exchange, row.tradingsymbol))
        if instrument is None:
            create.append(
                Instrument(
                    exchange=row.exchange,
                    tradingsymbol=row.tradingsymbol,
                    last_price=row.last_price,
                    previous_close=row.last_price,
                    **values,
                )
            )
        else:
            for name, value in values.items():
                setattr(instrument, name, value)
            update.append(instrument)
    with transaction.atomic():
        Instrument.objects.bulk_create(create, batch_size=1000)
        Instrument.objects.bulk_update(update, fields, batch_size=1000)
    transaction.on_commit(selectors.instruments_changed)  # this process; others within a minute
    return len(create), len(update)


# --- Live prices ----------------------------------------------------------------------------


def ticks_apply(quotes) -> int:
    """A broker's price ticks: update the instruments' last prices and push them live.

    Called by a broker's feed (the paper exchange's ticker). The push is coalesced: at
    most one per ``PRICE_PUSH_INTERVAL_S``, carrying the latest prices, however many
    ticks arrive in between.
    """
    from .models import Instrument

    quotes = list(quotes)
    by_key = {(q.exchange, q.tradingsymbol): q for q in quotes}
    instruments = list(
        Instrument.objects.filter(tradingsymbol__in={q.tradingsymbol for q in quotes}).only(
            "pk", "exchange", "tradingsymbol", "last_price", "previous_close", "updated_at"
        )
    )
    now = timezone.now()
    changed = []
    for instrument in instruments:
        quote = by_key.get((instrument.exchange, instrument.tradingsymbol))
        # A last price of zero (no trade yet) or below is no price: the instrument keeps its last
        # one (a zero reads as "no price" to the order value limit, a negative one passes it).
        if quote is None or not quote.last_price > 0:
            continue
        instrument.last_price = quote.last_price
        if quote.close and quote.close > 0:
            instrument.previous_close = quote.close
        instrument.updated_at = now
        changed.append(instrument)
    Instrument.objects.bulk_update(changed, ["last_price", "previous_close", "updated_at"], batch_size=1000)
    # 90% of the interval, so a tick arriving on the interval's edge is not skipped.
    if changed and locks.acquire("prices:push", ttl_s=settings.PRICE_PUSH_INTERVAL_S * 0.9):
        push_prices({str(i.pk): i.price_cells for i in changed})
    return len(changed)


# --- Order updates pushed by brokers (paper changes, Kite postbacks) -----------------------------

# Called with (account, BrokerOrder, fills_follow) when a broker tells us the new state of one of
# the account's orders; the orders app registers its fast path here (brokers does not import
# orders). ``fills_follow``: the broker hands us the fills themselves too (the fill listeners
# get them right after), so nothing needs to fetch them.
order_update_listeners: list = []

# Called with an account id when the account needs a whole monitoring run soon (we placed,
# modified or cancelled at a broker that does not tell us what became of it, or a strategy
# order changed); the monitoring app registers its debounced run here.
account_activity_listeners: list = []


def account_touched(account_id: int) -> None:
    """The account needs its monitoring steps run soon: tell the listeners."""
    for listener in account_activity_listeners:
        listener(account_id)


# Called with [(account, [BrokerTrade])] when a broker hands us fills as they happen (the paper
# exchange does, after each fill's commit, for the changes gathered while the last ones were told:
# ``broker_orders_update``), so a busy process records many in one transaction; the portfolio app
# registers its fast path here.
fill_listeners: list = []


# Called with (account, [BrokerTrade]) for the fills a broker's answer to a placement carries
# (``PlacedOrder.fills``: the broker leaves them to the placer), before the placer's transaction
# that records the answer; each returns a callable the placer runs inside that transaction, which
# records them there. The portfolio app registers its recorder here.
placed_fill_recorders: list = []


def placed_fills_recorder(account: BrokerAccount, fills) -> Callable[[], None] | None:
    """What records the fills of a placement's answer inside the placer's transaction (run it
    there), or None when no app records fills. Prepares what must come before that transaction
    now. If the callable raises, the placer rolls back and lets the broker's word go
    (``PlacedOrder.untold``)."""
    recorders = [make(account, list(fills)) for make in placed_fill_recorders]
    if not recorders:
        return None

    def record() -> None:
        for recorder in recorders:
            recorder()

    return record


# A broker's client id -> our active accounts on it, read on every fill and order update. A
# minute stale is harmless here: these only hurry work that each account's monitoring cycle does
# anyway (an account deactivated in another process has its fills recorded for a minute more).
# None found is not remembered (a just-connected account is seen at once), and this process
# forgets them all when it changes an account (``client_accounts_forget``). The accounts are shared
# between threads: read them, never change them.
_client_accounts = Memo("accounts of a broker client", ttl_s=60)


def client_accounts_forget() -> None:
    """An account was added, changed or (de)activated in this process: read its client's accounts again."""
    _client_accounts.clear()


def _accounts_of_client(broker: str, client_id: str) -> list[BrokerAccount]:
    return _accounts_of_clients(broker, [client_id]).get(client_id, [])


def _accounts_of_clients(broker: str, client_ids) -> dict[str, list[BrokerAccount]]:
    """{client id: its active accounts} for the clients that have any; those not in the memo read
    in one query. A client id is matched as the database matches it (MariaDB: whatever its case, as
    a broker may spell it)."""

    def load(keys):
        wanted = [client_id for _broker, client_id in keys]
        accounts = list(
            BrokerAccount.objects.filter(broker=broker, client_id__in=wanted, is_active=True).select_related("owner")
        )
        found = {}
        for client_id in wanted:
            same = [a for a in accounts if a.client_id == client_id]
            found[(broker, client_id)] = same or [a for a in accounts if a.client_id.lower() == client_id.lower()]
        return {key: held for key, held in found.items() if held}

    held = _client_accounts.get_many([(broker, client_id) for client_id in client_ids], load)
    return {client_id: accounts for (_broker, client_id), accounts in held.items()}


def broker_order_update(*, broker: str, client_id: str, order: BrokerOrder, fills: list | None = None) -> int:
    """A broker told us an order of this client changed (its state now) and, if it hands them over,
    the fills of that change: the order listeners first (so our order has its broker id when the
    fills are recorded and linked to it), then the fill listeners, for each of the client's accounts.
    Returns how many accounts that was."""
    accounts = _order_told(broker, client_id, order, fills)
    _fills_tell([(account, fills) for account in accounts] if fills else [])
    return len(accounts)


def broker_orders_update(
    *, broker: str, changes: list[tuple[contextvars.Context, str, BrokerOrder, list | None]]
) -> None:
    """Several such changes at once, in the order they happened (the paper exchange's, gathered
    while the last ones were told): each order's state in the context of the request or task that
    made the change (its log lines keep that id), then every change's fills to the fill listeners
    in one call (one transaction for them all). A change that fails is logged and the others still
    go: the account's next monitoring run reconciles what it would have told."""
    fills_told = []
    _accounts_of_clients(broker, [client_id for _context, client_id, _order, _fills in changes])  # in one query
    for context, client_id, order, fills in changes:
        try:
            accounts = context.run(_order_told, broker, client_id, order, fills)
        except Exception:
            logger.exception("%s: telling the platform of order %s failed", broker, order.broker_order_id)
            continue
        if fills:
            fills_told.extend((account, fills) for account in accounts)
    _fills_tell(fills_told)


def _order_told(broker: str, client_id: str, order: BrokerOrder, fills: list | None) -> list[BrokerAccount]:
    accounts = _accounts_of_client(broker, client_id)
    for account in accounts:
        for listener in order_update_listeners:
            listener(account, order, fills is not None)
    return accounts


def _fills_tell(fills: list[tuple[BrokerAccount, list]]) -> None:
    """Hand the fills to the fill listeners at once, in the order they were told, by account."""
    by_account: dict[int, tuple[BrokerAccount, list]] = {}
    for account, trades in fills:
        by_account.setdefault(account.pk, (account, []))[1].extend(trades)
    if by_account:
        for listener in fill_listeners:
            listener(list(by_account.values()))


def kite_postback_verify(body: dict) -> BrokerAccount:
    """The Kite account a postback is for, if its checksum is right; else PermissionError.

    Kite signs postbacks with SHA-256(order_id + order_timestamp + api_secret).
    """
    import hashlib

    account = BrokerAccount.objects.filter(
        broker="kite", client_id=str(body.get("user_id") or ""), is_active=True
    ).first()
    if account is None or account.credentials is None:
        raise PermissionError("no such Kite account")
    secret = account.credentials.reveal().get("api_secret", "")
    expected = hashlib.sha256(f"{body.get('order_id')}{body.get('order_timestamp')}{secret}".encode()).hexdigest()
    # Compared as bytes: ``compare_digest`` refuses str with non-ASCII characters (a TypeError, a 500).
    if not hmac.compare_digest(expected.encode(), str(body.get("checksum") or "").encode()):
        raise PermissionError("bad checksum")
    return account
