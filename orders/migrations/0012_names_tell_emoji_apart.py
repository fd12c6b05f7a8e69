from django.db import migrations

import tradingplatform.db


class Migration(migrations.Migration):
    """Strategy and basket names in a collation that weighs each emoji on its own (MariaDB)."""

    dependencies = [
        ("orders", "0011_strategy_create_key"),
    ]

    operations = [
        migrations.AlterField(
            model_name="basket",
            name="name",
            field=tradingplatform.db.NameCharField(max_length=100),
        ),
        migrations.AlterField(
            model_name="strategy",
            name="name",
            field=tradingplatform.db.NameCharField(max_length=100),
        ),
    ]
