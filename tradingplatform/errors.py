"""One way to turn a ValidationError into the API's error fields; error reports that hide secrets;
the 500 page, which tells the trader the request id the error was logged with."""

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponseServerError
from django.template import loader
from django.views import debug
from django.views.decorators.csrf import requires_csrf_token

CLEANSED = debug.SafeExceptionReporterFilter.cleansed_substitute


def first_error(error: ValidationError) -> tuple[str | None, str, str | None]:
    """(field or None, message, code) of the first problem in a ValidationError."""
    if hasattr(error, "error_dict"):
        field, errors = next(iter(error.error_dict.items()))
        message = " ".join(text for item in errors for text in item.messages)
        return (None if field == "__all__" else field), message, errors[0].code
    return None, " ".join(error.messages), getattr(error, "code", None)


# --- Error reports -----------------------------------------------------------------------------
# Django's report of a 500 (the debug page, a mail to ADMINS, an error tracker) shows the
# request: its URL, GET parameters, headers and the frames' variables. Headers and settings
# named like secrets are hidden by Django already; query parameters are not, and Kite's login
# callback carries a request_token there.

SENSITIVE_PARAM = re.compile(r"(?i)token|secret|passw|api[_-]?key|checksum|signature|^state$|^code$")


def cleanse_value(name: str, value: str) -> str:
    """A parameter's value as a report may show it: hidden under a secret's name; a URL carried in
    it (the sign-in page's ``?next=``, which holds the Kite callback with its request_token and
    state) with its own query cleansed."""
    if SENSITIVE_PARAM.search(name):
        return CLEANSED
    if isinstance(value, str) and "?" in value and "=" in value:
        return cleanse_uri(value)
    return value


def cleanse_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, cleanse_value(k, v)) for k, v in pairs], safe="*")


def cleanse_uri(uri: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(query=cleanse_query(parts.query))) if parts.query else uri


class SafeExceptionReporterFilter(debug.SafeExceptionReporterFilter):
    """Also hides query and POST parameters named like secrets, wherever the request shows up in a report."""

    def get_safe_request_meta(self, request):
        meta = super().get_safe_request_meta(request)
        for name in ("QUERY_STRING", "RAW_URI", "REQUEST_URI"):
            if isinstance(meta.get(name), str):
                meta[name] = cleanse_uri(meta[name]) if name != "QUERY_STRING" else cleanse_query(meta[name])
        return meta

    def get_cleansed_multivaluedict(self, request, multivaluedict):
        multivaluedict = super().get_cleansed_multivaluedict(request, multivaluedict)
        cleansed = {
            key: [cleanse_value(str(key), value) for value in multivaluedict.getlist(key)] for key in multivaluedict
        }
        if any(cleansed[key] != multivaluedict.getlist(key) for key in cleansed):
            multivaluedict = multivaluedict.copy()
            for key, values in cleansed.items():
                multivaluedict.setlist(key, values)
        return multivaluedict

    def get_post_parameters(self, request):
        # Django hides only the fields a view marked (sensitive_post_parameters); the admin's forms
        # (a broker account's api_secret) mark none.
        return self.get_cleansed_multivaluedict(request, super().get_post_parameters(request))

    def cleanse_special_types(self, request, value):
        if isinstance(value, HttpRequest):  # its repr is the full path, query string included
            return f"<{type(value).__name__}: {value.method} {cleanse_uri(value.get_full_path())!r}>"
        return super().cleanse_special_types(request, value)


class SafeExceptionReporter(debug.ExceptionReporter):
    def _get_raw_insecure_uri(self):
        return cleanse_uri(super()._get_raw_insecure_uri())

    def get_traceback_data(self):
        data = super().get_traceback_data()
        if self.request is not None and "request_GET_items" in data:
            data["request_GET_items"] = self.filter.get_cleansed_multivaluedict(self.request, self.request.GET).items()
        return data


@requires_csrf_token
def server_error(request):
    """``handler500``: Django's page, plus the request id (``X-Request-ID``) its traceback was logged with,
    for the trader to quote to the desk. No context processors: the database may be what failed."""
    request_id = getattr(request, "request_id", None)
    return HttpResponseServerError(loader.get_template("500.html").render({"request_id": request_id}))
