from django.db import migrations, models


class Migration(migrations.Migration):
    """A broker's trade id is unique within its order, not within an account: Kite's are exchange
    trade numbers. The new key's leading columns also serve the lookups of the dropped index."""

    dependencies = [
        ("accounts", "0002_audit_session_actions"),
        ("brokers", "0001_initial"),
        ("orders", "0004_entries_exits_done"),
        ("portfolio", "0002_trade_account_broker_order_index"),
    ]

    operations = [
        migrations.AddConstraint(
            model_name="trade",
            constraint=models.UniqueConstraint(
                fields=("account", "broker_order_id", "broker_trade_id"), name="trade_unique_per_order"
            ),
        ),
        migrations.RemoveConstraint(model_name="trade", name="trade_unique_per_account"),
        migrations.RemoveIndex(model_name="trade", name="portfolio_t_account_92f425_idx"),
    ]
