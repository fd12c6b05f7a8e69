"""Logs that can be followed: a request id from the HTTP request through Celery to the broker call.

- ``RequestIdMiddleware`` takes a sane incoming ``X-Request-ID`` (a load balancer's) or makes
  one, keeps it in a context variable for the request, sets it on the response, and writes
  one access line per request (path without its query string, status, duration).
- Celery signals carry the id in a task header (``before_task_publish``) and restore it while
  the task runs (``task_prerun`` / ``task_postrun``); a task nobody sent from a request (beat)
  gets an id of its own, so its lines still belong together.
- ``ContextFilter`` puts ``request_id``, ``user_id`` and ``task`` on every record; the formatters
  (``PlainFormatter``, and ``JsonFormatter``: one JSON object per line, ``LOG_FORMAT=json``) blank
  out anything that looks like a secret (tokens, passwords, API keys) in the whole line.
"""

import contextvars
import functools
import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime

REQUEST_ID_HEADER = "X-Request-ID"
TASK_HEADER = "request_id"
# What we accept from a client or proxy: short, plain characters (a UUID, a hex or ULID id).
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,63}")

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_request_var: contextvars.ContextVar = contextvars.ContextVar("request", default=None)
task_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("task", default=None)

access_logger = logging.getLogger("tradingplatform.access")


def new_request_id() -> str:
    return uuid.uuid4().hex


def sane_request_id(value: str | None) -> str | None:
    """The incoming id if it is safe to log and echo (length and characters), else None."""
    if value and _SANE_ID.fullmatch(value):
        return value
    return None


def current_request_id() -> str | None:
    return request_id_var.get()


def in_this_context(fn):
    """``fn`` to be called once on another thread, with this thread's request id and task.

    A new thread starts with an empty context, so without this a pool's log lines (broker
    calls of a basket or a monitoring fetch) would lose the id of the request they serve.
    """
    context = contextvars.copy_context()

    @functools.wraps(fn)
    def in_context(*args, **kwargs):
        return context.run(fn, *args, **kwargs)

    return in_context


# --- HTTP ----------------------------------------------------------------------------------


class RequestIdMiddleware:
    """First in the middleware list, so every line a request causes carries its id."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = sane_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id()
        request.request_id = request_id
        id_token = request_id_var.set(request_id)
        request_token = _request_var.set(request)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            response[REQUEST_ID_HEADER] = request_id
            if access_logger.isEnabledFor(logging.INFO):
                ms = (time.perf_counter() - started) * 1000
                access_logger.info(
                    "%s %s %s %.1f ms",
                    request.method,
                    request.path,
                    response.status_code,
                    ms,
                    extra={
                        "method": request.method,
                        "path": request.path,  # never the query string: it can hold tokens
                        "status": response.status_code,
                        "duration_ms": round(ms, 2),
                    },
                )
            return response
        finally:
            _request_var.reset(request_token)
            request_id_var.reset(id_token)


def _user_id() -> int | None:
    """The signed-in user's id if the request already knows it (never loads it from the session)."""
    request = _request_var.get()
    if request is None:
        return None
    user = request.__dict__.get("user")
    if user is None:
        return None
    wrapped = getattr(user, "_wrapped", user)  # SimpleLazyObject: only once evaluated
    if getattr(wrapped, "is_authenticated", False):
        return wrapped.pk
    return None


# --- Celery --------------------------------------------------------------------------------

_task_tokens: dict[str, tuple] = {}


def _on_publish(sender=None, headers=None, **_kwargs):
    request_id = request_id_var.get()
    if request_id and headers is not None and TASK_HEADER not in headers:
        headers[TASK_HEADER] = request_id


def _on_task_start(sender=None, task_id=None, task=None, **_kwargs):
    request = getattr(task, "request", None)
    incoming = getattr(request, TASK_HEADER, None) or (getattr(request, "headers", None) or {}).get(TASK_HEADER)
    # A task run inline (eager) inside a request keeps the request's id.
    request_id = sane_request_id(incoming) or request_id_var.get() or new_request_id()
    _task_tokens[task_id] = (request_id_var.set(request_id), task_var.set(getattr(task, "name", None)))


def _on_task_end(sender=None, task_id=None, **_kwargs):
    tokens = _task_tokens.pop(task_id, None)
    if tokens is None:
        return
    try:
        task_var.reset(tokens[1])
        request_id_var.reset(tokens[0])
    except ValueError:  # set in another context (should not happen); leave this one as it is
        pass


def connect_task_signals() -> None:
    from celery.signals import before_task_publish, task_postrun, task_prerun

    before_task_publish.connect(_on_publish, weak=False, dispatch_uid="tp-logs-publish")
    task_prerun.connect(_on_task_start, weak=False, dispatch_uid="tp-logs-prerun")
    task_postrun.connect(_on_task_end, weak=False, dispatch_uid="tp-logs-postrun")


# --- Records -------------------------------------------------------------------------------

_SECRET_WORDS = r"[A-Za-z_-]*(?:token|secret|password|passwd|api[_-]?key|checksum|credentials?|sessionid|cookie)"
_ENCODED_EQ = r"%(?:25)*3D"
_ENCODED_AMP = r"%(?:25)*26"
_REDACTIONS = [
    # "Authorization: token key:secret", "Bearer abc..."
    (re.compile(r"(?i)\b(bearer|token)(\s+)[A-Za-z0-9._~+/=:-]{8,}"), r"\1\2[redacted]"),
    # api_secret=..., "access_token": "...", password: ...
    (re.compile(rf"(?i)\b({_SECRET_WORDS})([\"']?\s*[=:]\s*[\"']?)([^\s\"'\\&,;()\[\]{{}}]+)"), r"\1\2[redacted]"),
    # query parameters that authorise something (Kite's connect state is bound to the CSRF secret)
    (re.compile(r"(?i)([?&](?:state|code|sig|signature)=)[^&\s\"'\\]+"), r"\1[redacted]"),
    # The same inside a URL carried percent-encoded in another's query: the sign-in page's ?next= holds
    # the Kite callback's request_token and state, "=" written %3D and "&" %26 (%253D, %2526, ... once
    # more per level). The value ends at the next encoded "&".
    (
        re.compile(rf"(?i)({_SECRET_WORDS})({_ENCODED_EQ})(?:(?!{_ENCODED_AMP})[^\s\"'\\&,;()\[\]{{}}])+"),
        r"\1\2[redacted]",
    ),
    (
        re.compile(
            rf"(?i)((?:%(?:25)*3F|{_ENCODED_AMP})(?:state|code|sig|signature){_ENCODED_EQ})(?:(?!{_ENCODED_AMP})[^&\s\"'\\])+"
        ),
        r"\1[redacted]",
    ),
    # the platform's own API keys, wherever they appear
    (re.compile(r"\btp_[0-9a-f]{8}_[A-Za-z0-9_-]{20,}"), "tp_[redacted]"),
]
_SECRET_KEY_NAME = re.compile(rf"(?i)^{_SECRET_WORDS}$|authorization")


@functools.lru_cache(maxsize=1024)
def _secret_key_name(key: str) -> bool:
    return bool(_SECRET_KEY_NAME.search(key))


# Lowercase words without which none of the patterns can match: most lines have none of
# them and skip the regular expressions (the order path logs a line per broker call).
_TRIGGERS = (
    "token",
    "bearer",
    "secret",
    "passw",
    "apikey",
    "api_key",
    "api-key",
    "checksum",
    "credential",
    "sessionid",
    "cookie",
    "state=",
    "code=",
    "sig=",
    "signature=",
    "tp_",
    "%3d",  # a percent-encoded "=" (a URL inside another's query)
    "%253d",
)


def redact(text: str) -> str:
    lowered = text.lower()
    if not any(word in lowered for word in _TRIGGERS):
        return text
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class ContextFilter(logging.Filter):
    """Adds ``request_id``, ``user_id`` and ``task`` to every record.

    Attach it to handlers (not loggers) so records propagated from every logger pass through it.
    Secrets are blanked by the formatters below, in the whole line (message, extras, traceback).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            # Django's "Not Found: ..." lines are written after the request's context ended; they carry the request.
            record.request_id = request_id_var.get() or getattr(getattr(record, "request", None), "request_id", None)
        if getattr(record, "user_id", None) is None:
            record.user_id = _user_id()
        if getattr(record, "task", None) is None:
            record.task = task_var.get()
        return True


class PlainFormatter(logging.Formatter):
    """The human format, with the request id when there is one; tracebacks redacted too."""

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None)
        record.rid = f" [{rid}]" if rid else ""
        return redact(super().format(record))


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "rid", "task"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, request_id, user_id, task,
    whatever was passed in ``extra`` (values under secret-looking names redacted), and the
    exception's traceback."""

    def format(self, record: logging.LogRecord) -> str:
        # Redacted before encoding: once JSON-escaped, a quoted secret no longer looks like one.
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "request_id": getattr(record, "request_id", None),
            "user_id": getattr(record, "user_id", None),
        }
        if getattr(record, "task", None):
            entry["task"] = record.task
        for key, value in record.__dict__.items():
            if key in _STANDARD or key in entry or key.startswith("_"):
                continue
            if _secret_key_name(key):
                value = "[redacted]"
            elif not isinstance(value, bool | int | float | type(None)):
                value = redact(value if isinstance(value, str) else str(value))
            entry[key] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str, ensure_ascii=False)
