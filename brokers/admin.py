from django.contrib import admin

from tradingplatform import numbers

from .models import BrokerSession, Instrument


@admin.register(Instrument)
class InstrumentAdmin(admin.ModelAdmin):
    formfield_overrides = numbers.NUMBER_FIELDS
    list_display = ("tradingsymbol", "exchange", "name", "instrument_type", "lot_size", "tick_size", "last_price")
    list_filter = ("exchange", "instrument_type")
    search_fields = ("tradingsymbol", "name")


@admin.register(BrokerSession)
class BrokerSessionAdmin(admin.ModelAdmin):
    """Sessions are created by logins; staff can see them and end one, never read its tokens."""

    list_display = ("account", "status", "broker_user_id", "created_at", "expires_at", "ended_at")
    list_filter = ("status",)
    search_fields = ("account__label", "account__client_id", "broker_user_id")
    exclude = ("tokens",)
    readonly_fields = (
        "account",
        "status",
        "broker_user_id",
        "created_at",
        "expires_at",
        "last_validated_at",
        "ended_at",
        "last_error",
    )
    actions = ["end_sessions"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        # A deleted row leaves its token in use (the live session is cached) and no audit: end it.
        return False

    @admin.action(description="End selected sessions (the trader must reconnect)", permissions=["change"])
    def end_sessions(self, request, queryset):
        from accounts.utils import client_ip

        from .services import session_expire

        ip = client_ip(request)
        active = queryset.filter(status="active").select_related("account")
        ended = sum(session_expire(session=session, actor=request.user, ip=ip) for session in active)
        self.message_user(request, f"Ended {ended} session(s).")
