"""Writes and rules for users, broker accounts, API keys, logins and the audit log."""

import functools
import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.apps import apps
from django.conf import settings
from django.contrib.auth import authenticate
from django.core import signing
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, IntegrityError, transaction
from django.utils import timezone

from brokers import ratelimit, registry
from tradingplatform import memo

from .crypto import EncryptedJSONField, Sealed
from .models import ApiKey, AuditLog, BrokerAccount, User

logger = logging.getLogger(__name__)

Action = AuditLog.Action


# --- Audit -------------------------------------------------------------------------


def audit_record(*, action: str, actor=None, target=None, data: dict | None = None, ip: str | None = None) -> AuditLog:
    return AuditLog.objects.create(
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        target_type=target._meta.label_lower if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        data=data or {},
        ip=ip,
    )


# --- Login and its throttle -----------------------------------------------------------


class LoginLocked(Exception):
    def __init__(self, retry_after_s: int):
        self.retry_after_s = retry_after_s
        minutes = max(1, -(-retry_after_s // 60))
        super().__init__(f"Too many failed login attempts. Try again in {minutes} minute{'s' if minutes != 1 else ''}.")


class LoginFailed(Exception):
    pass


KNOWN_DEVICE_SALT = "accounts.known-device"


def known_device_token(user: User) -> str:
    """What a browser that just signed in as ``user`` keeps (``settings.KNOWN_DEVICE_COOKIE``): its
    later sign-ins as that user are held back only by its own failures (``_throttle_keys``)."""
    return signing.dumps({"u": user.pk, "d": secrets.token_urlsafe(12)}, salt=KNOWN_DEVICE_SALT)


def _known_device(token: str | None, user_id: int | None) -> str | None:
    """The browser's id in a known-device token that is valid for this user, else None."""
    if not token or user_id is None:
        return None
    try:
        data = signing.loads(token, salt=KNOWN_DEVICE_SALT, max_age=settings.KNOWN_DEVICE_MAX_AGE_S)
    except signing.BadSignature:  # forged, another key's, or expired
        return None
    return data.get("d") if isinstance(data, dict) and data.get("u") == user_id else None


def _throttle_keys(username: str, ip: str | None, device_token: str | None = None) -> list[tuple[str, int]]:
    """The failure counters a login with this username from this IP counts on.

    A username that signs in to a user counts on that user's counter: the database finds the user
    as its collation matches names (MariaDB takes "TRÂDER" or "trâder" for "trader"), so a counter
    per spelling would let a guesser rotate spellings and never be locked out. A browser that signed
    in as that user before (a valid ``device_token``) counts on its own counter only: a stranger's
    guesses at the username, or from a shared address, do not lock its trader out.
    """
    user_id = User._default_manager.filter(**{User.USERNAME_FIELD: username}).values_list("pk", flat=True).first()
    if device := _known_device(device_token, user_id):
        return [(f"login:device:{device}", settings.LOGIN_FAILURES_PER_USERNAME)]
    name = f"id:{user_id}" if user_id is not None else hashlib.sha256(username.lower().encode()).hexdigest()
    keys = [(f"login:user:{name}", settings.LOGIN_FAILURES_PER_USERNAME)]
    if ip:
        keys.append((f"login:ip:{ip}", settings.LOGIN_FAILURES_PER_IP))
    return keys


def _lock_remaining(keys: list[str]) -> int:
    """Seconds until the longest lock on these failure counters lifts (0: none is locked)."""
    now = timezone.now().timestamp()
    remaining = 0
    for key in keys:
        until = cache.get(f"{key}:locked")
        if until:
            remaining = max(remaining, int(until - now) + 1)
    return remaining


def _count_failure(key: str, limit: int, window: int) -> None:
    """One more failure on this counter (shared through the cache); at ``limit`` it locks for ``window``."""
    cache.add(key, 0, timeout=window)
    try:
        failures = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=window)
        failures = 1
    if failures >= limit:
        cache.set(f"{key}:locked", timezone.now().timestamp() + window, timeout=window)
        cache.delete(key)


def _attempted(username: str) -> dict:
    """What the audit log keeps of a sign-in's username: the user it names, or only that it names
    none. What was typed is not kept then: often a password typed into the username box (or a
    near miss of one), which every staff member reading the log would see."""
    user = User._default_manager.filter(**{User.USERNAME_FIELD: username}).first() if username else None
    if user is None:
        return {"data": {"username": None, "unknown_username": True}}
    return {"target": user, "data": {"username": user.get_username()[:150]}}


def login_attempt(
    *, username: str, password: str, ip: str | None, request=None, device_token: str | None = None
) -> User:
    """Authenticate a user, throttled per username and per IP (per browser for one that signed in
    as that user before: ``device_token``, ``_throttle_keys``).

    Raises ``LoginLocked`` while either is locked (the password is not even checked, so
    a locked account cannot be probed), ``LoginFailed`` on bad credentials.
    """
    window = settings.LOGIN_LOCK_WINDOW_S
    keys = _throttle_keys(username, ip, device_token)
    locked = _lock_remaining([key for key, _limit in keys])
    if locked:
        audit_record(action=Action.LOGIN_LOCKED, **_attempted(username), ip=ip)
        raise LoginLocked(locked)

    user = authenticate(request, username=username, password=password)
    if user is not None:
        cache.delete(keys[0][0])
        audit_record(action=Action.LOGIN, actor=user, target=user, ip=ip)
        return user

    audit_record(action=Action.LOGIN_FAILED, **_attempted(username), ip=ip)
    for key, limit in keys:
        _count_failure(key, limit, window)
    logger.info("failed login for a username from %s", ip)
    raise LoginFailed("Your username and password didn't match. Please try again.")


def logout_record(*, user, ip: str | None) -> None:
    if user is not None and user.is_authenticated:
        audit_record(action=Action.LOGOUT, actor=user, target=user, ip=ip)


# --- Profile -------------------------------------------------------------------------


def user_update_profile(*, user: User, timezone_name: str) -> User:
    user.timezone = timezone_name
    user.full_clean(validate_unique=False)
    user.save(update_fields=["timezone"])
    return user


def password_check_allowed(*, user: User, ip: str | None, device_token: str | None = None) -> None:
    """Before a signed-in user's current password is checked (the password change): ``LoginLocked``
    while the user's or the address's failed logins lock them (the browser's own, for one known to
    have signed in as the user), as on the login page. Else whoever holds a signed-in browser could
    guess the password there at will, then change it."""
    locked = _lock_remaining([key for key, _limit in _throttle_keys(user.get_username(), ip, device_token)])
    if locked:
        audit_record(action=Action.LOGIN_LOCKED, actor=user, data={"username": user.get_username()[:150]}, ip=ip)
        raise LoginLocked(locked)


def password_check_failed(*, user: User, ip: str | None, device_token: str | None = None) -> None:
    """A wrong current password on the password change: a failed login of the user and the address
    (of the browser, for a known one)."""
    audit_record(action=Action.LOGIN_FAILED, actor=user, data={"username": user.get_username()[:150]}, ip=ip)
    for key, limit in _throttle_keys(user.get_username(), ip, device_token):
        _count_failure(key, limit, settings.LOGIN_LOCK_WINDOW_S)
    logger.info("wrong current password on a password change from %s", ip)


PASSWORD_CHANGED_MEANWHILE = "Your password was changed meanwhile; enter your current password."


@transaction.atomic
def user_password_change(*, user: User, old_password: str, new_password: str, ip: str | None) -> User:
    """Change the password of ``user`` (as its request read it, the old password checked against
    that); returns the user as saved, whose hash the request's session must carry.

    Under the user's row lock: the same change sent twice at once (a double click) is one change,
    audited once. The repeat, which checked the old password before the first saved, finds the new
    one set and answers with it (its session then carries the hash the user has, not a second one
    the first request's save would leave stale). Changed meanwhile to something else: refused,
    naming ``old_password``."""
    current = User.objects.select_for_update().get(pk=user.pk)
    if current.password != user.password:
        if current.check_password(new_password):
            return current  # the same change, made already by the same form sent again
        if not current.check_password(old_password):  # (a hash upgraded meanwhile still checks)
            raise ValidationError({"old_password": PASSWORD_CHANGED_MEANWHILE})
    current.set_password(new_password)
    current.save(update_fields=["password"])
    user_password_changed(user=current, ip=ip)
    return current


def user_password_changed(*, user: User, ip: str | None, actor: User | None = None) -> None:
    """``actor``: who set it when not the user (staff in admin)."""
    audit_record(action=Action.PASSWORD_CHANGED, actor=actor or user, target=user, ip=ip)


# --- Broker accounts ---------------------------------------------------------------

ACCOUNT_EDITABLE_FIELDS = (
    "label",
    "max_order_value",
    "max_quantity",
    "max_open_orders",
    "allowed_products",
    "copy_multiplier",
)


def credentials_clean(broker: str, supplied: dict[str, str], existing: dict | None) -> dict | None:
    """Merge supplied credentials over existing ones; require what the broker needs."""
    try:
        spec = registry.spec(broker)
    except LookupError:
        raise ValidationError({"broker": f"Unknown broker {broker!r}."}) from None
    wanted = {field.name for field in spec.credential_fields}
    merged = dict(existing or {})
    merged.update(
        {name: value.strip() for name, value in supplied.items() if name in wanted and value and value.strip()}
    )
    missing = [field.name for field in spec.credential_fields if not merged.get(field.name)]
    if missing:
        raise ValidationError({name: "This field is required for this broker." for name in missing})
    return merged or None


@transaction.atomic
def broker_account_create(
    *,
    owner: User,
    broker: str,
    client_id: str,
    label: str,
    credentials: dict[str, str],
    ip: str | None = None,
    actor: User | None = None,
    form_token: uuid.UUID | None = None,
    **limits,
) -> BrokerAccount:
    """Add an account for ``owner``; ``actor``: who adds it when not its owner (staff in admin).

    ``form_token`` is the page form's one-time token: the same form sent again (a double click, a
    reload of its answer) returns the account it added, ``replayed`` set, rather than "already
    exists" of it. The same token asking for another account (other fields or credentials) is
    refused on ``idempotency_key``."""
    unknown = set(limits) - set(ACCOUNT_EDITABLE_FIELDS)
    if unknown:
        raise TypeError(f"unexpected fields: {sorted(unknown)}")
    account = BrokerAccount(
        owner=owner, broker=broker, client_id=client_id.strip(), label=label.strip(), form_token=form_token, **limits
    )
    if made := _broker_account_repeat(account, credentials):
        return made
    cleaned = credentials_clean(broker, credentials, None)
    account.full_clean()
    products_check(account.allowed_products)
    account.credentials = Sealed.seal(cleaned) if cleaned else None
    try:
        with transaction.atomic():  # a savepoint: the caller's transaction goes on after a refusal
            account.save()
    except IntegrityError:
        # The same form sent twice at once: the other request added it (read committed).
        if made := _broker_account_repeat(account, credentials):
            return made
        # Added by another request since full_clean found the client id free (a double-clicked Add):
        # the same answer as when it was already there.
        if not BrokerAccount.objects.filter(broker=account.broker, client_id=account.client_id).exists():
            raise
        raise ValidationError(
            {"client_id": "A broker account with this broker and client id already exists."}
        ) from None
    audit_record(
        action=Action.BROKER_ACCOUNT_CREATED,
        actor=actor or owner,
        target=account,
        data={"broker": broker, "client_id": account.client_id, "label": account.label},
        ip=ip,
    )
    return account


def _broker_account_repeat(asked: BrokerAccount, credentials: dict[str, str]) -> BrokerAccount | None:
    """The account the page form ``asked.form_token`` names added (None if none has), if it is the
    one ``asked`` is, its credentials included."""
    if asked.form_token is None:
        return None
    made = BrokerAccount.objects.filter(owner=asked.owner, form_token=asked.form_token).first()
    if made is None:
        return None
    fields = ("broker", "client_id", "label", *ACCOUNT_EDITABLE_FIELDS)
    same = all(getattr(made, name) == getattr(asked, name) for name in fields)
    if not same or (made.credentials.reveal() if made.credentials else None) != credentials_clean(
        asked.broker, credentials, None
    ):
        text = "This form was already used for a different account; check it and submit again."
        raise ValidationError({"idempotency_key": ValidationError(text, code="conflict")})
    made.replayed = True
    return made


def products_check(products) -> None:
    """The products an account allows: one or more of ``PRODUCTS`` (a ValidationError naming the field)."""
    from .models import PRODUCTS

    if not isinstance(products, list) or not products or any(p not in PRODUCTS for p in products):
        raise ValidationError({"allowed_products": f"Choose one or more of {', '.join(PRODUCTS)}."})


@transaction.atomic
def broker_account_update(
    *, account: BrokerAccount, actor: User, credentials: dict[str, str] | None = None, ip: str | None = None, **changes
) -> BrokerAccount:
    """Change an account's label, limits or credentials. Blank credentials keep the old ones."""
    unknown = set(changes) - set(ACCOUNT_EDITABLE_FIELDS)
    if unknown:
        raise TypeError(f"unexpected fields: {sorted(unknown)}")
    account = BrokerAccount.objects.select_for_update().get(pk=account.pk)
    changed = [name for name, value in changes.items() if getattr(account, name) != value]
    for name, value in changes.items():
        setattr(account, name, value)
    account.full_clean()
    products_check(account.allowed_products)
    credentials_changed = False
    if credentials and any(value and value.strip() for value in credentials.values()):
        existing = account.credentials.reveal() if account.credentials else None
        merged = credentials_clean(account.broker, credentials, existing)
        credentials_changed = merged != existing
        if credentials_changed:
            account.credentials = Sealed.seal(merged)
    if not changed and not credentials_changed:
        return account
    account.save()
    data = {"fields": changed, "credentials_changed": credentials_changed}
    if credentials_changed:
        # The session was made with the old credentials (a Kite token is its API key's): it would
        # go on showing "Connected" until a call failed, which may be a stop-loss's. Connect again.
        from brokers.services import session_revoke  # brokers.services imports this module

        data["session_ended"] = session_revoke(account, reason="the account's credentials changed; connect again")
    # Record which fields changed, never the credential values.
    audit_record(action=Action.BROKER_ACCOUNT_CHANGED, actor=actor, target=account, data=data, ip=ip)
    return account


@transaction.atomic
def broker_account_set_active(*, account: BrokerAccount, actor: User, active: bool, ip: str | None = None) -> bool:
    """Deactivate or reactivate; returns whether anything changed (a repeat is a no-op)."""
    updated = BrokerAccount.objects.filter(pk=account.pk, is_active=not active).update(
        is_active=active, updated_at=timezone.now()
    )
    account.is_active = active
    if updated:
        # An update sends no post_save (``brokers.signals``): the fast paths read the accounts again.
        from brokers.services import client_accounts_forget  # brokers.services imports this module

        transaction.on_commit(client_accounts_forget)
        audit_record(
            action=Action.BROKER_ACCOUNT_REACTIVATED if active else Action.BROKER_ACCOUNT_DEACTIVATED,
            actor=actor,
            target=account,
            ip=ip,
        )
    return bool(updated)


# --- API keys ----------------------------------------------------------------------

API_KEY_PREFIX = "tp_"


def _hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def _api_key_cache_key(hashed: str) -> str:
    # v2: the entry carries the owner and a change is marked, not deleted. A new name, so that
    # during a rolling deploy neither version reads the other's entries.
    return f"apikey:v2:{hashed}"


def _api_key_cache_key_v1(hashed: str) -> str:
    return f"apikey:{hashed}"


def api_key_create(
    *,
    owner: User,
    name: str,
    expires_at: datetime | None = None,
    ip: str | None = None,
    form_token: uuid.UUID | None = None,
) -> tuple[ApiKey, str | None]:
    """Create a key; returns it with the raw secret, which is never stored or shown again.

    ``form_token`` is the page form's one-time token: the same form sent again (a reload of the page
    showing the secret, Back to it, a double click) returns the key it made with no secret (None)
    rather than making a second live key its owner never saw."""
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Give the key a name."})
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    if form_token is not None and (made := ApiKey.objects.filter(owner=owner, form_token=form_token).first()):
        return made, None
    prefix = secrets.token_hex(4)
    raw_key = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    try:
        with transaction.atomic():
            key = ApiKey.objects.create(
                owner=owner,
                name=name,
                prefix=f"{API_KEY_PREFIX}{prefix}",
                hashed_key=_hash_key(raw_key),
                expires_at=expires_at,
                form_token=form_token,
            )
            audit_record(
                action=Action.API_KEY_CREATED,
                actor=owner,
                target=key,
                data={"name": name, "prefix": key.prefix},
                ip=ip,
            )
    except IntegrityError:
        if form_token is None:
            raise
        # The same form, sent twice at once: the other request made the key (read committed).
        return ApiKey.objects.get(owner=owner, form_token=form_token), None
    return key, raw_key


def api_key_revoke(*, key: ApiKey, actor: User, ip: str | None = None) -> bool:
    """Revoke a key at once, everywhere: the row, then the auth cache entry."""
    with transaction.atomic():
        updated = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        if updated:
            audit_record(action=Action.API_KEY_REVOKED, actor=actor, target=key, data={"prefix": key.prefix}, ip=ip)
        api_keys_forget([key.hashed_key])
    return bool(updated)


# A cached entry is a dict; this marks a key as changed: for one TTL nothing may cache it again
# (``cache.add`` fails on it) and every call reads the rows. Without it a call that read the
# rows just before a change committed could cache the old state after the change dropped it.
_CHANGED = 0


def api_keys_forget(hashed_keys) -> None:
    """The keys' owner or the keys themselves changed: stop trusting their cached entries, now.

    Marks them at once and again after commit (the rows a call reads change only then).
    Call it wherever keys or their owners change without ``save()`` (``QuerySet.update``);
    the receivers in ``accounts.signals`` call it on every save and delete.
    """
    hashed_keys = list(hashed_keys)
    if not hashed_keys:
        return
    names = [_api_key_cache_key(hashed) for hashed in hashed_keys]

    def mark():
        cache.set_many(dict.fromkeys(names, _CHANGED), timeout=settings.API_KEY_CACHE_TTL_S)
        # Processes still running the previous version cache under the old name: drop theirs too
        # (this line can go once none does).
        cache.delete_many([_api_key_cache_key_v1(hashed) for hashed in hashed_keys])

    mark()
    transaction.on_commit(mark)


def api_keys_forget_owner(user_id: int) -> None:
    api_keys_forget(ApiKey.objects.filter(owner_id=user_id).values_list("hashed_key", flat=True))


@dataclass(frozen=True)
class ApiKeyAuth:
    key_id: int
    user: User
    retry_after: float = 0.0  # over the key's rate budget: seconds until a slot frees (0: one was taken)


class ApiKeyLocked(Exception):
    """Too many wrong API keys from one address: every key from it is refused for a while."""

    def __init__(self, retry_after_s: int):
        self.retry_after_s = retry_after_s
        super().__init__(f"Too many requests with a wrong API key from this address; retry in {retry_after_s}s.")


def api_key_authenticate(raw_key: str, *, ip: str | None = None) -> ApiKeyAuth | None:
    """The user a raw API key belongs to, or None when it is unknown, revoked or expired.

    Throttled per IP like the login page: ``API_KEY_FAILURES_PER_IP`` wrong keys lock the
    address for ``API_KEY_LOCK_WINDOW_S``, during which every wrong key from it gets
    ``ApiKeyLocked`` (429) instead of a plain refusal. A right key still works: one broken
    script behind a shared address (an office, a cloud NAT) must not stop every trader's
    algos behind it, and a key (256 random bits) cannot be guessed anyway.

    A valid key is cached for ``API_KEY_CACHE_TTL_S`` with what the API needs of its owner,
    so a busy algo reads neither the keys nor the users table on every call; revoking the
    key, or changing or deactivating its owner, drops the entry at once.

    A valid key also takes a slot of its own rate budget (``API_RATE_LIMITS``, shared by every
    process): ``retry_after`` > 0 when there was none. With Redis, reading a cached entry and
    taking the slot are one round trip.
    """
    auth = _api_key_lookup(raw_key)
    counter = f"apikey:fail:ip:{ip}" if ip else None
    if auth is None and counter:
        locked = _lock_remaining([counter])
        if locked:
            raise ApiKeyLocked(locked)
        _count_failure(counter, settings.API_KEY_FAILURES_PER_IP, settings.API_KEY_LOCK_WINDOW_S)
        logger.info("wrong API key from %s", ip)
    return auth


# What the auth cache keeps of a key's owner: what the API uses of ``request.user``, never the
# password hash. The User is built from it with every other field deferred (read on access,
# and ``save()`` writes only the loaded fields). Changing the entry's shape means a new name
# (``_api_key_cache_key``): processes of both versions run side by side during a deploy.
CACHED_USER_FIELDS = frozenset({"id", "username", "is_active", "is_staff", "is_superuser", "timezone"})


@functools.cache
def _cached_user_columns() -> tuple[str, ...]:
    """CACHED_USER_FIELDS in the model's order, the order ``Model.from_db`` takes values in."""
    return tuple(f.attname for f in User._meta.concrete_fields if f.attname in CACHED_USER_FIELDS)


# Keys whose last use this process recorded (or saw recorded) within the minute.
_recently_touched = memo.Memo("api key last use", ttl_s=60)
# Hashed key -> its id (fixed for the key's life), so its rate windows can be named before its
# entry is read. Only keys that authenticated are kept.
_key_ids: dict[str, int] = {}


def _api_key_lookup(raw_key: str) -> ApiKeyAuth | None:
    if not raw_key or not raw_key.startswith(API_KEY_PREFIX) or len(raw_key) > 128:
        return None
    hashed = _hash_key(raw_key)
    now = timezone.now()
    name = _api_key_cache_key(hashed)
    key_id = _key_ids.get(hashed)
    retry_after = None  # no slot asked for yet
    if key_id is not None and settings.REDIS_URL:
        # A key this process has seen: its entry and its rate slot in one round trip.
        cached, retry_after = ratelimit.take_if_cached(
            name, f"apikey{key_id}", "api", "calls", settings.API_RATE_LIMITS
        )
        if cached is None:
            retry_after = None  # nothing was taken
    else:
        cached = cache.get(name)
    if not cached:  # missing, or marked changed
        cached = _api_key_entry(hashed, now, cache_it=cached is None)
        if cached is None:
            return None
    if cached["expires_at"] is not None and cached["expires_at"] <= now.timestamp():
        cache.delete(name)
        return None
    if key_id != cached["id"]:  # first seen here (or a test database reused the secret)
        if len(_key_ids) >= 100_000:
            _key_ids.clear()
        _key_ids[hashed] = cached["id"]
        retry_after = None  # a slot taken under another id does not count
    owner = cached["user"]
    user = User.from_db(DEFAULT_DB_ALIAS, _cached_user_columns(), [owner[name] for name in _cached_user_columns()])
    # Record last use at most once a minute per key rather than writing on every call.
    _recently_touched.get(hashed, lambda: _api_key_touch(cached["id"], now))
    if retry_after is None:
        retry_after = ratelimit.take(f"apikey{cached['id']}", "api", "calls", settings.API_RATE_LIMITS)
    return ApiKeyAuth(key_id=cached["id"], user=user, retry_after=retry_after)


def _api_key_entry(hashed: str, now, *, cache_it: bool) -> dict | None:
    """The key's auth entry from its row and its owner's, in one query; cached unless marked changed."""
    key = (
        ApiKey.objects.filter(hashed_key=hashed, owner__is_active=True)
        .select_related("owner")
        .only("id", "owner_id", "expires_at", "revoked_at", *(f"owner__{name}" for name in CACHED_USER_FIELDS))
        .first()
    )
    if key is None or not key.is_usable(now):
        return None
    entry = {
        "id": key.pk,
        "expires_at": key.expires_at.timestamp() if key.expires_at else None,
        "user": {name: getattr(key.owner, name) for name in CACHED_USER_FIELDS},
    }
    if cache_it:
        # add, not set: a change marked meanwhile must win over what we read before it.
        cache.add(_api_key_cache_key(hashed), entry, timeout=settings.API_KEY_CACHE_TTL_S)
    return entry


def _api_key_touch(key_id: int, now) -> bool:
    if cache.add(f"apikey:touched:{key_id}", 1, timeout=60):  # once a minute across processes too
        ApiKey.objects.filter(pk=key_id).update(last_used_at=now)
    return True


# --- Encryption keys ---------------------------------------------------------------


def encrypted_fields():
    """Every (model, field name) stored with EncryptedJSONField, across all apps."""
    for model in apps.get_models():
        for field in model._meta.concrete_fields:
            if isinstance(field, EncryptedJSONField):
                yield model, field.name


def encryption_keys_rotate(*, batch_size: int = 500) -> dict[str, int]:
    """Re-encrypt every stored secret with the primary key. Safe to run again.

    Every value is first checked to decrypt with the configured keys, so a missing old
    key stops the rotation before anything is written.
    """
    for model, field_name in encrypted_fields():
        for value in model.objects.exclude(**{f"{field_name}__isnull": True}).values_list(field_name, flat=True):
            value.reveal()
    counts = {}
    for model, field_name in encrypted_fields():
        count = 0
        pks = list(model.objects.exclude(**{f"{field_name}__isnull": True}).values_list("pk", flat=True))
        for start in range(0, len(pks), batch_size):
            with transaction.atomic():
                rows = model.objects.select_for_update().filter(pk__in=pks[start : start + batch_size])
                for row in rows.only("pk", field_name):
                    value = getattr(row, field_name)
                    if value is None:
                        continue
                    model.objects.filter(pk=row.pk).update(**{field_name: value.rotated()})
                    count += 1
        counts[f"{model._meta.label}.{field_name}"] = count
    # The cache remembers live sessions as they were sealed: read with the old key dropped, every
    # broker call (an order sent) would fail until they expire there.
    from brokers.services import sessions_forget  # brokers.services imports this module

    sessions_forget()
    return counts


def expiry_from_days(days: int | None) -> datetime | None:
    return timezone.now() + timedelta(days=days) if days else None
