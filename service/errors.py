"""The one family of errors for "the request is wrong" and "the data is unobtainable", and the single place
where errors of any kind become HTTP answers (FHIR OperationOutcome bodies, never HTML, never a traceback)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import orjson
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

log = logging.getLogger("msk_cds.errors")


@dataclass(frozen=True)
class Issue:
    """One problem: where (a field path like ``context.patientId``) and why. Never carries request values."""

    diagnostics: str
    expression: str | None = None
    code: str = "invalid"

    def to_json(self) -> dict:
        out: dict = {"severity": "error", "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = [self.expression]
        return out


#: what a client is told to wait before retrying while a dependency (the database) is down
RETRY_AFTER_SECONDS = 5


class CdsError(Exception):
    """A request we answer with a client error (400/404/412/413/415...) or 503, and the issues that explain it."""

    def __init__(self, status: int, issues: Iterable[Issue], headers: dict | None = None) -> None:
        self.status = status
        self.issues = tuple(issues)
        self.headers = dict(headers or {})
        super().__init__(f"{status}: " + "; ".join(i.diagnostics for i in self.issues))

    @classmethod
    def unavailable(cls, what: str) -> "CdsError":
        """503 + Retry-After: the call was not done (nothing stored, nothing answered) and may be sent again."""
        return cls(503, [Issue(f"{what} temporarily unavailable; retry later", None, "transient")],
                   {"Retry-After": str(RETRY_AFTER_SECONDS)})

    @classmethod
    def invalid(cls, issues: Iterable[Issue]) -> "CdsError":
        return cls(400, issues)

    @classmethod
    def one(cls, status: int, path: str | None, reason: str, code: str = "invalid") -> "CdsError":
        return cls(status, [Issue(reason, path, code)])


def operation_outcome(issues: Iterable[Issue]) -> dict:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def outcome_response(status: int, issues: Iterable[Issue], headers: dict | None = None) -> Response:
    body = orjson.dumps(operation_outcome(issues))
    response = Response(body, status=status, content_type="application/fhir+json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


# Generic reasons for HTTP errors raised by Flask/Werkzeug itself (routing, body size...).
_HTTP_REASONS = {
    400: ("invalid", "malformed request"),
    404: ("not-found", "no such endpoint"),
    405: ("not-supported", "method not allowed on this endpoint"),
    413: ("too-costly", "request body too large"),
    415: ("not-supported", "unsupported media type"),
}


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    if status < 400:
        return exc.get_response()            # routing redirects keep their Location
    if status == 401:
        # Authentication failures are answered bare (CDS Hooks best practices): nothing to learn from the body.
        response = Response(b"", status=401)
    else:
        code, reason = _HTTP_REASONS.get(status, ("exception" if status >= 500 else "invalid", "request failed"))
        response = outcome_response(status, [Issue(reason, None, code)])
    original = exc.get_response()
    for header in ("Allow", "WWW-Authenticate", "Retry-After"):
        if header in original.headers:
            response.headers[header] = original.headers[header]
    return response


def _cds_error(exc: CdsError) -> Response:
    return outcome_response(exc.status, exc.issues, exc.headers)


def _database_down(exc: Exception) -> Response:
    # connection refused or lost, a statement or pool timeout: the database, not the request, is at fault
    log.error("database_unavailable", extra={"error_type": type(exc).__name__})
    return _cds_error(CdsError.unavailable("the database"))


def _unexpected(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    # The type name only: messages of arbitrary exceptions may contain request data.
    log.error("unhandled exception", extra={"error_type": type(exc).__name__}, exc_info=False)
    return outcome_response(500, [Issue("internal error", None, "exception")])


def init_app(app: Flask) -> None:
    from sqlalchemy.exc import InterfaceError, OperationalError, TimeoutError as PoolTimeout

    app.register_error_handler(CdsError, _cds_error)
    for kind in (OperationalError, InterfaceError, PoolTimeout):
        app.register_error_handler(kind, _database_down)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
