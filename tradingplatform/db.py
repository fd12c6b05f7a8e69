"""Model helpers shared by apps."""

from django.db import connection, connections, models
from django.db.models.constants import OnConflict
from django.utils.functional import cached_property


class ExactCharField(models.CharField):
    """Text compared byte for byte: ids and keys a client chooses, where "Sig-A" and "sig-a" are two.

    MariaDB's default collation ignores case, accents and trailing spaces, so its unique index
    would take a second, different signal or key for a replay of the first (and ``_bin`` still
    ignores trailing spaces: ``nopad``). SQLite compares bytes already.
    """

    def db_parameters(self, connection):
        params = super().db_parameters(connection)
        if connection.vendor == "mysql":
            params["collation"] = "utf8mb4_nopad_bin" if connection.mysql_is_mariadb else "utf8mb4_0900_bin"
        return params


class NameCharField(models.CharField):
    """A name a person gives (a strategy's, a basket's): case and accents ignored on MariaDB as its
    default collation ignores them, but every character its own. MariaDB's ``utf8mb4_general_ci``
    and ``utf8mb4_unicode_ci`` weigh every character beyond the BMP (every emoji) alike, so a unique
    name index took "📈 Scalp" for "🚀 Scalp"; ``unicode_520`` weighs them apart. MySQL's default
    (``0900_ai_ci``) and SQLite tell them apart already.
    """

    def db_parameters(self, connection):
        params = super().db_parameters(connection)
        if connection.vendor == "mysql" and connection.mysql_is_mariadb:
            params["collation"] = "utf8mb4_unicode_520_ci"
        return params


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

    def __init__(self, model, only: tuple[str, ...] | None = None):
        self.model = model
        self.only = only  # some of the columns, by field name: ``convert`` them, no instances
        self._converters: dict[str, list] = {}

    @cached_property
    def fields(self) -> tuple:
        fields = self.model._meta.concrete_fields  # read once the app registry is ready
        return fields if self.only is None else tuple(self.model._meta.get_field(name) for name in self.only)

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

    def convert(self, values, db: str = "default") -> list:
        """The row's values as the ORM would give them."""
        conn = connections[db]
        values = list(values)
        for index, col, found in self._for(conn):
            value = values[index]
            for convert in found:
                value = convert(value, col, conn)
            values[index] = value
        return values

    def make(self, values, db: str = "default"):
        if self.only is not None:
            raise TypeError("a model instance needs every column")
        return self.model.from_db(db, None, self.convert(values, db))


class PlainInserts:
    """INSERTs of one model's rows, the statement written out once per vendor and row count.

    For the hottest writes (an order's own rows, a fill's): every value is prepared exactly as
    ``Model.save`` prepares it (``pre_save``, so ``auto_now``/``auto_now_add`` are set on the
    instance, then ``get_db_prep_save``), without the ORM building the query anew on each call.
    The model's primary key must be an auto field; one row's id is set on its instance (from the
    connection, no statement). Several rows in one statement keep no ids, unless ``returning_ids``:
    then the database hands them back where it can (``RETURNING``: MariaDB, SQLite, PostgreSQL),
    as ``bulk_create`` has it. ``ignore_conflicts``: rows that would break a unique key are left
    out, as ``bulk_create(ignore_conflicts=True)`` leaves them, and no instance is given an id
    (which rows went in is not known). The statements of up to ``KEPT_ROWS`` rows are kept; larger
    ones are written out on each call (a caller with hundreds of rows may prefer ``bulk_create``,
    which also splits them within the database's limits).
    """

    KEPT_ROWS = 16

    def __init__(self, model, *, returning_ids: bool = False, ignore_conflicts: bool = False):
        self.model = model
        self.returning_ids = returning_ids and not ignore_conflicts
        self.ignore_conflicts = ignore_conflicts
        self._sql: dict[tuple[str, int], tuple[str, bool]] = {}

    @cached_property
    def fields(self) -> list:
        meta = self.model._meta
        if meta.pk.get_internal_type() not in ("AutoField", "BigAutoField", "SmallAutoField"):
            raise TypeError(f"{self.model.__name__}'s primary key is not an auto field")
        return [field for field in meta.concrete_fields if not field.primary_key]

    def _statement(self, conn, count: int) -> tuple[str, bool]:
        """The statement for ``count`` rows, and whether it hands back their ids."""
        quote = conn.ops.quote_name
        columns = ", ".join(quote(field.column) for field in self.fields)
        row = "(" + ", ".join(["%s"] * len(self.fields)) + ")"
        # Only the model's table and column names are put in the text; values go as parameters.
        table = quote(self.model._meta.db_table)
        conflict = OnConflict.IGNORE if self.ignore_conflicts else None
        sql = f"{conn.ops.insert_statement(on_conflict=conflict)} {table} ({columns}) VALUES {', '.join([row] * count)}"
        if conflict:
            suffix = conn.ops.on_conflict_suffix_sql(self.fields, conflict, None, None)
            return (f"{sql} {suffix}" if suffix else sql), False
        returning = count > 1 and self.returning_ids and conn.features.can_return_rows_from_bulk_insert
        if returning:
            sql += " " + conn.ops.return_insert_columns([self.model._meta.pk])[0]
        return sql, returning

    def insert(self, *objs, db: str = "default") -> None:
        conn = connections[db]
        statement = self._sql.get((conn.vendor, len(objs)))
        if statement is None:
            statement = self._statement(conn, len(objs))
            if len(objs) <= self.KEPT_ROWS:
                self._sql[(conn.vendor, len(objs))] = statement
        sql, returning = statement
        params = [field.get_db_prep_save(field.pre_save(obj, True), conn) for obj in objs for field in self.fields]
        meta = self.model._meta
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            if returning:
                for obj, (pk,) in zip(objs, conn.ops.fetch_returned_insert_rows(cursor), strict=True):
                    obj.pk = meta.pk.to_python(pk)
            elif len(objs) == 1 and not self.ignore_conflicts:
                objs[0].pk = meta.pk.to_python(conn.ops.last_insert_id(cursor, meta.db_table, meta.pk.column))
        for obj in objs:
            obj._state.adding = False
            obj._state.db = db


class PlainUpdates:
    """One UPDATE that sets ``fields`` of several rows of one model, each row to its own values (a
    ``CASE`` on the primary key), the statement written out once per vendor and row count: for hot
    writes, as ``PlainInserts`` (``bulk_update`` builds the same statement from expressions on each
    call, costlier than the write). Values are prepared as ``Model.save`` prepares them."""

    def __init__(self, model, fields: tuple[str, ...]):
        self.model = model
        self.fields = [model._meta.get_field(name) for name in fields]
        self._sql: dict[tuple[str, int], str] = {}

    def update(self, rows: dict, db: str = "default") -> int:
        """``rows``: {primary key: (a value for each field)}. Returns how many rows were written."""
        if not rows:
            return 0
        conn = connections[db]
        sql = self._sql.get((conn.vendor, len(rows)))
        if sql is None:
            quote = conn.ops.quote_name
            pk = quote(self.model._meta.pk.column)
            whens = " ".join(["WHEN %s THEN %s"] * len(rows))
            sets = ", ".join(f"{quote(field.column)} = CASE {pk} {whens} END" for field in self.fields)
            keys = ", ".join(["%s"] * len(rows))
            # Only the model's table and column names are put in the text; values go as parameters.
            sql = f"UPDATE {quote(self.model._meta.db_table)} SET {sets} WHERE {pk} IN ({keys})"  # noqa: S608
            self._sql[(conn.vendor, len(rows))] = sql
        params = [
            param
            for i, field in enumerate(self.fields)
            for pk, values in rows.items()
            for param in (pk, field.get_db_prep_save(values[i], conn))
        ]
        with conn.cursor() as cursor:
            cursor.execute(sql, [*params, *rows])
            return cursor.rowcount


class PlainUpdate:
    """``Model.objects.filter(pk=..., **where).update(**values)`` for one row of one model, the
    statement written out once per vendor and set of field names: for hot writes, as
    ``PlainInserts`` (``QuerySet.update`` compiles its statement anew on each call). Values are
    prepared as ``QuerySet.update`` prepares them (``get_db_prep_save``), the conditions as an
    exact lookup does (``None`` is ``IS NULL``); fields by name or attname, no expressions. Returns
    how many rows matched (0 when the row is gone or a condition no longer holds)."""

    def __init__(self, model):
        self.model = model
        self._sql: dict[tuple, str] = {}

    @cached_property
    def _fields(self) -> dict:
        fields = {}
        for field in self.model._meta.concrete_fields:
            fields[field.name] = fields[field.attname] = field
        return fields

    def update(self, pk, values: dict, *, where: dict | None = None, db: str = "default") -> int:
        conn = connections[db]
        fields, where = self._fields, where or {}
        nulls = frozenset(name for name, value in where.items() if value is None)
        shape = (conn.vendor, tuple(values), tuple(where), nulls)
        sql = self._sql.get(shape)
        if sql is None:
            quote = conn.ops.quote_name
            sets = ", ".join(f"{quote(fields[name].column)} = %s" for name in values)
            conditions = [f"{quote(self.model._meta.pk.column)} = %s"] + [
                f"{quote(fields[name].column)} IS NULL" if name in nulls else f"{quote(fields[name].column)} = %s"
                for name in where
            ]
            # Only the model's table and column names are put in the text; values go as parameters.
            table = quote(self.model._meta.db_table)
            sql = f"UPDATE {table} SET {sets} WHERE {' AND '.join(conditions)}"  # noqa: S608
            self._sql[shape] = sql
        if any(hasattr(value, "resolve_expression") for value in (*values.values(), *where.values())):
            raise TypeError("PlainUpdate takes plain values, not expressions (use QuerySet.update)")
        params = [fields[name].get_db_prep_save(value, conn) for name, value in values.items()]
        params.append(self.model._meta.pk.get_db_prep_value(pk, conn))
        params += [fields[name].get_db_prep_value(value, conn) for name, value in where.items() if value is not None]
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount
