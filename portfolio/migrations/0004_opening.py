import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    """Whether an account's opening positions (what it held before the platform met it) were taken."""

    dependencies = [
        ("accounts", "0002_audit_session_actions"),
        ("portfolio", "0003_trade_unique_per_order"),
    ]

    operations = [
        migrations.CreateModel(
            name="Opening",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("trading_date", models.DateField()),
                ("taken_at", models.DateTimeField()),
                (
                    "outcome",
                    models.CharField(
                        choices=[
                            ("seeded", "Seeded from the broker's book"),
                            ("earlier_fills", "Not seeded: fills recorded from an earlier day"),
                        ],
                        max_length=16,
                    ),
                ),
                ("detail", models.JSONField(default=dict)),
                (
                    "account",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="opening",
                        to="accounts.brokeraccount",
                    ),
                ),
            ],
        ),
    ]
