from django.db import migrations, models


class Migration(migrations.Migration):
    """An opening not taken yet keeps the day the account was first met (``pending``), and lots in
    instruments not loaded wait on it (``waiting``) until they are."""

    dependencies = [
        ("portfolio", "0004_opening"),
    ]

    operations = [
        migrations.AddField(
            model_name="opening",
            name="waiting",
            field=models.BooleanField(db_index=True, default=False),
        ),
        migrations.AlterField(
            model_name="opening",
            name="outcome",
            field=models.CharField(
                choices=[
                    ("pending", "Not taken yet: first met on its trading date"),
                    ("seeded", "Seeded from the broker's book"),
                    ("earlier_fills", "Not seeded: fills recorded from an earlier day"),
                ],
                max_length=16,
            ),
        ),
    ]
