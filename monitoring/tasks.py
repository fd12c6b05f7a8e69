from celery import shared_task

from accounts.models import BrokerAccount
from tradingplatform.celery import periodic

from . import cycle, services
from .models import MonitoringRun


@shared_task
@periodic
def heartbeat():
    services.heartbeat_record()


@shared_task
@periodic
def start_cycle():
    """Every MONITORING_INTERVAL_S: one task per monitored account."""
    run, account_ids = services.cycle_start()
    for account_id in account_ids:
        monitor_account.delay(account_id, run.pk)
    return len(account_ids)


@shared_task(soft_time_limit=240)
def monitor_account(account_id: int, run_id: int | None):
    account = BrokerAccount.objects.select_related("owner").filter(pk=account_id, is_active=True).first()
    if account is None:
        return "inactive"
    result = cycle.account_monitor(account=account, run_id=run_id)
    if run_id is not None:
        MonitoringRun.objects.filter(pk=run_id).update(finished_at=result.finished_at)
    return result.status
