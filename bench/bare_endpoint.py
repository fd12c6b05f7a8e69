"""The issue's yardstick for ``bench/order_api.py``: a bare Django endpoint that inserts an order and
matches it in-process, served like the platform (``--server bare/gunicorn-sync:1``).

``POST /api/v1/orders`` with the bench's body: no middleware, no API key, no validation, no
daily counter, no events, no broker adapter. The order is matched at once against an in-memory
book per instrument (the paper exchange's ``OrderBook``, the market one tick wide at the
instrument's last price as loaded at start) and inserted as one FILLED ``Order`` row
(autocommit: one durable commit), keyed by the request's ``Idempotency-Key`` as the platform
keys them, so the bench's database check counts it the same way. It is a measuring stick, never part of the platform.
"""

import itertools
import json
import os
import threading
import uuid
from decimal import Decimal

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradingplatform.settings")

from django.conf import settings  # noqa: E402
from django.db import IntegrityError  # noqa: E402
from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

settings.MIDDLEWARE = []
settings.ROOT_URLCONF = __name__

_books: dict[tuple[str, str], tuple] = {}  # (exchange, symbol) -> (instrument id, bid, ask, book, lock)
_ids = itertools.count(1)
_load_lock = threading.Lock()


def _market(exchange: str, symbol: str):
    if not _books:
        from brokers.models import Instrument
        from brokers.paper.book import OrderBook

        with _load_lock:
            if not _books:  # once, whichever thread comes first
                books = {}
                for pk, ex, sym, last, tick in Instrument.objects.values_list(
                    "pk", "exchange", "tradingsymbol", "last_price", "tick_size"
                ):
                    bid = int((last or Decimal(100)) * 100)  # the market: bid at the last price, ask a tick above
                    books[(ex, sym)] = (pk, bid, bid + int(tick * 100), OrderBook(), threading.Lock())
                _books.update(books)
    return _books[(exchange, symbol)]


@csrf_exempt
def order_place(request):
    from orders.models import Order

    body = json.loads(request.body)
    instrument_id, bid, ask, book, lock = _market(body["exchange"], body["tradingsymbol"])
    side, quantity = body["side"], int(body["quantity"])
    order_id = f"B{os.getpid()}-{next(_ids)}"
    with lock:  # cross the market: the whole quantity fills at the touch
        book.add_limit(order_id, side, ask if side == "BUY" else bid, quantity)
        fills = book.match(bid=bid, ask=ask, volume=quantity)
    price = Decimal(fills[0].price) / 100 if fills else Decimal(0)
    key = f"bare:api:{request.headers['Idempotency-Key']}"
    try:
        order = Order.objects.create(
            reference=uuid.uuid4().hex[:20],
            account_id=body["account_id"],
            instrument_id=instrument_id,
            side=side,
            quantity=quantity,
            order_type=body["order_type"],
            product=body["product"],
            status=Order.Status.FILLED,
            source=Order.Source.MANUAL,
            broker_order_id=order_id,
            filled_quantity=sum(f.quantity for f in fills),
            average_price=price,
            idempotency_key=key,
        )
    except IntegrityError:  # a request sent again (the bench resends once on a connection the server closed)
        order = Order.objects.get(idempotency_key=key)
        return JsonResponse({"id": order.pk, "status": order.status, "broker_order_id": order.broker_order_id})
    return JsonResponse({"id": order.pk, "status": order.status, "broker_order_id": order_id}, status=201)


def healthz(request):
    return HttpResponse("ok")


urlpatterns = [path("api/v1/orders", order_place), path("healthz", healthz)]

application = get_wsgi_application()
