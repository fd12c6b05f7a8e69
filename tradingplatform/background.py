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
"""

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
