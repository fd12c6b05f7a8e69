from pathlib import Path

from django.db import migrations

CSV = Path(__file__).resolve().parent.parent / "data" / "instruments.csv"


def load(apps, schema_editor):
    from brokers.paper.engine import instruments_load_csv

    instruments_load_csv(CSV, model=apps.get_model("paper", "PaperInstrument"))


class Migration(migrations.Migration):
    dependencies = [("paper", "0001_initial")]

    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
