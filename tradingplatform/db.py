"""Model helpers shared by apps."""

from django.db import connection, connections, models
from django.utils.functional import cached_property


class AppendOnlyQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise PermissionError(f"{self.model.__name__} is append-only")

    def delete(self):
        raise PermissionError(f"{self.model.__name__} is append-only")


class AppendOnlyModel(models.Model):
    """Rows are written once and never changed or deleted (audit trails, order events)."""

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise PermissionError(f"{type(self).__name__} is append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError(f"{type(self).__name__} is append-only")


class PlainRows:
    """Model instances from a hand-written query, converted exactly as Django's ORM converts them.

    For reads so hot that Django building the query, and looking up its converters, on every
    call costs more than running it. ``columns(alias)`` lists the model's concrete columns in
    the order ``make`` takes them (write it into the query's SELECT); ``make(values, db)``
    builds one instance from that many values. The converters are looked up once per database
    vendor, not once per query.
    """

    def __init__(self, model):
        self.model = model
        self._converters: dict[str, list] = {}

    @cached_property
    def fields(self) -> tuple:
        return self.model._meta.concrete_fields  # read once the app registry is ready

    @cached_property
    def width(self) -> int:
        return len(self.fields)

    def columns(self, alias: str) -> str:
        return ", ".join(f"{alias}.{connection.ops.quote_name(f.column)}" for f in self.fields)

    def _for(self, conn) -> list:
        converters = self._converters.get(conn.vendor)
        if converters is None:
            converters = []
            for index, field in enumerate(self.fields):
                col = field.get_col(self.model._meta.db_table)
                found = conn.ops.get_db_converters(col) + col.get_db_converters(conn)
                if found:
                    converters.append((index, col, found))
            self._converters[conn.vendor] = converters
        return converters

    def make(self, values, db: str = "default"):
        conn = connections[db]
        values = list(values)
        for index, col, found in self._for(conn):
            value = values[index]
            for convert in found:
                value = convert(value, col, conn)
            values[index] = value
        return self.model.from_db(db, None, values)
