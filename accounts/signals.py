"""Keeps the API-key auth cache true: a saved or deleted user or key drops its cached entries.

Cache upkeep only (the rules live in ``services``); connected in ``AccountsConfig.ready``.
Code that changes users or keys with ``QuerySet.update`` calls ``services.api_keys_forget*``.
"""

from django.db.models.signals import post_delete, post_save

from . import services
from .models import ApiKey, User


def _user_changed(sender, instance, created=False, update_fields=None, **_kwargs):
    if created:
        return  # no keys yet
    if update_fields is not None and not services.CACHED_USER_FIELDS.intersection(update_fields):
        return  # e.g. last_login on every web login: nothing the cache holds
    services.api_keys_forget_owner(instance.pk)


def _key_changed(sender, instance, created=False, **_kwargs):
    if not created:
        services.api_keys_forget([instance.hashed_key])


def connect() -> None:
    post_save.connect(_user_changed, sender=User, dispatch_uid="accounts-apikey-cache-user-saved")
    post_delete.connect(_user_changed, sender=User, dispatch_uid="accounts-apikey-cache-user-deleted")
    post_save.connect(_key_changed, sender=ApiKey, dispatch_uid="accounts-apikey-cache-key-saved")
    post_delete.connect(_key_changed, sender=ApiKey, dispatch_uid="accounts-apikey-cache-key-deleted")
