"""Strategy entries already settled when step 4 started keeping exits at what is held: marked done
(``monitoring.cycle.EXITS_DONE``). Settled: final, no live exit, and either closed by their exits'
fills or from an earlier day (IST; the code before never placed exits for them again). Today's
other entries (one just filled, one whose exit was refused) are left to step 4."""

from datetime import datetime, time
from zoneinfo import ZoneInfo

from django.db import migrations
from django.db.models import Exists, F, OuterRef, Q, Sum
from django.db.models.functions import Coalesce

FINAL = ["FILLED", "CANCELLED", "REJECTED", "FAILED"]
LIVE = ["NEW", "SUBMITTED", "OPEN", "PARTIALLY_FILLED"]


def mark_settled_entries(apps, schema_editor):
    Order = apps.get_model("orders", "Order")
    OrderEvent = apps.get_model("orders", "OrderEvent")
    live_exit = Order.objects.filter(parent=OuterRef("pk"), role__in=["stop_loss", "take_profit"], status__in=LIVE)
    today = datetime.combine(datetime.now(ZoneInfo("Asia/Kolkata")).date(), time.min, ZoneInfo("Asia/Kolkata"))
    exits = Q(children__role__in=["stop_loss", "take_profit"])
    settled = (
        Order.objects.filter(role="entry", strategy__isnull=False, filled_quantity__gt=0, status__in=FINAL)
        .exclude(Exists(live_exit))
        .annotate(exited=Coalesce(Sum("children__filled_quantity", filter=exits), 0))
        .filter(Q(exited__gte=F("filled_quantity")) | Q(created_at__lt=today))
    )
    OrderEvent.objects.bulk_create(
        [
            OrderEvent(
                order_id=pk,
                kind="exits_done",
                from_status=status,
                to_status=status,
                cause="settled before exits were kept at what is held",
            )
            for pk, status in settled.values_list("pk", "status").iterator()
        ],
        batch_size=1000,
    )


class Migration(migrations.Migration):
    dependencies = [("orders", "0003_exact_keys")]

    operations = [migrations.RunPython(mark_settled_entries, migrations.RunPython.noop)]
