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
"""

import contextvars
import heapq
import itertools
import logging
import os
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


class Batch:
    """``add(item)``: ``fn(items)`` runs on a background thread with the items added so far, in the
    order they were added, at most ``max_items`` a call. One call at a time per process: items
    added while one runs wait for the next, which takes them all. A call that raises is logged and
    its items dropped, as a job's are (what they stood for is also done later by something
    durable); the next call still runs. Inside a transaction (tests) ``fn([item])`` runs at once
    in the caller's thread, as ``submit`` does. Each call runs in an empty context: its items come
    from several requests, so its log lines carry none's id."""

    def __init__(self, fn, *, max_items: int = 500):
        self._fn = fn
        self._max_items = max_items
        self._after_fork()
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._items: list = []
        self._busy = False  # a call is queued or running; it takes the items when it starts

    def add(self, item) -> None:
        if connection.in_atomic_block:
            self._fn([item])
            return
        with self._lock:
            self._items.append(item)
            if self._busy:
                return
            self._busy = True
        contextvars.Context().run(submit, self._call)

    def _call(self) -> None:
        with self._lock:
            items, self._items = self._items[: self._max_items], self._items[self._max_items :]
        try:
            self._fn(items)
        finally:
            with self._lock:
                self._busy = bool(self._items)
                if self._busy:  # queued while this call is still running, so ``wait_idle`` waits for it
                    submit(self._call)
