"""Written-out inserts for the paper exchange's hottest writes (every placement's order and fill).

``PlainInsert(model).insert(instance)`` does what ``instance.save()`` does for a new row, with
the statement written once per database instead of compiled by the ORM on every call: each
field's ``pre_save`` and ``get_db_prep_save`` give the values (the same conversions), the new
primary key is set, and the instance is marked saved. No model signals are sent (the paper
models have no receivers), and the database's own constraints still hold every row.
"""

from django.db import connections
from django.db.models import AutoField, BigAutoField, SmallAutoField
from django.utils.functional import cached_property

_AUTO = (AutoField, BigAutoField, SmallAutoField)


class PlainInsert:
    def __init__(self, model):
        self.model = model
        self._sql: dict[str, str] = {}

    @cached_property
    def fields(self) -> tuple:
        """Every concrete column but an auto-increment primary key (read once the registry is ready)."""
        return tuple(f for f in self.model._meta.concrete_fields if not isinstance(f, _AUTO))

    def _statement(self, conn) -> str:
        sql = self._sql.get(conn.vendor)
        if sql is None:
            quote = conn.ops.quote_name
            columns = ", ".join(quote(f.column) for f in self.fields)
            marks = ", ".join(["%s"] * len(self.fields))
            sql = f"INSERT INTO {quote(self.model._meta.db_table)} ({columns}) VALUES ({marks})"  # noqa: S608
            self._sql[conn.vendor] = sql
        return sql

    def insert(self, instance, db: str = "default") -> None:
        conn = connections[db]
        values = [f.get_db_prep_save(f.pre_save(instance, True), conn) for f in self.fields]
        meta = self.model._meta
        with conn.cursor() as cursor:
            cursor.execute(self._statement(conn), values)
            pk = conn.ops.last_insert_id(cursor, meta.db_table, meta.pk.column)
        instance.pk = meta.pk.to_python(pk)
        instance._state.adding = False
        instance._state.db = db
