"""The JSON API at /api/v1/: API-key auth, one error shape, routers from each app.

Every error answers ``{"error": {"code": ..., "message": ..., "field": ...}}``.
"""

import json
import logging
import math
from collections import Counter
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.parser import Parser

from accounts.api import ApiBudgetUnavailable, ApiKeyBearer, ApiKeyHeader, ApiRateLimited
from accounts.api import router as accounts_router
from brokers.api import router as instruments_router
from orders.api import IDEMPOTENCY_KEY_MAX
from orders.api import router as orders_router
from orders.services import OrderActionRefused
from portfolio.api import router as portfolio_router

from . import numbers
from .errors import first_error
from .schemas import UnknownFilter, api_field, declared_query_only

logger = logging.getLogger(__name__)

# The answers every operation can give besides its own: the handlers below produce them.
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
        }
    },
}
ERROR_RESPONSES = {
    "400": "The body is not JSON.",
    "401": "No valid API key.",
    "404": "Unknown id, or another trader's.",
    "409": (
        "Conflict (an idempotency key reused with another body), refused in the order's state (`refused`),"
        " or a modify or cancel sent whose broker answer was lost, perhaps done (`outcome_unknown`: read the order)."
    ),
    "413": "The body is larger than the server takes (`payload_too_large`).",
    "422": "Invalid input; `field` names it.",
    "429": "Over the key's rate budget or too many failed keys from this address; see Retry-After.",
    "503": "The key's budget could not be checked just now (`unavailable`); nothing was done: retry after Retry-After.",
}
# The answers that say how long to wait before sending the request again.
RETRY_AFTER = {
    "Retry-After": {
        "description": "Whole seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 1},
    }
}


class TradingAPI(NinjaAPI):
    def get_openapi_schema(self, *, path_prefix=None, path_params=None):
        """Ninja's schema, with the error answers documented on every operation that can give them,
        and the ``Idempotency-Key`` header's length (checked by the endpoints, so that an over-long
        key is a 422 naming ``idempotency_key``)."""
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        json_schema_bounds(schema)
        schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for operations in schema["paths"].values():
            for method, operation in operations.items():
                parameters = operation.get("parameters", [])
                for parameter in parameters:
                    if parameter["in"] == "header" and parameter["name"] == "Idempotency-Key":
                        parameter["schema"]["maxLength"] = IDEMPOTENCY_KEY_MAX
                codes = ["401", "429", "503"] + (["400", "413"] if "requestBody" in operation else [])
                codes.append("422")  # every operation refuses a query parameter it does not take
                if any(parameter["in"] == "path" for parameter in parameters):
                    codes.append("404")
                if method in ("post", "put", "patch", "delete"):
                    codes.append("409")
                for code in codes:
                    answer = {"description": ERROR_RESPONSES[code], "content": error}
                    if code in ("429", "503"):
                        answer["headers"] = RETRY_AFTER
                    operation["responses"].setdefault(code, answer)
        return schema


# Pydantic's bounds, and the JSON Schema keywords that say them of a number.
BOUND_KEYWORDS = {"lt": "exclusiveMaximum", "le": "maximum", "gt": "exclusiveMinimum", "ge": "minimum"}


def json_schema_bounds(node) -> None:
    """The bounds of a number that may also be sent as text (``Number``: ``price: Number | None =
    Field(None, lt=MAX_PRICE)``) in JSON Schema's words, on its number: pydantic leaves them as
    ``"lt": "1000000000000"`` beside the choice of a number or a string, which no client reads (one
    generated from the schema took any price, and learnt the bound from a 422)."""
    if isinstance(node, list):
        for item in node:
            json_schema_bounds(item)
        return
    if not isinstance(node, dict):
        return
    if "anyOf" in node:
        bounds = {BOUND_KEYWORDS[key]: node.pop(key) for key in list(node) if key in BOUND_KEYWORDS}
        if bounds:
            _bound_numbers(node["anyOf"], {name: _number(value) for name, value in bounds.items()})
    for value in node.values():
        json_schema_bounds(value)


def _bound_numbers(options: list, bounds: dict) -> None:
    for option in options:
        if option.get("type") in ("number", "integer"):
            option.update(bounds)
        _bound_numbers(option.get("anyOf", []), bounds)


def _number(value):
    """A bound as a JSON number (pydantic writes a Decimal's as text): whole when it is whole."""
    value = Decimal(str(value))
    return int(value) if value == value.to_integral_value() else float(value)


class JsonParser(Parser):
    """Bodies are JSON, said so by their Content-Type: a form or text body is not read as JSON.

    A JSON number with a fraction is read as a ``Decimal``, exactly as written: through a float,
    ``"price": 1400.0000000000001`` would become 1400.0 and pass the tick check it fails. Decimal
    fields take it as it is; whole-number fields (quantities, ids) are strict and still refuse 1.5.
    """

    def parse_body(self, request):
        if request.content_type != "application/json" and not request.content_type.endswith("+json"):
            raise ValueError(f"Content-Type {request.content_type or 'missing'}")
        return json.loads(request.body, parse_float=Decimal, parse_int=numbers.json_int, object_pairs_hook=unique_keys)


class RepeatedKey(ValueError):
    """A JSON object whose keys repeat: which of two prices was meant is not ours to guess."""


def unique_keys(pairs: list[tuple]) -> dict:
    seen = dict(pairs)
    if len(seen) != len(pairs):
        # Counted once (not each key over the whole body: quadratic, minutes for a large body).
        counts = Counter(key for key, _ in pairs)
        repeated = next(key for key, _ in pairs if counts[key] > 1)
        raise RepeatedKey(f"The body is refused: the key {repeated!r} appears more than once.")
    return seen


api = TradingAPI(
    parser=JsonParser(),
    title="Trading platform API",
    version="1",
    auth=[ApiKeyBearer(), ApiKeyHeader()],
    urls_namespace="api",
    docs_url="/docs",
)


def error_response(request, status: int, code: str, message: str, field: str | None = None):
    return api.create_response(request, {"error": {"code": code, "message": message, "field": field}}, status=status)


@api.exception_handler(AuthenticationError)
def on_auth_error(request, exc):
    response = error_response(
        request, 401, "unauthenticated", "Send a valid API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."
    )
    response["WWW-Authenticate"] = "Bearer"
    return response


@api.exception_handler(NinjaValidationError)
def on_request_invalid(request, exc):
    first = exc.errors[0] if exc.errors else {}
    # (where, [the view's argument,] the field, ...): the field, and an item's index in a body.
    where, *path = first.get("loc", ()) or ("body",)
    location = [
        str(part)
        for part in path
        if part not in ("payload", "filters", "query") and (where == "body" or not isinstance(part, int))
    ]
    message = first.get("msg", "Invalid request.").removeprefix("Value error, ")  # our validators' own words
    return error_response(request, 422, "invalid", message, ".".join(location) or None)


@api.exception_handler(UnknownFilter)
def on_unknown_filter(request, exc):
    return error_response(request, 422, "invalid", exc.message, exc.field)


@api.exception_handler(DjangoValidationError)
def on_validation_error(request, exc):
    field, message, code = first_error(exc)
    field = api_field(field)
    status, code = (409, "conflict") if code == "conflict" else (422, "invalid")
    return error_response(request, status, code, message, field)


@api.exception_handler(OrderActionRefused)
def on_refused(request, exc):
    # Not done (``refused``), or sent and its answer lost, so perhaps done (``outcome_unknown``):
    # read the order again before repeating it.
    return error_response(request, 409, "outcome_unknown" if exc.outcome_unknown else "refused", exc.message, exc.field)


@api.exception_handler(ApiRateLimited)
def on_rate_limited(request, exc):
    response = error_response(request, 429, "rate_limited", f"Too many requests; retry in {exc.retry_after:.1f}s.")
    # Whole seconds, rounded up: a client that waits exactly this long must find a slot free.
    response["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return response


@api.exception_handler(ApiBudgetUnavailable)
def on_budget_unavailable(request, exc):
    response = error_response(request, 503, "unavailable", "The request could not be served just now; retry shortly.")
    response["Retry-After"] = "1"
    return response


@api.exception_handler(Http404)
def on_not_found(request, exc):
    return error_response(request, 404, "not_found", "Not found.")


@api.exception_handler(RequestDataTooBig)
def on_body_too_large(request, exc):
    """A body over ``DATA_UPLOAD_MAX_MEMORY_SIZE``: the caller's mistake (not retried by clients), not ours."""
    logger.warning("API %s %s: body too large (%s)", request.method, request.path, request.META.get("CONTENT_LENGTH"))
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return error_response(request, 413, "payload_too_large", f"The body is too large: at most {limit} bytes.")


@api.exception_handler(SuspiciousOperation)
def on_suspicious(request, exc):
    """A request Django refuses to read (more query parameters than ``DATA_UPLOAD_MAX_NUMBER_FIELDS``):
    the caller's, a 400 as Django answers it elsewhere, not a failure of ours."""
    logger.warning("API %s %s: refused (%s: %s)", request.method, request.path, type(exc).__name__, exc)
    return error_response(request, 400, "bad_request", f"The request is refused: {exc}")


HTTP_CODES = {400: "bad_request", 403: "forbidden", 404: "not_found", 409: "conflict", 422: "invalid"}


@api.exception_handler(HttpError)
def on_http_error(request, exc):
    message = str(exc)
    if isinstance(exc.__cause__, RepeatedKey):
        message = str(exc.__cause__)
    elif exc.status_code == 400:  # ninja's "Cannot parse request body"
        message = "The body must be JSON, sent with Content-Type: application/json."
    return error_response(request, exc.status_code, HTTP_CODES.get(exc.status_code, "error"), message)


@api.exception_handler(Exception)
def on_unexpected(request, exc):
    """A bug or an outage: logged with its traceback, answered in the one shape."""
    logger.exception("API %s %s failed", request.method, request.path, exc_info=exc)
    request_id = getattr(request, "request_id", None)
    message = "Something went wrong on our side; the error was logged"
    message = f"{message} (request id {request_id})." if request_id else f"{message}."
    response = error_response(request, 500, "internal", message)
    # Logged above, with its traceback: Django's handler must not log it again ("Internal Server Error").
    response._has_been_logged = True
    return response


api.add_decorator(declared_query_only)  # every operation, after its key and its input were checked
api.add_router("/", accounts_router)
api.add_router("/", instruments_router)
api.add_router("/", orders_router)
api.add_router("/", portfolio_router)
