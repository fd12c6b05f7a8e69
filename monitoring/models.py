"""Monitoring cycles: what each cycle did for each account, and the broker's raw data."""

from django.db import models
from django.utils import timezone


class MonitoringRun(models.Model):
    class Trigger(models.TextChoices):
        BEAT = "beat", "Scheduled cycle"
        FILL = "fill", "Fill"
        MANUAL = "manual", "Manual"

    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.BEAT)
    started_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    accounts = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self):
        return f"run {self.pk} {timezone.localtime(self.started_at):%Y-%m-%d %H:%M:%S}"


class AccountRun(models.Model):
    """One account's part of a cycle: per-step durations, actions taken, errors."""

    class Status(models.TextChoices):
        OK = "ok", "OK"
        ERRORS = "errors", "Errors"
        SKIPPED = "skipped", "Skipped (still running)"

    run = models.ForeignKey(MonitoringRun, null=True, blank=True, on_delete=models.CASCADE, related_name="results")
    account = models.ForeignKey("accounts.BrokerAccount", on_delete=models.CASCADE, related_name="monitoring")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OK)
    # When its steps began (the row is written once they are done: not auto_now_add).
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    step_ms = models.JSONField(default=dict)
    actions = models.JSONField(default=list)
    errors = models.JSONField(default=list)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["account", "-started_at"])]

    def __str__(self):
        return f"{self.account_id} {self.status} {timezone.localtime(self.started_at):%H:%M:%S}"


class BrokerSnapshot(models.Model):
    """The latest order book, trades or positions exactly as the broker returned them."""

    account = models.ForeignKey("accounts.BrokerAccount", on_delete=models.CASCADE, related_name="broker_snapshots")
    kind = models.CharField(max_length=16)
    data = models.JSONField(default=list)
    fetched_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "kind"], name="brokersnapshot_latest_per_kind")]

    def __str__(self):
        return f"{self.account_id} {self.kind} {timezone.localtime(self.fetched_at):%H:%M:%S}"
