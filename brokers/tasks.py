from celery import shared_task

from tradingplatform.celery import periodic

from . import services


@shared_task
@periodic
def sessions_expire():
    """Mark sessions past their expiry as expired, so the accounts page prompts a reconnect."""
    return services.sessions_expire_due()
