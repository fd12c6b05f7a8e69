"""Settings as production loads them: each case in a fresh interpreter with its own environment."""

import os
import secrets
import subprocess
import sys

import pytest
from django.conf import settings as django_settings


@pytest.mark.parametrize("missing", ["SECRET_KEY", "ALLOWED_HOSTS", "FIELD_ENCRYPTION_KEYS"])
def test_production_settings_refuse_to_start_without_a_secret(missing):
    env = production_env()
    del env[missing]
    result = load_settings(env)
    assert result.returncode != 0
    assert missing in result.stderr


def test_production_settings_refuse_a_bad_encryption_key():
    result = load_settings({**production_env(), "FIELD_ENCRYPTION_KEYS": "not-a-key"})
    assert result.returncode != 0 and "FIELD_ENCRYPTION_KEYS" in result.stderr


@pytest.mark.parametrize("keys", [",", " , "])
def test_settings_refuse_encryption_keys_that_name_no_key(keys):
    """A list with nothing in it (two unset variables joined by a comma) is no key at all: without
    this, startup went through and the first broker account saved was a 500 (MultiFernet: no key)."""
    result = load_settings({**production_env(), "FIELD_ENCRYPTION_KEYS": keys})
    assert result.returncode != 0 and "FIELD_ENCRYPTION_KEYS" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("key", ["x" * 50, "s3cret-but-short", "django-insecure-" + "k7#q9z!m2v" * 5])
def test_production_settings_refuse_a_guessable_secret_key(key):
    """A key anyone could guess signs sessions anyone could forge: startup used to go through."""
    result = load_settings({**production_env(), "SECRET_KEY": key})
    assert result.returncode != 0 and "SECRET_KEY is too weak" in result.stderr, result.stderr[-2000:]


def test_production_settings_are_secure():
    result = load_settings(
        production_env(),
        "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS > 0, s.X_FRAME_OPTIONS,"
        " s.SECURE_CONTENT_TYPE_NOSNIFF, s.SESSION_COOKIE_HTTPONLY)",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True", "DENY", "True", "True"]


def test_mysql_url_gets_strict_mode_and_utf8mb4():
    # Without mysqlclient, as on a fresh machine's `./bin/test` (it installs requirements-mysql.txt
    # only for a mysql:// DATABASE_URL): the settings are read, the driver is not loaded.
    result = load_settings(
        {**production_env(), "DATABASE_URL": "mysql://u:p@db:3306/trading"},
        "o = s.DATABASES['default']['OPTIONS']; print(o['charset'], 'STRICT_TRANS_TABLES' in o['init_command'])",
        setup=False,
        prelude="import sys; sys.modules['MySQLdb'] = None\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["utf8mb4", "True"]


def test_sqlite_default_uses_wal_and_a_busy_timeout():
    result = load_settings(
        {**production_env(), "DATABASE_URL": ""},
        "o = s.DATABASES['default']['OPTIONS']; print('journal_mode=WAL' in o['init_command'], o['timeout'])",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "20"]


def production_env() -> dict:
    from cryptography.fernet import Fernet

    keep = {name: os.environ[name] for name in ("PATH", "HOME", "DATABASE_URL", "REDIS_URL") if name in os.environ}
    return {
        **keep,
        "DJANGO_SETTINGS_MODULE": "tradingplatform.settings",
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "trade.example.com",
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    }


def load_settings(env: dict, code: str = "", *, setup: bool = True, prelude: str = "") -> subprocess.CompletedProcess:
    script = prelude + "import django; from django.conf import settings as s\n"
    script += ("django.setup()\n" if setup else "") + code
    return subprocess.run(
        [sys.executable, "-c", script],
        env={k: v for k, v in env.items() if v != ""},
        cwd=django_settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
