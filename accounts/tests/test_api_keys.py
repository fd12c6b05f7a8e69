import threading
import time
import uuid
from datetime import timedelta
from unittest import mock

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from accounts import services
from accounts.models import ApiKey, AuditLog
from accounts.tests.factories import make_broker_account
from tradingplatform.testing import mariadb_only, requires_redis

ME = "/api/v1/me"


@pytest.fixture
def key_and_secret(trader):
    return services.api_key_create(owner=trader, name="algo")


def bearer(secret):
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def test_create_stores_only_hash_and_prefix(key_and_secret):
    key, secret = key_and_secret
    assert secret.startswith(key.prefix + "_")
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_apikey")
        row = cursor.fetchone()
    assert not any(secret in str(value) for value in row)
    assert AuditLog.objects.filter(action=AuditLog.Action.API_KEY_CREATED, target_id=str(key.pk)).exists()


def test_bearer_and_x_api_key_both_authenticate(client, trader, key_and_secret):
    _, secret = key_and_secret
    for headers in (bearer(secret), {"HTTP_X_API_KEY": secret}):
        response = client.get(ME, **headers)
        assert response.status_code == 200
        assert response.json() == {"id": trader.pk, "username": "trader", "timezone": "Asia/Kolkata"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"HTTP_AUTHORIZATION": "Bearer tp_nothing_here"},
        {"HTTP_X_API_KEY": "wrong"},
        {"HTTP_AUTHORIZATION": "Basic x"},
    ],
)
def test_missing_or_wrong_key_is_401_with_the_error_shape(client, db, headers):
    response = client.get(ME, **headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    assert set(response.json()["error"]) == {"code", "message", "field"}


def test_revoked_key_is_refused_at_once_even_when_cached(client, trader, key_and_secret):
    key, secret = key_and_secret
    assert client.get(ME, **bearer(secret)).status_code == 200  # now cached
    assert services.api_key_revoke(key=key, actor=trader) is True
    assert client.get(ME, **bearer(secret)).status_code == 401
    assert services.api_key_revoke(key=key, actor=trader) is False  # a repeat changes nothing
    assert AuditLog.objects.filter(action=AuditLog.Action.API_KEY_REVOKED).count() == 1


def test_expired_key_is_refused_whether_cached_or_not(client, trader):
    key, secret = services.api_key_create(owner=trader, name="short", expires_at=timezone.now() + timedelta(hours=1))
    assert client.get(ME, **bearer(secret)).status_code == 200  # cached with its expiry
    with mock.patch("accounts.services.timezone.now", return_value=timezone.now() + timedelta(hours=2)):
        assert client.get(ME, **bearer(secret)).status_code == 401
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get(ME, **bearer(secret)).status_code == 401  # from the row


def test_expiry_in_the_past_is_rejected_naming_the_field(trader):
    with pytest.raises(services.ValidationError) as error:
        services.api_key_create(owner=trader, name="x", expires_at=timezone.now() - timedelta(days=1))
    assert "expires_at" in error.value.message_dict
    assert not ApiKey.objects.exists()


def test_inactive_user_key_is_refused(client, trader, key_and_secret):
    _, secret = key_and_secret
    trader.is_active = False
    trader.save()
    assert client.get(ME, **bearer(secret)).status_code == 401


def test_last_used_is_recorded(client, key_and_secret):
    key, secret = key_and_secret
    assert key.last_used_at is None
    client.get(ME, **bearer(secret))
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_api_lists_only_own_accounts_and_never_credentials(client, trader, other_trader, key_and_secret):
    _, secret = key_and_secret
    mine = make_broker_account(trader, broker="kite", credentials={"api_key": "K-1", "api_secret": "SECRET-API-1"})
    theirs = make_broker_account(other_trader)
    response = client.get("/api/v1/accounts", **bearer(secret))
    assert [row["id"] for row in response.json()["items"]] == [mine.pk] and response.json()["count"] == 1
    assert "SECRET-API-1" not in response.content.decode() and "K-1" not in response.content.decode()
    assert response.json()["items"][0]["has_credentials"] is True
    response = client.get(f"/api/v1/accounts/{theirs.pk}", **bearer(secret))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --- The API keys page ---------------------------------------------------------------


def _key_form(client, **fields) -> dict:
    """What the API keys page's form sends, with the one-time token the page rendered into it."""
    token = client.get(reverse("accounts:api_keys")).context["form"].initial["token"]
    return {"token": str(token), **fields}


def test_page_shows_the_secret_once(trader_client):
    response = trader_client.post(
        reverse("accounts:api_keys"), _key_form(trader_client, name="bot", expires_in_days="30")
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    secret = response.context["created"]["secret"]
    assert secret.encode() in response.content
    key = ApiKey.objects.get()
    assert key.expires_at is not None
    listing = trader_client.get(reverse("accounts:api_keys"))
    assert secret.encode() not in listing.content
    assert key.prefix.encode() in listing.content


def test_page_requires_a_name(trader_client):
    response = trader_client.post(reverse("accounts:api_keys"), {"name": ""})
    assert "name" in response.context["form"].errors
    assert not ApiKey.objects.exists()


def test_the_same_form_sent_again_makes_no_second_key_and_shows_no_secret(trader_client, other_trader, client):
    """A reload of the page showing a new key's secret, or Back to it, sends its form again: that made
    a second live key, one whose secret its owner never saw."""
    form = _key_form(trader_client, name="bot")
    first = trader_client.post(reverse("accounts:api_keys"), form)
    secret = first.context["created"]["secret"]
    again = trader_client.post(reverse("accounts:api_keys"), form)
    assert again.status_code == 200
    key = ApiKey.objects.get()
    assert again.context["created"] == {"key": key, "secret": None}
    assert secret.encode() not in again.content and b"api-key-secret" not in again.content
    assert b"That form was sent already" in again.content and key.prefix.encode() in again.content
    assert AuditLog.objects.filter(action=AuditLog.Action.API_KEY_CREATED).count() == 1
    assert again.context["form"].initial["token"] != form["token"]  # the next key gets a fresh form
    # The token is the trader's own: another trader's form with the same one makes their key.
    client.force_login(other_trader)
    theirs = client.post(reverse("accounts:api_keys"), form)
    assert theirs.context["created"]["secret"] and ApiKey.objects.filter(owner=other_trader).count() == 1


def test_a_form_without_its_token_makes_no_key_and_is_shown_again_with_one(trader_client):
    response = trader_client.post(reverse("accounts:api_keys"), {"name": "bot"})
    assert response.status_code == 200
    assert b"This form is out of date" in response.content
    assert not ApiKey.objects.exists()
    assert response.context["form"].data["token"]  # a fresh one: sending the form again makes the key
    again = trader_client.post(reverse("accounts:api_keys"), response.context["form"].data)
    assert again.context["created"]["secret"] and ApiKey.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_same_form_sent_twice_at_once_makes_one_key(trader):
    """Both requests miss each other's key on their first read: the database's unique (owner, token)
    refuses the second insert, which then answers with the first request's key."""
    mariadb_only()
    token = uuid.uuid4()
    start, results = threading.Barrier(2), []

    def send():
        try:
            start.wait()
            results.append(services.api_key_create(owner=trader, name="bot", form_token=token))
        finally:
            connection.close()

    first_read = services.ApiKey.objects.filter
    calls = threading.Barrier(2)

    def both_read_first(*args, **kwargs):  # each request's check for the token runs before either writes
        rows = first_read(*args, **kwargs)
        if kwargs.get("form_token") == token:
            list(rows)
            calls.wait(timeout=10)
        return rows

    with mock.patch.object(services.ApiKey.objects, "filter", side_effect=both_read_first):
        threads = [threading.Thread(target=send) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert ApiKey.objects.count() == 1
    key = ApiKey.objects.get()
    assert sorted(results, key=lambda pair: pair[1] is None) == [(key, results[0][1] or results[1][1]), (key, None)]
    assert AuditLog.objects.filter(action=AuditLog.Action.API_KEY_CREATED).count() == 1


def test_page_lists_only_own_keys(trader_client, other_trader):
    services.api_key_create(owner=other_trader, name="their-key")
    assert b"their-key" not in trader_client.get(reverse("accounts:api_keys")).content


def test_revoke_from_the_page(trader_client, key_and_secret):
    key, secret = key_and_secret
    response = trader_client.post(reverse("accounts:api_key_revoke", args=[key.pk]))
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_revoking_another_traders_key_is_404_and_changes_nothing(trader_client, other_trader):
    key, _ = services.api_key_create(owner=other_trader, name="theirs")
    assert trader_client.post(reverse("accounts:api_key_revoke", args=[key.pk])).status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None


def test_revoke_is_post_only(trader_client, key_and_secret):
    key, _ = key_and_secret
    assert trader_client.get(reverse("accounts:api_key_revoke", args=[key.pk])).status_code == 405


def test_wrong_keys_from_one_ip_are_throttled_but_a_right_key_from_it_still_works(
    client, trader, key_and_secret, settings
):
    settings.API_KEY_FAILURES_PER_IP = 5
    _, secret = key_and_secret
    for attempt in range(5):
        wrong = f"{secret[:-4]}{attempt:04d}"
        response = client.get(ME, REMOTE_ADDR="10.7.7.7", **bearer(wrong))
        assert response.status_code == 401
    for headers in (bearer(f"{secret[:-4]}9999"), {"HTTP_X_API_KEY": "tp_guess_2"}, bearer("tp_guess_1")):
        locked = client.get(ME, REMOTE_ADDR="10.7.7.7", **headers)
        assert locked.status_code == 429
        assert int(locked["Retry-After"]) > 0
        assert locked.json()["error"]["code"] == "rate_limited"
        assert set(locked.json()["error"]) == {"code", "message", "field"}
    # A right key from that address (another trader's algo behind the same NAT) is not locked out.
    for headers in (bearer(secret), {"HTTP_X_API_KEY": secret}):
        assert client.get(ME, REMOTE_ADDR="10.7.7.7", **headers).status_code == 200


def test_only_the_address_our_proxy_saw_counts(client, trader, key_and_secret, settings):
    settings.USE_X_FORWARDED_FOR = True
    settings.API_KEY_FAILURES_PER_IP = 2
    _, secret = key_and_secret
    for forged in ("1.1.1.1", "2.2.2.2"):  # a client cannot pick the address it is throttled as
        client.get(ME, REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=f"{forged}, 10.9.9.9", **bearer("tp_wrong"))
    locked = client.get(ME, REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="3.3.3.3, 10.9.9.9", **bearer("tp_wrong"))
    assert locked.status_code == 429
    assert client.get(ME, REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="10.8.8.8", **bearer("tp_x")).status_code == 401


def test_right_keys_do_not_count_towards_the_wrong_key_throttle(client, trader, key_and_secret, settings):
    settings.API_KEY_FAILURES_PER_IP = 3
    settings.API_RATE_LIMITS = [(1000, 1.0)]
    _, secret = key_and_secret
    for _ in range(10):
        assert client.get(ME, REMOTE_ADDR="10.7.7.8", **bearer(secret)).status_code == 200
    client.get(ME, REMOTE_ADDR="10.7.7.8", **bearer("tp_wrong_1"))
    client.get(ME, REMOTE_ADDR="10.7.7.8", **bearer("tp_wrong_2"))
    assert client.get(ME, REMOTE_ADDR="10.7.7.8", **bearer(secret)).status_code == 200


def test_wrong_key_lock_lifts_after_the_window(client, trader, key_and_secret, settings):
    settings.API_KEY_FAILURES_PER_IP = 2
    settings.API_KEY_LOCK_WINDOW_S = 1
    _, secret = key_and_secret
    client.get(ME, **bearer("tp_wrong_1"))
    client.get(ME, **bearer("tp_wrong_2"))
    assert client.get(ME, **bearer("tp_wrong_3")).status_code == 429
    time.sleep(1.6)
    assert client.get(ME, **bearer("tp_wrong_3")).status_code == 401
    assert client.get(ME, **bearer(secret)).status_code == 200


# --- The auth cache: what it keeps and when it lets go -----------------------------------------


def test_deactivating_a_user_refuses_the_very_next_request_even_when_cached(client, trader, key_and_secret):
    _, secret = key_and_secret
    assert client.get(ME, **bearer(secret)).status_code == 200  # now cached, owner and all
    trader.is_active = False
    trader.save()
    assert client.get(ME, **bearer(secret)).status_code == 401
    trader.is_active = True
    trader.save()
    assert client.get(ME, **bearer(secret)).status_code == 200


def test_deleting_a_user_refuses_their_cached_key(client, trader, key_and_secret):
    _, secret = key_and_secret
    assert client.get(ME, **bearer(secret)).status_code == 200
    trader.delete()
    assert client.get(ME, **bearer(secret)).status_code == 401


def test_a_changed_user_is_seen_on_the_next_request(client, trader, key_and_secret):
    _, secret = key_and_secret
    assert client.get(ME, **bearer(secret)).json()["timezone"] == "Asia/Kolkata"
    services.user_update_profile(user=trader, timezone_name="Europe/London")
    assert client.get(ME, **bearer(secret)).json()["timezone"] == "Europe/London"


def test_a_key_changed_by_save_is_read_again(client, trader, key_and_secret):
    key, secret = key_and_secret
    assert client.get(ME, **bearer(secret)).status_code == 200
    key.revoked_at = timezone.now()  # as the admin would
    key.save()
    assert client.get(ME, **bearer(secret)).status_code == 401


def test_a_read_from_before_a_change_cannot_be_cached_after_it(trader, key_and_secret, django_assert_num_queries):
    """A call that read the rows just before a revocation committed must not cache what it read."""
    key, secret = key_and_secret
    hashed = services._hash_key(secret)
    stale = services._api_key_entry(hashed, timezone.now(), cache_it=False)  # read before the change
    services.api_key_revoke(key=key, actor=trader)
    services.cache.add(services._api_key_cache_key(hashed), stale, timeout=60)  # ...cached after it
    assert services.api_key_authenticate(secret) is None


def test_the_cached_user_holds_no_password_and_saves_only_what_it_loaded(trader, key_and_secret, password):
    _, secret = key_and_secret
    services.api_key_authenticate(secret)
    user = services.api_key_authenticate(secret).user  # built from the cache
    assert (user.pk, user.username, user.timezone, user.is_active) == (trader.pk, "trader", "Asia/Kolkata", True)
    assert "password" in user.get_deferred_fields()
    assert "password" not in str(services.cache.get(services._api_key_cache_key(services._hash_key(secret))))
    user.timezone = "Europe/Paris"
    user.save()
    trader.refresh_from_db()
    assert trader.timezone == "Europe/Paris" and trader.check_password(password)


def test_a_cached_key_costs_no_query_and_last_use_is_written_once_a_minute(key_and_secret, django_assert_num_queries):
    key, secret = key_and_secret
    with django_assert_num_queries(2):  # the key with its owner, then its last use
        assert services.api_key_authenticate(secret).key_id == key.pk
    with django_assert_num_queries(0):
        assert services.api_key_authenticate(secret).key_id == key.pk
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_a_known_key_reads_its_entry_and_takes_its_rate_slot_in_one_round_trip(key_and_secret, settings):
    if not settings.REDIS_URL:
        pytest.skip("the one round trip is Redis's; without it the cache and the windows are in-process")
    key, secret = key_and_secret
    assert services.api_key_authenticate(secret).key_id == key.pk  # first sight in this process
    with (
        mock.patch.object(services.cache, "get", side_effect=AssertionError("a second round trip")),
        mock.patch.object(services.ratelimit, "take", side_effect=AssertionError("a second round trip")),
    ):
        assert services.api_key_authenticate(secret).retry_after == 0


def test_a_revoked_key_over_its_budget_is_refused_not_rate_limited(client, trader, key_and_secret, settings):
    settings.API_RATE_LIMITS = [(2, 10.0)]
    key, secret = key_and_secret
    assert [client.get(ME, **bearer(secret)).status_code for _ in range(3)] == [200, 200, 429]
    services.api_key_revoke(key=key, actor=trader)
    assert client.get(ME, **bearer(secret)).status_code == 401


@requires_redis
@pytest.mark.parametrize("seen_before", [False, True], ids=["first-call", "known-key"])
def test_redis_unreachable_is_a_503_to_retry_whether_or_not_the_key_was_seen(client, key_and_secret, seen_before):
    """Redis (the keys' cache and their budgets) away for a moment: every call with a valid key is
    refused as an outage (503, Retry-After, nothing done), not answered 500 "something went wrong on
    our side" with a traceback logged as a bug. A process just started has seen no key yet."""
    import redis

    _key, secret = key_and_secret
    services._key_ids.clear()  # a process that has not seen the key yet...
    if seen_before:
        assert client.get(ME, **bearer(secret)).status_code == 200  # ... or one that has

    def unreachable(*args, **kwargs):
        raise redis.ConnectionError("Error 111 connecting to redis:6379. Connection refused.")

    with mock.patch.object(redis.Redis, "execute_command", unreachable):
        response = client.get(ME, **bearer(secret))
    assert response.status_code == 503, response.content
    assert response["Retry-After"] == "1" and response.json()["error"]["code"] == "unavailable"
