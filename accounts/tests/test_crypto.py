import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db import connection

from accounts.crypto import DecryptionError, Sealed
from accounts.models import BrokerAccount
from accounts.tests.factories import make_kite_account
from tradingplatform import memo


def raw_column(account) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT credentials FROM accounts_brokeraccount WHERE id = %s", [account.pk])
        return cursor.fetchone()[0]


def test_sealed_round_trip_and_never_prints_plaintext():
    sealed = Sealed.seal({"api_secret": "s3cr3t"})
    assert sealed.reveal() == {"api_secret": "s3cr3t"}
    assert "s3cr3t" not in sealed.token
    assert repr(sealed) == str(sealed) == "<sealed>"
    assert f"{sealed}" == "<sealed>"


def test_credentials_are_stored_encrypted(trader):
    account = make_kite_account(trader, api_secret="PLAIN-SECRET-1")
    stored = raw_column(account)
    assert "PLAIN-SECRET-1" not in stored
    assert BrokerAccount.objects.get(pk=account.pk).credentials.reveal()["api_secret"] == "PLAIN-SECRET-1"


def test_plaintext_assignment_is_refused(trader):
    account = make_kite_account(trader)
    account.credentials = {"api_secret": "oops"}
    with pytest.raises(TypeError):
        account.save()


def test_rotation_reencrypts_with_the_new_key_and_old_key_can_be_dropped(trader, settings):
    old_key = settings.FIELD_ENCRYPTION_KEYS[0]
    account = make_kite_account(trader, api_secret="ROTATE-ME")
    before = raw_column(account)

    new_key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    call_command("rotate_encryption_keys")
    after = raw_column(account)
    assert after != before

    settings.FIELD_ENCRYPTION_KEYS = [new_key]
    assert BrokerAccount.objects.get(pk=account.pk).credentials.reveal()["api_secret"] == "ROTATE-ME"

    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    with pytest.raises(DecryptionError):
        BrokerAccount.objects.get(pk=account.pk).credentials.reveal()


def test_rotation_without_the_old_key_fails_and_changes_nothing(trader, settings):
    account = make_kite_account(trader)
    before = raw_column(account)
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(CommandError, match="keep the old key"):
        call_command("rotate_encryption_keys")
    assert raw_column(account) == before


def test_orders_go_through_once_the_old_key_is_dropped_right_after_rotation(trader, account, settings):
    """The rotation's steps as its help says (new key first, rotate, drop the old key): the session
    remembered in the cache before the rotation was sealed with the old key."""
    from orders.tests.factories import place

    assert place(trader, account).status == "FILLED"  # logs in: the session is cached
    old_key = settings.FIELD_ENCRYPTION_KEYS[0]
    new_key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    call_command("rotate_encryption_keys")
    settings.FIELD_ENCRYPTION_KEYS = [new_key]
    memo.clear_all()  # the processes restarted with the new key alone

    order = place(trader, account)
    assert (order.status, order.reject_reason) == ("FILLED", "")
