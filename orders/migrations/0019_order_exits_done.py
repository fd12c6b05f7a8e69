"""Whether the monitoring cycle's exits are done with a strategy entry (``monitoring.cycle.EXITS_DONE``)
is on the order's row, in an index with its role and account: each minute's look at an account's
entries reads those still open, not every one it ever closed (an ``EXITS_DONE`` event is found by
reading each entry). The entries already done (their ``EXITS_DONE`` event) are marked so."""

from django.db import migrations, models


def mark_done_entries(apps, schema_editor):
    Order = apps.get_model("orders", "Order")
    OrderEvent = apps.get_model("orders", "OrderEvent")
    done = OrderEvent.objects.filter(kind="exits_done").values("order_id")
    Order.objects.filter(pk__in=done).update(exits_done=True)


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0018_basket_create_key"),
    ]

    operations = [
        migrations.AddField(
            model_name="order",
            name="exits_done",
            field=models.BooleanField(default=False),
        ),
        migrations.RunPython(mark_done_entries, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name="order",
            index=models.Index(fields=["exits_done", "role", "account"], name="orders_orde_exits_d_2f1bbf_idx"),
        ),
    ]
