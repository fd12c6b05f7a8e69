"""Keeps the fast paths' memo of a broker client's accounts true: a saved or deleted account (by a
service or in the admin) has this process read them again. Cache upkeep only; connected in
``BrokersConfig.ready``. ``accounts.services.broker_account_set_active`` changes accounts with
``QuerySet.update`` and forgets them itself.
"""

from django.db import transaction
from django.db.models.signals import post_delete, post_save

from accounts.models import BrokerAccount

from .services import client_accounts_forget


def _account_changed(sender, instance, **_kwargs):
    transaction.on_commit(client_accounts_forget)


def connect() -> None:
    post_save.connect(_account_changed, sender=BrokerAccount, dispatch_uid="brokers-client-accounts-saved")
    post_delete.connect(_account_changed, sender=BrokerAccount, dispatch_uid="brokers-client-accounts-deleted")
