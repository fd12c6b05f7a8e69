"""Monitoring services. For now: the beat heartbeat that shows beat and a worker run."""

import socket

from django.core.cache import cache
from django.utils import timezone

HEARTBEAT_KEY = "celery:heartbeat"


def heartbeat_record() -> dict:
    """Note that a periodic job ran; idempotent (a repeat only moves the time)."""
    beat = {"at": timezone.now().timestamp(), "host": socket.gethostname()}
    cache.set(HEARTBEAT_KEY, beat, timeout=24 * 3600)
    return beat


def heartbeat_age_s() -> float | None:
    beat = cache.get(HEARTBEAT_KEY)
    return None if beat is None else timezone.now().timestamp() - beat["at"]
