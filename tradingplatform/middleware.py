from urllib.parse import parse_qs, urlsplit

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.auth.views import redirect_to_login
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpResponse, HttpResponseRedirect, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import resolve_url
from django.urls import NoReverseMatch
from django.utils.cache import add_never_cache_headers
from django.utils.http import url_has_allowed_host_and_scheme

ERROR_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
API_PREFIX = "/api/"


class ApiErrorShapeMiddleware:
    """Under /api/, the few answers Django or the router produce outside our handlers
    (an unknown path, a wrong method) get the API's one error shape too."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            request.path.startswith(API_PREFIX)
            and response.status_code in ERROR_CODES
            and "json" not in response.get("Content-Type", "")
        ):
            messages = {404: "Not found.", 405: f"Method {request.method} not allowed.", 400: "Bad request."}
            shaped = JsonResponse(
                {
                    "error": {
                        "code": ERROR_CODES[response.status_code],
                        "message": messages[response.status_code],
                        "field": None,
                    }
                },
                status=response.status_code,
            )
            if response.has_header("Allow"):
                shaped["Allow"] = response["Allow"]
            return shaped
        return response


class PrivateAnswersMiddleware:
    """A signed-in trader's pages and every API answer are kept by no cache, the browser's
    included: after signing out on a shared computer, Back must not show the next person the
    trader's order book or dashboard from the browser's cache, and an API answer (one key's
    orders) must not be kept by a proxy for another caller. An answer that says how it may be
    cached (a view's own ``Cache-Control``) keeps its own. Static files never reach here
    (WhiteNoise answers them first)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.has_header("Cache-Control"):
            return response
        user = getattr(request, "user", None)
        if request.path.startswith(API_PREFIX) or (user is not None and user.is_authenticated):
            add_never_cache_headers(response)
        return response


class ContentSecurityPolicyMiddleware:
    """Sends ``settings.CONTENT_SECURITY_POLICY`` with every answer that has none of its own.

    The pages' code and styles all live in static files (no inline <script>, <style>, style= or
    on*= in a template; tradingplatform/tests/test_security_headers.py keeps it so), so the policy
    needs neither 'unsafe-inline' nor nonces: an injected tag or handler does not run."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.policy = settings.CONTENT_SECURITY_POLICY

    def __call__(self, request):
        response = self.get_response(request)
        if self.policy and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = self.policy
        return response


class HtmxLoginRedirectMiddleware:
    """A request sent to the login page because its session has ended (signed out in another tab,
    expired) comes back, once signed in, to the page it was made from, and a form's is told it was
    not done.

    - An htmx request (the book's Cancel, an inline modify, the ticket's instrument search) is sent
      there as a whole page: followed by the browser, the redirect would swap the login page in
      place of the order's row or the search's options. Its page is HX-Current-URL.
    - A form's POST (Cancel order, Deactivate, Revoke...) comes back to the page the form was on
      (its Referer), not to the form's address: most answer POST only, and signing in ended on a
      blank 405 page.

    Only a page of this site is come back to."""

    NOT_DONE = "You were signed out, so what you sent was not done. Sign in, then send it again."

    def __init__(self, get_response):
        self.get_response = get_response

    @staticmethod
    def _login_path() -> str | None:
        try:
            return resolve_url(settings.LOGIN_URL)
        except NoReverseMatch:  # the paper exchange's face: its own URLconf, no login page of ours
            return None

    def __call__(self, request):
        response = self.get_response(request)
        htmx = request.headers.get("HX-Request") == "true"
        sent = request.method not in ("GET", "HEAD", "OPTIONS")
        if not (htmx or sent) or response.status_code != 302:
            return response
        location = urlsplit(response["Location"])
        # login_required's redirect names the page asked for (signing out, sent to the login page, does not).
        if "next" not in parse_qs(location.query) or location.path != self._login_path():
            return response
        if sent and hasattr(request, "_messages"):
            messages.warning(request, self.NOT_DONE)
        page = request.headers.get("HX-Current-URL" if htmx else "Referer", "")
        if url_has_allowed_host_and_scheme(page, allowed_hosts={request.get_host()}):
            parts = urlsplit(page)
            login = redirect_to_login(parts.path + (f"?{parts.query}" if parts.query else ""))["Location"]
        elif htmx:
            login = resolve_url(settings.LOGIN_URL)
        else:
            return response  # no page of ours to come back to (a browser sends its Referer to its own site)
        if not htmx:
            return HttpResponseRedirect(login)
        answer = HttpResponse(status=204)
        answer["HX-Redirect"] = login
        return answer


# --- The web pages' middleware, passed by for the API ----------------------------------------
#
# The API authenticates every call by its key (accounts.api) and sets request.user itself; it
# has no session, no CSRF cookie (a key in a header is not sent by a browser on its own) and no
# flash messages. Loading a session store, a lazy user and a message store for each call cost
# about 0.15 ms of CPU per order. Subclasses, so Django's checks still find the originals.


class _WebPagesOnly:
    def __call__(self, request):
        if request.path_info.startswith(API_PREFIX):
            return self.get_response(request)
        return super().__call__(request)


class WebSessionMiddleware(_WebPagesOnly, SessionMiddleware):
    pass


class WebCsrfViewMiddleware(_WebPagesOnly, CsrfViewMiddleware):
    pass  # its process_view still runs for every view: the API's views are exempt (ninja marks them)


class WebAuthenticationMiddleware(_WebPagesOnly, AuthenticationMiddleware):
    pass


class WebMessageMiddleware(_WebPagesOnly, MessageMiddleware):
    pass
