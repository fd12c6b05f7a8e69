"""Fixtures of the security sweep (see security.py)."""

from .security import owned  # noqa: F401
