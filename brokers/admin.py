from django.contrib import admin

from tradingplatform.admin import ActionsOnlyAdmin, ReadOnlyAdmin

from .models import BrokerSession, Instrument


@admin.register(Instrument)
class InstrumentAdmin(ReadOnlyAdmin):
    """The broker's list, kept by ``load_instruments`` (and prices by the ticks): staff read it here.
    An edit went around it: a symbol "corrected" here is one the broker does not know (the exit of a
    position held in it rejected), a lot size it does not use refuses the trader's orders, and the
    next load undoes either."""

    list_display = ("tradingsymbol", "exchange", "name", "instrument_type", "lot_size", "tick_size", "last_price")
    list_filter = ("exchange", "instrument_type")
    search_fields = ("tradingsymbol", "name")


@admin.register(BrokerSession)
class BrokerSessionAdmin(ActionsOnlyAdmin):
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
