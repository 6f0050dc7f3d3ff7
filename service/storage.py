"""Durable storage through SQLAlchemy 2.0 Core: an embedded SQLite file by default (WAL), PostgreSQL when
DATABASE_URL names one. Other modules add their tables to `metadata`; the schema is created at start-up."""
from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

from flask import Flask, current_app
from sqlalchemy import (
    Column, DateTime, Engine, Integer, MetaData, String, Table, Text, create_engine, event, insert, select, text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

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
)


def normalise_url(url: str) -> str:
    """Plain postgresql:// (and postgres://) URLs use psycopg 3, the driver installed."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _json_list(values: Iterable[str] | None) -> str | None:
    values = list(values or ())
    return json.dumps(values) if values else None


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


class Storage:
    """The app's database: an Engine plus the operations the service needs."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(self.url, connect_args={"timeout": 15})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True, pool_size=5, max_overflow=5)
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

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def save_feedback(self, service_id: str, items: Iterable[Mapping[str, Any]], issuer: str | None = None) -> int:
        """Store all items in one transaction; returns the count once committed (raises if nothing was stored)."""
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
            }
            for item in items
        ]
        if not rows:
            return 0
        with self.engine.begin() as connection:
            connection.execute(insert(feedback_table), rows)
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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers and one writer work together (several gunicorn workers); FULL sync so a 200 is durable.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def init_app(app: Flask) -> Storage:
    storage = Storage(app.config["DATABASE_URL"])
    storage.create_schema()
    app.extensions[EXTENSION_KEY] = storage
    return storage


def get_storage(app: Flask | None = None) -> Storage:
    return (app or current_app).extensions[EXTENSION_KEY]
