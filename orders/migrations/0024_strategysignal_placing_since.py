from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0023_strategy_alerts_refused"),
    ]

    operations = [
        migrations.AddField(
            model_name="strategysignal",
            name="placing_since",
            field=models.DateTimeField(blank=True, db_index=True, null=True),
        ),
    ]
