"""Helpers shared by the test suites of every app."""

import sys

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
