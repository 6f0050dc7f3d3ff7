"""A deadline on every database connection lease, enforced from outside the blocked call.

PostgreSQL's statement_timeout needs a server that runs: a frozen server (SIGSTOP, a hung VM, a stalled network
path) still lets the kernel acknowledge our packets, so a query, a ping or a COMMIT would wait for ever. One watchdog
thread per process keeps the deadlines of the connections currently checked out of the pool; a lease that outlives
its deadline has its socket shut down, so libpq's wait returns an error at once (psycopg OperationalError, the pool
drops the connection, the caller answers 503). The watchdog is service.socket_deadline's."""
from __future__ import annotations

from typing import Any

from service.socket_deadline import WATCHDOG


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
        token = WATCHDOG.arm(fd, ping_seconds, "database_ping")
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
        record.info["lease"] = WATCHDOG.arm(fd, lease_seconds, "database_lease")

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_connection, record) -> None:
        WATCHDOG.disarm(record.info.pop("lease", None))

    @event.listens_for(engine, "close")
    def _close(dbapi_connection, record) -> None:
        WATCHDOG.disarm(record.info.pop("lease", None))

    @event.listens_for(engine, "invalidate")
    def _invalidate(dbapi_connection, record, exception) -> None:
        WATCHDOG.disarm(record.info.pop("lease", None))
