"""Whether an order has an event of a kind (the monitoring cycle's exits, every minute: is a strategy
entry done, ``EXITS_DONE``?) is a lookup of an index on (order, kind). On the order's index alone
it read all the order's events; where the optimizer materialized the subquery (the busy-account
check over many accounts), the whole event table, every account's. On MariaDB the index also serves
the foreign key (InnoDB drops the key it made for it); removing it makes that key again."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0016_order_sync_index"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="orderevent",
            index=models.Index(fields=["order", "kind"], name="orders_orde_order_i_0e5f06_idx"),
        ),
    ]
