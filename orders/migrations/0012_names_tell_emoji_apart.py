from django.db import migrations

import tradingplatform.db

NEW_COLLATION = "utf8mb4_unicode_520_ci"


def rename_names_made_one(apps, schema_editor):
    """Names the collation before told apart that the new one takes for one name (MariaDB's default,
    ``general_ci``, weighs "ß" as "s", ``unicode_520`` as "ss": "Straße" and "Strasse"), which would
    break the unique name per trader: the trader's later one is named "Strasse (2)"."""
    connection = schema_editor.connection
    if connection.vendor != "mysql" or not connection.mysql_is_mariadb:
        return  # the collation changes on MariaDB only
    quote = connection.ops.quote_name
    for model_name in ("Strategy", "Basket"):
        model = apps.get_model("orders", model_name)
        table, length = quote(model._meta.db_table), model._meta.get_field("name").max_length
        with connection.cursor() as cursor:
            # Only the model's table name is put in the text; values go as parameters.
            cursor.execute(
                f"SELECT DISTINCT later.id FROM {table} earlier JOIN {table} later"  # noqa: S608
                " ON later.owner_id = earlier.owner_id AND later.id > earlier.id"
                f" AND later.name COLLATE {NEW_COLLATION} = earlier.name COLLATE {NEW_COLLATION}"
                " ORDER BY later.id"
            )
            later = [pk for (pk,) in cursor.fetchall()]
        for row in model.objects.filter(pk__in=later).order_by("pk"):
            for number in range(2, 10_000):
                suffix = f" ({number})"
                name = row.name[: length - len(suffix)] + suffix
                with connection.cursor() as cursor:
                    # Free in the collation before (the row is written in it) and in the new one.
                    cursor.execute(
                        f"SELECT 1 FROM {table} WHERE owner_id = %s"  # noqa: S608
                        f" AND (name = %s OR name COLLATE {NEW_COLLATION} = %s)",
                        [row.owner_id, name, name],
                    )
                    if cursor.fetchone() is None:
                        break
            model.objects.filter(pk=row.pk).update(name=name)


class Migration(migrations.Migration):
    """Strategy and basket names in a collation that weighs each emoji on its own (MariaDB)."""

    dependencies = [
        ("orders", "0011_strategy_create_key"),
    ]

    operations = [
        migrations.RunPython(rename_names_made_one, migrations.RunPython.noop),
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
