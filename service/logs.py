"""Structured, PHI-free logging: one JSON object a line, whitelisted fields only, one line per request.

PHI-free by construction: the message of a record is treated as a fixed event name and is never interpolated with
its arguments, and of the `extra` fields only the whitelisted names with scalar values are written. Fetched FHIR
URLs (they carry the patient id), tokens, names and report text therefore cannot reach the log through this
formatter, whoever logs them.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any, Mapping

from flask import Flask, Response, g, request


#: the only fields a log line may carry besides ts/level/logger/event
FIELDS = (
    "service",
    "hook",
    "hook_instance",
    "method",
    "route",
    "status",
    "latency_ms",
    "cards",
    "system_actions",
    "fetched_keys",
    "unavailable_keys",
    "skipped_resources",
    "intake_repaired",
    "intake_dropped",
    "intake_skipped",
    "intake",
    "stored",
    "iss",
    "jti",
    "tenant",
    "reason",
    "error_type",
    "knowledge_version",
    "count",
    "reports_read",
    "reports_not_read",
    "evaluation_ms",
)
MAX_VALUE_CHARS = 200
#: a hookInstance is a UUID by spec; anything else shaped like free text is not written
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_HANDLER_MARK = "_msk_cds_json_handler"


class JsonLineFormatter(logging.Formatter):
    """Formats a record as one JSON line of whitelisted fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            # the template, never getMessage(): arguments may hold anything
            "event": _scalar(record.msg) if isinstance(record.msg, str) else type(record.msg).__name__,
        }
        for name in FIELDS:
            value = _scalar(getattr(record, name, None))
            if value is not None:
                line[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            # the type and where it was raised; the exception message may quote data, so it is left out
            line["error_type"] = record.exc_info[0].__name__
            line["trace"] = _frames(record.exc_info[2])
        return json.dumps(line, ensure_ascii=True, separators=(",", ":"))


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value if value == value else None
    if isinstance(value, str):
        return value[:MAX_VALUE_CHARS]
    return None


def _frames(tb: Any, limit: int = 12) -> list[str]:
    frames: list[str] = []
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append(f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}:{code.co_name}")
        tb = tb.tb_next
    return frames[-limit:]


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record (test runners and servers swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(level: str | int = "INFO", stream: Any = None) -> logging.Handler:
    """Install the JSON-lines handler on the root logger once per process; later calls only set the level."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, _HANDLER_MARK, False)), None)
    if handler is None:
        handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
        setattr(handler, _HANDLER_MARK, True)
        handler.setFormatter(JsonLineFormatter())
        root.addHandler(handler)
        # plain-text handlers would print interpolated messages: only ours writes
        for other in list(root.handlers):
            if other is not handler and type(other) is logging.StreamHandler:
                root.removeHandler(other)
    numeric = logging.getLevelName(str(level).upper()) if isinstance(level, str) else level
    root.setLevel(numeric if isinstance(numeric, int) else logging.INFO)
    # werkzeug's access line carries the query string; our request line replaces it
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    return handler


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return len(value) if isinstance(value, (list, tuple, set, frozenset, dict)) else None


def annotate(**fields: Any) -> None:
    """Add whitelisted fields to this request's log line (e.g. service, hook_instance, cards)."""
    store: dict[str, Any] = g.setdefault("log_fields", {})
    for name, value in fields.items():
        if name in FIELDS:
            store[name] = value


def request_fields() -> Mapping[str, Any]:
    return dict(g.get("log_fields", {}))


def _service_ids() -> Any:
    from service.config import service_registry

    try:
        return service_registry()
    except KeyError:            # an app built without a registry serves no CDS service
        return ()


def init_app(app: Flask) -> None:
    """JSON-lines logs at LOG_LEVEL, and one `request` line per request with status and latency."""
    configure_logging(app.config.get("LOG_LEVEL", "INFO"))
    request_log = logging.getLogger("service.request")

    @app.before_request
    def start_clock() -> None:
        g.log_started = time.perf_counter()

    @app.after_request
    def log_request(response: Response) -> Response:
        started = g.get("log_started")
        fields: dict[str, Any] = {
            "method": request.method,
            # the route template, not the path: the path of an unknown URL is whatever the caller typed
            "route": request.url_rule.rule if request.url_rule is not None else None,
            "status": response.status_code,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2) if started is not None else None,
            "iss": g.get("jwt_iss"),
            "jti": g.get("jwt_jti"),
            "tenant": g.get("jwt_tenant"),
            "reason": g.get("auth_reason"),
        }
        fields["service"] = g.get("cds_service_id")
        fields["hook_instance"] = g.get("cds_hook_instance")
        fields["cards"] = g.get("cds_card_count")
        prefetch = g.get("cds_prefetch")
        if isinstance(prefetch, Mapping):
            fields["fetched_keys"] = _count(prefetch.get("fetched"))
            fields["unavailable_keys"] = _count(prefetch.get("unavailable"))
        fields.update(request_fields())
        # values the caller chose are written only in their expected shape: one of our service ids, a UUID-like id
        if not (isinstance(fields["service"], str) and fields["service"] in _service_ids()):
            fields["service"] = None
        if not (isinstance(fields["hook_instance"], str) and _TOKEN_SHAPE.fullmatch(fields["hook_instance"])):
            fields["hook_instance"] = None
        request_log.info("request", extra={k: v for k, v in fields.items() if v is not None})
        return response
