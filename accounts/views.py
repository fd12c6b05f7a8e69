"""Pages for signing in, broker accounts, API keys and the profile. Thin: services do the work."""

from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, logout, update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm
from django.core.exceptions import ValidationError
from django.http import HttpResponseRedirect
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from brokers import registry
from brokers.services import session_states

from . import selectors, services
from .forms import (
    ApiKeyCreateForm,
    BrokerAccountCreateForm,
    BrokerAccountEditForm,
    LoginForm,
    ProfileForm,
    apply_validation_error,
)
from .utils import client_ip

CREDENTIAL_PARAMS = [credential.name for credential in registry.all_credential_fields()]


def _next_url(request) -> str:
    """Where to go after signing in: a path or URL of this site, else "" (the home page). A URL,
    never a view name: ``redirect("dashboard")`` would reverse it (a 500 when nothing is called so)."""
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    if not next_url.startswith("/") and not urlsplit(next_url).netloc:
        return ""
    if not url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return ""
    return next_url


def _device_token(request) -> str | None:
    return request.COOKIES.get(settings.KNOWN_DEVICE_COOKIE)


def _remember_device(response, user) -> None:
    """This browser signed in as ``user``: a stranger's failed guesses at the username (or from a
    shared address) no longer lock it out (``services.login_attempt``)."""
    response.set_cookie(
        settings.KNOWN_DEVICE_COOKIE,
        services.known_device_token(user),
        max_age=settings.KNOWN_DEVICE_MAX_AGE_S,
        secure=settings.SESSION_COOKIE_SECURE,
        httponly=True,
        samesite="Lax",
    )


@sensitive_post_parameters("password")
@require_http_methods(["GET", "POST"])
@never_cache
def login_view(request):
    next_url = _next_url(request)
    form = LoginForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            user = services.login_attempt(
                username=form.cleaned_data["username"],
                password=form.cleaned_data["password"],
                ip=client_ip(request),
                request=request,
                device_token=_device_token(request),
            )
        except (services.LoginLocked, services.LoginFailed) as exc:
            form.add_error(None, str(exc))
            status = 429 if isinstance(exc, services.LoginLocked) else 200
        else:
            previous = getattr(request, "user", None)  # as login() reads it: a request may have none
            if previous is not None and previous.is_authenticated and previous.pk != user.pk:
                # Another person signing in on this browser: end the previous user's session as a
                # logout would (login() alone drops it silently, leaving its open tabs' pushes live).
                services.logout_record(user=previous, ip=client_ip(request))
                logout(request)
            login(request, user)
            response = HttpResponseRedirect(next_url) if next_url else redirect("home")
            _remember_device(response, user)
            return response
    return render(request, "accounts/login.html", {"form": form, "next": next_url}, status=status)


@require_POST
def logout_view(request):
    services.logout_record(user=request.user, ip=client_ip(request))
    logout(request)
    messages.info(request, "You have signed out.")
    return redirect("login")


@login_required
@require_http_methods(["GET"])
def home(request):
    return redirect("portfolio:dashboard")


# --- Broker accounts ---------------------------------------------------------------


@login_required
@require_http_methods(["GET"])
def broker_list(request):
    accounts = list(selectors.broker_accounts_of(request.user))
    states = session_states(accounts)
    rows = [(account, states[account.pk]) for account in accounts]
    return render(request, "accounts/broker_list.html", {"rows": rows})


@sensitive_post_parameters(*CREDENTIAL_PARAMS)
@login_required
@require_http_methods(["GET", "POST"])
def broker_create(request):
    form = BrokerAccountCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            account = services.broker_account_create(
                owner=request.user,
                broker=form.cleaned_data["broker"],
                client_id=form.cleaned_data["client_id"],
                credentials=form.credentials,
                ip=client_ip(request),
                form_token=form.cleaned_data["token"],  # sent again (a double click): the account it added
                **form.changes,
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
            if "idempotency_key" in getattr(exc, "error_dict", {}):
                form.renew_token()
        else:
            messages.success(request, f"Added {account.label}.")
            return redirect("accounts:broker_list")
    elif "token" in form.errors:
        form.renew_token()
    return render(request, "accounts/broker_form.html", {"form": form, "creating": True})


@sensitive_post_parameters(*CREDENTIAL_PARAMS)
@login_required
@require_http_methods(["GET", "POST"])
def broker_edit(request, pk):
    account = selectors.broker_account_of(request.user, pk)
    form = BrokerAccountEditForm(request.POST or None, instance=account)
    if request.method == "POST" and form.is_valid():
        try:
            services.broker_account_update(
                account=account,
                actor=request.user,
                credentials=form.credentials,
                ip=client_ip(request),
                **form.changes,
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, f"Saved {form.cleaned_data['label']}.")
            return redirect("accounts:broker_list")
    return render(request, "accounts/broker_form.html", {"form": form, "account": account, "creating": False})


@login_required
@require_POST
def broker_deactivate(request, pk):
    account = selectors.broker_account_of(request.user, pk)
    if services.broker_account_set_active(account=account, actor=request.user, active=False, ip=client_ip(request)):
        messages.success(request, f"Deactivated {account.label}. No orders will be placed on it.")
        left = selectors.live_orders_left(account)
        if left:
            messages.warning(request, left)
    return redirect("accounts:broker_list")


@login_required
@require_POST
def broker_reactivate(request, pk):
    account = selectors.broker_account_of(request.user, pk)
    if services.broker_account_set_active(account=account, actor=request.user, active=True, ip=client_ip(request)):
        messages.success(request, f"Reactivated {account.label}.")
    return redirect("accounts:broker_list")


# --- API keys ----------------------------------------------------------------------


@login_required
@never_cache
@require_http_methods(["GET", "POST"])
def api_keys(request):
    form = ApiKeyCreateForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        try:
            key, raw_key = services.api_key_create(
                owner=request.user,
                name=form.cleaned_data["name"],
                expires_at=services.expiry_from_days(form.cleaned_data["expires_in_days"]),
                ip=client_ip(request),
                form_token=form.cleaned_data["token"],
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            # Rendered once, in this response only (never_cache): the secret is not stored. The same
            # form sent again gets its key back without one (None): the page says so.
            created = {"key": key, "secret": raw_key}
            form = ApiKeyCreateForm()
    elif "token" in form.errors:
        form.renew_token()
    context = {"form": form, "keys": selectors.api_keys_of(request.user), "created": created}
    return render(request, "accounts/api_keys.html", context)


@login_required
@require_POST
def api_key_revoke(request, pk):
    key = selectors.api_key_of(request.user, pk)
    if services.api_key_revoke(key=key, actor=request.user, ip=client_ip(request)):
        messages.success(request, f"Revoked {key.name}. Requests with it are refused from now on.")
    return redirect("accounts:api_keys")


# --- Profile -----------------------------------------------------------------------


@sensitive_post_parameters("old_password", "new_password1", "new_password2")
@login_required
@require_http_methods(["GET", "POST"])
def profile(request):
    profile_form = ProfileForm(instance=request.user)
    password_form = PasswordChangeForm(request.user)
    status = 200
    if request.method == "POST" and request.POST.get("form") == "profile":
        profile_form = ProfileForm(request.POST, instance=request.user)
        if profile_form.is_valid():
            services.user_update_profile(user=request.user, timezone_name=profile_form.cleaned_data["timezone"])
            messages.success(request, "Profile saved.")
            return redirect("accounts:profile")
    elif request.method == "POST" and request.POST.get("form") == "password":
        try:
            services.password_check_allowed(
                user=request.user, ip=client_ip(request), device_token=_device_token(request)
            )
        except services.LoginLocked as exc:
            # Said as a message: the form is not bound, which would check the old password.
            messages.error(request, str(exc))
            status = 429
        else:
            password_form = PasswordChangeForm(request.user, request.POST)
            if password_form.is_valid():
                try:
                    user = services.user_password_change(
                        user=request.user,
                        old_password=password_form.cleaned_data["old_password"],
                        new_password=password_form.cleaned_data["new_password1"],
                        ip=client_ip(request),
                    )
                except ValidationError as exc:
                    apply_validation_error(password_form, exc)
                else:
                    update_session_auth_hash(request, user)
                    messages.success(request, "Password changed.")
                    return redirect("accounts:profile")
            elif password_form.has_error("old_password", "password_incorrect"):
                services.password_check_failed(
                    user=request.user, ip=client_ip(request), device_token=_device_token(request)
                )
    context = {
        "profile_form": profile_form,
        "password_form": password_form,
        "activity": selectors.recent_activity_of(request.user),
    }
    return render(request, "accounts/profile.html", context, status=status)
