"""Strict parsing of request bodies: size bound, media type, strict UTF-8, no duplicate keys, bounded depth,
an object at the top. Every rejection is a CdsError naming the problem without echoing the body."""
from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

from flask import current_app, request

from service.errors import CdsError, Issue

ACCEPTED_MEDIA_TYPES = ("application/json", "application/fhir+json")


def _body_read_errors() -> tuple[type[BaseException], ...]:
    """What reading a broken body raises: a cut or timed-out socket (OSError, gunicorn's NoMoreData), and the WSGI
    server's own parse errors of a chunked body (gunicorn's InvalidChunkSize, ChunkMissingTerminator...)."""
    errors: tuple[type[BaseException], ...] = (OSError, ValueError)
    try:
        from gunicorn.http.errors import ParseException
    except ImportError:          # another WSGI server
        return errors
    return errors + (ParseException,)


BODY_READ_ERRORS = _body_read_errors()


class _DuplicateKey(ValueError):
    def __init__(self, path_hint: str) -> None:
        super().__init__(path_hint)
        self.path_hint = path_hint


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DuplicateKey("duplicate key in object")
    return result


# A JSON string literal (unrolled: linear on long strings). Applied only to bytes json.loads accepted, so every
# literal is well formed; UTF-8 continuation bytes are >= 0x80 and never look like a quote or a backslash.
_STRING_LITERAL = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"{}[]")
_DEPTH_STEP = {ord("{"): 1, ord("["): 1, ord("}"): -1, ord("]"): -1}


def _depth_exceeds(data: bytes, limit: int) -> bool:
    """True when objects/arrays in valid JSON `data` nest deeper than `limit`. Works on the bytes (strings cut
    out, brackets counted) rather than walking the parsed value: a tenth of the cost on a typical request."""
    if b'\\"' in data:                      # an escaped quote (or a string ending in a backslash): exact pass
        outside = _STRING_LITERAL.sub(b"", data)
    else:                                   # every quote opens or closes a string: even pieces are outside them
        outside = b"".join(data.split(b'"')[::2])
    brackets = outside.translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > limit


def check_media_type() -> None:
    mimetype = (request.mimetype or "").lower()
    if mimetype not in ACCEPTED_MEDIA_TYPES:
        raise CdsError.one(415, "Content-Type", "expected application/json", "not-supported")


def read_body() -> bytes:
    """The raw body, bounded by MAX_REQUEST_BYTES whether or not Content-Length was sent."""
    limit = int(current_app.config["MAX_REQUEST_BYTES"])
    if request.content_length is not None and request.content_length > limit:
        raise CdsError.one(413, None, "request body too large", "too-costly")
    # Read to the end: one read() may return less than asked (chunked bodies), and Werkzeug silently caps a
    # body without Content-Length at MAX_CONTENT_LENGTH, raising 413 only on the read after that.
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        try:
            chunk = request.stream.read(min(64 * 1024, limit + 1 - size))
        except BODY_READ_ERRORS:
            raise CdsError.one(400, None, "request body could not be read (malformed chunked encoding, or the "
                                          "connection stalled or broke)") from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise CdsError.one(413, None, "request body too large", "too-costly")
    return b"".join(chunks)


def parse_json(data: bytes, max_depth: int) -> dict[str, Any]:
    """Bytes -> JSON object, strictly. Raises CdsError(400) naming the reason."""
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise CdsError.one(400, None, "body is not valid UTF-8") from None
    if text.startswith("\ufeff"):
        raise CdsError.one(400, None, "body starts with a byte order mark")
    if not text.strip():
        raise CdsError.one(400, None, "body is empty")
    try:
        value = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_no_constants,
                           parse_float=_finite_float)
    except _DuplicateKey:
        raise CdsError.one(400, None, "duplicate key in a JSON object") from None
    except _NonStandardNumber:
        raise CdsError.one(400, None, "NaN and Infinity are not JSON") from None
    except RecursionError:
        # json's C scanner guards its own recursion: nesting this deep is far beyond MAX_JSON_DEPTH anyway
        raise CdsError.one(400, None, f"JSON nesting deeper than {max_depth}") from None
    except ValueError as exc:
        where = f" at line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise CdsError.one(400, None, f"body is not valid JSON{where}") from None
    if _depth_exceeds(data, max_depth):
        raise CdsError.one(400, None, f"JSON nesting deeper than {max_depth}")
    if not isinstance(value, dict):
        raise CdsError.one(400, None, "the body must be a JSON object")
    return value


class _NonStandardNumber(ValueError):
    pass


def _no_constants(name: str) -> Any:
    raise _NonStandardNumber(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):                    # 1e999: valid JSON syntax, but no number we can store or compare
        raise _NonStandardNumber(text)
    return value


def json_body() -> dict[str, Any]:
    """The current request's JSON object (media type, size, encoding, duplicates and depth checked)."""
    check_media_type()
    return parse_json(read_body(), int(current_app.config["MAX_JSON_DEPTH"]))


__all__ = ["json_body", "parse_json", "read_body", "check_media_type", "Issue"]
