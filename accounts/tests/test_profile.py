from datetime import datetime
from zoneinfo import ZoneInfo

from django.core.management import call_command
from django.urls import reverse

from accounts.models import AuditLog, BrokerAccount, User


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
