"""A deadline on every database connection lease, enforced from outside the blocked call.

PostgreSQL's statement_timeout needs a server that runs: a frozen server (SIGSTOP, a hung VM, a stalled network
path) still lets the kernel acknowledge our packets, so a query, a ping or a COMMIT would wait for ever. One watchdog
thread per process keeps the deadlines of the connections currently checked out of the pool; a lease that outlives
its deadline has its socket shut down, so libpq's wait returns an error at once (psycopg OperationalError, the pool
drops the connection, the caller answers 503)."""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import threading
import time
from typing import Any

log = logging.getLogger(__name__)


class LeaseWatchdog:
    """Deadlines by lease token; expired leases get their socket shut down (never closed: libpq owns the fd)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._fds: dict[int, int] = {}
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.expired = 0

    def arm(self, fd: int, seconds: float) -> int:
        token = next(self._ids)
        with self._cond:
            self._ensure_thread()
            self._fds[token] = fd
            heapq.heappush(self._heap, (time.monotonic() + seconds, token))
            self._cond.notify()
        return token

    def disarm(self, token: int | None) -> None:
        if token is None:
            return
        with self._cond:
            self._fds.pop(token, None)          # its heap entry is dropped lazily

    def _ensure_thread(self) -> None:
        # a forked gunicorn worker inherits the object but not the thread
        if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
            self._pid = os.getpid()
            self._heap = [(d, t) for d, t in self._heap if t in self._fds]
            heapq.heapify(self._heap)
            self._thread = threading.Thread(target=self._run, name="db-lease-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][1] not in self._fds:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                fd = self._fds.pop(token, None)
            if fd is not None:
                self.expired += 1
                _shutdown(fd)


def _shutdown(fd: int) -> None:
    try:
        dup = os.dup(fd)
    except OSError:
        return
    try:
        with socket.socket(fileno=dup) as sock:
            sock.shutdown(socket.SHUT_RDWR)
        log.error("database_lease_expired", extra={"reason": "connection_shut_down"})
    except OSError:
        pass


WATCHDOG = LeaseWatchdog()


def socket_fd(dbapi_connection: Any) -> int | None:
    """The socket of a psycopg 3 connection (None for other drivers, e.g. SQLite)."""
    pgconn = getattr(dbapi_connection, "pgconn", None)
    try:
        fd = pgconn.socket if pgconn is not None else None
    except Exception:           # a closed connection has no socket
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def install(engine: Any, lease_seconds: float, ping_seconds: float) -> None:
    """Arm a lease on every checkout (after a bounded ping), disarm on checkin. Replaces pool_pre_ping, whose
    SELECT 1 would itself hang on a frozen server."""
    from sqlalchemy import event
    from sqlalchemy.exc import DisconnectionError

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection, record, proxy) -> None:
        fd = socket_fd(dbapi_connection)
        if fd is None:
            return
        token = WATCHDOG.arm(fd, ping_seconds)
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            # the ping leaves a transaction open on a non-autocommit connection: end it
            dbapi_connection.rollback()
        except Exception:
            raise DisconnectionError("database ping failed") from None   # the pool tries a fresh connection
        finally:
            WATCHDOG.disarm(token)
        record.info["lease"] = WATCHDOG.arm(fd, lease_seconds)

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_connection, record) -> None:
        WATCHDOG.disarm(record.info.pop("lease", None))

    @event.listens_for(engine, "close")
    def _close(dbapi_connection, record) -> None:
        WATCHDOG.disarm(record.info.pop("lease", None))

    @event.listens_for(engine, "invalidate")
    def _invalidate(dbapi_connection, record, exception) -> None:
        WATCHDOG.disarm(record.info.pop("lease", None))
