"""Fills, the positions they make (FIFO), and PnL over time."""

from decimal import Decimal

from django.db import models
from django.db.models import Q

MONEY = {"max_digits": 18, "decimal_places": 4}


class Trade(models.Model):
    """One fill at the broker, recorded once (unique broker trade id per account)."""

    account = models.ForeignKey("accounts.BrokerAccount", on_delete=models.PROTECT, related_name="trades")
    order = models.ForeignKey("orders.Order", null=True, blank=True, on_delete=models.SET_NULL, related_name="trades")
    broker_trade_id = models.CharField(max_length=40)
    broker_order_id = models.CharField(max_length=40)
    instrument = models.ForeignKey("brokers.Instrument", on_delete=models.PROTECT, related_name="+")
    product = models.CharField(max_length=4)
    side = models.CharField(max_length=4)
    quantity = models.PositiveIntegerField()
    price = models.DecimalField(max_digits=14, decimal_places=4)
    filled_at = models.DateTimeField(db_index=True)
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-filled_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["account", "broker_trade_id"], name="trade_unique_per_account"),
            models.CheckConstraint(condition=Q(quantity__gt=0), name="trade_quantity_positive"),
            models.CheckConstraint(condition=Q(side__in=["BUY", "SELL"]), name="trade_side_valid"),
        ]
        indexes = [
            models.Index(fields=["account", "-filled_at"]),
            # Linking fills to their order by broker order id: with it, that UPDATE locks only its
            # own rows (without it MariaDB scanned and locked through the order index, and two
            # accounts' links deadlocked).
            models.Index(fields=["account", "broker_order_id"]),
        ]

    def __str__(self):
        return f"{self.side} {self.quantity} {self.instrument} @ {self.price}"


class Position(models.Model):
    """An account's position in one instrument and product, kept by FIFO lot matching.

    ``fifo`` holds the open lots and running totals, so each new fill updates the position
    without replaying history; ``last_trade_id`` is the last fill applied (a fill is applied
    once, in the same transaction that records it).
    """

    account = models.ForeignKey("accounts.BrokerAccount", on_delete=models.CASCADE, related_name="positions")
    instrument = models.ForeignKey("brokers.Instrument", on_delete=models.PROTECT, related_name="+")
    product = models.CharField(max_length=4)
    net_quantity = models.IntegerField(default=0)
    average_price = models.DecimalField(**MONEY, default=Decimal(0))
    realized_pnl = models.DecimalField(**MONEY, default=Decimal(0))
    unrealized_pnl = models.DecimalField(**MONEY, default=Decimal(0))
    last_price = models.DecimalField(**MONEY, default=Decimal(0))
    fifo = models.JSONField(default=dict)
    last_trade_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["account", "instrument"]
        constraints = [
            models.UniqueConstraint(fields=["account", "instrument", "product"], name="position_unique_per_product")
        ]

    def __str__(self):
        return f"{self.account_id} {self.instrument} {self.product} {self.net_quantity}"

    @property
    def total_pnl(self) -> Decimal:
        return self.realized_pnl + self.unrealized_pnl


class PnlSnapshot(models.Model):
    account = models.ForeignKey("accounts.BrokerAccount", on_delete=models.CASCADE, related_name="pnl_snapshots")
    taken_at = models.DateTimeField(db_index=True)
    realized = models.DecimalField(**MONEY)
    unrealized = models.DecimalField(**MONEY)

    class Meta:
        ordering = ["taken_at", "id"]
        indexes = [models.Index(fields=["account", "taken_at"])]

    def __str__(self):
        return f"{self.account_id} {self.taken_at:%H:%M:%S} {self.realized + self.unrealized}"

    @property
    def total(self) -> Decimal:
        return self.realized + self.unrealized
