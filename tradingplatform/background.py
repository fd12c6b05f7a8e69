"""After-commit work taken off the caller's thread: a few threads per process, with delays.

The fill fast path records a fill and pushes the trader's dashboard right after the fill's
commit. Doing that inline would add a transaction and a render to the request or task
that placed the order (the order path must stay fast); a Celery task would add a broker
round trip and wait behind the cycle's thousands of queued ``monitor_account`` tasks. So
the committing process does it itself, on these threads. A job lost with its process (a
crash right after the commit) is not lost work: every job here is also done later by
something durable (the next monitoring cycle's reconciliation), idempotently.

``submit(fn, *args, delay_s=...)`` runs ``fn`` on a background thread after ``delay_s``.
Called inside a transaction it runs ``fn`` at once in the caller's thread instead: that
only happens in tests, whose ``on_commit`` callbacks run inside the test's transaction,
where another thread could not see the rows.

``Batch(fn)`` gathers items for one job: ``fn`` gets every item added while its last call ran
(one transaction for many where one per item was the cost), so the busier the process, the
more each call takes in, and an idle one handles an item at once, alone.

``urgent()`` marks work a caller does against the clock (a scheduled burst's sends): a ``Batch``
made with ``yields=True`` holds its calls back while such work runs in the process, so bookkeeping
that can wait does not take the interpreter and the database from it (see ``Batch``).

``Pool(setting, name)`` is different: work the caller waits for (a monitoring batch's broker
calls, a basket's or a scheduled batch's placements), run side by side on up to ``setting``
threads per process that keep their database connections while there is work.
"""

import contextlib
import contextvars
import heapq
import itertools
import logging
import os
import queue
import threading
import time

from django.conf import settings
from django.db import connection

from tradingplatform import logs

logger = logging.getLogger(__name__)


class _Lane:
    def __init__(self):
        self._cond = threading.Condition()
        self._jobs: list = []  # heap of (due, seq, fn, args)
        self._seq = itertools.count()
        self._running = 0
        self._pid = None

    def _after_fork(self) -> None:
        # Threads do not survive a fork (and the lock may have been held): the child starts afresh.
        self._cond = threading.Condition()
        self._jobs = []
        self._running = 0
        self._pid = None

    def _start(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            for n in range(max(1, settings.BACKGROUND_THREADS)):
                threading.Thread(target=self._work, name=f"background-{n}", daemon=True).start()

    def submit(self, fn, *args, delay_s: float = 0.0) -> None:
        if connection.in_atomic_block:
            fn(*args)
            return
        with self._cond:
            self._start()
            # The job's log lines keep the request id (and task) of whoever submitted it.
            job = logs.in_this_context(fn)
            heapq.heappush(self._jobs, (time.monotonic() + delay_s, next(self._seq), job, args))
            self._cond.notify_all()

    def _work(self) -> None:
        pid = os.getpid()
        while True:
            with self._cond:
                while True:
                    if self._pid != pid:
                        return
                    now = time.monotonic()
                    if self._jobs and self._jobs[0][0] <= now:
                        _, _, fn, args = heapq.heappop(self._jobs)
                        self._running += 1
                        break
                    self._cond.wait(self._jobs[0][0] - now if self._jobs else None)
            try:
                # Each job starts as a request does: the connection's health is checked first (it
                # may have been dropped: a server restart, its idle timeout), by the backend's own
                # rule (the MySQL backend does not ask of one used within the last second).
                connection.health_check_done = False
                connection.close_if_health_check_failed()
                fn(*args)
            except Exception:
                logger.exception("background job %s failed", getattr(fn, "__qualname__", fn))
                connection.close()
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait until no job is queued or running (delayed ones included); False on timeout. For tests and benches."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._jobs or self._running:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True


_lane = _Lane()
os.register_at_fork(after_in_child=_lane._after_fork)
submit = _lane.submit
wait_idle = _lane.wait_idle


class _Urgent:
    """How much work against the clock (``urgent()``) runs in this process, and when the last ended."""

    def __init__(self):
        self._after_fork()
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._ended = float("-inf")

    @contextlib.contextmanager
    def __call__(self):
        with self._cond:
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._ended = time.monotonic()
                self._cond.notify_all()

    @property
    def running(self) -> bool:
        return self._running > 0

    def wait_quiet(self, *, quiet_s: float, max_s: float, unless=lambda: False) -> None:
        """Return once no urgent work has run for ``quiet_s`` (the next of a burst's tasks usually
        starts sooner), or after ``max_s`` at most, or once ``unless()`` (asked again on ``poke``)."""
        deadline = time.monotonic() + max_s
        with self._cond:
            while (now := time.monotonic()) < deadline and not unless():
                if self._running:
                    self._cond.wait(deadline - now)
                elif now < self._ended + quiet_s:
                    self._cond.wait(min(deadline, self._ended + quiet_s) - now)
                else:
                    return

    def poke(self) -> None:
        """Have the waiters of ``wait_quiet`` ask their ``unless`` again."""
        with self._cond:
            self._cond.notify_all()


urgent = _Urgent()


class Batch:
    """``add(item)``: ``fn(items)`` runs on a background thread with the items added so far, in the
    order they were added, at most ``max_items`` a call. One call at a time per process: items
    added while one runs wait for the next, which takes them all. A call that raises is logged and
    its items dropped, as a job's are (what they stood for is also done later by something
    durable); the next call still runs. Inside a transaction (tests) ``fn([item])`` runs at once
    in the caller's thread, as ``submit`` does. Each call runs in an empty context: its items come
    from several requests, so its log lines carry none's id.

    ``yields=True``: a call whose items were all added with ``can_wait=True`` waits while work
    against the clock runs in the process (``urgent()``) and until it has been quiet
    ``BACKGROUND_YIELD_QUIET_S``, at most ``BACKGROUND_YIELD_MAX_S``, then takes everything added
    meanwhile; an item that cannot wait, added meanwhile, ends the wait at once."""

    def __init__(self, fn, *, max_items: int = 500, yields: bool = False):
        self._fn = fn
        self._max_items = max_items
        self._yields = yields
        self._after_fork()
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._items: list = []  # (item, whether it can wait)
        self._hurry = False  # an item that cannot wait is among them
        self._busy = False  # a call is queued or running; it takes the items when it starts

    def add(self, item, *, can_wait: bool = False) -> None:
        if connection.in_atomic_block:
            self._fn([item])
            return
        with self._lock:
            self._items.append((item, can_wait))
            if not can_wait and not self._hurry:
                self._hurry = True
                if self._busy and self._yields:
                    urgent.poke()  # a call waiting for the urgent work to end: at once, now
            if self._busy:
                return
            self._busy = True
        contextvars.Context().run(submit, self._call)

    def _call(self) -> None:
        if self._yields:
            urgent.wait_quiet(
                quiet_s=settings.BACKGROUND_YIELD_QUIET_S,
                max_s=settings.BACKGROUND_YIELD_MAX_S,
                unless=lambda: self._hurry,
            )
        with self._lock:
            taken, self._items = self._items[: self._max_items], self._items[self._max_items :]
            self._hurry = any(not can_wait for _item, can_wait in self._items)
        items = [item for item, _can_wait in taken]
        try:
            self._fn(items)
        finally:
            with self._lock:
                self._busy = bool(self._items)
                if self._busy:  # queued while this call is still running, so ``wait_idle`` waits for it
                    submit(self._call)


class Jobs:
    """The jobs one caller submitted to a ``Pool``, to wait for."""

    def __init__(self):
        self._cond = threading.Condition()
        self._pending = 0

    def add(self) -> None:
        with self._cond:
            self._pending += 1

    def done(self) -> None:
        with self._cond:
            self._pending -= 1
            if not self._pending:
                self._cond.notify_all()

    def wait(self, *, cut_short=None) -> None:
        """Return once every job is done. A wait cut short (Celery's soft time limit raises in the
        waiting thread, from a signal, not in the pool's) still waits for the jobs before the error
        goes on: what the caller holds while they run (the monitoring cycle's account locks) must
        outlast them. ``cut_short()`` is called first, for the caller to have the jobs not begun
        yet do nothing (they would run past the limit, into the hard one). A hard time limit ends
        the process, its jobs with it."""
        try:
            self._wait()
        except BaseException:
            if cut_short is not None:
                cut_short()
            self._wait()
            raise

    def _wait(self) -> None:
        with self._cond:
            while self._pending:
                self._cond.wait()


_in_a_pool = threading.local()


class Pool:
    """Up to ``settings.<setting>`` threads per process, shared by every caller in it.

    A thread is started when jobs wait and none is idle, and ends (closing its database
    connection) after ``IDLE_S`` without work: a busy process reuses its threads' connections
    instead of connecting for every job, and holds them only while there is work. Inside a
    transaction (tests) a job runs at once in the caller's thread instead, where the
    transaction's rows are visible; on any pool's own thread too (a job waiting for jobs queued
    behind it could wait for ever once every thread does the same).

    Jobs are served by ``rank``, then in the order they came; without a rank, in the order they
    came. A job keeps the request id of whoever submitted it (``logs.in_this_context``).
    """

    IDLE_S = 10.0

    def __init__(self, setting: str, name: str):
        self._setting = setting
        self._name = name
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self._queued = self._idle = self._threads = 0

    def submit(self, jobs: Jobs, fn, *args, rank: int | None = None) -> None:
        """Run ``fn(*args)`` on a pool thread; ``jobs.wait()`` returns once it is done. A job that
        raises is logged (``map`` hands its caller the error instead)."""
        if connection.in_atomic_block or getattr(_in_a_pool, "yes", False):
            fn(*args)
            return
        jobs.add()
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's threads are not here
                self._reset()
            self._queued += 1
            seq = next(self._seq)
            # (rank, seq) is unique: the jobs, function and arguments are never compared.
            self._jobs.put((seq if rank is None else rank, seq, jobs, logs.in_this_context(fn), args))
            if self._queued > self._idle and self._threads < max(1, getattr(settings, self._setting)):
                self._threads += 1
                threading.Thread(target=self._work, name=self._name, daemon=True).start()

    def map(self, fn, items, *, rank: int | None = None) -> list:
        """``[fn(item) for item in items]``, side by side on the pool's threads. The first item's
        error (in the items' order) is raised once all are done."""
        items = list(items)
        results: list = [None] * len(items)
        errors: list = [None] * len(items)

        def one(index):
            try:
                results[index] = fn(items[index])
            except BaseException as error:
                errors[index] = error

        jobs = Jobs()
        for index in range(len(items)):
            self.submit(jobs, one, index, rank=rank)
        jobs.wait()
        for error in errors:
            if error is not None:
                raise error
        return results

    def _work(self) -> None:
        _in_a_pool.yes = True
        try:
            while True:
                with self._lock:
                    self._idle += 1
                try:
                    _rank, _seq, jobs, fn, args = self._jobs.get(timeout=self.IDLE_S)
                except queue.Empty:
                    with self._lock:
                        self._idle -= 1
                        # A job submitted as the wait ran out counted this thread idle and started
                        # none: it is this thread's to run.
                        if self._queued <= self._idle:
                            self._threads -= 1
                            return
                    continue
                with self._lock:
                    self._idle -= 1
                    self._queued -= 1
                try:
                    # Each job starts as a request does (see ``_Lane._work``): its connection's health
                    # checked first, by the backend's rule. It may have been dropped while the thread
                    # waited for work (a server restart, a failover), or broken by the last job.
                    connection.health_check_done = False
                    connection.close_if_health_check_failed()
                    # After a failed job: close a broken connection. One the failure already
                    # closed cannot be asked (is_usable would raise); the next query reconnects.
                    if connection.errors_occurred and connection.connection is not None and not connection.is_usable():
                        connection.close()
                    fn(*args)
                except Exception:
                    logger.exception("%s job %s failed", self._name, getattr(fn, "__qualname__", fn))
                finally:
                    jobs.done()
        finally:
            connection.close()
