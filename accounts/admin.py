from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.core.exceptions import ValidationError

from brokers import registry
from tradingplatform import numbers
from tradingplatform.admin import ActionsOnlyAdmin, ReadOnlyAdmin
from tradingplatform.forms import watch_changes

from . import selectors, services
from .forms import apply_validation_error, credential_fields
from .models import ApiKey, AuditLog, BrokerAccount, User
from .utils import client_ip


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    fieldsets = DjangoUserAdmin.fieldsets + (("Preferences", {"fields": ("timezone",)}),)
    list_display = ("username", "email", "is_staff", "is_active", "timezone", "last_login")
    # What grants permissions: only a superuser gives them. Staff who may change users (the desk)
    # would otherwise tick "superuser" on themselves, or give themselves any permission refused them;
    # or tick "staff" on a trader, letting them into the admin, /metrics and the detailed readiness
    # answer (and out of the desk's reach, ``_out_of_reach``).
    GRANTS = ("is_staff", "is_superuser", "groups", "user_permissions")

    def get_readonly_fields(self, request, obj=None):
        readonly = super().get_readonly_fields(request, obj)
        return readonly if request.user.is_superuser else (*readonly, *self.GRANTS)

    def _out_of_reach(self, request, obj) -> bool:
        """Staff (a superuser among them) are changed (their password set, among the rest) by
        superusers only, each by themselves too: the desk, setting a colleague's password, would
        sign in with every permission that colleague holds and the desk was refused."""
        if obj is None or request.user.is_superuser or obj.pk == request.user.pk:
            return False
        return obj.is_staff or obj.is_superuser

    def has_change_permission(self, request, obj=None):
        if self._out_of_reach(request, obj):
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if self._out_of_reach(request, obj):
            return False
        return super().has_delete_permission(request, obj)

    def user_change_password(self, request, id, form_url=""):
        response = super().user_change_password(request, id, form_url)
        # Set: a redirect (a refused form is shown again; no such user is a redirect too, and no row).
        user = self.get_object(request, id) if request.method == "POST" and response.status_code == 302 else None
        if user is not None:
            services.user_password_changed(user=user, ip=client_ip(request), actor=request.user)
        return response


class BrokerAccountAdminForm(forms.ModelForm):
    """Credentials are write-only here as everywhere: inputs never show a stored value."""

    class Meta:
        model = BrokerAccount
        fields = [
            "owner",
            "broker",
            "client_id",
            "label",
            "is_active",
            "max_order_value",
            "max_quantity",
            "max_open_orders",
            "allowed_products",
            "copy_multiplier",
        ]

    # What its trader changes on their page too (the limits, whether it is active).
    WATCHED = (*services.ACCOUNT_EDITABLE_FIELDS, "is_active")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields.update(credential_fields(required_hint="Write-only; leave blank to keep the stored value."))
        watch_changes(self, self.WATCHED)  # a save writes only what staff changed
        if self.instance.pk:
            for name in ("owner", "broker", "client_id"):
                if name in self.fields:  # a page read-only to its staff (view only) has none
                    self.fields[name].disabled = True

    def clean(self):
        cleaned = super().clean()
        if "allowed_products" in cleaned:
            # Held to the services' rule here, as the save would be (else its refusal is a 500).
            try:
                services.products_check(cleaned["allowed_products"])
            except ValidationError as exc:
                apply_validation_error(self, exc)
        broker = cleaned.get("broker") or self.instance.broker
        existing = self.instance.credentials.reveal() if self.instance.pk and self.instance.credentials else None
        supplied = {c.name: cleaned.get(c.name) or "" for c in registry.all_credential_fields()}
        if broker:
            try:
                services.credentials_clean(broker, supplied, existing)
            except ValidationError as exc:
                apply_validation_error(self, exc)
        return cleaned


@admin.register(BrokerAccount)
class BrokerAccountAdmin(admin.ModelAdmin):
    form = BrokerAccountAdminForm
    formfield_overrides = numbers.NUMBER_FIELDS
    list_display = ("label", "owner", "broker", "client_id", "is_active", "has_credentials", "updated_at")
    list_filter = ("broker", "is_active")
    search_fields = ("label", "client_id", "owner__username")
    raw_id_fields = ("owner",)

    @admin.display(boolean=True, description="Credentials set")
    def has_credentials(self, obj):
        return obj.has_credentials

    def has_delete_permission(self, request, obj=None):
        # A delete leaves no audit entry and takes the trader's live session (never logged out at
        # the broker) and scheduled orders with it, unsaid: deactivate the account (audited).
        return False

    def save_model(self, request, obj, form, change):
        # Changes go through the services so they are validated and audited.
        credentials = {c.name: form.cleaned_data.get(c.name) or "" for c in registry.all_credential_fields()}
        limits = {name: form.cleaned_data[name] for name in services.ACCOUNT_EDITABLE_FIELDS}
        ip = client_ip(request)
        if not change:
            created = services.broker_account_create(
                owner=form.cleaned_data["owner"],
                broker=form.cleaned_data["broker"],
                client_id=form.cleaned_data["client_id"],
                credentials=credentials,
                ip=ip,
                actor=request.user,
                **limits,
            )
            if not form.cleaned_data["is_active"]:  # added as staff set it, and that audited too
                services.broker_account_set_active(account=created, actor=request.user, active=False, ip=ip)
            obj.pk = created.pk
            return
        # Only what staff changed: writing back the rest as the page showed it would undo what its
        # trader changed meanwhile (a lowered limit; a deactivation made live again).
        limits = {name: value for name, value in limits.items() if name in form.changed_data}
        account = BrokerAccount.objects.get(pk=obj.pk)
        services.broker_account_update(account=account, actor=request.user, credentials=credentials, ip=ip, **limits)
        if "is_active" in form.changed_data and form.cleaned_data["is_active"] != account.is_active:
            active = form.cleaned_data["is_active"]
            services.broker_account_set_active(account=account, actor=request.user, active=active, ip=ip)
            left = None if active else selectors.live_orders_left(account)
            if left:
                self.message_user(request, left, messages.WARNING)


@admin.register(ApiKey)
class ApiKeyAdmin(ActionsOnlyAdmin):
    list_display = ("name", "owner", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix", "owner__username")
    readonly_fields = ("owner", "name", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at")
    exclude = ("hashed_key",)
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False  # the secret is shown once to its owner; keys are created on their page

    def has_delete_permission(self, request, obj=None):
        return False  # a deleted key leaves no record of who removed it: revoke it (audited)

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request, queryset):
        revoked = sum(services.api_key_revoke(key=key, actor=request.user, ip=client_ip(request)) for key in queryset)
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "action", "actor", "target_type", "target_id", "ip")
    list_select_related = ("actor",)
    list_filter = ("action", "target_type")
    search_fields = ("actor__username", "target_id", "ip")
    date_hierarchy = "created_at"
