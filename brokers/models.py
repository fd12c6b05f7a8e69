"""Instruments the platform trades and the broker sessions of each account."""

from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.crypto import EncryptedJSONField

from .base import instrument_expired


class Instrument(models.Model):
    exchange = models.CharField(max_length=16)
    tradingsymbol = models.CharField(max_length=64)
    name = models.CharField(max_length=128, blank=True)
    segment = models.CharField(max_length=16, blank=True)
    instrument_type = models.CharField(max_length=8, blank=True)
    instrument_token = models.BigIntegerField()
    exchange_token = models.BigIntegerField(null=True, blank=True)
    expiry = models.DateField(null=True, blank=True)
    strike = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    tick_size = models.DecimalField(max_digits=10, decimal_places=4)
    lot_size = models.PositiveIntegerField()
    last_price = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    previous_close = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["exchange", "tradingsymbol"]
        constraints = [
            models.UniqueConstraint(fields=["exchange", "tradingsymbol"], name="instrument_unique_symbol"),
            models.CheckConstraint(condition=Q(tick_size__gt=0), name="instrument_tick_positive"),
            models.CheckConstraint(condition=Q(lot_size__gt=0), name="instrument_lot_positive"),
        ]
        indexes = [models.Index(fields=["instrument_token"]), models.Index(fields=["name"])]

    def __str__(self):
        return f"{self.exchange}:{self.tradingsymbol}"

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.tradingsymbol}"

    @property
    def is_expired(self) -> bool:
        """The contract's expiry is before today (IST): it can no longer be traded."""
        return instrument_expired(self)

    @property
    def change(self):
        return self.last_price - self.previous_close if self.previous_close else None

    @property
    def change_percent(self):
        if not self.previous_close:
            return None
        return (self.last_price - self.previous_close) * 100 / self.previous_close

    @property
    def price_cells(self) -> dict[str, str]:
        """What the price cells show (also what a live push carries): strings, ready to render."""
        change = self.change
        return {
            "last": str(self.last_price),
            "change": f"{change:+}" if change is not None else "",
            "pct": f"{self.change_percent:+.2f}" if change is not None else "",
        }


class BrokerSession(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        EXPIRED = "expired", "Expired"
        REVOKED = "revoked", "Revoked"
        FAILED = "failed", "Failed"

    account = models.ForeignKey("accounts.BrokerAccount", on_delete=models.CASCADE, related_name="sessions")
    # {"access_token": ..., "refresh_token": ...}, encrypted like credentials.
    tokens = EncryptedJSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    # Equals account_id while the session is active, NULL otherwise: a unique column that
    # holds "one active session per account" on every database (MySQL has no partial indexes).
    active_for = models.BigIntegerField(null=True, blank=True, editable=False)
    broker_user_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_validated_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["active_for"], name="brokersession_one_active_per_account"),
            models.CheckConstraint(
                condition=(Q(status="active") & Q(active_for__isnull=False))
                | (~Q(status="active") & Q(active_for__isnull=True)),
                name="brokersession_active_for_matches_status",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["active", "expired", "revoked", "failed"]), name="brokersession_status_valid"
            ),
        ]

    def __str__(self):
        return f"{self.account} session {self.status}"
