"""Encryption at rest for secrets (broker credentials, session tokens).

A secret is held in memory as a ``Sealed`` value: the Fernet token, never the
plaintext. ``reveal()`` decrypts it at the moment of use; its ``repr`` and ``str`` say
``<sealed>``, so a secret cannot slip into a log line, a traceback or a template.
Keys come from ``settings.FIELD_ENCRYPTION_KEYS`` (MultiFernet: the first key
encrypts, every key decrypts), so keys rotate without downtime.
"""

import json
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models


@lru_cache(maxsize=4)
def _multifernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def multifernet() -> MultiFernet:
    return _multifernet(tuple(settings.FIELD_ENCRYPTION_KEYS))


class DecryptionError(Exception):
    """No configured key opens this value (a key was removed too early)."""


class Sealed:
    """An encrypted JSON value. Compare and store it; reveal it only to use it."""

    __slots__ = ("token",)

    def __init__(self, token: str):
        self.token = token

    @classmethod
    def seal(cls, value) -> "Sealed":
        return cls(multifernet().encrypt(json.dumps(value).encode()).decode())

    def reveal(self):
        try:
            return json.loads(multifernet().decrypt(self.token.encode()))
        except InvalidToken as exc:
            raise DecryptionError("no key in FIELD_ENCRYPTION_KEYS decrypts this value") from exc

    def rotated(self) -> "Sealed":
        """The same value encrypted with the current primary key."""
        try:
            return Sealed(multifernet().rotate(self.token.encode()).decode())
        except InvalidToken as exc:
            raise DecryptionError("no key in FIELD_ENCRYPTION_KEYS decrypts this value") from exc

    def __repr__(self):
        return "<sealed>"

    __str__ = __repr__

    def __eq__(self, other):
        return isinstance(other, Sealed) and other.token == self.token

    def __hash__(self):
        return hash(self.token)


class EncryptedJSONField(models.TextField):
    """A JSON value stored as a Fernet token; in Python always a ``Sealed`` (or None).

    Not editable, so no ModelForm or admin form ever renders it.
    """

    def __init__(self, *args, **kwargs):
        kwargs["editable"] = False
        super().__init__(*args, **kwargs)

    def deconstruct(self):
        name, path, args, kwargs = super().deconstruct()
        kwargs.pop("editable", None)
        return name, path, args, kwargs

    def from_db_value(self, value, expression, connection):
        return None if value in (None, "") else Sealed(value)

    def to_python(self, value):
        if value is None or isinstance(value, Sealed):
            return value
        return Sealed(value)

    def get_prep_value(self, value):
        if value is None:
            return None
        if not isinstance(value, Sealed):
            raise TypeError("assign a Sealed value (Sealed.seal(plaintext)), never plaintext")
        return value.token

    def value_to_string(self, obj):
        # Serialization (dumpdata) carries the token, never the plaintext.
        value = self.value_from_object(obj)
        return value.token if value else ""
