"""Users, their broker accounts and API keys, and the append-only audit trail."""

import zoneinfo
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from brokers import registry
from tradingplatform.db import AppendOnlyModel

from .crypto import EncryptedJSONField

PRODUCTS = ["CNC", "MIS", "NRML"]


# In the zone database as files but not places: "localtime" is the server's own zone (times would
# follow the server's setting), "Factory" none at all. Scheduled orders refuse them too
# (``orders.sources.zone_names``), and take the trader's zone as their default.
NOT_ZONES = frozenset({"localtime", "Factory", "posixrules"})


def timezone_choices():
    return [(name, name) for name in sorted(zoneinfo.available_timezones() - NOT_ZONES)]


class User(AbstractUser):
    timezone = models.CharField(max_length=64, default="Asia/Kolkata", choices=timezone_choices)


def default_products():
    return list(PRODUCTS)


class BrokerAccount(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="broker_accounts")
    broker = models.CharField(max_length=32, choices=registry.choices)
    client_id = models.CharField(max_length=64, help_text="Your client / user id at the broker.")
    label = models.CharField(max_length=100)
    # Write-only: set with services, revealed only inside the broker layer.
    credentials = EncryptedJSONField(null=True, blank=True)
    is_active = models.BooleanField(default=True)
    max_order_value = models.DecimalField(
        max_digits=16, decimal_places=2, null=True, blank=True, validators=[MinValueValidator(Decimal("0.01"))]
    )
    max_quantity = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    max_open_orders = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    allowed_products = models.JSONField(default=default_products)
    copy_multiplier = models.DecimalField(
        max_digits=8, decimal_places=2, default=Decimal("1"), validators=[MinValueValidator(Decimal("0.01"))]
    )
    form_token = models.UUIDField(
        null=True, blank=True, editable=False, help_text="The one-time token of the page form that added it."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["label", "id"]
        constraints = [
            models.UniqueConstraint(fields=["broker", "client_id"], name="brokeraccount_unique_broker_client"),
            models.UniqueConstraint(fields=["owner", "form_token"], name="brokeraccount_one_per_form"),
            models.CheckConstraint(condition=Q(copy_multiplier__gt=0), name="brokeraccount_multiplier_positive"),
            models.CheckConstraint(
                condition=Q(max_order_value__isnull=True) | Q(max_order_value__gt=0),
                name="brokeraccount_max_order_value_positive",
            ),
            models.CheckConstraint(
                condition=Q(max_quantity__isnull=True) | Q(max_quantity__gt=0),
                name="brokeraccount_max_quantity_positive",
            ),
            models.CheckConstraint(
                condition=Q(max_open_orders__isnull=True) | Q(max_open_orders__gt=0),
                name="brokeraccount_max_open_orders_positive",
            ),
        ]

    def __str__(self):
        return f"{self.label} ({self.get_broker_display()} {self.client_id})"

    @property
    def has_credentials(self) -> bool:
        return self.credentials is not None


class ApiKey(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="Shown to identify the key; not secret.")
    hashed_key = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the whole key.")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    form_token = models.UUIDField(
        null=True, blank=True, editable=False, help_text="The one-time token of the page form that made it."
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "form_token"], name="api_key_one_per_form"),
        ]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.is_usable(timezone.now()) else "expired"

    def is_usable(self, now) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class AuditLog(AppendOnlyModel):
    class Action(models.TextChoices):
        LOGIN = "login", "Logged in"
        LOGIN_FAILED = "login_failed", "Failed login"
        LOGIN_LOCKED = "login_locked", "Login locked out"
        LOGOUT = "logout", "Logged out"
        PASSWORD_CHANGED = "password_changed", "Password changed"
        API_KEY_CREATED = "api_key_created", "API key created"
        API_KEY_REVOKED = "api_key_revoked", "API key revoked"
        BROKER_ACCOUNT_CREATED = "broker_account_created", "Broker account created"
        BROKER_ACCOUNT_CHANGED = "broker_account_changed", "Broker account changed"
        BROKER_ACCOUNT_DEACTIVATED = "broker_account_deactivated", "Broker account deactivated"
        BROKER_ACCOUNT_REACTIVATED = "broker_account_reactivated", "Broker account reactivated"
        BROKER_SESSION_LOGIN = "broker_session_login", "Broker session opened"
        BROKER_SESSION_REFRESHED = "broker_session_refreshed", "Broker session renewed"
        BROKER_SESSION_EXPIRED = "broker_session_expired", "Broker session expired"
        BROKER_SESSION_FAILED = "broker_session_failed", "Broker login failed"
        BROKER_SESSION_LOGOUT = "broker_session_logout", "Broker session closed"
        SCHEDULED_ORDER_CANCELLED = "scheduled_order_cancelled", "Scheduled order cancelled by staff"

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=64, choices=Action.choices)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    data = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["actor", "-created_at"]), models.Index(fields=["target_type", "target_id"])]

    def __str__(self):
        return f"{timezone.localtime(self.created_at):%Y-%m-%d %H:%M:%S} {self.action} by {self.actor_id or '-'}"
