"""A strategy's chase caps are above 0 (or none). Before ``strategy_check`` refused it, the strategy
page and the admin saved a cap of 0 ticks, which the monitoring cycle reads as no cap: the entry was
chased without end, where the trader meant "do not move it". A chase capped at 0 never moves its
order, so such a strategy is written as one that does not chase (what its trader asked for), then
the database refuses a cap of 0 or below."""

from django.db import migrations, models
from django.db.models import Q


def no_chase_for_zero_caps(apps, schema_editor):
    Strategy = apps.get_model("orders", "Strategy")
    Strategy.objects.filter(Q(chase_max_ticks__lte=0) | Q(chase_max_percent__lte=0)).update(
        chase_after_s=None, chase_max_ticks=None, chase_max_percent=None
    )


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0014_scheduledorder_once_has_date"),
    ]

    operations = [
        migrations.RunPython(no_chase_for_zero_caps, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="strategy",
            constraint=models.CheckConstraint(
                condition=models.Q(("chase_max_ticks__isnull", True), ("chase_max_ticks__gt", 0), _connector="OR"),
                name="strategy_chase_ticks_positive",
            ),
        ),
        migrations.AddConstraint(
            model_name="strategy",
            constraint=models.CheckConstraint(
                condition=models.Q(("chase_max_percent__isnull", True), ("chase_max_percent__gt", 0), _connector="OR"),
                name="strategy_chase_percent_positive",
            ),
        ),
    ]
