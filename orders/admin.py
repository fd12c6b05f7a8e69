from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.core.exceptions import ValidationError

from accounts.utils import client_ip
from tradingplatform import numbers
from tradingplatform.admin import ReadOnlyAdmin
from tradingplatform.forms import watch_changes

from . import services, sources
from .models import Basket, BasketItem, Order, OrderEvent, ScheduledFire, ScheduledOrder, Strategy, StrategySignal


class OrderEventInline(admin.TabularInline):
    model = OrderEvent
    extra = 0
    can_delete = False
    readonly_fields = ("created_at", "kind", "from_status", "to_status", "cause", "message", "data")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    """Orders change only through the order services (and brokers); staff read them here."""

    list_display = (
        "reference",
        "account",
        "instrument",
        "side",
        "quantity",
        "order_type",
        "status",
        "source",
        "created_at",
    )
    list_filter = ("status", "source", "role", "order_type")
    search_fields = ("reference", "broker_order_id", "account__label", "instrument__tradingsymbol")
    date_hierarchy = "created_at"
    inlines = [OrderEventInline]


class OwnedAccountsForm(forms.ModelForm):
    """A basket's or strategy's accounts are its owner's, as ``sources`` keeps them: a strategy's
    settings drive the exits of the orders on them, and its owner changes those settings. So its
    owner is fixed once it exists (as a broker account's is), and another trader's account is refused,
    as is a deactivated one it does not have already."""

    # What its trader changes on their page and the API too.
    WATCHED = ("name", "accounts")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        watch_changes(self, self.WATCHED)  # a save writes only what staff changed
        if self.instance.pk and "owner" in self.fields:  # a page read-only to its staff (view only) has none
            self.fields["owner"].disabled = True

    def clean(self):
        cleaned = super().clean()
        owner, accounts = cleaned.get("owner"), cleaned.get("accounts")
        if owner is not None and accounts is not None:
            foreign = [account.label for account in accounts if account.owner_id != owner.pk]
            if foreign:
                self.add_error("accounts", f"Not {owner.username}'s: {', '.join(foreign)}.")
            # As ``sources._owned_accounts``: a deactivated account could place nothing; one it has stays.
            kept = set(self.instance.accounts.values_list("pk", flat=True)) if self.instance.pk else set()
            parked = [account.label for account in accounts if not account.is_active and account.pk not in kept]
            if parked:
                self.add_error("accounts", f"Deactivated (reactivate it first): {', '.join(parked)}.")
        return cleaned


class BasketItemForm(forms.ModelForm):
    """Held to the order rules the trader's page and the API keep (``services.spec_check``, as
    ``sources`` checks a basket's items): an item its placement would refuse on every account (a
    price off the tick, part of a lot, delivery of a derivative) is refused here, naming the field."""

    SPEC = ("instrument", "side", "quantity", "order_type", "product", "validity", "price", "trigger_price")

    def clean(self):
        cleaned = super().clean()
        if any(name in self.errors for name in self.SPEC):
            return cleaned  # a field's own error says it
        try:
            cleaned["quantity"], cleaned["price"], cleaned["trigger_price"] = services.spec_check(
                **{name: cleaned.get(name) for name in self.SPEC}
            )
        except ValidationError as error:
            self.add_error(None, error)
        return cleaned


class BasketItemInline(admin.TabularInline):
    model = BasketItem
    form = BasketItemForm
    formfield_overrides = numbers.NUMBER_FIELDS
    extra = 0
    raw_id_fields = ("instrument",)


@admin.register(Basket)
class BasketAdmin(admin.ModelAdmin):
    form = OwnedAccountsForm
    list_display = ("name", "owner", "last_placed_at")
    search_fields = ("name", "owner__username")
    # Searched for, not a <select> of every user and every trader's accounts on each page.
    autocomplete_fields = ("owner", "accounts")
    # What its last placement did, shown to its trader: written by ``sources.basket_place`` alone.
    readonly_fields = ("last_placed_at", "last_results")
    inlines = [BasketItemInline]

    def save_model(self, request, obj, form, change):
        if not change:
            return super().save_model(request, obj, form, change)
        # Only what staff changed, through the service (under the row lock): writing back the rest
        # as the page showed it would undo what its trader changed meanwhile (an account taken off).
        changes = {"name": form.cleaned_data["name"]} if "name" in form.changed_data else {}
        if "accounts" in form.changed_data:
            changes["account_ids"] = [account.pk for account in form.cleaned_data["accounts"]]
        if changes:
            sources.basket_change(owner=obj.owner, basket=obj, **changes)

    def save_related(self, request, form, formsets, change):
        if not change:
            return super().save_related(request, form, formsets, change)
        # Its accounts were changed (when staff changed them) with the rest by ``save_model``.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)


@admin.register(ScheduledOrder)
class ScheduledOrderAdmin(ReadOnlyAdmin):
    """Changed only through ``sources.scheduled_save`` (which checks the order and moves the next
    run); staff can cancel."""

    list_display = ("pk", "owner", "account", "instrument", "side", "quantity", "recurrence", "next_run_at", "status")
    list_select_related = ("owner", "account", "instrument")
    list_filter = ("status", "recurrence")
    actions = ["cancel"]

    def has_cancel_permission(self, request):
        # Read-only here, but cancelling changes the trader's order: staff who may only view cannot.
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    @admin.action(description="Cancel selected scheduled orders", permissions=["cancel"])
    def cancel(self, request, queryset):
        ip, cancelled, not_live = client_ip(request), [], []
        for row in queryset.order_by("pk"):
            answer = sources.scheduled_cancel_by_staff(scheduled=row, staff=request.user, ip=ip)
            (cancelled if answer else not_live).append(f"#{row.pk}")
            if answer.placing_due:
                self.message_user(request, f"#{row.pk}: {answer.text(row)}", messages.WARNING)
        if cancelled:
            self.message_user(request, f"Cancelled {', '.join(cancelled)}.", messages.SUCCESS)
        if not_live:
            # It ran its last time, or was cancelled, before (or while) the action ran.
            self.message_user(
                request, f"Not cancelled (done or cancelled already): {', '.join(not_live)}.", messages.WARNING
            )


@admin.register(ScheduledFire)
class ScheduledFireAdmin(ReadOnlyAdmin):
    list_display = ("scheduled", "due_at", "status", "detail", "claimed_at")
    list_filter = ("status",)


class StrategyForm(OwnedAccountsForm):
    """Held to the rules the trader's page and the API keep (``sources.strategy_check``): a
    strategy's settings drive its orders' exits, and one that could never be placed is refused."""

    WATCHED = (*OwnedAccountsForm.WATCHED, *sources.STRATEGY_FIELDS)

    def clean_retryable_kinds(self):
        # An emptied box (or "null") is none retried, as a new strategy's: the column holds a list.
        kinds = self.cleaned_data["retryable_kinds"]
        return [] if kinds is None else kinds

    def clean(self):
        cleaned = super().clean()
        params = {field: cleaned[field] for field in sources.STRATEGY_FIELDS if field in cleaned}
        if self.instance.pk:
            # What the save writes (``StrategyAdmin.save_model``): the settings as stored, with only
            # what staff changed; checked as the page showed them, a change its trader made
            # meanwhile (a stop-loss removed) was refused in the save, a 500.
            changed = {field: value for field, value in params.items() if field in self.changed_data}
            params = {field: getattr(self.instance, field) for field in sources.STRATEGY_FIELDS} | changed
        try:
            sources.strategy_check(params, strategy=self.instance if self.instance.pk else None)
        except ValidationError as error:
            self.add_error(None, error)
        return cleaned


@admin.register(Strategy)
class StrategyAdmin(admin.ModelAdmin):
    form = StrategyForm
    formfield_overrides = numbers.NUMBER_FIELDS
    list_display = ("name", "owner", "is_active", "stop_loss", "take_profit", "max_reentries", "max_retries")
    autocomplete_fields = ("owner", "accounts")  # as a basket's
    exclude = ("webhook_secret_hash",)
    readonly_fields = ("webhook_secret_prefix",)

    def save_model(self, request, obj, form, change):
        if change:
            # Only what staff changed, through the service (under the row lock): writing back the rest
            # as the page showed it would undo what its trader changed meanwhile (a pause made live
            # again, a tightened stop-loss loosened).
            changes = {name: form.cleaned_data[name] for name in sources.STRATEGY_FIELDS if name in form.changed_data}
            if "name" in form.changed_data:
                changes["name"] = form.cleaned_data["name"]
            if "accounts" in form.changed_data:
                changes["account_ids"] = [account.pk for account in form.cleaned_data["accounts"]]
            if changes:
                sources.strategy_change(owner=obj.owner, strategy=obj, **changes)
            secret = "" if obj.webhook_secret_hash else sources.strategy_rotate_secret(strategy=obj)
        else:
            secret = "" if obj.webhook_secret_hash else sources.strategy_new_secret(obj)
            super().save_model(request, obj, form, change)
        if secret:
            self.message_user(
                request,
                f"Its webhook secret, shown this once (its trader can make a new one on its page): {secret}",
                messages.WARNING,
            )

    def save_related(self, request, form, formsets, change):
        if change:
            return  # its accounts were changed (when staff changed them) with the rest by ``save_model``
        super().save_related(request, form, formsets, change)

    def has_delete_permission(self, request, obj=None):
        # A strategy's orders need it (their exits, re-entries and retries): pause it instead.
        return obj is not None and not obj.orders.exists() and super().has_delete_permission(request, obj)


@admin.register(StrategySignal)
class StrategySignalAdmin(ReadOnlyAdmin):
    """A signal's row is what makes a replay of its id place nothing."""

    list_display = ("strategy", "signal_id", "via", "received_at")
