from django.contrib import admin

from tradingplatform.admin import ReadOnlyAdmin

from .models import Opening, PnlSnapshot, Position, Trade


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


@admin.register(Opening)
class OpeningAdmin(ReadOnlyAdmin):
    """Taken once per account by the monitoring cycle; its detail says what was seeded, what waits
    for its instrument to be loaded (``waiting``) and what was skipped. Pending: not taken yet (its
    trading date is the day the account was first met). A deleted row would be taken again (the
    trades' keys keep the same day's lots from doubling)."""

    list_display = ("account", "trading_date", "outcome", "waiting", "taken_at")
    list_filter = ("outcome", "waiting")
    search_fields = ("account__label", "account__client_id")
