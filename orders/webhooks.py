"""``POST /hooks/strategies/<id>/``: TradingView-style alerts that place a strategy's orders.

The body is JSON: ``{"secret", "id", "timestamp", "symbol": "NSE:INFY", "side" (or "action"),
"quantity", "order_type"?, "product"?, "price"?, "trigger_price"?}``; any other field is refused,
naming it. No session or CSRF: the secret authenticates it; the id and timestamp stop replays.
"""

import json
import logging
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, ValidationError
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.utils import client_ip
from tradingplatform.api import RepeatedKey, unique_keys
from tradingplatform.errors import first_error

from . import sources

logger = logging.getLogger(__name__)


def _error(status: int, code: str, message: str, field: str | None = None, why: str = "") -> JsonResponse:
    response = JsonResponse({"error": {"code": code, "message": message, "field": field}}, status=status)
    # Why, for the strategy's owner (``sources.strategy_alert_refused``): the sender is told less
    # when it may not be the owner (a wrong secret is not told apart from an unknown strategy).
    # Refused before its secret is read, never a word of the sender's (``why`` then: ours alone).
    response.refusal = why or (f"{field}: {message}" if field else message)
    return response


# The service's names for the alert's fields.
FIELD_NAMES = {"instrument": "symbol", "signal_id": "id"}


@csrf_exempt
def strategy_signal(request, pk):
    response = _strategy_signal(request, pk)
    if response.status_code >= 400 and request.method == "POST":
        # The sender alone sees the answer: its strategy's owner sees that one was refused, and why.
        try:
            sources.strategy_alert_refused(strategy_id=pk, reason=getattr(response, "refusal", ""))
        except Exception:  # the answer stands without its trace
            logger.exception("recording a refused webhook for strategy %s failed", pk)
    return response


def _strategy_signal(request, pk):
    if request.method != "POST":
        response = _error(405, "method_not_allowed", "POST the alert's JSON here.")
        response["Allow"] = "POST"
        return response
    try:
        raw = request.body
    except RequestDataTooBig:  # the sender's mistake (as the API answers it), not a 400 page of HTML
        logger.warning("refused webhook for strategy %s from %s: body too large", pk, client_ip(request))
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return _error(413, "payload_too_large", f"The body is too large: at most {limit} bytes.")
    try:
        # A number with a fraction as written (as the API reads it), never through a float:
        # "price": 1400.0000000000001 would become 1400.0 and pass the tick check it fails.
        # A key said twice is refused (as by the API): which side or price was meant is not ours to guess.
        body = json.loads(raw or b"{}", parse_float=Decimal, object_pairs_hook=unique_keys)
        if not isinstance(body, dict):
            raise ValueError
    except RepeatedKey as exc:
        # The sender is told which key; the owner's page is not: read before the secret, the key is
        # anyone's text.
        return _error(400, "invalid", str(exc), why="a key repeated in its JSON body")
    except (ValueError, RecursionError):  # RecursionError: nested too deep to read
        return _error(400, "invalid", "Send a JSON object.")
    try:
        signal, replayed = sources.strategy_webhook(strategy_id=pk, body=body)
    except PermissionError as exc:
        logger.warning("refused webhook for strategy %s from %s: %s", pk, client_ip(request), exc)
        return _error(
            403, "forbidden", "Unknown strategy, wrong secret, or a timestamp too far from now.", why=str(exc)
        )
    except ValidationError as exc:
        field, message, code = first_error(exc)
        status, code = (409, "conflict") if code == "conflict" else (422, "invalid")
        return _error(status, code, message, FIELD_NAMES.get(field, field))
    except Exception:
        logger.exception("webhook for strategy %s failed", pk)
        return _error(500, "internal", "The alert could not be handled.")
    return JsonResponse(
        {"signal": signal.signal_id, "replayed": replayed, "results": signal.results}, status=200 if replayed else 201
    )
