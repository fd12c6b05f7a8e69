"""Pages for baskets, scheduled orders and strategies. Thin: ``sources`` does the work."""

import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from accounts.forms import apply_validation_error

from . import selectors, sources
from .models import Basket, ScheduledFire
from .source_forms import BasketForm, BasketItemFormSet, BasketPlaceForm, ScheduledForm, StrategyForm

# --- Baskets ---------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET"])
def basket_list(request):
    baskets = selectors.baskets_of(request.user)
    return render(request, "orders/baskets.html", {"baskets": baskets})


def _basket_initial(basket) -> list[dict]:
    return [
        {
            "instrument": item.instrument.tradingsymbol
            if item.instrument.exchange == "NSE"
            else f"{item.instrument.exchange}:{item.instrument.tradingsymbol}",
            "side": item.side,
            "quantity": item.quantity,
            "order_type": item.order_type,
            "product": item.product,
            "validity": item.validity,
            "price": item.price,
            "trigger_price": item.trigger_price,
        }
        for item in basket.items.all()
    ]


def _apply_item_errors(form, item_forms, error: ValidationError) -> None:
    """The service's ``items.<n>.<field>`` errors on that row's field; the rest on the form."""
    rest = {}
    for key, texts in error.message_dict.items():
        index, _, field = key.removeprefix("items.").partition(".")
        if key.startswith("items.") and index.isdigit() and int(index) < len(item_forms):
            row = item_forms[int(index)]
            row.add_error(field if field in row.fields else None, texts)
        else:
            rest[key] = texts
    if rest:
        apply_validation_error(form, ValidationError(rest))


@login_required
@require_http_methods(["GET", "POST"])
def basket_edit(request, pk=None):
    basket = selectors.basket_of(request.user, pk) if pk else None
    initial = {"name": basket.name, "accounts": list(basket.accounts.all())} if basket else None
    form = BasketForm(request.POST or None, initial=initial, user=request.user, basket=basket)
    items = BasketItemFormSet(
        request.POST or None,
        initial=_basket_initial(basket) if basket else None,
        prefix="items",
        form_kwargs={"watch": basket is not None},
    )
    if request.method == "POST" and form.is_valid() and items.is_valid():
        kept = items.kept()
        try:
            if basket is not None:  # what was changed on the page; the rest as it is now
                saved = sources.basket_change(owner=request.user, basket=basket, **form.changes(items))
            else:
                saved = sources.basket_save(
                    owner=request.user,
                    name=form.cleaned_data["name"],
                    items=[item.spec() for item in kept],
                    account_ids=[account.pk for account in form.cleaned_data["accounts"]],
                    create_key=form.create_key(),  # sent again (a double click): the basket it made
                )
        except ValidationError as exc:
            _apply_item_errors(form, kept, exc)
            if "idempotency_key" in getattr(exc, "error_dict", {}):
                form.renew_token()
        else:
            messages.success(request, f"Saved basket {saved.name}.")
            return redirect("sources:basket_detail", saved.pk)
    elif "token" in form.errors:
        form.renew_token()
    return render(request, "orders/basket_form.html", {"form": form, "items": items, "basket": basket})


@login_required
@never_cache
@require_http_methods(["GET", "POST"])
def basket_detail(request, pk):
    basket = selectors.basket_of(request.user, pk)
    form = BasketPlaceForm(request.POST or None, initial={"token": uuid.uuid4().hex}, user=request.user)
    results = None
    if request.method == "POST" and form.is_valid():
        # None chosen: the basket's own accounts, as the form says.
        account_ids = [account.pk for account in form.cleaned_data["accounts"]] or None
        try:
            results = sources.basket_place(
                basket=basket, actor=request.user, run_token=f"ui:{form.cleaned_data['token']}", account_ids=account_ids
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)  # nothing was placed: the form shows why, as sent
            if "idempotency_key" in getattr(exc, "error_dict", {}):
                form.renew_token()  # its token placed another choice: a new Place is a new placement
        else:
            try:
                basket.refresh_from_db()  # its time of placing
            except Basket.DoesNotExist:  # deleted meanwhile: what was placed is still shown
                messages.warning(request, f"Basket {basket.name} was deleted while it was being placed.")
            form = BasketPlaceForm(initial={"token": uuid.uuid4().hex}, user=request.user)
    elif "token" in form.errors:
        form.renew_token()
    context = {
        "basket": basket,
        "copies": sources.basket_copies(basket),
        "form": form,
        "results": selectors.basket_results(basket, results),
    }
    return render(request, "orders/basket_detail.html", context)


@login_required
@require_POST
def basket_delete(request, pk):
    basket = selectors.basket_of(request.user, pk)
    basket.delete()
    messages.success(request, f"Deleted basket {basket.name}.")
    return redirect("sources:basket_list")


# --- Scheduled orders ------------------------------------------------------------------------

SCHEDULED_PER_PAGE = 50


@login_required
@never_cache  # Back to the form fetches a fresh one-time token rather than reusing the sent one
@require_http_methods(["GET", "POST"])
def scheduled_list(request):
    form = ScheduledForm(request.POST or None, user=request.user, initial={"recurrence": "once", "grace_s": 0})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            row = sources.scheduled_save(
                owner=request.user,
                account=data["account"],
                spec=form.spec(),
                recurrence=data["recurrence"],
                time_of_day=data["time_of_day"],
                timezone_name=data["timezone"],
                run_on=data.get("run_on"),
                weekdays=data.get("weekdays"),
                grace_s=data.get("grace_s") or 0,
                idempotency_key=f"ui:{data['token']}",
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
            if "idempotency_key" in getattr(exc, "error_dict", {}):
                form.renew_token()
        else:
            if row.next_run_at is None:  # a repeat of a one-off that has run since (or was cancelled)
                messages.success(request, f"Scheduled #{row.pk}; {row.get_status_display().lower()}, no next run.")
            else:
                next_run = timezone.localtime(row.next_run_at)  # in the trader's zone, as the list shows it
                messages.success(request, f"Scheduled #{row.pk}; next run {next_run:%Y-%m-%d %H:%M:%S %Z}.")
            return redirect("sources:scheduled_list")
    elif "token" in form.errors:
        form.renew_token()
    # Done and cancelled one-offs stay for good: a page of them, those still to run first.
    page = Paginator(selectors.scheduled_of(request.user), SCHEDULED_PER_PAGE).get_page(request.GET.get("page"))
    rows = list(page)
    fires = list(ScheduledFire.objects.filter(scheduled__owner=request.user).select_related("scheduled")[:20])
    selectors.scheduled_results_now(rows, fires)  # each run's order as it is now, not as it was placed
    return render(
        request,
        "orders/scheduled.html",
        {"form": form, "page": page, "rows": rows, "fires": fires, "on_time_s": settings.SCHEDULE_ON_TIME_S},
    )


@login_required
@require_POST
def scheduled_cancel(request, pk):
    row = selectors.scheduled_one_of(request.user, pk)
    cancelled = sources.scheduled_cancel(scheduled=row, actor=request.user)
    if cancelled.placing_due:
        messages.warning(request, f"Cancelled scheduled order #{row.pk}. {cancelled.text(row)}")
    elif cancelled:
        messages.success(request, f"Cancelled scheduled order #{row.pk}.")
    else:  # it ran its last time, or was cancelled, meanwhile
        row.refresh_from_db(fields=["status"])
        messages.info(
            request, f"Scheduled order #{row.pk} was not cancelled: it is {row.get_status_display().lower()}."
        )
    return redirect("sources:scheduled_list")


# --- Strategies ------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET"])
def strategy_list(request):
    return render(request, "orders/strategies.html", {"strategies": selectors.strategies_of(request.user)})


@login_required
@never_cache
@require_http_methods(["GET", "POST"])
def strategy_edit(request, pk=None):
    strategy = selectors.strategy_of(request.user, pk) if pk else None
    form = StrategyForm(request.POST or None, instance=strategy, user=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            if strategy is not None:
                saved, secret = sources.strategy_change(owner=request.user, strategy=strategy, **form.changes()), ""
            else:
                saved, secret = sources.strategy_save(
                    owner=request.user,
                    name=form.cleaned_data["name"],
                    account_ids=[account.pk for account in form.cleaned_data["accounts"]],
                    create_key=form.create_key(),
                    # Sent again (a reload or Back to the page showing its secret, a double click):
                    # the secret shown stays live, the trader may have put it in TradingView already.
                    repeat_rotates=False,
                    **form.params(),
                )
        except ValidationError as exc:
            apply_validation_error(form, exc)
            if "idempotency_key" in getattr(exc, "error_dict", {}):
                form.renew_token()
        else:
            if secret:
                return _show_secret(request, saved, secret)
            if getattr(saved, "replayed", False):
                messages.warning(
                    request,
                    f"This form was sent already: it made {saved.name}, and its webhook secret was shown then, "
                    "once. Its secret is unchanged; if you did not copy it, make a new one here.",
                )
                return redirect("sources:strategy_detail", saved.pk)
            messages.success(request, f"Saved {saved.name}.")
            return redirect("sources:strategy_detail", saved.pk)
    elif "token" in form.errors:
        form.renew_token()
    return render(request, "orders/strategy_form.html", {"form": form, "strategy": strategy})


@login_required
@never_cache
@require_http_methods(["GET"])
def strategy_detail(request, pk):
    strategy = selectors.strategy_of(request.user, pk)
    return render(request, "orders/strategy_detail.html", _strategy_context(request, strategy))


@login_required
@never_cache
@require_POST
def strategy_rotate_secret(request, pk):
    strategy = selectors.strategy_of(request.user, pk)
    secret = sources.strategy_rotate_secret(strategy=strategy, replaces=request.POST.get("replaces"))
    if not secret:
        messages.info(request, "That secret was replaced already; the new one was shown once and is not stored.")
        return redirect("sources:strategy_detail", strategy.pk)
    return _show_secret(request, strategy, secret)


def _strategy_context(request, strategy, secret: str = "") -> dict:
    url = request.build_absolute_uri(reverse("strategy_webhook", args=[strategy.pk]))
    return {"strategy": strategy, "webhook_url": url, "secret": secret, "signals": selectors.strategy_signals(strategy)}


def _show_secret(request, strategy, secret: str):
    """The secret appears in this one response only; it is not stored."""
    strategy.refresh_from_db()
    return render(request, "orders/strategy_detail.html", _strategy_context(request, strategy, secret))
