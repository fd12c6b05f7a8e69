"""Django's MySQL/MariaDB backend with fewer round trips for transaction bookkeeping.

Django opens an outermost ``atomic`` block with ``SET autocommit=0`` and closes it with ``COMMIT``
(or ``ROLLBACK``) and ``SET autocommit=1``: three round trips besides the block's own statements,
and an order is several blocks. Here, on MariaDB, the session stays in autocommit mode:

- entering the block sends nothing; the block's first statement is sent as
  ``START TRANSACTION; <statement>``, one round trip (a block that runs no statement sends
  nothing at all);
- ``COMMIT`` / ``ROLLBACK`` end that transaction and leave the session in autocommit mode, so
  leaving the block sends nothing more.

What the server does is what it did before: every statement of the block runs in one transaction
that the block's end commits or rolls back, savepoints work inside it, the isolation level of the
session applies to it, statements outside blocks commit on their own. Where ``autocommit=0``
would have started a new transaction by itself (after the server rolled the whole transaction
back, as on a deadlock, or committed it implicitly, as DDL and ``SET autocommit`` do), the next
statement of the block starts one here too: after an error that may have ended the transaction,
and after any statement that is not plain DML, the server is asked (``@@in_transaction``; rare
paths, one round trip each). MySQL has no ``@@in_transaction``: there Django's own bookkeeping is
kept. Django's own state (``connection.autocommit``, savepoints, on-commit hooks, the
``BEGIN``/``COMMIT`` entries of the query log) is untouched.

New connections: mysqlclient turns autocommit off when it connects (PEP 249) and Django turns it
back on, and the ``init_command``, the ``SQL_AUTO_IS_NULL`` and the isolation level statements
were three more round trips. Here the connection is opened in autocommit mode and the three
statements go in one round trip.
"""

import re
import time

from django.db import IntegrityError
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.mysql import base as mysql
from django.db.backends.utils import debug_transaction
from django.utils.asyncio import async_unsafe

Database = mysql.Database

_BEGIN = "START TRANSACTION; "
_BEGIN_BYTES = _BEGIN.encode()

# Statements that never end a transaction by themselves. After any other (DDL, SET, LOCK, COMMIT
# written out, ...) the server is asked whether the transaction is still open.
_PLAIN = re.compile(
    r"\s*(?:\(|(?:SELECT|INSERT|UPDATE|DELETE|REPLACE|WITH|SAVEPOINT|RELEASE|SHOW|DESCRIBE|DESC|EXPLAIN)\b"
    r"|ROLLBACK\s+TO\b)",
    re.IGNORECASE,
)

# Errors that InnoDB documents as rolling back the failed statement only: no need to ask.
_STATEMENT_ERRORS = (Database.IntegrityError, Database.DataError, Database.ProgrammingError)


class CursorWrapper(mysql.CursorWrapper):
    """Django's MySQL cursor wrapper, which also starts a pending transaction (see the module)."""

    def __init__(self, cursor, db):
        self.cursor = cursor
        self.db = db

    def execute(self, query, args=None):
        return self._run(query, args, many=False)

    def executemany(self, query, args):
        return self._run(query, args, many=True)

    def _run(self, query, args, many):
        if not self.db._emulated:
            return super().executemany(query, args) if many else super().execute(query, args)
        try:
            return self._in_transaction(query, args, many=many)
        except Database.OperationalError as e:  # as Django's own wrapper maps them
            if e.args[0] in self.codes_for_integrityerror:
                raise IntegrityError(*tuple(e.args))  # noqa: B904
            raise

    def callproc(self, procname, args=()):
        db = self.db
        if not db._emulated:
            return self.cursor.callproc(procname, args)
        if db._begin_pending:
            self.cursor.execute("START TRANSACTION")
            db._transaction_started()
        try:
            return self.cursor.callproc(procname, args)
        finally:
            db._ask_whether_transaction_open()  # a procedure may commit

    def _in_transaction(self, query, args, many):
        db = self.db
        cursor = self.cursor
        try:
            if not db._begin_pending:
                result = cursor.executemany(query, args) if many else cursor.execute(query, args)
            elif many:
                # mysqlclient rewrites an executemany INSERT into one statement only when the
                # query starts with it: the transaction gets its own round trip here.
                cursor.execute("START TRANSACTION")
                db._transaction_started()
                result = cursor.executemany(query, args)
            else:
                prefix = _BEGIN_BYTES if isinstance(query, bytes) else _BEGIN
                # The server runs the statements in order and stops at the first that fails: when
                # execute() returns, the transaction is open and the statement's result is next.
                cursor.execute(prefix + query, args)
                db._transaction_started()
                try:
                    cursor.nextset()
                    result = cursor.rowcount
                finally:
                    # The query log (last_executed_query) shows the statement as Django wrote it.
                    if cursor._executed is not None and cursor._executed.startswith(_BEGIN_BYTES):
                        cursor._executed = cursor._executed[len(_BEGIN_BYTES) :]
        except Database.Error as e:
            if db._trx_open and not isinstance(e, _STATEMENT_ERRORS):
                db._ask_whether_transaction_open()  # a deadlock rolls the whole transaction back
            raise
        if not (isinstance(query, str) and _PLAIN.match(query)):
            db._ask_whether_transaction_open()
        return result


class DatabaseWrapper(mysql.DatabaseWrapper):
    # Django's autocommit is off (an atomic block) while the session's stays on ...
    _emulated = False
    # ... and START TRANSACTION is still to be sent, with the block's next statement ...
    _begin_pending = False
    # ... or it was sent: the server has the transaction open.
    _trx_open = False
    # MariaDB (it has @@in_transaction); Django's own bookkeeping on MySQL.
    _lazy_begin = False

    def get_connection_params(self):
        kwargs = super().get_connection_params()
        # mysqlclient would otherwise send SET autocommit=0 (PEP 249's default) and Django
        # SET autocommit=1 right after: connect in the mode Django wants.
        kwargs.setdefault("autocommit", self.settings_dict["AUTOCOMMIT"])
        # Sent with init_connection_state's statements, in the same round trip.
        self._init_command = (kwargs.pop("init_command", None) or "").strip().rstrip(";")
        return kwargs

    def get_new_connection(self, conn_params):
        self._emulated = self._begin_pending = self._trx_open = False
        return super().get_new_connection(conn_params)

    def init_connection_state(self):
        # The statements Django's MySQL backend sends, after the init_command mysqlclient would
        # have sent: one round trip instead of three. SQL_AUTO_IS_NULL is set whatever the
        # server's default (Django asks the server first, a query of its own).
        statements = [self._init_command] if self._init_command else []
        statements.append("SET SQL_AUTO_IS_NULL = 0")
        if self.isolation_level:
            statements.append(f"SET SESSION TRANSACTION ISOLATION LEVEL {self.isolation_level.upper()}")
        with self.cursor() as cursor:
            cursor.execute("; ".join(statements))
        # After the init_command, so that the server data Django caches (sql_mode) is the session's.
        BaseDatabaseWrapper.init_connection_state(self)
        self._lazy_begin = self.mysql_is_mariadb

    @async_unsafe
    def create_cursor(self, name=None):
        self._last_used = time.monotonic()
        return CursorWrapper(self.connection.cursor(), self)

    # Django pings the server at the first query of each request (CONN_HEALTH_CHECKS), a round
    # trip per request under load. A connection used this recently is taken as it is: if the
    # server dropped it meanwhile, the request fails as one whose connection breaks midway does.
    # Not one whose last use failed (``errors_occurred``): it may be the connection that broke (a
    # background job that logged the error and carried on); it is asked, as Django asks it at a
    # request's end (``close_if_unusable_or_obsolete``), and dropped if it does not answer.
    HEALTHY_WITHIN_S = 1.0
    _last_used = float("-inf")

    def close_if_health_check_failed(self):
        if self.connection is not None and self.errors_occurred and self.health_check_enabled:
            if not self.health_check_done:
                if self.is_usable():
                    self.errors_occurred = False
                else:
                    self.close()
                self.health_check_done = True
            return
        if self.connection is not None and time.monotonic() - self._last_used < self.HEALTHY_WITHIN_S:
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    # ##### Transactions #####

    def _start_transaction_under_autocommit(self):
        # Django calls this to enter an outermost atomic block (autocommit on, no block open).
        if not self._lazy_begin:
            with debug_transaction(self, "BEGIN"):
                super()._set_autocommit(False)
            return
        with debug_transaction(self, "BEGIN"):
            self._emulated = True
            self._begin_pending = True
            self._trx_open = False

    def _transaction_started(self):
        self._begin_pending = False
        self._trx_open = True

    def _transaction_ended(self):
        # As with autocommit=0, the block's next statement (if any) starts a new transaction.
        self._trx_open = False
        self._begin_pending = True

    def _ask_whether_transaction_open(self):
        try:
            with self.connection.cursor() as cursor:
                cursor.execute("SELECT @@in_transaction")
                (open_,) = cursor.fetchone()
        except Database.Error:
            return  # the connection is broken: Django rolls back or drops it
        if open_:
            self._transaction_started()
        else:
            self._transaction_ended()

    def _set_autocommit(self, autocommit):
        if self._emulated:
            # Leaving the block (commit() or rollback() came first). SET autocommit=1 would
            # commit a transaction still open: so does this.
            try:
                if self._trx_open:
                    with debug_transaction(self, "COMMIT"), self.wrap_database_errors:
                        self.connection.commit()
            finally:
                self._emulated = self._begin_pending = self._trx_open = False
        # mysqlclient sends nothing when the session already is in that mode.
        super()._set_autocommit(autocommit)

    def _commit(self):
        if not self._emulated:
            return super()._commit()
        if self._begin_pending:
            with debug_transaction(self, "COMMIT"):
                return None  # no statement was sent: there is nothing to commit
        result = super()._commit()
        self._transaction_ended()
        return result

    def _rollback(self):
        if not self._emulated:
            return super()._rollback()
        if self._begin_pending:
            with debug_transaction(self, "ROLLBACK"):
                return None  # no statement was sent: there is nothing to roll back
        result = super()._rollback()
        self._transaction_ended()
        return result
