"""The gunicorn worker class of production serving: gthread (a thread pool per process, idle keep-alive
connections parked in a poller) plus two things gunicorn does not do itself:

- no thread waits for headers: a request's line and headers are gathered without blocking, and until they are
  complete the connection waits in the worker's poller (gthread's own "pending" state), not in a thread. The
  request line and headers must be complete within GUNICORN_HEADER_TIMEOUT seconds in total, however slowly they
  drip; after them the whole exchange (body, answer, a client reading the answer slowly) has
  GUNICORN_REQUEST_DEADLINE seconds (service.socket_deadline). Slow-header clients therefore cost a poller entry
  each, and /healthz is answered beside any number of them;
- gunicorn's own refusals (malformed request line 400, URI too long 414, headers too large 431, bad chunked body
  400...) are answered as FHIR OperationOutcome JSON, not HTML, and logged by kind only: gunicorn's message quotes
  the request line, and a query string can carry a birth date or a name.
"""
from __future__ import annotations

import os
import socket
import threading
import time

import orjson
from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.workers.gthread import _DEFER, ThreadWorker

from service.errors import Issue, operation_outcome
from service.socket_deadline import WATCHDOG

_local = threading.local()

# (exception class name, status, reason phrase, diagnostics); the first match by isinstance wins
_REFUSALS = (
    ("LimitRequestLine", 414, "URI Too Long", "request line too long"),
    ("LimitRequestHeaders", 431, "Request Header Fields Too Large", "request headers too large or too many"),
    ("InvalidRequestLine", 400, "Bad Request", "malformed request line"),
    ("InvalidRequestMethod", 400, "Bad Request", "invalid request method"),
    ("InvalidHTTPVersion", 400, "Bad Request", "unsupported HTTP version"),
    ("InvalidHeaderName", 400, "Bad Request", "malformed header name"),
    ("InvalidHeader", 400, "Bad Request", "malformed header"),
    ("ObsoleteFolding", 400, "Bad Request", "obsolete header line folding"),
    ("InvalidChunkSize", 400, "Bad Request", "malformed chunked body (chunk size)"),
    ("ChunkMissingTerminator", 400, "Bad Request", "malformed chunked body (chunk terminator)"),
    ("InvalidChunkExtension", 400, "Bad Request", "malformed chunked body (chunk extension)"),
    ("UnsupportedTransferCoding", 501, "Not Implemented", "unsupported transfer coding"),
    ("ExpectationFailed", 417, "Expectation Failed", "unsupported Expect header"),
    ("InvalidProxyLine", 400, "Bad Request", "malformed proxy protocol line"),
    ("ForbiddenProxyRequest", 403, "Forbidden", "proxy request not allowed"),
    ("InvalidSchemeHeaders", 400, "Bad Request", "contradictory scheme headers"),
)
_CLASSES = tuple((getattr(http_errors, name), status, reason, text) for name, status, reason, text in _REFUSALS
                 if hasattr(http_errors, name))


def _seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def refusal_for(exc: BaseException) -> tuple[int, str, str, str]:
    """(status, reason phrase, OperationOutcome code, diagnostics) for an error gunicorn raised."""
    for cls, status, reason, text in _CLASSES:
        if isinstance(exc, cls):
            return status, reason, ("not-supported" if status in (417, 501) else "invalid"), text
    return 500, "Internal Server Error", "exception", "internal error"


def refusal_bytes(status: int, reason: str, code: str, diagnostics: str) -> bytes:
    body = orjson.dumps(operation_outcome([Issue(diagnostics, None, code)]))
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/fhir+json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def _close_off_the_main_loop(worker, conn) -> None:
    """gthread closes a finished connection on its main loop with a "graceful" close that lingers up to 2 s for the
    peer to close (so an answer sent before an unread body is not lost to a reset): a client that never closes
    (a slowloris, a stalled proxy) would stop the whole worker for 2 s per connection. Here that linger runs in the
    worker's thread pool instead, and a connection cut for being too slow is closed at once."""
    if "close" in conn.__dict__:
        return

    def close(graceful: bool = False) -> None:
        sock = conn.sock
        if graceful and not conn.__dict__.get("_msk_cut"):
            try:
                worker.tpool.submit(util.close_graceful, sock)
                return
            except RuntimeError:          # the pool is shutting down with the worker
                pass
        util.close(sock)

    conn.close = close


class JsonErrorThreadWorker(ThreadWorker):
    """gthread with connection deadlines and JSON refusals (see the module docstring)."""

    header_seconds = _seconds("GUNICORN_HEADER_TIMEOUT", 10.0)
    request_seconds = _seconds("GUNICORN_REQUEST_DEADLINE", 60.0)

    def handle(self, conn):
        _close_off_the_main_loop(self, conn)
        if self.cfg.is_ssl or conn.is_http2:
            # TLS and HTTP/2 read through their own layers: a total deadline on the headers instead
            _local.token = WATCHDOG.arm(conn.sock.fileno(), self.header_seconds, "request_headers")
        else:
            state = self._gather_head(conn)
            if state is not True:
                return state                    # _DEFER: back to the poller; False: close
            _local.token = None
        try:
            return super().handle(conn)
        finally:
            WATCHDOG.disarm(getattr(_local, "token", None))
            _local.token = None

    def _gather_head(self, conn):
        """Read what has arrived without blocking; True once the request line and headers are complete (they are
        handed to gunicorn's parser), _DEFER to wait in the poller for more, False to close the connection."""
        parser = conn.parser
        if parser is not None and b"\r\n\r\n" in parser.unreader.buf.getvalue():
            return True                         # pipelined: the next request is already buffered
        pending = conn.__dict__.get("_msk_head")
        if pending is None:
            pending = conn.__dict__["_msk_head"] = [bytearray(), time.monotonic()]
        head = pending[0]
        limit = self.cfg.limit_request_line + self.cfg.limit_request_fields * (self.cfg.limit_request_field_size + 2) + 4
        conn.sock.setblocking(False)
        closed = False
        try:
            while b"\r\n\r\n" not in head and len(head) <= limit:
                data = conn.sock.recv(65536)
                if not data:
                    closed = True
                    break
                head += data
        except (BlockingIOError, InterruptedError):
            if time.monotonic() - pending[1] > self.header_seconds:
                self.log.warning("Slow request headers from ip=%s: closed after %ss",
                                 (conn.client or ("",))[0], self.header_seconds)
                conn.__dict__["_msk_cut"] = True
                return False
            return _DEFER
        except OSError:
            conn.__dict__["_msk_cut"] = True
            return False
        if closed and not head:
            conn.__dict__["_msk_cut"] = True
            return False
        # complete (or too long, or cut short): gunicorn's parser reads it from its buffer and answers as usual
        del conn.__dict__["_msk_head"]
        conn.sock.setblocking(True)
        if not conn.initialized:
            conn.init()
        conn.parser.unreader.unread(bytes(head))
        conn.data_ready = True
        return True

    def handle_request(self, req, conn):
        # the request line and headers are in: from here the whole exchange has its own, longer deadline
        WATCHDOG.disarm(getattr(_local, "token", None))
        _local.token = WATCHDOG.arm(conn.sock.fileno(), self.request_seconds, "request_exchange")
        return super().handle_request(req, conn)

    def handle_error(self, req, client, addr, exc):
        status, reason, code, diagnostics = refusal_for(exc)
        ip = (addr or ("", -1))[0]
        if status >= 500 and code == "exception":
            # never req.uri or the exception text: both can quote the request
            self.log.error("Error handling request from ip=%s: %s", ip, type(exc).__name__)
        else:
            self.log.warning("Invalid request from ip=%s: %s", ip, type(exc).__name__)
        try:
            util.write_nonblock(client, refusal_bytes(status, reason, code, diagnostics))
        except Exception:
            self.log.debug("Failed to send error message.")
