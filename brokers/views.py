"""Broker pages: connect / reconnect / disconnect an account, the Kite login callback, instruments."""

import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.middleware.csrf import get_token
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from accounts import selectors as account_selectors

from . import selectors, services
from .errors import BrokerError
from .kite import postbacks as kite_postbacks

logger = logging.getLogger(__name__)
PENDING_KEY = "broker_connect_pending"


def _csrf_secret(request) -> str:
    get_token(request)  # makes sure the request has a CSRF secret
    return request.META["CSRF_COOKIE"]


@login_required
@require_POST
def connect(request, pk):
    account = account_selectors.broker_account_of(request.user, pk)
    if not account.is_active:
        messages.error(request, f"{account.label} is deactivated; reactivate it first.")
        return redirect("accounts:broker_list")
    adapter_interactive = services.adapter_for(account).interactive_login
    if adapter_interactive:
        pending = request.session.get(PENDING_KEY, {})
        state = services.connect_state_issue(account=account, csrf_secret=_csrf_secret(request), pending=pending)
        request.session[PENDING_KEY] = pending
        return redirect(services.connect_login_url(account=account, state=state))
    try:
        connected = services.session_connect(account=account, actor=request.user, replaces=_shown_session(request))
    except BrokerError as exc:
        messages.error(request, f"Could not connect {account.label}: {exc}")
    else:
        if connected is None:  # the same form's first send (a double click, another tab) connected it
            messages.info(
                request, f"{account.label} was connected already since the page was shown; kept that session."
            )
        else:
            messages.success(request, f"Connected {account.label}.")
    return redirect("accounts:broker_list")


def _shown_session(request):
    """The live session the accounts page showed (``replaces``: its id, blank for none); a client
    posting none is taken to replace whatever is live."""
    shown = request.POST.get("replaces")
    if shown is None:
        return services.SHOWN_ANY
    return int(shown) if shown.isdigit() else None


@login_required
@require_POST
def disconnect(request, pk):
    account = account_selectors.broker_account_of(request.user, pk)
    if services.session_disconnect(account=account, actor=request.user):
        messages.success(request, f"Disconnected {account.label}.")
    return redirect("accounts:broker_list")


@login_required
@require_GET
def login_callback(request):
    """Where the broker's login page sends the trader back with a one-time request_token."""
    pending = request.session.get(PENDING_KEY, {})
    account_id = services.connect_state_check(
        state=request.GET.get("state", ""), csrf_secret=_csrf_secret(request), pending=pending
    )
    request.session[PENDING_KEY] = pending
    if account_id is None:
        messages.error(request, "That login link is not valid for this browser session (or was used already).")
        return redirect("accounts:broker_list")
    account = account_selectors.broker_account_of(request.user, account_id)
    if request.GET.get("status") != "success" or not request.GET.get("request_token"):
        messages.error(request, f"The broker did not complete the login for {account.label}.")
        return redirect("accounts:broker_list")
    try:
        services.connect_complete(account=account, request_token=request.GET["request_token"], actor=request.user)
    except BrokerError as exc:
        messages.error(request, f"Could not connect {account.label}: {exc}")
    else:
        messages.success(request, f"Connected {account.label}.")
    return redirect("accounts:broker_list")


@login_required
@require_GET
def instruments(request):
    query = request.GET.get("q", "")
    rows, truncated = selectors.instruments_search(query)
    return render(request, "brokers/instruments.html", {"instruments": rows, "query": query, "truncated": truncated})


@csrf_exempt
@require_POST
def kite_postback(request):
    """Kite's order postbacks: verified by checksum, then taken as a prompt to read the order from
    Kite and apply its state (the checksum does not cover the body's state: ``kite/postbacks.py``)."""
    import json

    try:
        body = json.loads(request.body or b"{}")
        account = services.kite_postback_verify(body if isinstance(body, dict) else {})
    except (ValueError, RecursionError, PermissionError) as exc:  # RecursionError: nested too deep to read
        logger.warning("refused a Kite postback from %s: %s", request.META.get("REMOTE_ADDR"), exc)
        return JsonResponse(
            {"error": {"code": "forbidden", "message": "Unknown or forged postback.", "field": None}}, status=403
        )
    kite_postbacks.postback_apply(account=account, order_id=str(body.get("order_id") or ""))
    return JsonResponse({"status": "ok"})
