"""Issue 12 item 6: slow and hostile FHIR servers on loopback. The fetch deadline holds inside a read (a server
that drips a byte every 0.2 s or stalls after the headers is cut at the deadline), every call is answered within
the deadline plus a small margin, and no thread or socket outlives the call."""
from __future__ import annotations

import json
import threading
import time

import pytest

from conftest import build_request
from faultkit import HostileFhir, drip, open_files, settle, stall

SERVICE = "msk-imaging-patient-view"
INVOKE = f"/cds-services/{SERVICE}"
DEADLINE = 1.0
#: deadline + evaluation + answer, generous for a shared 2-core CI machine
BOUND = DEADLINE + 2.5


def _service_threads() -> list[str]:
    return [t.name for t in threading.enumerate()]


def _headers_then_nothing(handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/fhir+json")
    handler.send_header("Content-Length", "5000")
    handler.end_headers()
    handler.wfile.flush()
    time.sleep(20)


def _huge(handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/fhir+json")
    handler.end_headers()
    chunk = b" " * 65536
    for _ in range(200):                      # 13 MB of whitespace, more than FHIR_MAX_RESPONSE_BYTES below
        handler.wfile.write(chunk)


def _redirect(handler) -> None:
    handler.send_response(302)
    handler.send_header("Location", "http://169.254.169.254/latest/meta-data/")
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def _html(handler) -> None:
    body = b"<html><body>Login required</body></html>"
    handler.send_response(200)
    handler.send_header("Content-Type", "text/html")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.mark.parametrize("name,behaviour", [
    ("drip", drip(0.2, 20)), ("stall-before-headers", stall(20)), ("headers-then-nothing", _headers_then_nothing),
    ("huge", _huge), ("redirect-to-metadata", _redirect), ("html", _html),
])
def test_hostile_fhir_server_is_412_in_time_and_leaves_nothing_behind(app_factory, name, behaviour):
    client = app_factory(FHIR_FETCH_DEADLINE_SECONDS=DEADLINE, FHIR_MAX_RESPONSE_BYTES=1_000_000).test_client()
    client.get("/readyz")
    with HostileFhir(behaviour) as server:
        threads_before, files_before = len(_service_threads()), open_files()
        slowest = 0.0
        for _ in range(12 if name in ("drip", "headers-then-nothing") else 3):
            started = time.monotonic()
            response = client.post(INVOKE, json=build_request(prefetch=None, fhir_server=server.base))
            slowest = max(slowest, time.monotonic() - started)
            assert response.status_code == 412, (name, response.status_code)
            assert response.content_type == "application/fhir+json"
            assert {i["expression"][0] for i in response.get_json()["issue"]} >= {"prefetch.patient"}
        assert slowest < BOUND, (name, slowest)
        # every fetch thread and every socket to the hostile server is gone right after the calls, while the
        # server is still up and would keep dripping
        assert settle(lambda: not [t for t in threading.enumerate() if t.name.startswith("fhir-fetch")], 1.5), \
            (name, [t.name for t in threading.enumerate()])
        # besides the hostile server's own threads, only the socket-deadline watchdog may be new
        assert len(_service_threads()) <= threads_before + 1, (name, _service_threads())
        assert settle(lambda: open_files() <= files_before + 1, 1.5), (name, open_files(), files_before)


def test_a_healthy_server_after_a_hostile_one_is_read_normally(app_factory):
    def fine(handler) -> None:
        path = handler.path.split("?")[0]
        if path.endswith("/Patient/pat-1"):
            body = {"resourceType": "Patient", "id": "pat-1"}
        else:
            body = {"resourceType": "Bundle", "type": "searchset", "total": 0}
        data = json.dumps(body).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/fhir+json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    client = app_factory(FHIR_FETCH_DEADLINE_SECONDS=DEADLINE).test_client()
    with HostileFhir(drip(0.2, 20)) as bad:
        assert client.post(INVOKE, json=build_request(prefetch=None, fhir_server=bad.base)).status_code == 412
    with HostileFhir(fine) as good:
        response = client.post(INVOKE, json=build_request(prefetch=None, fhir_server=good.base))
        assert response.status_code == 200 and good.requests >= 7      # one read per prefetch key
