"""Settings for the test suite: the real settings, with what makes tests fast and isolated.

With no environment set this runs on SQLite and in-process fallbacks; with DATABASE_URL
and REDIS_URL it runs against those servers, each test run under its own key prefix.
"""

import os
import uuid

# Local defaults (generated secret and encryption keys under var/) as in a local run.
os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("CACHE_KEY_PREFIX", f"test-{uuid.uuid4().hex[:8]}")
os.environ.setdefault("READYZ_CHECK_CELERY", "false")
os.environ.setdefault("READYZ_CHECK_BEAT", "false")
os.environ.setdefault("CELERY_QUEUE", os.environ["CACHE_KEY_PREFIX"])

from .settings import *  # noqa: E402, F403

# Argon2 is the real hasher (settings.PASSWORD_HASHERS); tests hash many passwords.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"  # noqa: F405

# Each run has its own test database, so two runs at once (two terminals, CI steps) never
# drop each other's. On SQLite it is a file (WAL, busy timeout), not shared-cache memory,
# so tests with threads see the same locking as a real run.
_run = os.environ["CACHE_KEY_PREFIX"].replace("-", "_")
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"{_run}.sqlite3")}  # noqa: F405
else:
    DATABASES["default"].setdefault("TEST", {})["NAME"] = _run  # noqa: F405
