"""The paper exchange's own state. Only code under brokers/paper/ touches these tables."""

import secrets
from decimal import Decimal

from django.db import models
from django.db.models import Q
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone


def new_api_key() -> str:
    return secrets.token_hex(8)


def new_api_secret() -> str:
    return secrets.token_hex(16)


class PaperClient(models.Model):
    """A trading account at the paper exchange, with its Kite-style app credentials."""

    user_id = models.CharField(max_length=64, unique=True, help_text="The client id traders connect with.")
    name = models.CharField(max_length=100, blank=True)
    password = models.CharField(max_length=128, blank=True, help_text="Hashed; for the Kite-style login page.")
    api_key = models.CharField(max_length=64, unique=True, default=new_api_key)
    api_secret = models.CharField(max_length=64, default=new_api_secret)
    redirect_url = models.URLField(blank=True, help_text="Where the login page sends the request_token.")
    postback_url = models.URLField(blank=True, help_text="Order updates are POSTed here.")
    opening_funds = models.DecimalField(max_digits=16, decimal_places=2, default=Decimal("1000000"))
    cash = models.DecimalField(max_digits=16, decimal_places=2, default=Decimal("1000000"))
    # Fault knobs, for tests and demos.
    latency_ms = models.PositiveIntegerField(default=0, help_text="Added to every call.")
    error_rate = models.FloatField(default=0, help_text="Share of calls that fail with a server error (0-1).")
    timeout_rate = models.FloatField(
        default=0,
        help_text="Share of order calls (place, modify, cancel) whose answer is lost after the work is done (0-1).",
    )
    rejection_rate = models.FloatField(default=0, help_text="Share of orders rejected by RMS (0-1).")
    rate_limit_per_s = models.PositiveIntegerField(default=0, help_text="Calls per second before 429; 0 = none.")
    market_closed = models.BooleanField(
        default=False,
        help_text="New orders refused as Kite refuses them outside market hours (a holiday, a halt); "
        "the paper exchange's market is otherwise open round the clock.",
    )
    session_ttl_s = models.PositiveIntegerField(default=0, help_text="Session lifetime; 0 = until 06:00 IST.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["user_id"]
        constraints = [
            models.CheckConstraint(condition=Q(error_rate__gte=0, error_rate__lte=1), name="paperclient_error_rate"),
            models.CheckConstraint(condition=Q(timeout_rate__gte=0, timeout_rate__lte=1), name="paperclient_timeouts"),
            models.CheckConstraint(
                condition=Q(rejection_rate__gte=0, rejection_rate__lte=1), name="paperclient_rejection_rate"
            ),
        ]

    def __str__(self):
        return self.user_id


class PaperToken(models.Model):
    """A one-time request token or a session's access token (stored as SHA-256)."""

    class Kind(models.TextChoices):
        REQUEST = "request"
        ACCESS = "access"

    client = models.ForeignKey(PaperClient, on_delete=models.CASCADE, related_name="tokens")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"{self.client} {self.kind}"


class PaperInstrument(models.Model):
    instrument_token = models.BigIntegerField(unique=True)
    exchange_token = models.BigIntegerField()
    exchange = models.CharField(max_length=16)
    segment = models.CharField(max_length=16)
    tradingsymbol = models.CharField(max_length=64)
    name = models.CharField(max_length=128)
    instrument_type = models.CharField(max_length=8)
    expiry = models.DateField(null=True, blank=True)
    strike = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    tick_size = models.DecimalField(max_digits=10, decimal_places=4)
    lot_size = models.PositiveIntegerField()
    previous_close = models.DecimalField(max_digits=14, decimal_places=2)
    open = models.DecimalField(max_digits=14, decimal_places=2)
    high = models.DecimalField(max_digits=14, decimal_places=2)
    low = models.DecimalField(max_digits=14, decimal_places=2)
    last_price = models.DecimalField(max_digits=14, decimal_places=2)
    bid = models.DecimalField(max_digits=14, decimal_places=2)
    ask = models.DecimalField(max_digits=14, decimal_places=2)
    volume = models.BigIntegerField(default=0, help_text="Traded today (simulated).")
    tick_volume = models.PositiveIntegerField(default=0, help_text="Shares available to fill in the last tick.")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["exchange", "tradingsymbol"]
        constraints = [models.UniqueConstraint(fields=["exchange", "tradingsymbol"], name="paperinstrument_symbol")]

    def __str__(self):
        return f"{self.exchange}:{self.tradingsymbol}"


class PaperOrder(models.Model):
    class Status(models.TextChoices):
        OPEN = "OPEN"
        TRIGGER_PENDING = "TRIGGER PENDING"
        COMPLETE = "COMPLETE"
        CANCELLED = "CANCELLED"
        REJECTED = "REJECTED"

    LIVE = (Status.OPEN, Status.TRIGGER_PENDING)

    order_id = models.CharField(max_length=20, unique=True)
    exchange_order_id = models.CharField(max_length=20, blank=True)
    # PROTECT: a client that traded is the exchange's record of its orders and fills (what the
    # platform reconciles with and recorded from); deleting it took them all, unsaid.
    client = models.ForeignKey(PaperClient, on_delete=models.PROTECT, related_name="orders")
    # No database constraint (here and on PaperTrade): with one, every order insert takes a shared
    # lock on the instrument row, which the market tick rewrites every second, so placements
    # queued behind each tick. Instruments are never deleted (PROTECT still guards Django deletes).
    instrument = models.ForeignKey(
        PaperInstrument, on_delete=models.PROTECT, related_name="orders", db_constraint=False
    )
    variety = models.CharField(max_length=16, default="regular")
    transaction_type = models.CharField(max_length=4)
    order_type = models.CharField(max_length=8)
    product = models.CharField(max_length=8)
    validity = models.CharField(max_length=8, default="DAY")
    quantity = models.PositiveIntegerField()
    price = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    trigger_price = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    status = models.CharField(max_length=20, choices=Status.choices)
    status_message = models.CharField(max_length=255, blank=True)
    filled_quantity = models.PositiveIntegerField(default=0)
    cancelled_quantity = models.PositiveIntegerField(default=0)
    average_price = models.DecimalField(max_digits=14, decimal_places=4, default=0)
    tag = models.CharField(max_length=40, blank=True, db_index=True)
    modifications = models.PositiveIntegerField(default=0)
    # A SELL: the part of its quantity its client's long position (less other live sells) did
    # not cover when it was placed or its quantity changed, which opens or adds to a short. Its
    # unfilled part up to this blocks funds, as a BUY's whole unfilled part does (fills use the
    # long first). 0 for a BUY.
    uncovered_quantity = models.PositiveIntegerField(default=0)
    # Time priority: set at placement, and again when a modification loses priority.
    priority = models.BigIntegerField()
    placed_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["placed_at", "id"]
        indexes = [
            models.Index(fields=["client", "placed_at"]),
            models.Index(fields=["instrument", "status"]),
            # A funds check sums the client's live orders: without this it read the client's
            # whole order history on every order.
            models.Index(fields=["client", "status"]),
            # The day's order book (``engine.order_book``): the orders changed since the day's
            # start, without reading the client's every earlier day.
            models.Index(fields=["client", "updated_at"]),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gt=0), name="paperorder_quantity_positive"),
            models.CheckConstraint(
                condition=Q(filled_quantity__lte=models.F("quantity")), name="paperorder_filled_within_quantity"
            ),
            # What is neither filled nor cancelled is still pending (the order book's unfilled quantity).
            models.CheckConstraint(
                condition=Q(cancelled_quantity__lte=models.F("quantity") - models.F("filled_quantity")),
                name="paperorder_cancelled_within_unfilled",
            ),
            models.CheckConstraint(
                condition=Q(uncovered_quantity__lte=models.F("quantity")), name="paperorder_uncovered_within_quantity"
            ),
            models.CheckConstraint(
                condition=Q(status__in=["OPEN", "TRIGGER PENDING", "COMPLETE", "CANCELLED", "REJECTED"]),
                name="paperorder_status_valid",
            ),
            models.CheckConstraint(condition=Q(transaction_type__in=["BUY", "SELL"]), name="paperorder_side_valid"),
            models.CheckConstraint(condition=Q(price__gte=0, trigger_price__gte=0), name="paperorder_prices"),
        ]

    def __str__(self):
        return self.order_id

    @property
    def pending_quantity(self) -> int:
        if self.status in self.LIVE:
            return self.quantity - self.filled_quantity
        return 0


class PaperTradeQuerySet(models.QuerySet):
    def update(self, **kwargs):
        """The exchange's fills are written once; one edited afterwards (a test backdating a
        fill, a conversion) may change what an earlier day carried in: the kept carries go
        (``PaperCarry``), to be worked out again from the fills."""
        PaperCarry.objects.all().delete()
        return super().update(**kwargs)


class PaperTrade(models.Model):
    trade_id = models.CharField(max_length=20, unique=True)
    order = models.ForeignKey(PaperOrder, on_delete=models.CASCADE, related_name="trades")
    client = models.ForeignKey(PaperClient, on_delete=models.PROTECT, related_name="trades")
    instrument = models.ForeignKey(
        PaperInstrument, on_delete=models.PROTECT, related_name="trades", db_constraint=False
    )
    transaction_type = models.CharField(max_length=4)
    product = models.CharField(max_length=8)
    quantity = models.PositiveIntegerField()
    price = models.DecimalField(max_digits=14, decimal_places=2)
    filled_at = models.DateTimeField(default=timezone.now)

    objects = PaperTradeQuerySet.as_manager()

    class Meta:
        ordering = ["filled_at", "id"]
        indexes = [
            models.Index(fields=["client", "filled_at"]),
            # The client's fills written since its kept carry was worked out (``PaperCarry``): a
            # fill of an earlier day among them makes it stale, found without reading the days.
            models.Index(fields=["client", "id"]),
            # A SELL sums its client's fills in its instrument and product (the long it may use).
            models.Index(fields=["client", "instrument", "product"]),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gt=0), name="papertrade_quantity_positive"),
            models.CheckConstraint(condition=Q(price__gt=0), name="papertrade_price_positive"),
            models.CheckConstraint(condition=Q(transaction_type__in=["BUY", "SELL"]), name="papertrade_side_valid"),
        ]

    def __str__(self):
        return self.trade_id


class PaperCarry(models.Model):
    """What the client's fills of before ``engine.BOOK_LOOKBACK`` ahead of a trading day's start
    carried into that day, kept so that positions read the day's fills only, not every day's
    (``engine.positions_of``). Worked out once a day from the fills; ``through_id`` is the
    client's last fill then: a fill of before the cut written since (its id is greater) makes it
    stale, and so does any edit of a fill (``PaperTradeQuerySet.update``, ``carries_dropped``).
    The cut is ``BOOK_LOOKBACK`` back so that a fill of the day's last minutes still being written
    (a lower id, committed later) is read with the day's book, never missed by the carry.
    ``state``: ``[instrument id, product, net quantity, average as text]`` in the order the
    positions list them, those closed (quantity 0) included, their averages as computed."""

    client = models.ForeignKey(PaperClient, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    through_id = models.BigIntegerField(default=0)
    state = models.JSONField(default=list)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["client", "day"], name="papercarry_client_day")]

    def __str__(self):
        return f"{self.client_id} {self.day}"


@receiver([post_save, post_delete], sender=PaperTrade)
def carries_dropped(sender, instance, created=False, **kwargs):
    """A fill saved again or deleted (each deleted one, a cascade's too): the kept carries go, as
    on ``PaperTradeQuerySet.update`` (a new fill is found by its id, ``PaperCarry.through_id``)."""
    if not created:
        PaperCarry.objects.all().delete()


class PaperFeedState(models.Model):
    """The price feed's tick counter: with the seed it makes the random walk repeatable."""

    seed = models.BigIntegerField(default=0)
    tick_no = models.BigIntegerField(default=0)
    ticked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"tick {self.tick_no} (seed {self.seed})"
