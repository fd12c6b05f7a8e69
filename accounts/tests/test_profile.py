import threading
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

from accounts import services
from accounts.models import AuditLog, BrokerAccount, User
from tradingplatform.testing import mariadb_only


def test_profile_changes_timezone(trader_client, trader):
    response = trader_client.post(reverse("accounts:profile"), {"form": "profile", "timezone": "Europe/London"})
    assert response.status_code == 302
    trader.refresh_from_db()
    assert trader.timezone == "Europe/London"


def test_profile_rejects_unknown_timezone_naming_the_field(trader_client, trader):
    response = trader_client.post(reverse("accounts:profile"), {"form": "profile", "timezone": "Mars/Olympus"})
    assert response.status_code == 200
    assert "timezone" in response.context["profile_form"].errors
    trader.refresh_from_db()
    assert trader.timezone == "Asia/Kolkata"


def test_times_show_in_the_users_timezone(trader_client, trader):
    entry = AuditLog.objects.create(action=AuditLog.Action.LOGIN, actor=trader, ip="10.0.0.1")
    utc = entry.created_at
    ist = utc.astimezone(ZoneInfo("Asia/Kolkata")).strftime("%Y-%m-%d %H:%M:%S")
    assert ist.encode() in trader_client.get(reverse("accounts:profile")).content
    User.objects.filter(pk=trader.pk).update(timezone="America/New_York")
    ny = utc.astimezone(ZoneInfo("America/New_York")).strftime("%Y-%m-%d %H:%M:%S")
    assert ny.encode() in trader_client.get(reverse("accounts:profile")).content
    assert isinstance(utc, datetime) and utc.tzinfo is not None


def test_password_change_is_audited_and_keeps_the_session(trader_client, trader, password):
    data = {
        "form": "password",
        "old_password": password,
        "new_password1": "N3w-passw0rd!x",
        "new_password2": "N3w-passw0rd!x",
    }
    response = trader_client.post(reverse("accounts:profile"), data)
    assert response.status_code == 302
    trader.refresh_from_db()
    assert trader.check_password("N3w-passw0rd!x")
    assert AuditLog.objects.filter(action=AuditLog.Action.PASSWORD_CHANGED, actor=trader).exists()
    assert trader_client.get(reverse("accounts:profile")).status_code == 200


def test_password_change_with_wrong_old_password_changes_nothing(trader_client, trader, password):
    data = {
        "form": "password",
        "old_password": "nope",
        "new_password1": "N3w-passw0rd!x",
        "new_password2": "N3w-passw0rd!x",
    }
    response = trader_client.post(reverse("accounts:profile"), data)
    assert "old_password" in response.context["password_form"].errors
    trader.refresh_from_db()
    assert trader.check_password(password)


def test_guessing_the_current_password_on_the_profile_is_throttled_like_the_login(
    trader_client, trader, password, settings
):
    """Whoever has a signed-in browser (a shared computer, a stolen cookie) could try passwords in
    the password change's "old password" as often as they liked, unthrottled and unaudited, and
    learn (then change) the trader's password. Wrong ones count as failed logins of the user."""
    settings.LOGIN_FAILURES_PER_USERNAME = 3

    def change(old):
        data = {
            "form": "password",
            "old_password": old,
            "new_password1": "N3w-passw0rd!x",
            "new_password2": "N3w-passw0rd!x",
        }
        return trader_client.post(reverse("accounts:profile"), data)

    for guess in ("wrong-1", "wrong-2", "wrong-3"):
        assert change(guess).status_code == 200
    assert AuditLog.objects.filter(action=AuditLog.Action.LOGIN_FAILED, actor=trader).count() == 3
    response = change(password)
    assert response.status_code == 429 and b"Too many failed login attempts" in response.content
    trader.refresh_from_db()
    assert trader.check_password(password)
    # The login page is locked for the user too: the same guesser cannot go on there.
    assert Client().post(reverse("login"), {"username": "trader", "password": password}).status_code == 429


def test_profile_refuses_other_methods(trader_client):
    assert trader_client.delete(reverse("accounts:profile")).status_code == 405


def test_seed_demo_creates_the_trader_and_paper_account_once(db, capsys):
    call_command("seed_demo", username="demo-test")
    first = capsys.readouterr().out
    call_command("seed_demo", username="demo-test")
    second = capsys.readouterr().out
    assert "username demo-test" in first and first == second
    user = User.objects.get(username="demo-test")
    password = first.strip().rsplit(" ", 1)[-1]
    assert user.check_password(password)
    assert BrokerAccount.objects.filter(owner=user, broker="paper").count() == 1


def test_profile_refuses_zone_files_that_are_not_places(trader_client, trader):
    """The zone "localtime" is the server's own and "Factory" none at all (both are in the zone database
    as files): a trader's times would follow the server's setting, and the scheduled orders that
    take the trader's zone as their default refuse them. The profile refuses them as they do."""
    for name in ("localtime", "Factory"):
        response = trader_client.post(reverse("accounts:profile"), {"form": "profile", "timezone": name})
        assert response.status_code == 200, name
        assert "timezone" in response.context["profile_form"].errors
        trader.refresh_from_db()
        assert trader.timezone == "Asia/Kolkata"


def test_the_admins_password_change_is_the_profiles_throttled_and_audited_one(client, staff, password, settings):
    """The admin has a password change of its own ("Change password" at the top of every admin
    page): its "old password" could be guessed there as often as anyone liked, and a change made
    there left no audit entry. Staff are sent to the profile's, which the throttle and audit cover."""
    settings.LOGIN_FAILURES_PER_USERNAME = 3
    client.force_login(staff)
    page = reverse("admin:password_change")
    response = client.get(page)
    assert response.status_code == 302 and response["Location"] == reverse("accounts:profile")
    for old in ("wrong-1", "wrong-2", "wrong-3", password):
        data = {"old_password": old, "new_password1": "N3w-passw0rd!x", "new_password2": "N3w-passw0rd!x"}
        client.post(page, data)
    staff.refresh_from_db()
    assert staff.check_password(password)  # nothing is changed there: the profile's form changes it
    data = {"form": "password", "old_password": password, "new_password1": "N3w-passw0rd!x"}
    response = client.post(reverse("accounts:profile"), {**data, "new_password2": "N3w-passw0rd!x"})
    assert response.status_code == 302
    assert AuditLog.objects.filter(action=AuditLog.Action.PASSWORD_CHANGED, actor=staff).exists()


def test_a_password_staff_set_in_the_admin_is_audited_as_theirs(client, staff, trader):
    """Staff setting a trader's password in the admin (who can then sign in as the trader) left no
    audit entry: the trail must say who set it, for whom, and from where."""
    client.force_login(staff)
    page = reverse("admin:auth_user_password_change", args=[trader.pk])
    refused = client.post(page, {"password1": "Set-by-desk!x9", "password2": "not-the-same!x9"})
    assert refused.status_code == 200
    assert not AuditLog.objects.filter(action=AuditLog.Action.PASSWORD_CHANGED).exists()
    data = {"password1": "Set-by-desk!x9", "password2": "Set-by-desk!x9", "usable_password": "true"}
    assert client.post(page, data, REMOTE_ADDR="10.1.2.3").status_code == 302
    trader.refresh_from_db()
    assert trader.check_password("Set-by-desk!x9")
    entry = AuditLog.objects.get(action=AuditLog.Action.PASSWORD_CHANGED)
    assert (entry.actor, entry.target_id, entry.ip) == (staff, str(trader.pk), "10.1.2.3")
    assert "Set-by-desk" not in str(entry.data)


def test_a_strangers_failed_logins_do_not_block_the_signed_in_traders_password_change(
    client, trader, password, settings
):
    from django.test import Client

    settings.LOGIN_FAILURES_PER_USERNAME = 3
    assert client.post(reverse("login"), {"username": "trader", "password": password}).status_code == 302
    for _ in range(3):
        Client().post(reverse("login"), {"username": "trader", "password": "wrong"}, REMOTE_ADDR="10.0.0.9")
    new = "N3w-passw0rd!x"
    data = {"form": "password", "old_password": password, "new_password1": new, "new_password2": new}
    assert client.post(reverse("accounts:profile"), data).status_code == 302
    trader.refresh_from_db()
    assert trader.check_password(new)


@pytest.mark.django_db(transaction=True)
def test_one_password_change_sent_twice_at_once_is_one_change_and_leaves_the_browser_signed_in(
    trader_client, trader, password, monkeypatch
):
    """A double-clicked Change password: both requests checked the old password before either saved,
    and both changed it, each with a hash of its own. The answer the browser kept carried a session
    for one of the two: when the other was saved last, the trader was signed out at their next page.
    And the change was audited twice."""
    mariadb_only()
    cookie = trader_client.cookies[settings.SESSION_COOKIE_NAME].value
    clients = [Client(), Client()]  # one browser: both requests carry the session cookie it had
    for client in clients:
        client.cookies[settings.SESSION_COOKIE_NAME] = cookie
    checked, both_read = services.password_check_allowed, threading.Barrier(2)

    def both_read_first(**kwargs):  # each request has read the user, and its session, before either saves
        checked(**kwargs)
        both_read.wait(timeout=10)

    monkeypatch.setattr(services, "password_check_allowed", both_read_first)
    new = "N3w-passw0rd!x"
    data = {"form": "password", "old_password": password, "new_password1": new, "new_password2": new}
    answers = []

    def send(client):
        try:
            answers.append(client.post(reverse("accounts:profile"), data).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == [302, 302]
    # Whichever answer the browser kept, its session is signed in.
    assert [client.get(reverse("accounts:profile")).status_code for client in clients] == [200, 200]
    assert AuditLog.objects.filter(action=AuditLog.Action.PASSWORD_CHANGED).count() == 1
    assert User.objects.get(pk=trader.pk).check_password(new)


def test_a_password_change_checked_before_another_change_was_saved_is_refused_and_changes_nothing(trader, password):
    as_read = User.objects.get(pk=trader.pk)  # the request read the user, then another change was saved
    trader.set_password("0ther-passw0rd!x")
    trader.save()
    with pytest.raises(ValidationError) as refused:
        services.user_password_change(user=as_read, old_password=password, new_password="N3w-passw0rd!x", ip=None)
    assert refused.value.message_dict == {"old_password": [services.PASSWORD_CHANGED_MEANWHILE]}
    assert User.objects.get(pk=trader.pk).check_password("0ther-passw0rd!x")
    assert not AuditLog.objects.filter(action=AuditLog.Action.PASSWORD_CHANGED).exists()


def test_the_same_password_change_sent_again_as_read_before_the_first_saved_is_that_change_audited_once(
    trader, password
):
    as_read = [User.objects.get(pk=trader.pk) for _ in range(2)]  # both requests read the user first
    new = "N3w-passw0rd!x"
    first = services.user_password_change(user=as_read[0], old_password=password, new_password=new, ip=None)
    again = services.user_password_change(user=as_read[1], old_password=password, new_password=new, ip=None)
    assert again.password == first.password == User.objects.get(pk=trader.pk).password  # its session stays valid
    assert AuditLog.objects.filter(action=AuditLog.Action.PASSWORD_CHANGED).count() == 1
