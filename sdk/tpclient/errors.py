"""Typed exceptions for the API's error answers.

Every error the API sends has the body ``{"error": {"code": ..., "message": ..., "field": ...}}``;
:func:`error_from_response` turns it into the exception class for its HTTP status. All of
them derive from :class:`ApiError`, so ``except ApiError`` catches everything the client raises.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = [
    "ApiError",
    "AuthenticationError",
    "NotFound",
    "Conflict",
    "InvalidRequest",
    "RateLimited",
    "ServerError",
    "TransportError",
    "error_from_response",
    "parse_retry_after",
]


class ApiError(Exception):
    """An error answer from the API (or, for :class:`TransportError`, no answer at all).

    ``status`` is the HTTP status (None when no response arrived), ``code`` the API's error
    code (``invalid``, ``not_found``, ``conflict``, ``refused``, ``rate_limited``, ...),
    ``message`` its human-readable text and ``field`` the input at fault, if any.
    ``attempts`` is how many times the client sent the call (1 when it was not retried).
    """

    attempts: int = 1
    # Whether an earlier attempt of the call may have been carried out by the server (its answer was lost).
    after_lost_answer: bool = False

    def __init__(self, message: str, *, status: int | None = None, code: str = "error", field: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def __str__(self) -> str:
        text = self.message
        if self.field:
            text += f" (field: {self.field})"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, field={self.field!r})"
        )


class AuthenticationError(ApiError):
    """401: the API key is missing, unknown, revoked or expired."""


class NotFound(ApiError):
    """404: no such object (another trader's ids are 404 too)."""


class Conflict(ApiError):
    """409: a conflict or a refused action (e.g. cancelling a filled order, a reused idempotency key)."""


class AnswerLost(Conflict):
    """409 ``outcome_unknown``: a modify or cancel was sent to the broker and its answer lost, so
    it may have been done: read the order (``get_order``) before repeating it."""


class InvalidRequest(ApiError):
    """422: invalid input; ``field`` names it."""


class RateLimited(ApiError):
    """429: too many requests; ``retry_after`` is the seconds to wait (from the ``Retry-After`` header)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(ApiError):
    """5xx: the server (or a proxy in front of it) failed; ``retry_after`` is the seconds it asked
    to be given (a 503's ``Retry-After`` header), if it did."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class TransportError(ApiError):
    """No answer: the connection failed or timed out (after the client's retries).

    The call may or may not have been carried out: look before repeating one that is not
    idempotent (an order placed with your own ``idempotency_key`` is safe to repeat). ``sent`` is
    False when no attempt of it can have reached the server (no connection was ever opened, or the
    request could not be made): then it certainly was not.
    """

    def __init__(self, message: str, *, sent: bool = True):
        super().__init__(message, status=None, code="transport_error")
        self.sent = sent


_BY_STATUS: dict[int, type[ApiError]] = {
    401: AuthenticationError,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
    429: RateLimited,
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_from_response(response) -> ApiError:
    """The exception for an error response (a ``requests.Response`` with status >= 400)."""
    status = response.status_code
    code, message, field = f"http_{status}", "", None
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or code)
        message = str(error.get("message") or "")
        field = error.get("field") or None
    if not message:
        text = (response.text or "").strip()
        message = f"HTTP {status} {response.reason or ''}".strip()
        if text and len(text) <= 200 and not text.startswith("<"):
            message += f": {text}"
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status == 429:
        return RateLimited(message, status=status, code=code, field=field, retry_after=retry_after)
    if status >= 500:
        return ServerError(message, status=status, code=code, field=field, retry_after=retry_after)
    cls = _BY_STATUS.get(status) or ApiError
    if cls is Conflict and code == "outcome_unknown":
        cls = AnswerLost
    return cls(message, status=status, code=code, field=field)
