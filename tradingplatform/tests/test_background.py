"""Background work: ``Batch`` gathers the items added while its last call ran into its next call;
``Pool`` runs the work its callers wait for on threads that keep their database connections."""

import os
import signal
import threading
import time

import pytest
from django.db import connection
from django.db.backends.signals import connection_created
from django.test import override_settings

from tradingplatform import background, logs


class Recorder:
    """A batch function that records each call's items; ``hold`` keeps a call running until released."""

    def __init__(self, *, fail_on=None):
        self.calls: list[list] = []
        self.threads: set[str] = set()
        self.request_ids: list = []
        self.running = 0
        self.most_running = 0
        self.hold = threading.Event()
        self.hold.set()
        self.started = threading.Event()
        self.fail_on = fail_on
        self._lock = threading.Lock()

    def __call__(self, items):
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.calls.append(list(items))
            self.threads.add(threading.current_thread().name)
            self.request_ids.append(logs.current_request_id())
        self.started_at = time.monotonic()
        self.started.set()
        try:
            assert self.hold.wait(10)
            if self.fail_on in items:
                raise RuntimeError(f"item {self.fail_on} is bad")
        finally:
            with self._lock:
                self.running -= 1


def test_items_added_while_a_call_runs_go_to_the_next_call_together_in_order():
    fn = Recorder()
    batch = background.Batch(fn)
    fn.hold.clear()
    batch.add(1)
    assert fn.started.wait(10)
    for item in range(2, 7):
        batch.add(item)  # the first call is still running: these wait for the next one
    fn.hold.set()
    assert background.wait_idle(10)

    assert fn.calls == [[1], [2, 3, 4, 5, 6]]
    assert fn.most_running == 1  # one call at a time, though the lane has several threads
    assert all(name.startswith("background-") for name in fn.threads)


def test_an_idle_batch_handles_each_item_at_once_alone():
    fn = Recorder()
    batch = background.Batch(fn)
    for item in range(3):
        batch.add(item)
        assert background.wait_idle(10)
    assert fn.calls == [[0], [1], [2]]


def test_a_call_takes_at_most_max_items_and_the_rest_follow():
    fn = Recorder()
    batch = background.Batch(fn, max_items=2)
    fn.hold.clear()
    batch.add(0)
    assert fn.started.wait(10)
    for item in range(1, 6):
        batch.add(item)
    fn.hold.set()
    assert background.wait_idle(10)
    assert fn.calls == [[0], [1, 2], [3, 4], [5]]


def test_a_call_that_raises_is_logged_and_the_next_call_still_runs(caplog):
    fn = Recorder(fail_on=2)
    batch = background.Batch(fn)
    fn.hold.clear()
    batch.add(1)
    assert fn.started.wait(10)
    batch.add(2)
    batch.add(3)
    fn.hold.set()
    assert background.wait_idle(10)
    batch.add(4)
    assert background.wait_idle(10)

    assert fn.calls == [[1], [2, 3], [4]]
    assert "item 2 is bad" in caplog.text


def test_a_call_carries_no_request_id_of_the_requests_its_items_came_from():
    fn = Recorder()
    batch = background.Batch(fn)
    token = logs.request_id_var.set("req-batch-1")
    try:
        batch.add(1)
    finally:
        logs.request_id_var.reset(token)
    assert background.wait_idle(10)
    assert fn.request_ids == [None]


@override_settings(BACKGROUND_YIELD_QUIET_S=0.2, BACKGROUND_YIELD_MAX_S=10)
def test_a_yielding_batch_waits_for_urgent_work_and_a_quiet_moment_then_takes_every_item():
    """(The paper exchange's fill bookkeeping waits while a scheduled burst is sent.)"""
    fn = Recorder()
    batch = background.Batch(fn, yields=True)
    with background.urgent():
        batch.add(1, can_wait=True)
        with background.urgent():  # two tasks' sends side by side
            batch.add(2, can_wait=True)
        time.sleep(0.4)  # quiet long enough, but the other is still sending
        assert fn.calls == []
        batch.add(3, can_wait=True)
        ended = time.monotonic()
    assert background.wait_idle(10)
    assert fn.calls == [[1, 2, 3]]
    assert fn.started_at - ended >= 0.2  # the quiet time after the last urgent work


@override_settings(BACKGROUND_YIELD_QUIET_S=0.1, BACKGROUND_YIELD_MAX_S=0.5)
def test_a_yielding_batch_waits_at_most_the_longest_wait():
    fn = Recorder()
    batch = background.Batch(fn, yields=True)
    with background.urgent():
        added = time.monotonic()
        batch.add(1, can_wait=True)
        assert fn.started.wait(10)  # while the urgent work goes on
    assert 0.5 <= fn.started_at - added < 5
    assert fn.calls == [[1]]


@override_settings(BACKGROUND_YIELD_QUIET_S=0.1, BACKGROUND_YIELD_MAX_S=10)
def test_an_item_that_cannot_wait_is_handled_at_once_with_those_waiting():
    """(A resting stop-loss filled by the tick is told at once, whatever burst is being sent.)"""
    fn = Recorder()
    batch = background.Batch(fn, yields=True)
    with background.urgent():
        batch.add("burst fill", can_wait=True)
        time.sleep(0.3)
        assert fn.calls == []  # waiting for the burst
        batch.add("stop-loss fill")
        assert fn.started.wait(5)
        assert fn.calls == [["burst fill", "stop-loss fill"]]
        fn.started.clear()
        batch.add("another one")  # alone: no call was waiting
        assert fn.started.wait(5)
    assert background.wait_idle(10)
    assert fn.calls[-1] == ["another one"]


def test_a_batch_that_does_not_yield_runs_during_urgent_work():
    fn = Recorder()
    with background.urgent():
        background.Batch(fn).add(1)
        assert fn.started.wait(10)
    assert fn.calls == [[1]]


@pytest.mark.django_db
def test_inside_a_transaction_the_item_is_handled_at_once_in_the_callers_thread():
    fn = Recorder()
    background.Batch(fn).add("now")
    assert fn.calls == [["now"]]
    assert fn.threads == {threading.current_thread().name}


# --- Pool ---------------------------------------------------------------------------------------


@pytest.fixture
def pool():
    return background.Pool("MONITORING_THREADS", "test-pool")


def test_the_pool_serves_jobs_by_rank_then_in_the_order_they_came(pool):
    """(The monitoring cycle ranks its runs: an older run's jobs before a newer run's broker calls.)"""
    started, release, order = threading.Event(), threading.Event(), []

    def blocker(_):
        started.set()
        release.wait(10)

    jobs = background.Jobs()
    with override_settings(MONITORING_THREADS=1):
        pool.submit(jobs, blocker, None, rank=1)  # the one thread is busy
        assert started.wait(10)
        for rank, names in ((7, ["newer fetch 1", "newer fetch 2"]), (3, ["older record"]), (7, ["newer 3"])):
            for name in names:
                pool.submit(jobs, order.append, name, rank=rank)
        release.set()
        jobs.wait()
    assert order == ["older record", "newer fetch 1", "newer fetch 2", "newer 3"]


def test_map_keeps_the_items_order_runs_side_by_side_and_keeps_the_request_id(pool):
    running, most, lock, barrier = [0], [0], threading.Lock(), threading.Barrier(3, timeout=10)

    def square(n):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        if n < 3:
            barrier.wait()  # the first three only finish once all three run at once
        with lock:
            running[0] -= 1
        return n * n, logs.current_request_id(), threading.current_thread().name

    token = logs.request_id_var.set("req-pool")
    try:
        with override_settings(MONITORING_THREADS=3):
            results = pool.map(square, range(6))
    finally:
        logs.request_id_var.reset(token)
    assert [r[0] for r in results] == [0, 1, 4, 9, 16, 25]
    assert {r[1] for r in results} == {"req-pool"}
    assert {r[2] for r in results} == {"test-pool"}
    assert most[0] == 3


def test_map_raises_the_first_items_error_after_every_item_ran(pool):
    ran = []

    def job(n):
        ran.append(n)
        if n in (2, 4):
            raise ValueError(f"item {n}")
        return n

    with pytest.raises(ValueError, match="item 2"):
        pool.map(job, range(6))
    assert sorted(ran) == list(range(6))


def test_a_wait_cut_short_by_a_time_limit_still_waits_for_the_jobs(pool):
    """Celery's soft time limit is a signal whose handler raises in the waiting thread, not in the
    pool's: the caller's cleanup (the monitoring cycle releases its accounts' locks) must still come
    after the jobs, which go on running, or the next cycle would run the same accounts beside them."""

    class TimeLimit(Exception):
        pass

    def limit(_signum, _frame):
        raise TimeLimit()

    finished = []
    previous = signal.signal(signal.SIGUSR1, limit)  # billiard's soft limit: SIGUSR1 to the worker
    try:
        jobs = background.Jobs()
        pool.submit(jobs, lambda _: (time.sleep(0.5), finished.append(time.monotonic())), None)
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        with pytest.raises(TimeLimit):
            jobs.wait()
        raised_at = time.monotonic()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert finished and finished[0] <= raised_at


@pytest.mark.django_db(transaction=True)
def test_a_pool_thread_keeps_its_database_connection_between_jobs(pool):
    """What the pool is for: a busy process does not connect to the database for every job."""
    connected = []

    def count(sender, connection, **kwargs):
        connected.append(threading.current_thread().name)

    def query(_):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    connection_created.connect(count)
    try:
        with override_settings(MONITORING_THREADS=1):
            for _ in range(3):
                pool.map(query, [1, 2])
    finally:
        connection_created.disconnect(count)
    assert connected == ["test-pool"]


@pytest.mark.django_db
def test_inside_a_transaction_a_pool_job_runs_in_the_callers_thread(pool):
    assert pool.map(lambda _: threading.current_thread().name, [1, 2]) == [threading.current_thread().name] * 2


def test_a_job_on_a_pool_thread_runs_its_own_jobs_inline(pool):
    """A job that waits for jobs of its own (a basket placed from a pool thread) cannot wait for ever."""
    with override_settings(MONITORING_THREADS=1):
        assert pool.map(lambda n: pool.map(lambda m: m + 1, [n, n]), [1, 5]) == [[2, 2], [6, 6]]


@pytest.mark.skipif(connection.vendor != "mysql", reason="a connection killed by the server: MySQL/MariaDB")
@pytest.mark.django_db(transaction=True)
def test_a_job_after_one_whose_connection_broke_and_that_carried_on_gets_a_working_connection():
    """A best-effort job (a dashboard push, a batch of fills whose failures are logged per account)
    catches a database error and returns. Its thread's next job, moments later, must not be handed
    the broken connection: it would fail too, and what it stood for (fills) wait for the next run."""
    from django.db import OperationalError, connections

    broke_on = []
    follow_ups = []

    def loses_its_connection():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        other = connections.create_connection("default")
        try:
            with other.cursor() as cursor:
                cursor.execute("KILL %s", [connection.connection.thread_id()])
        finally:
            other.close()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except OperationalError:
            broke_on.append(threading.current_thread().name)  # logged and carried on

    def follow_up():
        time.sleep(0.05)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            follow_ups.append((threading.current_thread().name, "ok"))
        except Exception as error:
            follow_ups.append((threading.current_thread().name, repr(error)))
            raise

    background.submit(loses_its_connection)
    for _ in range(12):
        background.submit(follow_up)
    assert background.wait_idle(30)

    assert len(broke_on) == 1
    on_that_thread = [outcome for name, outcome in follow_ups if name == broke_on[0]]
    assert on_that_thread  # the thread went on to other jobs within the second
    assert on_that_thread == ["ok"] * len(on_that_thread)


def test_a_job_submitted_as_the_last_idle_thread_gives_up_still_runs(pool):
    """A pool thread ends after ``IDLE_S`` without work. A job submitted at that very moment (its
    wait timed out, its count not yet taken off) found the thread still counted idle and started
    none: it sat in the queue with no thread to run it, and its caller (a basket, a scheduled
    fire, a monitoring batch) waited until some other job came along."""
    import queue

    timed_out, submitted = threading.Event(), threading.Event()

    class GivingUpSlowly(queue.PriorityQueue):
        def get(self, block=True, timeout=None):
            try:
                return super().get(block, timeout)
            except queue.Empty:
                if not submitted.is_set():
                    timed_out.set()
                    submitted.wait(10)  # the job comes in now
                raise

    pool._jobs = GivingUpSlowly()
    pool.IDLE_S = 0.2
    ran = threading.Event()
    with override_settings(MONITORING_THREADS=1):
        assert pool.map(lambda n: n, [1]) == [1]  # the thread starts, then has no work
        assert timed_out.wait(10)
        jobs = background.Jobs()
        pool.submit(jobs, lambda _: ran.set(), None)
        submitted.set()
        assert ran.wait(5), "the job was left with no thread to run it"
        jobs.wait()


@pytest.mark.skipif(connection.vendor != "mysql", reason="a connection killed by the server: MySQL/MariaDB")
@pytest.mark.django_db(transaction=True)
def test_a_pool_thread_idle_for_a_while_checks_its_connection_before_the_next_job(pool):
    """The server dropped a pool thread's connection while the thread waited for work (a restart, a
    failover, a connection killed): the next job (a basket's placement, a scheduled fire) must get
    a working connection, as a request or a background job does, not fail on the dead one."""
    from django.db import connections

    thread_ids = []

    def query(_):
        with connection.cursor() as cursor:
            cursor.execute("SELECT CONNECTION_ID()")
            thread_ids.append(cursor.fetchone()[0])

    with override_settings(MONITORING_THREADS=1):
        pool.map(query, [1])
        other = connections.create_connection("default")
        try:
            with other.cursor() as cursor:
                cursor.execute("KILL %s", [thread_ids[0]])
        finally:
            other.close()
        time.sleep(connection.HEALTHY_WITHIN_S + 0.2)  # idle for a while, its thread still waiting
        pool.map(query, [2])
    assert len(thread_ids) == 2 and thread_ids[1] != thread_ids[0]
