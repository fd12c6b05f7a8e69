from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0021_order_triggered_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="basketrun",
            name="placing",
            field=models.BooleanField(default=False),
        ),
    ]
