from django.db import migrations

import tradingplatform.db


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0010_basketrun_items"),
    ]

    operations = [
        migrations.AddField(
            model_name="strategy",
            name="create_key",
            field=tradingplatform.db.ExactCharField(blank=True, editable=False, max_length=140, null=True, unique=True),
        ),
    ]
