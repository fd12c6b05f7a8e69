"""Events of terms found changed at the broker (its own app) said so in their message only; they
carry it as data now (``orders.services.CHANGED_AT_BROKER``), which the monitoring cycle reads to
keep what a trader changed by hand. Written into the events recorded before, from their message:
"found changed at the broker: trigger price 1490.10, order type SL-M; 3/5 filled at ..."."""

from django.db import migrations

PREFIX = "found changed at the broker: "
# Longest first: "trigger price 1490.10" is not a "price".
FIELDS = (
    ("trigger price", "trigger_price"),
    ("order type", "order_type"),
    ("quantity", "quantity"),
    ("price", "price"),
)


def terms(message: str) -> dict:
    found = {}
    for part in message.removeprefix(PREFIX).split(";")[0].split(", "):
        for words, name in FIELDS:
            if part.startswith(f"{words} "):
                value = part[len(words) + 1 :].strip()
                found[name] = None if value == "-" else value
                break
    return found


def backfill(apps, schema_editor):
    OrderEvent = apps.get_model("orders", "OrderEvent")
    for event in OrderEvent.objects.filter(message__startswith=PREFIX).iterator():
        changed = terms(event.message)
        if changed and "broker_changed" not in (event.data or {}):
            OrderEvent.objects.filter(pk=event.pk).update(data={**(event.data or {}), "broker_changed": changed})


class Migration(migrations.Migration):
    dependencies = [("orders", "0007_basketrun")]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
