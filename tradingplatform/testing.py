"""Helpers shared by the test suites of every app."""

import os
import signal
import socket
import subprocess
import sys
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection
from django.views.debug import get_exception_reporter_class

requires_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (a real Redis server)")


def mariadb_only():
    """Skip a test of concurrent writers where the database is not MariaDB (called in the test: the
    database is known then)."""
    if connection.vendor != "mysql":
        pytest.skip("row locks are MariaDB's; SQLite's IMMEDIATE transactions run one writer at a time")


def error_report(request) -> str:
    """Django's report (as mailed to ADMINS, or the debug page) of an error raised while serving ``request``."""
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        reporter = get_exception_reporter_class(request)(request, *sys.exc_info(), is_email=True)
    return reporter.get_traceback_text() + reporter.get_traceback_html()


def database_url() -> str:
    """The test database as a ``DATABASE_URL``, for a process a test starts (a worker, a server)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = quote(db["USER"] or "root", safe="") + (f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else "")
    return f"mysql://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 3306}/{db['NAME']}"


def free_port() -> int:
    """A TCP port free on this machine now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop a server a test started in its own session (``start_new_session``): SIGTERM to its
    group, SIGKILL when it has not gone in 15 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
