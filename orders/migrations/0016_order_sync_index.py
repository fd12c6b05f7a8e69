"""The order sync's live orders and today's closed ones (``orders_to_sync``) are ranges of an index
on (account, status, created_at); on (account, status) they were every CANCELLED and FAILED order of
the account's history. It is added before the one it replaces (a prefix of it) is dropped."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0015_strategy_chase_caps_positive"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="order",
            index=models.Index(fields=["account", "status", "created_at"], name="orders_orde_account_6b7be1_idx"),
        ),
        migrations.RemoveIndex(
            model_name="order",
            name="orders_orde_account_611ca4_idx",
        ),
    ]
