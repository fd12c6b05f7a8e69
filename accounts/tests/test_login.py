import time

import pytest
from django.contrib.auth.hashers import check_password, make_password
from django.core import signing
from django.urls import reverse

from accounts.models import AuditLog, User
from tradingplatform import settings as base_settings


def login(client, username, password, **extra):
    return client.post(reverse("login"), {"username": username, "password": password}, **extra)


def test_login_page_renders(client, db):
    response = client.get(reverse("login"))
    assert response.status_code == 200
    assert b'name="password"' in response.content


def test_login_success_is_audited_and_redirects(client, trader, password):
    response = login(client, "trader", password, REMOTE_ADDR="10.0.0.5")
    assert response.status_code == 302 and response.url == reverse("home")
    entry = AuditLog.objects.get(action=AuditLog.Action.LOGIN)
    assert entry.actor == trader and entry.ip == "10.0.0.5"


def test_login_keeps_a_safe_next_and_drops_an_offsite_one(client, trader, password):
    response = client.post(reverse("login") + "?next=/accounts/profile/", {"username": "trader", "password": password})
    assert response.url == "/accounts/profile/"
    client.logout()
    response = client.post(
        reverse("login") + "?next=https://evil.example/", {"username": "trader", "password": password}
    )
    assert response.url == reverse("home")


@pytest.mark.parametrize("next_url", ["dashboard", "?tab=orders", "logout", "accounts:profile"])
def test_a_next_that_is_not_a_path_signs_in_to_the_home_page(client, trader, password, next_url):
    # A next such as "dashboard" (no slash) was taken for a view name: a 500 right after signing in,
    # or, when it named one ("logout"), a redirect to that view.
    response = client.post(reverse("login") + f"?next={next_url}", {"username": "trader", "password": password})
    assert response.status_code == 302 and response.url == reverse("home")
    assert client.session["_auth_user_id"] == str(trader.pk)


def test_failed_login_shows_error_and_is_audited(client, trader):
    response = login(client, "trader", "wrong")
    assert response.status_code == 200
    assert b"didn&#x27;t match" in response.content
    assert AuditLog.objects.filter(action=AuditLog.Action.LOGIN_FAILED, data__username="trader").count() == 1
    assert "_auth_user_id" not in client.session


def test_a_password_typed_as_the_username_is_not_kept_in_the_audit_log(client, trader, password, settings):
    """A failed sign-in kept the typed username verbatim in the audit log every staff member reads:
    often a password typed into the username box. One naming no user is kept as that only; one
    naming a user is kept with that user (so staff still see who was tried, and a locked one)."""
    settings.LOGIN_FAILURES_PER_USERNAME = 2
    login(client, password, "anything")
    login(client, "trader", "wrong")
    failed = list(AuditLog.objects.filter(action=AuditLog.Action.LOGIN_FAILED).order_by("pk"))
    assert [entry.data for entry in failed] == [
        {"username": None, "unknown_username": True},
        {"username": "trader"},
    ]
    assert failed[1].target_id == str(trader.pk)
    login(client, password, "again")  # its second failure: that username is locked from now on
    assert login(client, password, "once more").status_code == 429
    locked = AuditLog.objects.get(action=AuditLog.Action.LOGIN_LOCKED)
    assert locked.data == {"username": None, "unknown_username": True}
    assert not [entry for entry in AuditLog.objects.all() if password in str(entry.data)]


def test_username_locked_after_failures_even_with_right_password(client, trader, password, settings):
    settings.LOGIN_FAILURES_PER_USERNAME = 3
    for _ in range(3):
        login(client, "trader", "wrong")
    response = login(client, "trader", password)
    assert response.status_code == 429
    assert b"Too many failed login attempts" in response.content
    assert "_auth_user_id" not in client.session
    assert AuditLog.objects.filter(action=AuditLog.Action.LOGIN_LOCKED).exists()


def test_lock_lifts_after_the_window(client, trader, password, settings):
    settings.LOGIN_FAILURES_PER_USERNAME = 2
    settings.LOGIN_LOCK_WINDOW_S = 1
    login(client, "trader", "wrong")
    login(client, "trader", "wrong")
    assert login(client, "trader", password).status_code == 429
    time.sleep(1.6)
    assert login(client, "trader", password).status_code == 302


def test_ip_locked_after_failures_across_usernames(client, trader, other_trader, password, settings):
    settings.LOGIN_FAILURES_PER_IP = 3
    for name in ("a", "b", "c"):
        login(client, name, "wrong", REMOTE_ADDR="10.9.9.9")
    assert login(client, "trader", password, REMOTE_ADDR="10.9.9.9").status_code == 429
    # Another IP is not affected.
    assert login(client, "other", password, REMOTE_ADDR="10.1.1.1").status_code == 302


def test_success_resets_the_username_counter(client, trader, password, settings):
    settings.LOGIN_FAILURES_PER_USERNAME = 3
    login(client, "trader", "wrong")
    login(client, "trader", "wrong")
    assert login(client, "trader", password).status_code == 302
    client.logout()
    login(client, "trader", "wrong")
    login(client, "trader", "wrong")
    assert login(client, "trader", password).status_code == 302


def test_spellings_of_a_username_that_sign_in_to_one_user_share_its_lock(client, trader, password, settings):
    # MariaDB's collation finds "trader" for "TRÄDER" or "trâder": each spelling must count against
    # the one user it signs in to, or a guesser rotating spellings is never locked out.
    variants = ["trâder", "trÄder", "tràder", "TRÁDER"]
    if not User.objects.filter(username=variants[0]).exists():
        pytest.skip("this database matches usernames exactly")
    settings.LOGIN_FAILURES_PER_USERNAME = 3
    settings.LOGIN_FAILURES_PER_IP = 100
    for i, variant in enumerate(variants[:3]):  # from as many addresses
        assert login(client, variant, "wrong", REMOTE_ADDR=f"10.0.0.{i + 1}").status_code == 200
    assert login(client, variants[3], password, REMOTE_ADDR="10.0.0.99").status_code == 429
    assert login(client, "trader", password, REMOTE_ADDR="10.0.0.98").status_code == 429
    assert "_auth_user_id" not in client.session


def test_logout_is_post_only_and_audited(trader_client, trader):
    assert trader_client.get(reverse("logout")).status_code == 405
    response = trader_client.post(reverse("logout"))
    assert response.status_code == 302
    assert AuditLog.objects.filter(action=AuditLog.Action.LOGOUT, actor=trader).exists()
    assert trader_client.get(reverse("accounts:broker_list")).status_code == 302


def test_admin_login_goes_through_the_throttled_login_page(client, db):
    response = client.get("/admin/login/")
    assert response.status_code == 302 and response.url.startswith(reverse("login"))


def test_a_signed_in_trader_cannot_sign_in_as_staff_through_the_admins_login_form(
    trader_client, trader, staff, password, settings
):
    # The admin's own form would check passwords with no throttle and no audit: a trader could
    # guess a superuser's password there as often as they liked.
    settings.LOGIN_FAILURES_PER_USERNAME = 2
    for guess in ("wrong", "wrong", "wrong", password):
        response = trader_client.post("/admin/login/?next=/admin/", {"username": "staff", "password": guess})
        assert response.status_code == 302 and response.url.startswith(reverse("login")), response.status_code
    assert trader_client.session["_auth_user_id"] == str(trader.pk)
    assert trader_client.get("/admin/").status_code == 302


def test_production_hasher_is_argon2(db, settings):
    assert base_settings.PASSWORD_HASHERS[0].endswith("Argon2PasswordHasher")
    settings.PASSWORD_HASHERS = base_settings.PASSWORD_HASHERS
    encoded = make_password("pw-to-hash")
    assert encoded.startswith("argon2$")
    assert check_password("pw-to-hash", encoded)


@pytest.mark.parametrize("method", ["put", "delete", "patch"])
def test_login_refuses_other_methods(client, db, method):
    assert getattr(client, method)(reverse("login")).status_code == 405


def test_a_strangers_guesses_do_not_lock_out_a_browser_that_signed_in_before(trader, other_trader, password, settings):
    """Five wrong guesses at a username from anywhere locked that username for everyone: a stranger
    knowing a trader's username could keep them from signing in (to close a position) for good. A
    browser that signed in as the user before keeps a signed cookie and counts on its own failures."""
    from django.test import Client

    settings.LOGIN_FAILURES_PER_USERNAME = 3
    settings.LOGIN_FAILURES_PER_IP = 5
    trader_browser, stranger = Client(), Client()
    first = login(trader_browser, "trader", password, REMOTE_ADDR="10.0.0.5")
    assert first.status_code == 302 and first.cookies[settings.KNOWN_DEVICE_COOKIE]["httponly"]
    trader_browser.post(reverse("logout"))
    for name in ("trader", "trader", "trader", "x", "y"):  # the username and the shared address locked
        login(stranger, name, "wrong", REMOTE_ADDR="10.0.0.5")
    assert login(stranger, "trader", password, REMOTE_ADDR="10.0.0.5").status_code == 429
    assert login(Client(), "trader", password, REMOTE_ADDR="10.0.0.6").status_code == 429  # an unknown browser
    assert login(trader_browser, "trader", password, REMOTE_ADDR="10.0.0.5").status_code == 302
    # Its cookie is for that user only: another username from it counts as from any browser.
    trader_browser.post(reverse("logout"))
    assert login(trader_browser, "other", password, REMOTE_ADDR="10.0.0.5").status_code == 429  # the address


def test_a_known_browsers_own_wrong_guesses_still_lock_it_and_a_forged_cookie_is_nobodys(
    client, trader, password, settings
):
    settings.LOGIN_FAILURES_PER_USERNAME = 3
    assert login(client, "trader", password).status_code == 302
    client.post(reverse("logout"))
    for _ in range(3):
        assert login(client, "trader", "wrong").status_code == 200
    assert login(client, "trader", password).status_code == 429
    # A cookie not signed by us (or for another user, or expired) is as no cookie.
    from django.test import Client

    forged = Client()
    forged.cookies[settings.KNOWN_DEVICE_COOKIE] = signing.dumps({"u": trader.pk, "d": "x"}, salt="not ours")
    for _ in range(3):
        login(Client(), "trader", "wrong", REMOTE_ADDR="10.0.0.7")
    assert login(forged, "trader", password).status_code == 429
