"""Helpers shared by the test suites of every app."""

import sys

import pytest
from django.conf import settings
from django.views.debug import get_exception_reporter_class

requires_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (a real Redis server)")


def error_report(request) -> str:
    """Django's report (as mailed to ADMINS, or the debug page) of an error raised while serving ``request``."""
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        reporter = get_exception_reporter_class(request)(request, *sys.exc_info(), is_email=True)
    return reporter.get_traceback_text() + reporter.get_traceback_html()
