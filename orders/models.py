"""Orders and where they come from: manual, basket, scheduled and strategy.

Every order, whatever its source, is an ``Order`` placed by ``services.order_place``; every
change of an order is an ``OrderEvent`` saying what caused it.
"""

from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from tradingplatform.db import AppendOnlyModel, ExactCharField, NameCharField

ORDER_TYPES = [("MARKET", "Market"), ("LIMIT", "Limit"), ("SL", "Stop-loss limit"), ("SL-M", "Stop-loss market")]
PRODUCTS = [("CNC", "CNC (delivery)"), ("MIS", "MIS (intraday)"), ("NRML", "NRML (carry forward)")]
SIDES = [("BUY", "Buy"), ("SELL", "Sell")]
VALIDITIES = [("DAY", "Day"), ("IOC", "Immediate or cancel")]
PRICE = {"max_digits": 14, "decimal_places": 2}


def positive(field: str) -> Q:
    return Q(**{f"{field}__isnull": True}) | Q(**{f"{field}__gt": 0})


def one_of(field: str, values) -> Q:
    """``field`` holds one of ``values`` (choices, or the values of a TextChoices)."""
    return Q(**{f"{field}__in": [value[0] if isinstance(value, tuple) else value for value in values]})


def order_type_rules(prefix: str = "") -> Q:
    """LIMIT has a price, SL a price and a trigger, SL-M a trigger, MARKET neither."""
    t, p, tr = f"{prefix}order_type", f"{prefix}price", f"{prefix}trigger_price"
    return (
        Q(**{t: "MARKET", f"{p}__isnull": True, f"{tr}__isnull": True})
        | Q(**{t: "LIMIT", f"{p}__isnull": False, f"{tr}__isnull": True})
        | Q(**{t: "SL", f"{p}__isnull": False, f"{tr}__isnull": False})
        | Q(**{t: "SL-M", f"{p}__isnull": True, f"{tr}__isnull": False})
    )


class OrderSpec(models.Model):
    """What to trade: the fields an order, a basket item and a scheduled order share."""

    instrument = models.ForeignKey("brokers.Instrument", on_delete=models.PROTECT, related_name="+")
    side = models.CharField(max_length=4, choices=SIDES)
    quantity = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    order_type = models.CharField(max_length=8, choices=ORDER_TYPES, default="MARKET")
    product = models.CharField(max_length=4, choices=PRODUCTS, default="MIS")
    validity = models.CharField(max_length=4, choices=VALIDITIES, default="DAY")
    price = models.DecimalField(**PRICE, null=True, blank=True)
    trigger_price = models.DecimalField(**PRICE, null=True, blank=True)

    class Meta:
        abstract = True

    def spec(self) -> dict:
        return {
            "instrument": self.instrument,
            "side": self.side,
            "quantity": self.quantity,
            "order_type": self.order_type,
            "product": self.product,
            "validity": self.validity,
            "price": self.price,
            "trigger_price": self.trigger_price,
        }


def spec_constraints(name: str) -> list:
    return [
        models.CheckConstraint(condition=Q(quantity__gt=0), name=f"{name}_quantity_positive"),
        models.CheckConstraint(condition=positive("price"), name=f"{name}_price_positive"),
        models.CheckConstraint(condition=positive("trigger_price"), name=f"{name}_trigger_positive"),
        models.CheckConstraint(condition=order_type_rules(), name=f"{name}_prices_fit_type"),
        models.CheckConstraint(condition=Q(side__in=["BUY", "SELL"]), name=f"{name}_side_valid"),
        models.CheckConstraint(condition=one_of("product", PRODUCTS), name=f"{name}_product_valid"),
        models.CheckConstraint(condition=one_of("validity", VALIDITIES), name=f"{name}_validity_valid"),
    ]


class Strategy(models.Model):
    class Unit(models.TextChoices):
        PERCENT = "percent", "Percent"
        POINTS = "points", "Points"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="strategies")
    name = NameCharField(max_length=100)
    accounts = models.ManyToManyField("accounts.BrokerAccount", related_name="strategies", blank=True)
    stop_loss = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    stop_loss_unit = models.CharField(max_length=8, choices=Unit.choices, default=Unit.PERCENT)
    take_profit = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    take_profit_unit = models.CharField(max_length=8, choices=Unit.choices, default=Unit.PERCENT)
    trailing_step = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Points the stop follows a favourable move by.",
    )
    reentry_enabled = models.BooleanField(default=False)
    max_reentries = models.PositiveIntegerField(default=0)
    chase_after_s = models.PositiveIntegerField(
        null=True, blank=True, help_text="Chase an open LIMIT entry after this."
    )
    chase_max_ticks = models.PositiveIntegerField(null=True, blank=True)
    chase_max_percent = models.DecimalField(max_digits=6, decimal_places=2, null=True, blank=True)
    max_retries = models.PositiveIntegerField(default=0)
    retryable_kinds = models.JSONField(default=list, blank=True, help_text="Rejection kinds worth retrying.")
    # The webhook secret is shown once; only its SHA-256 is kept.
    webhook_secret_hash = models.CharField(max_length=64, blank=True)
    webhook_secret_prefix = models.CharField(max_length=16, blank=True)
    is_active = models.BooleanField(default=True)
    # Webhook alerts refused (a wrong secret, a stale time, a paused strategy...), for its owner to
    # see why their alerts place nothing: how many, and the last one's time and why. Bounded
    # whatever an unauthenticated sender sends (a count, not a row per alert); never a body or secret.
    alerts_refused = models.PositiveIntegerField(default=0, editable=False)
    alert_refused_at = models.DateTimeField(null=True, blank=True, editable=False)
    alert_refused_reason = models.CharField(max_length=200, blank=True, editable=False)
    # "<owner id>:<key>" of the request that created it (the page's one-time token, the API's
    # Idempotency-Key): a repeat of that request is the same strategy, not "name taken".
    # Compared byte for byte, as an order's key: "Key" and "key" are two creates.
    create_key = ExactCharField(max_length=140, null=True, blank=True, unique=True, editable=False)  # noqa: DJ001
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        verbose_name_plural = "strategies"
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="strategy_unique_name_per_owner"),
            models.CheckConstraint(condition=positive("stop_loss"), name="strategy_stop_loss_positive"),
            models.CheckConstraint(condition=positive("take_profit"), name="strategy_take_profit_positive"),
            models.CheckConstraint(condition=positive("trailing_step"), name="strategy_trailing_positive"),
            # A cap of 0 reads as none where it is used (``monitoring.cycle``): a chase without end.
            models.CheckConstraint(condition=positive("chase_max_ticks"), name="strategy_chase_ticks_positive"),
            models.CheckConstraint(condition=positive("chase_max_percent"), name="strategy_chase_percent_positive"),
        ]

    def __str__(self):
        return self.name

    @property
    def retried_kinds(self) -> list[str]:
        """The rejection kinds its entries are retried for: those chosen, or, none chosen, those
        that may pass by themselves (``RejectKind.RETRYABLE_BY_NATURE``)."""
        from brokers.errors import RejectKind

        return list(self.retryable_kinds or RejectKind.RETRYABLE_BY_NATURE)


class StrategySignal(models.Model):
    """A signal received for a strategy; its id is unique per strategy (replay protection)."""

    strategy = models.ForeignKey(Strategy, on_delete=models.CASCADE, related_name="signals")
    signal_id = ExactCharField(max_length=64)
    received_at = models.DateTimeField(auto_now_add=True)
    via = models.CharField(max_length=16)  # api, webhook
    payload = models.JSONField(default=dict)
    results = models.JSONField(default=list)
    # When a request of it began placing its copies, until one records its results or
    # ``sources.signals_finish`` finishes what a request whose process ended left unplaced. A time,
    # not a flag: a repeat placing what its first request did not begins long after ``received_at``.
    # Indexed: the sweep looks for the few set among every signal ever received, once a minute.
    placing_since = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["strategy", "signal_id"], name="signal_unique_per_strategy")]

    def __str__(self):
        return f"{self.strategy} signal {self.signal_id}"


class Basket(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="baskets")
    name = NameCharField(max_length=100)
    accounts = models.ManyToManyField("accounts.BrokerAccount", related_name="baskets", blank=True)
    last_placed_at = models.DateTimeField(null=True, blank=True)
    last_results = models.JSONField(default=list, blank=True)
    # "<owner id>:<key>" of the request that created it (the page's one-time token): a repeat of
    # that request (a double click) is the same basket, not "name taken". Compared byte for byte.
    create_key = ExactCharField(max_length=140, null=True, blank=True, unique=True, editable=False)  # noqa: DJ001
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="basket_unique_name_per_owner")]

    def __str__(self):
        return self.name


class BasketRun(models.Model):
    """One placement of a basket, by its run token (the page's one-time token, the API's
    Idempotency-Key): what it asked for, so that the token sent again asking for something else
    (other accounts, another basket) is refused, not placed as a new placement under old keys."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    basket = models.ForeignKey(Basket, on_delete=models.CASCADE, related_name="runs")
    token = models.CharField(max_length=100)
    account_ids = models.JSONField(null=True, blank=True, help_text="The accounts chosen; null: the basket's own.")
    placed_on = models.JSONField(
        null=True, blank=True, help_text="The accounts it placed on, in order (the basket's own as they were then)."
    )
    items = models.JSONField(
        null=True, blank=True, help_text="The items it placed, in order, as they were then (a repeat places these)."
    )
    # Until a request of it answers, or ``sources.basket_runs_finish`` finishes what its process
    # left "being placed" when it ended.
    placing = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "token"], name="basketrun_unique_token_per_owner")]

    def __str__(self):
        return f"{self.basket} run {self.token}"


class BasketItem(OrderSpec):
    basket = models.ForeignKey(Basket, on_delete=models.CASCADE, related_name="items")
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "id"]
        constraints = spec_constraints("basketitem")

    def __str__(self):
        return f"{self.side} {self.quantity} {self.instrument}"


WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # 0 = Monday, as datetime.weekday()


class ScheduledOrder(OrderSpec):
    class Recurrence(models.TextChoices):
        ONCE = "once", "Once"
        TRADING_DAYS = "trading_days", "Every trading day"
        WEEKDAYS = "weekdays", "Chosen weekdays"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DONE = "done", "Done"
        CANCELLED = "cancelled", "Cancelled"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="scheduled_orders")
    account = models.ForeignKey("accounts.BrokerAccount", on_delete=models.CASCADE, related_name="scheduled_orders")
    recurrence = models.CharField(max_length=16, choices=Recurrence.choices, default=Recurrence.ONCE)
    # 0 = Monday ... 6 = Sunday, for WEEKDAYS.
    weekdays = models.JSONField(default=list, blank=True)
    time_of_day = models.TimeField(help_text="In the timezone below.")
    timezone = models.CharField(max_length=64, default="Asia/Kolkata")
    run_on = models.DateField(null=True, blank=True, help_text="The date, for a one-off order.")
    next_run_at = models.DateTimeField(null=True, blank=True, db_index=True)
    grace_s = models.PositiveIntegerField(default=0, help_text="Still fire this late after a missed time (seconds).")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_result = models.CharField(max_length=255, blank=True)
    # "<user id>:<client key>" of the form that created it: that form sent twice makes one.
    idempotency_key = ExactCharField(max_length=200, null=True, blank=True, unique=True)  # noqa: DJ001
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["next_run_at", "id"]
        indexes = [models.Index(fields=["status", "next_run_at"])]
        constraints = [
            *spec_constraints("scheduledorder"),
            models.CheckConstraint(
                condition=one_of("status", ["active", "done", "cancelled"]), name="scheduledorder_status_valid"
            ),
            models.CheckConstraint(
                condition=one_of("recurrence", ["once", "trading_days", "weekdays"]),
                name="scheduledorder_recurrence_valid",
            ),
            # A one-off's due time is its date and time (``sources.next_occurrence``).
            models.CheckConstraint(
                condition=~Q(recurrence="once") | Q(run_on__isnull=False), name="scheduledorder_once_has_date"
            ),
        ]

    def __str__(self):
        return f"{self.get_recurrence_display()} {self.side} {self.quantity} {self.instrument}"

    @property
    def weekday_names(self) -> str:
        """Its chosen weekdays as shown: "Mon, Wed, Fri"."""
        return ", ".join(WEEKDAY_NAMES[day] for day in sorted(self.weekdays) if 0 <= day < len(WEEKDAY_NAMES))


class ScheduledFire(models.Model):
    """One due time of a scheduled order: claimed once, then placed (or reported missed)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        # Its order checked and written (NEW) ahead of its time, not sent: a change or cancel still drops both.
        PREPARED = "prepared", "Prepared"
        PLACING = "placing", "Placing"  # a worker took it to send; a cancel is too late for this due time
        PLACED = "placed", "Placed"
        MISSED = "missed", "Missed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"  # claimed ahead of its time, then the trader cancelled or changed it

    # Claimed, not yet taken to be sent: a change or cancel of the scheduled order drops these.
    WAITING = (Status.PENDING, Status.PREPARED)

    scheduled = models.ForeignKey(ScheduledOrder, on_delete=models.CASCADE, related_name="fires")
    due_at = models.DateTimeField()
    # The day whose run this is, as its order was when it was claimed (the exchange's day for a
    # trading-days order, the trader's otherwise): an edit moving the order's zone must not read
    # the day again in the new zone (``sources._days_run``). Null on fires claimed before it was kept.
    run_day = models.DateField(null=True, blank=True)
    claimed_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    detail = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-due_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["scheduled", "due_at"], name="scheduledfire_once_per_due"),
            models.CheckConstraint(
                condition=one_of(
                    "status", ["pending", "prepared", "placing", "placed", "missed", "failed", "cancelled"]
                ),
                name="scheduledfire_status_valid",
            ),
        ]

    def __str__(self):
        return f"{self.scheduled_id} at {timezone.localtime(self.due_at):%Y-%m-%d %H:%M:%S}"


class DailyCounter(models.Model):
    """The next order number of an account on a trading day; gap-free, one UPDATE per order."""

    account = models.ForeignKey("accounts.BrokerAccount", on_delete=models.CASCADE, related_name="+")
    trading_date = models.DateField()
    value = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "trading_date"], name="dailycounter_unique_account_date")
        ]

    def __str__(self):
        return f"{self.account_id} {self.trading_date}: {self.value}"


class Order(OrderSpec):
    class Status(models.TextChoices):
        NEW = "NEW", "New"
        SUBMITTED = "SUBMITTED", "Submitted"
        OPEN = "OPEN", "Open"
        PARTIALLY_FILLED = "PARTIALLY_FILLED", "Partially filled"
        FILLED = "FILLED", "Filled"
        CANCELLED = "CANCELLED", "Cancelled"
        REJECTED = "REJECTED", "Rejected"
        FAILED = "FAILED", "Failed"

    class Source(models.TextChoices):
        MANUAL = "manual", "Manual"
        BASKET = "basket", "Basket"
        SCHEDULED = "scheduled", "Scheduled"
        STRATEGY = "strategy", "Strategy"
        SYSTEM = "system", "System"

    class Role(models.TextChoices):
        ENTRY = "entry", "Entry"
        STOP_LOSS = "stop_loss", "Stop-loss"
        TAKE_PROFIT = "take_profit", "Take-profit"
        EXIT = "exit", "Exit"

    LIVE = (Status.NEW, Status.SUBMITTED, Status.OPEN, Status.PARTIALLY_FILLED)
    AT_BROKER = (Status.SUBMITTED, Status.OPEN, Status.PARTIALLY_FILLED)
    FINAL = (Status.FILLED, Status.CANCELLED, Status.REJECTED, Status.FAILED)

    reference = models.CharField(max_length=20, unique=True, help_text="Ours; sent to the broker as the tag.")
    account = models.ForeignKey("accounts.BrokerAccount", on_delete=models.PROTECT, related_name="orders")
    placed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.NEW)
    source = models.CharField(max_length=16, choices=Source.choices)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.ENTRY)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    strategy = models.ForeignKey(Strategy, null=True, blank=True, on_delete=models.SET_NULL, related_name="orders")
    basket = models.ForeignKey(Basket, null=True, blank=True, on_delete=models.SET_NULL, related_name="orders")
    scheduled = models.ForeignKey(
        ScheduledOrder, null=True, blank=True, on_delete=models.SET_NULL, related_name="orders"
    )
    # NULL until the broker answers: unique per account, and NULLs never collide.
    broker_order_id = models.CharField(max_length=40, null=True, blank=True)  # noqa: DJ001
    filled_quantity = models.PositiveIntegerField(default=0)
    # At the column's scale: a new order's answer shows it as stored ("0.0000"), not as "0".
    average_price = models.DecimalField(max_digits=14, decimal_places=4, default=Decimal("0.0000"))
    reject_kind = models.CharField(max_length=32, blank=True)
    reject_reason = models.CharField(max_length=500, blank=True)
    retry_count = models.PositiveIntegerField(default=0)
    reentry_count = models.PositiveIntegerField(default=0)
    chase_count = models.PositiveIntegerField(default=0)
    # "<user id>:<client key>", so one trader's key can never return another's order.
    idempotency_key = ExactCharField(max_length=200, null=True, blank=True, unique=True)  # noqa: DJ001
    request_hash = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    # A stop order (SL / SL-M) the market triggered: when its broker first said so. It is then the
    # plain order it became (LIMIT / MARKET) at its broker, whose trigger can no longer be changed.
    triggered_at = models.DateTimeField(null=True, blank=True)
    # A strategy entry the monitoring cycle's exits no longer look at (``monitoring.cycle.EXITS_DONE``,
    # told in its timeline by that event): on the order's row, in an index, so that each minute's look
    # reads the entries still open, not every round trip the account ever closed.
    exits_done = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The cycle's exits (``_filled_entries``): an account's entries not done, not its history;
            # and every account's entries not done, for ``exits_settle`` (done first: the prefix).
            models.Index(fields=["exits_done", "role", "account"]),
            # With created_at: the sync's live orders and today's closed ones (``orders_to_sync``) are
            # ranges of it, not every CANCELLED and FAILED order of the account's history.
            models.Index(fields=["account", "status", "created_at"]),
            models.Index(fields=["account", "-created_at"]),
            models.Index(fields=["broker_order_id"]),
        ]
        constraints = [
            *spec_constraints("order"),
            models.CheckConstraint(
                condition=Q(filled_quantity__lte=F("quantity")), name="order_filled_within_quantity"
            ),
            models.UniqueConstraint(fields=["account", "broker_order_id"], name="order_unique_broker_id_per_account"),
            models.CheckConstraint(
                condition=one_of(
                    "status",
                    ["NEW", "SUBMITTED", "OPEN", "PARTIALLY_FILLED", "FILLED", "CANCELLED", "REJECTED", "FAILED"],
                ),
                name="order_status_valid",
            ),
            models.CheckConstraint(
                condition=one_of("source", ["manual", "basket", "scheduled", "strategy", "system"]),
                name="order_source_valid",
            ),
            models.CheckConstraint(
                condition=one_of("role", ["entry", "stop_loss", "take_profit", "exit"]), name="order_role_valid"
            ),
            models.CheckConstraint(condition=Q(average_price__gte=0), name="order_average_price_not_negative"),
        ]

    def __str__(self):
        return self.reference

    @property
    def is_live(self) -> bool:
        return self.status in self.LIVE

    @property
    def is_settled(self) -> bool:
        """Final for good: a FAILED order (its answer lost, not found in time) may yet be found at its
        broker and move on to OPEN or FILLED."""
        return self.status in (self.Status.FILLED, self.Status.CANCELLED, self.Status.REJECTED)

    @property
    def pending_quantity(self) -> int:
        return self.quantity - self.filled_quantity if self.is_live else 0

    @property
    def is_triggered(self) -> bool:
        """A stop order, at its broker still, that the market triggered: its trigger can no longer change."""
        return self.triggered_at is not None and self.status in self.AT_BROKER

    @property
    def status_text(self) -> str:
        """Its status as a trader reads it: "Open (triggered)" for a stop that triggered."""
        return f"{self.get_status_display()} (triggered)" if self.is_triggered else self.get_status_display()

    ANSWER_LOST = "Sent, but the broker's answer was lost; it is being looked up by its reference (see the order book)."

    @property
    def outcome_reason(self) -> str:
        """What a result row (a basket item's, a signal's account's) says beside its status: why its
        broker refused it, or why one said SUBMITTED is not known to be at its broker: no broker
        order id (its answer, and the look-up by its tag, were lost:
        ``services.order_outcome_unknown``). Else ""."""
        if self.reject_reason:
            return self.reject_reason
        return self.ANSWER_LOST if self.status == self.Status.SUBMITTED and not self.broker_order_id else ""


class OrderEvent(AppendOnlyModel):
    """One thing that happened to an order, and why (append-only)."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32)
    from_status = models.CharField(max_length=20, blank=True)
    to_status = models.CharField(max_length=20, blank=True)
    cause = models.CharField(max_length=200, help_text="Who or what did it: 'ticket by trader', 'scheduled #4'...")
    message = models.CharField(max_length=500, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    # What a trader reads in the timeline for each kind; another kind reads as itself.
    KIND_LABELS = {
        "created": "Created",
        "submitted": "Sent to the broker",
        "outcome_unknown": "Broker's answer lost (looked up by reference)",
        "opened": "Open at the broker",
        "partially_filled": "Partly filled",
        "filled": "Filled",
        "fill": "Filled more",
        "triggered": "Stop triggered",
        "updated": "Updated by the broker",
        "rejected": "Rejected",
        "failed": "Failed",
        "modified": "Modified",
        "modify_rejected": "Modify refused by the broker",
        "modify_failed": "Modify failed",
        "modify_unknown": "Modify's answer lost (checked with the broker)",
        "cancel_requested": "Cancel asked",
        "cancelled": "Cancelled",
        "cancel_refused": "Cancel refused",
        "cancel_failed": "Cancel failed",
        "cancel_unknown": "Cancel's answer lost (checked with the broker)",
        "exits_done": "Exits done (nothing held)",
    }

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            # Whether an order has an event of a kind (the cycle's exits: is an entry done?) is one
            # lookup per order, not a read of all its events, nor of the whole table (every account's).
            models.Index(fields=["order", "kind"]),
        ]

    def __str__(self):
        return f"{self.order_id} {self.kind} {self.from_status}->{self.to_status}"

    @property
    def kind_label(self) -> str:
        return self.KIND_LABELS.get(self.kind, self.kind.replace("_", " ").capitalize())

    @property
    def summary(self) -> str:
        """The message, or what the event's data says: a modify's changes (quantity 12, price
        1401.00), the prices an order was placed at, who asked for a cancel."""
        if self.message:
            return self.message
        data = self.data or {}
        if self.kind in ("modified", "created"):
            return ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in data.items())
        if self.kind == "cancel_requested" and data.get("by"):
            return f"asked by the {data['by']}"
        return ""
