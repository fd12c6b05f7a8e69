"""The JSON API at /api/v1/: API-key auth, one error shape, routers from each app.

Every error answers ``{"error": {"code": ..., "message": ..., "field": ...}}``.
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError

from accounts.api import ApiKeyBearer, ApiKeyHeader
from accounts.api import router as accounts_router

api = NinjaAPI(
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
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "payload")]
    return error_response(request, 422, "invalid", first.get("msg", "Invalid request."), ".".join(location) or None)


@api.exception_handler(DjangoValidationError)
def on_validation_error(request, exc):
    if hasattr(exc, "error_dict"):
        field, messages = next(iter(exc.message_dict.items()))
        return error_response(request, 422, "invalid", " ".join(messages), None if field == "__all__" else field)
    return error_response(request, 422, "invalid", " ".join(exc.messages))


@api.exception_handler(Http404)
def on_not_found(request, exc):
    return error_response(request, 404, "not_found", "Not found.")


@api.exception_handler(HttpError)
def on_http_error(request, exc):
    return error_response(request, exc.status_code, "error", str(exc))


api.add_router("/", accounts_router)
