from celery import shared_task

from tradingplatform.celery import periodic

from . import services


@shared_task
@periodic
def heartbeat():
    services.heartbeat_record()
