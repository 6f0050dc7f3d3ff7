"""Reads from the EHR's FHIR server to fill missing prefetch keys: concurrent, under one overall deadline,
following searchset `next` links up to a bound, sending the bearer token only to the fhirServer's origin.

The deadline holds inside a read too: every connection's socket is armed with it (service.socket_deadline), so a
server that drips one byte a second or stalls mid-body is cut at the deadline and its thread and socket are freed
at once, not left reading in the background."""
from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urljoin, urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from service.socket_deadline import WATCHDOG

ACCEPT = "application/fhir+json, application/json;q=0.9"
CHUNK_BYTES = 64 * 1024


class FetchFailed(Exception):
    """A read failed; `kind` is a short label (timeout, connection, http_4xx, http_5xx, not_json, ...)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class _DeadlineMixin:
    """A urllib3 connection whose socket is shut down when the request's deadline passes (`deadline` is set on
    a per-request subclass); disarmed before the socket is closed."""

    deadline: float = 0.0
    _deadline_token: int | None = None

    def connect(self) -> None:
        super().connect()                                                   # type: ignore[misc]
        self._deadline_token = WATCHDOG.arm(self.sock.fileno(), self.deadline - time.monotonic(), "fhir_read")

    def close(self) -> None:
        WATCHDOG.disarm(self._deadline_token)
        self._deadline_token = None
        super().close()                                                     # type: ignore[misc]


class _DeadlineHTTPConnection(_DeadlineMixin, HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineMixin, HTTPSConnection):
    pass


def deadline_session(deadline: float) -> requests.Session:
    """A Session (no retries) whose connections are cut at `deadline` (a time.monotonic() value)."""
    pools = {}
    for scheme, pool_cls, conn_cls in (("http", HTTPConnectionPool, _DeadlineHTTPConnection),
                                       ("https", HTTPSConnectionPool, _DeadlineHTTPSConnection)):
        connection = type(conn_cls.__name__, (conn_cls,), {"deadline": deadline})
        pools[scheme] = type(pool_cls.__name__, (pool_cls,), {"ConnectionCls": connection})
    adapter = HTTPAdapter(max_retries=0)
    adapter.poolmanager.pool_classes_by_scheme = pools
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@dataclass
class FetchResult:
    key: str
    resource: Mapping[str, Any] | None = None
    error: str | None = None
    pages: int = 0
    seconds: float = 0.0
    resource_type: str | None = None


@dataclass(frozen=True)
class FhirClient:
    """One request's access to the FHIR server: base URL, optional bearer token, deadline and bounds."""

    base_url: str
    access_token: str | None
    deadline: float                      # time.monotonic() value after which nothing is read
    max_pages: int
    max_response_bytes: int

    def __repr__(self) -> str:
        return f"FhirClient(base_url={self.base_url!r})"

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def same_origin(self, url: str) -> bool:
        a, b = urlsplit(self.base_url), urlsplit(url)
        return (a.scheme, a.netloc) == (b.scheme, b.netloc)

    def get_json(self, session: requests.Session, url: str) -> Mapping[str, Any]:
        remaining = self.remaining()
        if remaining <= 0:
            raise FetchFailed("timeout")
        headers = {"Accept": ACCEPT}
        if self.access_token and self.same_origin(url):
            headers["Authorization"] = f"Bearer {self.access_token}"
        try:
            with session.get(url, headers=headers, timeout=(remaining, remaining), stream=True,
                                  allow_redirects=False) as response:
                status = response.status_code
                body = self._read(response)
        except requests.Timeout:
            raise FetchFailed("timeout") from None
        except (requests.RequestException, OSError):
            # a socket cut at the deadline surfaces as a connection error: name it for what it was
            raise FetchFailed("timeout" if self.remaining() <= 0 else "connection") from None
        if status >= 500:
            raise FetchFailed("http_5xx")
        if status >= 300:
            raise FetchFailed("http_4xx" if status >= 400 else "http_3xx")
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise FetchFailed("not_json") from None
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            raise FetchFailed("not_fhir")
        if value["resourceType"] == "OperationOutcome":
            raise FetchFailed("operation_outcome")
        return value

    def _read(self, response: requests.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_content(CHUNK_BYTES):
            size += len(chunk)
            if size > self.max_response_bytes:
                raise FetchFailed("too_large")
            if self.remaining() <= 0:
                raise FetchFailed("timeout")
            chunks.append(chunk)
        return b"".join(chunks)

    def read_all_pages(self, session: requests.Session, first: Mapping[str, Any],
                       pages_read: int) -> tuple[Mapping[str, Any], int]:
        """Follow `next` links of a searchset Bundle (same origin only) and merge the entries into one Bundle."""
        bundle = first
        if bundle.get("resourceType") != "Bundle":
            return bundle, pages_read
        entries = list(bundle.get("entry") or [])
        current = bundle
        while pages_read < self.max_pages:
            next_url = next_link(current)
            if next_url is None:
                break
            next_url = urljoin(self.base_url + "/", next_url)
            if not self.same_origin(next_url):
                break
            current = self.get_json(session, next_url)
            pages_read += 1
            if current.get("resourceType") != "Bundle":
                raise FetchFailed("not_fhir")
            entries.extend(current.get("entry") or [])
        merged = {k: v for k, v in bundle.items() if k not in ("entry", "link")}
        if entries:
            merged["entry"] = entries
        return merged, pages_read

    def fetch(self, key: str, relative_url: str) -> FetchResult:
        start = time.monotonic()
        result = FetchResult(key, resource_type=resource_type_of(relative_url))
        try:
            # One session per job (connection reuse across pages); sessions are not shared between threads.
            with deadline_session(self.deadline) as session:
                first = self.get_json(session, f"{self.base_url}/{relative_url.lstrip('/')}")
                result.resource, result.pages = self.read_all_pages(session, first, 1)
        except FetchFailed as failure:
            result.error = failure.kind
        result.seconds = time.monotonic() - start
        return result

    def continue_paging(self, key: str, bundle: Mapping[str, Any]) -> FetchResult:
        """A prefetch Bundle that came with a `next` link: read the rest of its pages."""
        start = time.monotonic()
        result = FetchResult(key, resource_type="Bundle")
        try:
            with deadline_session(self.deadline) as session:
                result.resource, result.pages = self.read_all_pages(session, bundle, 1)
        except FetchFailed as failure:
            result.error = failure.kind
        result.seconds = time.monotonic() - start
        return result


def next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def resource_type_of(relative_url: str) -> str | None:
    head = relative_url.lstrip("/").split("?", 1)[0].split("/", 1)[0]
    return head or None


def run_jobs(jobs: Mapping[str, Callable[[], FetchResult]], deadline: float, workers: int) -> dict[str, FetchResult]:
    """Run fetch jobs concurrently; whatever has not finished by the deadline counts as a timeout.

    The pool is not waited for: a FHIR server that stalls past its socket timeout keeps a worker thread busy in
    the background, never the request.
    """
    results: dict[str, FetchResult] = {}
    if not jobs:
        return results
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs))), thread_name_prefix="fhir-fetch")
    try:
        pending: dict[Future, str] = {pool.submit(job): key for key, job in jobs.items()}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            done, _ = wait(pending, timeout=remaining, return_when=FIRST_COMPLETED)
            for future in done:
                key = pending.pop(future)
                try:
                    results[key] = future.result()
                except Exception:  # a bug in a job must not take the request down; the key is unobtainable
                    results[key] = FetchResult(key, error="internal")
        for future, key in pending.items():
            future.cancel()
            results[key] = FetchResult(key, error="timeout")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return results
