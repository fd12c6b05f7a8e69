from django.contrib import admin

from .models import Basket, BasketItem, Order, OrderEvent, ScheduledFire, ScheduledOrder, Strategy, StrategySignal


class OrderEventInline(admin.TabularInline):
    model = OrderEvent
    extra = 0
    can_delete = False
    readonly_fields = ("created_at", "kind", "from_status", "to_status", "cause", "message", "data")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
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

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class BasketItemInline(admin.TabularInline):
    model = BasketItem
    extra = 0
    raw_id_fields = ("instrument",)


@admin.register(Basket)
class BasketAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "last_placed_at")
    search_fields = ("name", "owner__username")
    inlines = [BasketItemInline]


@admin.register(ScheduledOrder)
class ScheduledOrderAdmin(admin.ModelAdmin):
    list_display = ("pk", "owner", "account", "instrument", "side", "quantity", "recurrence", "next_run_at", "status")
    list_filter = ("status", "recurrence")
    raw_id_fields = ("instrument",)


@admin.register(ScheduledFire)
class ScheduledFireAdmin(admin.ModelAdmin):
    list_display = ("scheduled", "due_at", "status", "detail", "claimed_at")
    list_filter = ("status",)


@admin.register(Strategy)
class StrategyAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "is_active", "stop_loss", "take_profit", "max_reentries", "max_retries")
    exclude = ("webhook_secret_hash",)


@admin.register(StrategySignal)
class StrategySignalAdmin(admin.ModelAdmin):
    list_display = ("strategy", "signal_id", "via", "received_at")
