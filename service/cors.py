"""CORS for browser clients (the CDS Hooks Sandbox): preflight answers and the headers on every response."""
from __future__ import annotations

from flask import Flask, Response, current_app, request

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type"
MAX_AGE_SECONDS = "600"


def _preflight() -> Response | None:
    """Answer OPTIONS on any existing route before auth or anything else runs (browsers send no JWT here)."""
    if request.method != "OPTIONS" or request.routing_exception is not None:
        return None
    response = Response(status=204)
    del response.headers["Content-Type"]
    response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
    response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
    response.headers["Access-Control-Max-Age"] = MAX_AGE_SECONDS
    return response


def add_cors_headers(response: Response) -> Response:
    origin = current_app.config.get("CORS_ALLOW_ORIGIN") or "*"
    response.headers["Access-Control-Allow-Origin"] = origin
    if origin != "*":
        response.vary.add("Origin")
    response.headers.setdefault("Access-Control-Allow-Methods", ALLOW_METHODS)
    response.headers.setdefault("Access-Control-Allow-Headers", ALLOW_HEADERS)
    response.headers.setdefault("Access-Control-Expose-Headers", "Content-Type")
    return response


def init_app(app: Flask) -> None:
    """Register before any other extension so preflights short-circuit auth and the headers land last."""
    app.before_request_funcs.setdefault(None, []).insert(0, _preflight)
    app.after_request(add_cors_headers)
