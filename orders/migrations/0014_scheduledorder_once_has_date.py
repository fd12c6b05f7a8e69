"""A one-off scheduled order has its date. Until scheduled orders were no longer edited in the admin,
staff could save a one-off (or make a daily order one) with the date left empty; such a row is given
the date it was due (its next run), ran, or was made, in its own timezone, so its next run is not
moved and the constraint can be added over it."""

from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import migrations, models


def date_one_offs_without_one(apps, schema_editor):
    ScheduledOrder = apps.get_model("orders", "ScheduledOrder")
    for row in ScheduledOrder.objects.filter(recurrence="once", run_on__isnull=True).iterator():
        when = row.next_run_at or row.last_run_at or row.created_at
        try:
            zone = ZoneInfo(row.timezone)
        except (ValueError, KeyError):  # a zone name the code no longer knows: the platform's own
            zone = ZoneInfo("Asia/Kolkata")
        ScheduledOrder.objects.filter(pk=row.pk).update(run_on=when.astimezone(zone).date())


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0003_audit_scheduled_cancel"),
        ("brokers", "0001_initial"),
        ("orders", "0013_choices_constraints"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunPython(date_one_offs_without_one, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="scheduledorder",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("recurrence", "once"), _negated=True), ("run_on__isnull", False), _connector="OR"
                ),
                name="scheduledorder_once_has_date",
            ),
        ),
    ]
