"""Fills, the positions they make (FIFO), and PnL over time."""

from decimal import Decimal

from django.db import models
from django.db.models import Q
from django.utils import timezone

MONEY = {"max_digits": 18, "decimal_places": 4}


class Trade(models.Model):
    """One fill at the broker, recorded once: a broker's trade id is unique within its order (Kite's
    are the exchange's trade numbers, which another exchange, or another day, can repeat)."""

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
            # Its leading (account, broker order id) also serves linking fills to their order by
            # broker order id: that UPDATE locks only its own rows (through the order index
            # instead, MariaDB scanned and locked more, and two accounts' links deadlocked).
            models.UniqueConstraint(
                fields=["account", "broker_order_id", "broker_trade_id"], name="trade_unique_per_order"
            ),
            models.CheckConstraint(condition=Q(quantity__gt=0), name="trade_quantity_positive"),
            models.CheckConstraint(condition=Q(side__in=["BUY", "SELL"]), name="trade_side_valid"),
        ]
        indexes = [models.Index(fields=["account", "-filled_at"])]

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
        return f"{self.account_id} {timezone.localtime(self.taken_at):%H:%M:%S} {self.realized + self.unrealized}"

    @property
    def total(self) -> Decimal:
        return self.realized + self.unrealized


class Opening(models.Model):
    """That an account's opening positions were taken, once: what it held at the start of the
    trading day the platform first met its book, recorded as opening lots (``portfolio.openings``).

    One row per account (the one-to-one key): a second taking, by a duplicate task or a second
    worker, finds it and does nothing. ``detail`` says what was seeded, what waits, what was
    skipped and why. ``PENDING``: the opening is not taken yet (it failed, or the account was first
    met through its recorded fills, before any monitoring run), and ``trading_date`` is the day the
    account was first met, the day its lots are taken at. ``waiting``: lots wait in
    ``detail["waiting"]`` for their instruments to be loaded (the cycle's batch reads this flag
    with the outcome, so an account with none costs nothing more).
    """

    class Outcome(models.TextChoices):
        PENDING = "pending", "Not taken yet: first met on its trading date"
        SEEDED = "seeded", "Seeded from the broker's book"
        EARLIER_FILLS = "earlier_fills", "Not seeded: fills recorded from an earlier day"

    account = models.OneToOneField("accounts.BrokerAccount", on_delete=models.CASCADE, related_name="opening")
    trading_date = models.DateField()
    taken_at = models.DateTimeField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    detail = models.JSONField(default=dict)
    waiting = models.BooleanField(default=False, db_index=True)

    def __str__(self):
        return f"{self.account_id} {self.trading_date} {self.outcome}"
