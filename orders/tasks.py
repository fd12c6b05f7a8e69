from celery import shared_task

from accounts.models import BrokerAccount
from tradingplatform import locks

from . import services


@shared_task
def sync_account(account_id: int):
    """Reconcile one account's orders with its broker; a burst of requests runs it once."""
    if not locks.acquire(f"orders:sync:{account_id}", ttl_s=1.0):
        return "skipped"
    account = BrokerAccount.objects.filter(pk=account_id, is_active=True).first()
    if account is None:
        return "inactive"
    return services.orders_sync_account(account=account)
