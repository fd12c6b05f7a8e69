"""The MySQL/MariaDB backend (tradingplatform/dbbackends/mysql): Django's transaction semantics,
with fewer round trips. Each test looks from a second connection at what is committed, and at
what the first one sent over the wire."""

import threading
import time

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError, IntegrityError, OperationalError, connection, connections, transaction

pytestmark = [
    pytest.mark.skipif(
        not settings.DATABASES["default"]["ENGINE"].endswith("mysql"), reason="the MySQL/MariaDB backend"
    ),
    pytest.mark.django_db(transaction=True),
]

TABLE = "tp_dbbackend_row"


class Boom(Exception):
    pass


@pytest.fixture
def table():
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, note VARCHAR(20)) ENGINE=InnoDB")
    yield
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")


@pytest.fixture
def other():
    """Another connection to the same database: it sees only what is committed."""
    conn = connections.create_connection("default")
    yield conn
    conn.close()


@pytest.fixture
def wire():
    """What the connection sends: ("query", sql), ("commit",), ("rollback",), ("autocommit", on)."""
    sent = []
    connection.ensure_connection()
    raw = connection.connection
    for name in ("query", "commit", "rollback"):
        method = getattr(raw, name)

        def record(*args, _name=name, _method=method):
            sent.append((_name, bytes(args[0]).decode()) if args else (_name,))
            return _method(*args)

        setattr(raw, name, record)
    autocommit = raw.autocommit

    def record_autocommit(on):
        if raw.get_autocommit() != on:
            sent.append(("autocommit", on))
        return autocommit(on)

    raw.autocommit = record_autocommit
    yield sent
    connection.close()  # the recording connection goes (mysqlclient's cannot drop the attributes)


def insert(row_id, note="x"):
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {TABLE} (id, note) VALUES (%s, %s)", [row_id, note])


def committed(other):
    with other.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {TABLE} ORDER BY id")
        return [row[0] for row in cursor.fetchall()]


def test_atomic_block_is_one_transaction_opened_with_its_first_statement(table, other, wire):
    with transaction.atomic():
        insert(1)
        assert committed(other) == []  # the transaction is open
        insert(2)

    assert committed(other) == [1, 2]
    assert wire == [
        ("query", f"START TRANSACTION; INSERT INTO {TABLE} (id, note) VALUES (1, 'x')"),
        ("query", f"INSERT INTO {TABLE} (id, note) VALUES (2, 'x')"),
        ("commit",),
    ]
    assert connection.get_autocommit()


def test_first_statement_of_a_block_gives_its_own_results(table, other):
    insert(1)
    insert(2)
    with transaction.atomic():
        with connection.cursor() as cursor:
            # How orders take their daily number: the new value through LAST_INSERT_ID(expr).
            cursor.execute(f"UPDATE {TABLE} SET id = LAST_INSERT_ID(id + 10) WHERE id = %s", [1])
            assert (cursor.rowcount, cursor.lastrowid) == (1, 11)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT id, note FROM {TABLE} ORDER BY id")
            assert [column[0] for column in cursor.description] == ["id", "note"]
            assert cursor.fetchall() == ((2, "x"), (11, "x"))
            assert connection.ops.last_executed_query(cursor, "", None) == f"SELECT id, note FROM {TABLE} ORDER BY id"

    assert committed(other) == [2, 11]


def test_error_of_the_first_statement_leaves_the_transaction_usable(table, other):
    insert(1)
    with transaction.atomic():
        with pytest.raises(IntegrityError), transaction.atomic():
            insert(1)  # duplicate key: START TRANSACTION; SAVEPOINT went first, this fails alone
        insert(2)
    with transaction.atomic():
        with pytest.raises(IntegrityError):
            insert(1)  # START TRANSACTION ran, the INSERT failed: the transaction is open
        insert(3)

    assert committed(other) == [1, 2, 3]


def test_statement_after_a_block_commits_on_its_own(table, other, wire):
    with transaction.atomic():
        insert(1)
    insert(2)

    assert committed(other) == [1, 2]
    assert ("autocommit", False) not in wire and ("autocommit", True) not in wire


def test_exception_rolls_the_block_back_and_autocommit_resumes(table, other, wire):
    with pytest.raises(Boom), transaction.atomic():
        insert(1)
        insert(2)
        raise Boom

    assert committed(other) == []
    assert wire[-1] == ("rollback",)
    assert connection.get_autocommit()
    insert(3)
    assert committed(other) == [3]


def test_set_rollback_rolls_the_block_back(table, other):
    with transaction.atomic():
        insert(1)
        transaction.set_rollback(True)

    assert committed(other) == []
    insert(2)
    assert committed(other) == [2]


def test_nested_block_rolls_back_to_its_savepoint(table, other):
    with transaction.atomic():
        insert(1)
        with pytest.raises(Boom), transaction.atomic():
            insert(2)
            raise Boom
        insert(3)
        with transaction.atomic():
            insert(4)

    assert committed(other) == [1, 3, 4]


def test_savepoint_as_the_first_statement_opens_the_transaction(table, other, wire):
    with transaction.atomic():
        with pytest.raises(Boom), transaction.atomic():
            insert(1)
            raise Boom
        insert(2)

    assert committed(other) == [2]
    assert wire[0][1].startswith("START TRANSACTION; SAVEPOINT ")


def test_on_commit_runs_after_commit_only(table, other):
    seen = []
    with transaction.atomic():
        insert(1)
        transaction.on_commit(lambda: seen.append(("committed", committed(other))))
        with pytest.raises(Boom), transaction.atomic():
            transaction.on_commit(lambda: seen.append("rolled back savepoint"))
            raise Boom
        assert seen == []

    assert seen == [("committed", [1])]

    with pytest.raises(Boom), transaction.atomic():
        insert(2)
        transaction.on_commit(lambda: seen.append("rolled back block"))
        raise Boom
    assert seen == [("committed", [1])]


def test_empty_block_sends_nothing(table, wire):
    ran = []
    with transaction.atomic(durable=True):
        transaction.on_commit(lambda: ran.append(True))
    with pytest.raises(Boom), transaction.atomic():
        raise Boom

    assert wire == []
    assert ran == [True]


def test_durable_block_commits_and_refuses_to_nest(table, other):
    with transaction.atomic(durable=True):
        insert(1)
    assert committed(other) == [1]

    with transaction.atomic():
        insert(2)
        with pytest.raises(RuntimeError, match="durable"), transaction.atomic(durable=True):
            pass
    assert committed(other) == [1, 2]


def test_select_for_update_holds_the_row_lock_until_the_block_ends(table, other):
    with pytest.raises(transaction.TransactionManagementError):
        list(get_user_model().objects.select_for_update())  # outside a block, as Django has it

    insert(1)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT id FROM {TABLE} WHERE id = 1 FOR UPDATE")
        with pytest.raises(OperationalError), other.cursor() as cursor:
            cursor.execute(f"SELECT id FROM {TABLE} WHERE id = 1 FOR UPDATE NOWAIT")
    with other.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {TABLE} WHERE id = 1 FOR UPDATE NOWAIT")


def test_implicit_commit_inside_a_block_starts_a_new_transaction_as_autocommit_off_does(table, other):
    # DDL commits the open transaction; with autocommit off the block's next statements are a new
    # transaction, which the block's end rolls back.
    with pytest.raises(Boom), transaction.atomic():
        insert(1)
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {TABLE} COMMENT 'x'")
        insert(2)
        insert(3)
        raise Boom

    assert committed(other) == [1]


def test_transaction_rolled_back_by_the_server_is_followed_by_a_new_one(table, other):
    # As after a deadlock: the server ends the whole transaction; the block's next statement
    # starts a new one (autocommit off would), it does not commit on its own.
    with pytest.raises(Boom), transaction.atomic():
        insert(1)
        with connection.cursor() as cursor:
            cursor.execute("ROLLBACK")
        insert(2)
        assert committed(other) == []
        raise Boom

    assert committed(other) == []


def test_deadlock_victim_block_rolls_back_and_the_connection_works_after(table, other):
    insert(1)
    insert(2)
    other_has_row_2 = threading.Event()
    other_done = threading.Event()

    def lock_2_then_1():
        peer = connections.create_connection("default")
        try:
            with peer.cursor() as cursor:
                cursor.execute("START TRANSACTION")
                # Many row changes make the peer the heavier transaction: InnoDB picks us as victim.
                cursor.execute(f"UPDATE {TABLE} SET note = 'peer' WHERE id = 2")
                cursor.execute(f"INSERT INTO {TABLE} (id) VALUES " + ", ".join(f"({i})" for i in range(100, 400)))
                other_has_row_2.set()
                cursor.execute(f"UPDATE {TABLE} SET note = 'peer' WHERE id = 1")
                cursor.execute("ROLLBACK")
        finally:
            peer.close()
            other_done.set()

    with pytest.raises(DatabaseError) as caught, transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {TABLE} SET note = 'me' WHERE id = 1")
        threading.Thread(target=lock_2_then_1, daemon=True).start()
        assert other_has_row_2.wait(10)
        time.sleep(0.3)  # the peer waits for row 1
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {TABLE} SET note = 'me' WHERE id = 2")

    assert caught.value.args[0] == 1213
    assert other_done.wait(10)
    assert connection.get_autocommit()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT note FROM {TABLE} WHERE id IN (1, 2) ORDER BY id")
        assert [row[0] for row in cursor.fetchall()] == ["x", "x"]


def test_connection_lost_mid_block_rolls_back_and_the_next_use_reconnects(table, other):
    with pytest.raises(OperationalError), transaction.atomic():
        insert(1)
        with other.cursor() as cursor:
            cursor.execute("KILL %s", [connection.connection.thread_id()])
        insert(2)

    assert committed(other) == []
    connection.close_if_unusable_or_obsolete()
    insert(3)
    assert committed(other) == [3]
    assert connection.get_autocommit()


def test_new_connection_opens_in_autocommit_with_the_session_settings(monkeypatch):
    import MySQLdb  # here, not at the top: collecting this module on SQLite needs no mysqlclient

    toggled = []
    autocommit = MySQLdb.connections.Connection.autocommit

    def record(raw, on):
        if raw.get_autocommit() != on:
            toggled.append(on)
        return autocommit(raw, on)

    monkeypatch.setattr(MySQLdb.connections.Connection, "autocommit", record)
    connection.close()
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@autocommit, @@sql_mode, @@sql_auto_is_null, @@tx_isolation")
        autocommit_on, sql_mode, auto_is_null, isolation = cursor.fetchone()

    assert toggled == []  # neither mysqlclient's SET autocommit=0 nor Django's SET autocommit=1
    assert (autocommit_on, auto_is_null, isolation) == (1, 0, "READ-COMMITTED")
    assert "STRICT_TRANS_TABLES" in sql_mode
    assert "STRICT_TRANS_TABLES" in connection.sql_mode  # what Django caches is the session's


def test_block_uses_the_sessions_isolation_level(table, other):
    insert(1)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {TABLE}")
            assert cursor.fetchone()[0] == 1
        with other.cursor() as cursor:
            cursor.execute(f"INSERT INTO {TABLE} (id) VALUES (2)")
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {TABLE}")
            assert cursor.fetchone()[0] == 2  # READ COMMITTED: a fresh snapshot per statement


def test_the_health_check_pings_only_a_connection_idle_for_a_while():
    db = connections["default"]
    with db.cursor() as cursor:
        cursor.execute("SELECT 1")
    pings = []
    db.is_usable = lambda: pings.append(1) or type(db).is_usable(db)
    enabled, db.health_check_enabled = db.health_check_enabled, True
    try:
        db.health_check_done = False  # the next request starts
        db.close_if_health_check_failed()
        assert pings == []  # used moments ago: taken as it is

        db._last_used = time.monotonic() - db.HEALTHY_WITHIN_S - 1
        db.health_check_done = False
        db.close_if_health_check_failed()
        assert pings == [1] and db.connection is not None
    finally:
        del db.is_usable
        db.health_check_enabled = enabled
