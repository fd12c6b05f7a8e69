"""The paper exchange's Kite Connect v3 face: the same routes, parameters and JSON as Kite.

Served by its own ASGI application on its own port (``brokers.paper.face_asgi``),
because Kite clients join routes to the host root. Every API call authenticates with
``Authorization: token api_key:access_token``, goes through the client's fault knobs,
and answers ``{"status": "success", "data": ...}`` or Kite's error shape.
"""

import functools
from decimal import Decimal, InvalidOperation
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.http import HttpResponse, HttpResponseRedirect, JsonResponse, QueryDict
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from . import engine, kite_format
from .engine import ExchangeError, InputException, TokenException
from .models import PaperClient, PaperInstrument


def success(data, status: int = 200) -> JsonResponse:
    return JsonResponse({"status": "success", "data": data}, status=status)


def failure(error: ExchangeError) -> JsonResponse:
    return JsonResponse(
        {"status": "error", "message": error.message, "error_type": error.error_type, "data": None},
        status=error.http_status,
    )


def _credentials(request) -> tuple[str, str]:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    api_key, _, access_token = value.partition(":")
    if scheme.lower() != "token" or not api_key or not access_token:
        raise TokenException("Missing or invalid `Authorization` header (token api_key:access_token).")
    return api_key, access_token


def kite_api(methods):
    """Authenticate, apply the client's fault knobs, and turn exchange errors into Kite's shape."""

    def decorator(view):
        @csrf_exempt
        @require_http_methods(methods)
        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            try:
                api_key, access_token = _credentials(request)
                client = engine.client_for_access_token(api_key=api_key, access_token=access_token)
                faults = engine.faults_before(client, write=request.method in ("POST", "PUT", "DELETE"))
                response = view(request, client, *args, **kwargs)
                faults.after()
                return response
            except ExchangeError as error:
                return failure(error)

        return wrapper

    return decorator


def _int(value, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputException(f"Invalid `{name}`.") from None


def _decimal(value, name: str) -> Decimal | None:
    """A price from the wire; NaN and Infinity are no price (and comparing a NaN raises, a 500)."""
    if value in (None, "", "0", 0):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise InputException(f"Invalid `{name}`.") from None
    if not number.is_finite():
        raise InputException(f"Invalid `{name}`.")
    return number


# Since April 2026 Kite refuses API orders of these types without a market protection: -1 (Kite's
# automatic band) or a percentage above 0 up to 100. The in-process paper adapter is no Kite client.
MARKET_PROTECTED_TYPES = ("MARKET", "SL-M")


def _check_market_protection(order_type, value) -> None:
    if order_type not in MARKET_PROTECTED_TYPES:
        return
    try:
        protection = Decimal(str(value)) if value not in (None, "") else Decimal(0)
    except InvalidOperation:
        raise InputException("Invalid `market_protection`.") from None
    if not protection.is_finite():  # a signalling NaN cannot even be compared (a 500)
        raise InputException("Invalid `market_protection`.")
    if protection == 0:
        raise InputException(
            "Market orders without market protection are not allowed via API."
            " Please set market protection or use a Limit order."
        )
    if protection != -1 and not 0 < protection <= 100:
        raise InputException("Invalid `market_protection`.")


# --- Login and sessions ---------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
def connect_login(request):
    """Kite's login page: sign a paper client in, redirect with a one-time request_token."""
    api_key = request.GET.get("api_key") or request.POST.get("api_key", "")
    context = {"api_key": api_key, "redirect_params": request.GET.get("redirect_params", ""), "error": None}
    if request.method == "POST":
        context["redirect_params"] = request.POST.get("redirect_params", "")
        try:
            client, request_token = engine.login_with_password(
                api_key=api_key, user_id=request.POST.get("user_id", ""), password=request.POST.get("password", "")
            )
        except ExchangeError as error:
            context["error"] = error.message
        else:
            if not client.redirect_url:
                context["error"] = "This app has no redirect URL configured at the paper exchange."
            else:
                params = {"request_token": request_token, "action": "login", "type": "login", "status": "success"}
                params.update(parse_qsl(context["redirect_params"]))
                parts = urlsplit(client.redirect_url)
                query = urlencode([*parse_qsl(parts.query), *params.items()])
                return HttpResponseRedirect(urlunsplit(parts._replace(query=query)))
    response = render(request, "paper/login.html", context, status=400 if context["error"] else 200)
    return _form_action_with_app(response, api_key)


def _form_action_with_app(response, api_key: str):
    """The login page's policy, with its form allowed to end at the app's redirect URL.

    A browser holds a form to its page's ``form-action`` through the redirects that answer it: with
    the site's policy (``'self'``) the redirect to the app (another origin: the platform's callback)
    was refused, and the trader stayed on this page with no word. Only the app's own origin is
    added, so an injected form still cannot send the password anywhere else."""
    policy = settings.CONTENT_SECURITY_POLICY
    client = PaperClient.objects.filter(api_key=api_key).only("redirect_url").first() if api_key else None
    target = urlsplit(client.redirect_url) if client and client.redirect_url else None
    if not policy or target is None or target.scheme not in ("http", "https") or not target.netloc:
        return response
    directives = [directive.strip() for directive in policy.split(";") if directive.strip()]
    origin = f"{target.scheme}://{target.netloc.rpartition('@')[2]}"  # no user:password@ in a source
    response["Content-Security-Policy"] = "; ".join(
        f"{directive} {origin}" if directive.split()[0] == "form-action" else directive for directive in directives
    )
    return response


@csrf_exempt
@require_http_methods(["POST", "DELETE"])
def session_token(request):
    try:
        if request.method == "DELETE":
            engine.client_for_access_token(
                api_key=request.GET.get("api_key"), access_token=request.GET.get("access_token", "")
            )
            engine.session_close(access_token=request.GET.get("access_token", ""))
            return success(True)
        client, access_token, _ = engine.session_from_request_token(
            api_key=request.POST.get("api_key", ""),
            request_token=request.POST.get("request_token", ""),
            checksum=request.POST.get("checksum", ""),
        )
        return success(kite_format.session(client, access_token, timezone.now()))
    except ExchangeError as error:
        return failure(error)


@kite_api(["GET"])
def user_profile(request, client):
    return success(kite_format.profile(client))


@kite_api(["GET"])
def user_margins(request, client, segment=None):
    margins = kite_format.margins(engine.margins_of(client))
    if segment is None:
        return success(margins)
    if segment not in margins:
        raise InputException("Invalid segment.")
    return success(margins[segment])


# --- Orders ---------------------------------------------------------------------------------


@kite_api(["GET"])
def orders(request, client):
    """Kite's order book: the day's orders (``engine.order_book``)."""
    book = engine.order_book(client)
    for order in book:
        order.client = client
    return success([kite_format.order(order) for order in book])


@kite_api(["GET", "POST"])
def order_place_or_history(request, client, segment):
    """``GET /orders/{order_id}`` (history) and ``POST /orders/{variety}`` (place) share a path."""
    if request.method == "GET":
        return success([kite_format.order(engine.order_of(client, segment))])
    data = request.POST
    _check_market_protection(data.get("order_type", ""), data.get("market_protection"))
    order = engine.order_place(
        client=client,
        variety=segment,
        exchange=data.get("exchange", ""),
        tradingsymbol=data.get("tradingsymbol", ""),
        transaction_type=data.get("transaction_type", ""),
        order_type=data.get("order_type", ""),
        quantity=_int(data.get("quantity"), "quantity"),
        product=data.get("product", ""),
        price=_decimal(data.get("price"), "price"),
        trigger_price=_decimal(data.get("trigger_price"), "trigger_price"),
        validity=data.get("validity") or "DAY",
        tag=data.get("tag") or "",
    )
    return success({"order_id": order.order_id})


@kite_api(["PUT", "DELETE"])
def order_modify_or_cancel(request, client, variety, order_id):
    if request.method == "DELETE":
        return success({"order_id": engine.order_cancel(client=client, order_id=order_id).order_id})
    data = QueryDict(request.body)
    _check_market_protection(data.get("order_type"), data.get("market_protection"))
    order = engine.order_modify(
        client=client,
        order_id=order_id,
        quantity=_int(data["quantity"], "quantity") if data.get("quantity") else None,
        price=_decimal(data.get("price"), "price"),
        trigger_price=_decimal(data.get("trigger_price"), "trigger_price"),
        order_type=data.get("order_type") or None,
    )
    return success({"order_id": order.order_id})


@kite_api(["GET"])
def order_trades(request, client, order_id):
    engine.order_of(client, order_id)
    return success([kite_format.trade(trade) for trade in engine.trades_of(client, order_id)])


@kite_api(["GET"])
def trades(request, client):
    """Kite's trade book: the day's fills."""
    return success([kite_format.trade(trade) for trade in engine.day_trades_of(client)])


# --- Portfolio ------------------------------------------------------------------------------


@kite_api(["GET"])
def positions(request, client):
    return success(
        {
            "net": [kite_format.position(row) for row in engine.positions_of(client)],
            "day": [kite_format.position(row) for row in engine.positions_of(client, day_only=True)],
        }
    )


@kite_api(["GET"])
def holdings(request, client):
    return success([kite_format.holding(*row) for row in engine.holdings_of(client)])


# --- Market data ----------------------------------------------------------------------------


def _quotes(request, client, kind):
    keys = request.GET.getlist("i")
    if not keys:
        raise InputException("Missing `i` (instruments).")
    if len(keys) > 500:
        raise InputException("Too many instruments; at most 500 per call.")
    found = engine.instruments_by_keys(keys)
    return success({key: kite_format.quote(instrument, kind=kind) for key, instrument in found.items()})


@kite_api(["GET"])
def quote(request, client):
    return _quotes(request, client, "full")


@kite_api(["GET"])
def quote_ohlc(request, client):
    return _quotes(request, client, "ohlc")


@kite_api(["GET"])
def quote_ltp(request, client):
    return _quotes(request, client, "ltp")


@kite_api(["GET"])
def instruments(request, client, exchange=None):
    rows = PaperInstrument.objects.all()
    if exchange:
        rows = rows.filter(exchange=exchange)
    return HttpResponse(kite_format.instruments_csv(rows), content_type="text/csv")
