from celery import shared_task

from tradingplatform.celery import periodic

from . import engine, feed, postbacks


@shared_task
@periodic
def market_tick():
    """One step of the price feed and the matching it causes; the new prices go to the platform."""
    fills = engine.market_tick()
    feed.publish_ticks()
    return fills


@shared_task(bind=True, max_retries=5, default_retry_delay=2)
def send_postback(self, order_pk: int):
    """Deliver one postback; retried on network errors (receivers de-duplicate, as with Kite)."""
    import requests

    try:
        return postbacks.deliver(order_pk)
    except requests.RequestException as exc:
        raise self.retry(exc=exc) from exc
