"""HTTP for the broker adapters that call over ``requests``: a total deadline per call.

``requests``' ``timeout`` bounds each socket operation (the connect, then every read), not the
call: a broker, or a proxy in front of it, that trickles its answer a few bytes at a time holds
the call (its worker thread, the account's lock) for as long as it keeps trickling. A call made
inside ``Deadline(seconds)`` on a session mounted with ``DeadlineAdapter`` is cut off when its
time is up: the connection it is using is shut down, so the blocked read ends with an error, and
``Deadline.cut_off`` says the call ran out of time (the adapter raises its timeout error then,
whatever the cut made ``requests`` raise, and whatever part of the answer it had read).

Only the connection of the call being timed is ever shut down: a connection is detached from its
call before it goes back to the pool, so a late deadline never cuts another call's request.
"""

import socket
import threading

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()


class Deadline:
    """The time a call has, from entering the block to leaving it (see the module)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.cut_off = False
        self._lock = threading.Lock()
        self._connection = None
        self._expired = self._done = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self):
        self._outer = getattr(_current, "deadline", None)
        _current.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc_info):
        self._timer.cancel()
        with self._lock:
            self._done = True
            self._release(self._connection)
        _current.deadline = self._outer
        return False

    def _attach(self, connection) -> None:
        """The connection the call sends its request on (called as the request is sent)."""
        with self._lock:
            if self._done:
                return
            if self._connection is not connection:
                self._release(self._connection)
                self._connection, connection.broker_deadline = connection, self
            if self._expired:  # its time ran out before it could send (a slow connect)
                self._shut(connection)
                if connection.sock is None:
                    raise TimeoutError(f"the call's {self.seconds}s ran out before its request was sent")

    def _release(self, connection) -> None:
        """Under the lock: the connection is no longer this call's (back to the pool, or done)."""
        if connection is not None and getattr(connection, "broker_deadline", None) is self:
            connection.broker_deadline = None
        if connection is self._connection:
            self._connection = None

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._expired = True
            if self._connection is not None:
                self._shut(self._connection)

    def _shut(self, connection) -> None:
        self.cut_off = True
        sock = connection.sock
        if sock is None:
            return
        # The socket itself, never the TLS layer's shutdown (which changes the TLS object's state
        # under the reading thread): the blocked read wakes up to a closed connection.
        raw = sock if isinstance(sock, socket.socket) else getattr(sock, "socket", None)
        if raw is None:
            return
        try:
            socket.socket.shutdown(raw, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


def _attach_to_deadline(connection) -> None:
    deadline = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline._attach(connection)


class _TimedHTTPConnection(HTTPConnection):
    broker_deadline = None

    def request(self, *args, **kwargs):
        _attach_to_deadline(self)
        return super().request(*args, **kwargs)


class _TimedHTTPSConnection(HTTPSConnection):
    broker_deadline = None

    def request(self, *args, **kwargs):
        _attach_to_deadline(self)
        return super().request(*args, **kwargs)


def _detached(connection) -> None:
    deadline = getattr(connection, "broker_deadline", None)
    if deadline is not None:
        with deadline._lock:
            deadline._release(connection)


class _TimedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TimedHTTPConnection

    def _put_conn(self, conn) -> None:
        _detached(conn)
        super()._put_conn(conn)


class _TimedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TimedHTTPSConnection

    def _put_conn(self, conn) -> None:
        _detached(conn)
        super()._put_conn(conn)


_TIMED_POOLS = {"http": _TimedHTTPPool, "https": _TimedHTTPSPool}


class DeadlineAdapter(HTTPAdapter):
    """``requests``' adapter whose connections a ``Deadline`` can cut off (through an HTTP proxy too)."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_TIMED_POOLS)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if manager.pool_classes_by_scheme.get("http") is HTTPConnectionPool:  # not a SOCKS proxy's own
            manager.pool_classes_by_scheme = dict(_TIMED_POOLS)
        return manager
