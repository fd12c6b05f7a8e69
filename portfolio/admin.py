from django.contrib import admin

from tradingplatform.admin import ReadOnlyAdmin

from .models import PnlSnapshot, Position, Trade


@admin.register(Trade)
class TradeAdmin(ReadOnlyAdmin):
    """Fills come from brokers; a deleted one would be recorded again and counted twice."""

    list_display = ("broker_trade_id", "account", "instrument", "side", "quantity", "price", "filled_at")
    search_fields = ("broker_trade_id", "broker_order_id", "account__label")
    date_hierarchy = "filled_at"


@admin.register(Position)
class PositionAdmin(ReadOnlyAdmin):
    """Kept by the fills (FIFO lots); an edit here would disagree with them."""

    list_display = (
        "account",
        "instrument",
        "product",
        "net_quantity",
        "average_price",
        "realized_pnl",
        "unrealized_pnl",
    )
    exclude = ("fifo",)


@admin.register(PnlSnapshot)
class PnlSnapshotAdmin(ReadOnlyAdmin):
    list_display = ("account", "taken_at", "realized", "unrealized")
