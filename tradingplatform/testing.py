"""Helpers shared by the test suites of every app."""

import pytest
from django.conf import settings

requires_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (a real Redis server)")
