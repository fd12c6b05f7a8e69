"""Kite-style postbacks: the paper exchange POSTs an order's new state to the client's URL.

Sent by a Celery task after the change commits; the body carries Kite's checksum,
SHA-256(order_id + order_timestamp + api_secret), so the receiver can verify it.
A receiver must expect repeats (a retried delivery), as with Kite.
"""

import json

import requests

from . import kite_format
from .models import PaperOrder


def deliver(order_pk: int, *, timeout_s: float = 5) -> int:
    order = PaperOrder.objects.select_related("client", "instrument").get(pk=order_pk)
    body = kite_format.postback(order)
    response = requests.post(
        order.client.postback_url,
        data=json.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=timeout_s,
    )
    return response.status_code
