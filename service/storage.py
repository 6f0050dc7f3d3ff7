"""Durable storage through SQLAlchemy 2.0 Core: an embedded SQLite file by default (WAL), PostgreSQL when
DATABASE_URL names one. Other modules add their tables to `metadata`; the schema is created at start-up."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from flask import Flask, current_app
from sqlalchemy import (
    Column, DateTime, Engine, Index, Integer, MetaData, String, Table, Text, create_engine, event, inspect, select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from service import dbdeadline

EXTENSION_KEY = "msk_cds.storage"

metadata = MetaData()

feedback_table = Table(
    "cds_feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(128), nullable=False, index=True),
    Column("card_uuid", String(256), nullable=False, index=True),
    Column("outcome", String(16), nullable=False),
    Column("accepted_suggestions", Text, nullable=True),        # JSON array of suggestion uuids
    Column("override_reason_code", String(256), nullable=True),
    Column("override_reason_system", String(1024), nullable=True),
    Column("override_reason_display", String(1024), nullable=True),
    Column("user_comment", Text, nullable=True),
    Column("outcome_timestamp", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("issuer", String(1024), nullable=True),              # JWT iss of the caller, when authenticated
    # sha256 of the item's content: a retry of the same feedback (after a 503, a timeout or a lost answer whose
    # commit did happen) finds its row and stores nothing twice
    Column("item_key", String(64), nullable=True),
    Index("ux_cds_feedback_item_key", "item_key", unique=True),
)


def feedback_item_key(service_id: str, issuer: str | None, item: Mapping[str, Any]) -> str:
    """The identity of one feedback event: who sent it, for which card, what they did, when."""
    stamp = _utc(item["outcome_timestamp"])
    content = [service_id, issuer, item["card"], item["outcome"], sorted(item.get("accepted_suggestions") or ()),
               item.get("override_reason_system"), item.get("override_reason_code"), item.get("user_comment"),
               stamp.isoformat() if stamp else None]
    return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()


def normalise_url(url: str) -> str:
    """Plain postgresql:// (and postgres://) URLs use psycopg 3, the driver installed."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


@dataclass(frozen=True)
class DatabaseTimeouts:
    """Every wait on the database is bounded (seconds); see the DB_* settings."""

    connect: float = 3.0
    statement: float = 5.0
    pool: float = 2.0


def _json_list(values: Iterable[str] | None) -> str | None:
    values = list(values or ())
    return json.dumps(values) if values else None


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


class Storage:
    """The app's database: an Engine plus the operations the service needs."""

    def __init__(self, url: str, timeouts: DatabaseTimeouts | None = None) -> None:
        self.url = normalise_url(url)
        self.timeouts = timeouts or DatabaseTimeouts()
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        t = self.timeouts
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            # a locked database (another writer) is waited for at most the statement timeout, then 503
            self.engine: Engine = create_engine(self.url, connect_args={"timeout": t.statement})
            event.listen(self.engine, "connect", _sqlite_pragmas(t.statement))
        else:
            # connect_timeout: a server that does not answer the start-up; statement_timeout: a slow statement
            # (cancelled by a running server); pool_timeout: every pooled connection busy. A frozen server is
            # bounded by the lease deadline of service.dbdeadline (instead of pool_pre_ping, which would hang).
            ms = int(t.statement * 1000)
            self.engine = create_engine(
                self.url, pool_size=5, max_overflow=5, pool_timeout=t.pool, pool_recycle=1800,
                connect_args={"connect_timeout": max(1, math.ceil(t.connect)),
                              "options": f"-c statement_timeout={ms} -c lock_timeout={ms} "
                                         f"-c idle_in_transaction_session_timeout={ms * 6}"})
            dbdeadline.install(self.engine, lease_seconds=t.statement + t.connect, ping_seconds=t.connect)
        self._schema_lock = threading.Lock()

    def __repr__(self) -> str:  # the URL may hold a password
        return f"Storage(backend={self.engine.dialect.name})"

    def create_schema(self) -> None:
        """Create every table on `metadata` that does not exist yet (idempotent; safe with several instances)."""
        with self._schema_lock:
            try:
                metadata.create_all(self.engine, checkfirst=True)
            except SQLAlchemyError:
                # Another instance may have created a table between the check and the CREATE: check again.
                metadata.create_all(self.engine, checkfirst=True)
            self._add_feedback_item_key()

    def _add_feedback_item_key(self) -> None:
        """Databases made before feedback was idempotent lack item_key: add it (old rows keep NULL)."""
        columns = {c["name"] for c in inspect(self.engine).get_columns(feedback_table.name)}
        if "item_key" in columns:
            return
        try:
            with self.engine.begin() as connection:
                connection.execute(text(f"ALTER TABLE {feedback_table.name} ADD COLUMN item_key VARCHAR(64)"))
                connection.execute(text(f"CREATE UNIQUE INDEX IF NOT EXISTS ux_cds_feedback_item_key "
                                        f"ON {feedback_table.name} (item_key)"))
        except SQLAlchemyError:
            pass            # another instance added it meanwhile

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def save_feedback(self, service_id: str, items: Iterable[Mapping[str, Any]], issuer: str | None = None) -> int:
        """Store all items in one transaction, idempotently: an item already stored (same content, a retry) is
        not stored again. Returns how many items are durably stored once committed (raises if the commit failed)."""
        received_at = dt.datetime.now(dt.timezone.utc)
        rows = [
            {
                "service_id": service_id,
                "card_uuid": item["card"],
                "outcome": item["outcome"],
                "accepted_suggestions": _json_list(item.get("accepted_suggestions")),
                "override_reason_code": item.get("override_reason_code"),
                "override_reason_system": item.get("override_reason_system"),
                "override_reason_display": item.get("override_reason_display"),
                "user_comment": item.get("user_comment"),
                "outcome_timestamp": _utc(item["outcome_timestamp"]),
                "received_at": received_at,
                "issuer": issuer,
                "item_key": feedback_item_key(service_id, issuer, item),
            }
            for item in items
        ]
        if not rows:
            return 0
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(feedback_table).on_conflict_do_nothing(index_elements=["item_key"])
        with self.engine.begin() as connection:
            connection.execute(statement, rows)
        return len(rows)

    def feedback_rows(self, service_id: str | None = None) -> list[dict[str, Any]]:
        query = select(feedback_table).order_by(feedback_table.c.id)
        if service_id is not None:
            query = query.where(feedback_table.c.service_id == service_id)
        with self.engine.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(query)]
        for row in rows:
            row["accepted_suggestions"] = json.loads(row["accepted_suggestions"] or "[]")
            row["outcome_timestamp"] = _utc(row["outcome_timestamp"])
            row["received_at"] = _utc(row["received_at"])
        return rows

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(busy_seconds: float):
    def apply(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers and one writer work together (several gunicorn workers); FULL sync so a 200 is durable.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
    return apply


def init_app(app: Flask) -> Storage:
    config = app.config
    storage = Storage(config["DATABASE_URL"], DatabaseTimeouts(
        connect=float(config.get("DB_CONNECT_TIMEOUT_SECONDS") or 3.0),
        statement=float(config.get("DB_STATEMENT_TIMEOUT_SECONDS") or 5.0),
        pool=float(config.get("DB_POOL_TIMEOUT_SECONDS") or 2.0)))
    storage.create_schema()
    app.extensions[EXTENSION_KEY] = storage
    return storage


def get_storage(app: Flask | None = None) -> Storage:
    return (app or current_app).extensions[EXTENSION_KEY]
