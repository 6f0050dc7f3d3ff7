"""FHIR server faults while fetching missing prefetch keys: each ends in a defined answer within the deadline.

Required data (patient, conditions, reports) unobtainable -> 412; optional data (observations...) unobtainable ->
200 with the key marked unavailable. `responses` plays the EHR's FHIR server.
"""
from __future__ import annotations

import logging
import re
import threading
import time

import pytest
import requests
import responses

from service import create_app
from test_security_helpers import SERVICE_IDS, empty_searchset, full_prefetch, hook_request

FHIR = "https://fhir.example.org/r4"
DEADLINE = 1.0
MARGIN = 3.0                  # generous: this proves "bounded by the deadline", it is not a speed measurement
MAX_PAGES = 4
ACCESS_TOKEN = "fhir-access-token-SECRET-4711"


@pytest.fixture
def app(tmp_path):
    return create_app(
        {
            "AUTH_DISABLED": True,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'faults.db'}",
            "FHIR_FETCH_DEADLINE_SECONDS": DEADLINE,
            "FHIR_MAX_PAGES": MAX_PAGES,
            "FHIR_MAX_RESPONSE_BYTES": 256 * 1024,
            "TESTING": True,
        }
    )


@pytest.fixture
def fhir():
    """One mock FHIR server per test: a slow call released at the end of a test records into its own mock."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def release():
    """Slow FHIR callbacks wait on this event; set at teardown so no thread outlives the test for long."""
    event = threading.Event()
    yield event
    event.set()


def request_missing(service_id: str, key: str) -> dict:
    prefetch = full_prefetch()
    del prefetch[key]
    body = hook_request(service_id, prefetch)
    body["fhirServer"] = FHIR
    body["fhirAuthorization"] = {
        "access_token": ACCESS_TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "msk-cds",
    }
    return body


URL_OF = {"reports": re.compile(re.escape(FHIR) + r"/DiagnosticReport.*"),
          "observations": re.compile(re.escape(FHIR) + r"/Observation.*")}


def _slow(release):
    def callback(request):
        release.wait(timeout=20)
        return 200, {"Content-Type": "application/fhir+json"}, '{"resourceType":"Bundle","type":"searchset"}'
    return callback


def _raise(exc):
    def callback(request):
        raise exc
    return callback


FAULTS = {
    "connection_refused": lambda fhir, url, release: fhir.add_callback(
        responses.GET, url, callback=_raise(requests.ConnectionError("refused"))),
    "connect_timeout": lambda fhir, url, release: fhir.add_callback(
        responses.GET, url, callback=_raise(requests.ConnectTimeout("connect timeout"))),
    "read_timeout": lambda fhir, url, release: fhir.add_callback(
        responses.GET, url, callback=_raise(requests.ReadTimeout("read timeout"))),
    "slow_beyond_deadline": lambda fhir, url, release: fhir.add_callback(responses.GET, url, callback=_slow(release)),
    "http_401": lambda fhir, url, release: fhir.get(url, status=401),
    "http_403": lambda fhir, url, release: fhir.get(url, status=403, json={"resourceType": "OperationOutcome"}),
    "http_404": lambda fhir, url, release: fhir.get(url, status=404, body="Not found"),
    "http_429": lambda fhir, url, release: fhir.get(url, status=429, headers={"Retry-After": "3600"}),
    "http_500": lambda fhir, url, release: fhir.get(url, status=500, body="<html>oops</html>"),
    "http_503": lambda fhir, url, release: fhir.get(url, status=503),
    "redirect_elsewhere": lambda fhir, url, release: fhir.get(
        url, status=302, headers={"Location": "https://attacker.example/steal"}),
    "non_json_body": lambda fhir, url, release: fhir.get(url, body="<html><body>login</body></html>",
                                                       content_type="text/html"),
    "truncated_json": lambda fhir, url, release: fhir.get(
        url, body='{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"Diag',
        content_type="application/fhir+json"),
    "json_array_not_resource": lambda fhir, url, release: fhir.get(url, json=[1, 2, 3]),
    "json_without_resource_type": lambda fhir, url, release: fhir.get(url, json={"entry": []}),
    "operation_outcome_200": lambda fhir, url, release: fhir.get(
        url, json={"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden"}]}),
    "empty_body": lambda fhir, url, release: fhir.get(url, body=b""),
    "invalid_utf8": lambda fhir, url, release: fhir.get(url, body=b'{"resourceType":"Bundle\xff\xfe"}'),
    "oversized_body": lambda fhir, url, release: fhir.get(
        url, body=b'{"resourceType":"Bundle","type":"searchset","x":"' + b"a" * (300 * 1024) + b'"}'),
}



@pytest.mark.parametrize("service_id", SERVICE_IDS)
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_on_required_data_is_412_within_deadline(app, fhir, release, service_id, fault, caplog):
    caplog.set_level(logging.DEBUG)
    FAULTS[fault](fhir, URL_OF["reports"], release)
    started = time.monotonic()
    response = app.test_client().post(f"/cds-services/{service_id}", json=request_missing(service_id, "reports"))
    elapsed = time.monotonic() - started
    assert elapsed < DEADLINE + MARGIN
    assert response.status_code == 412, response.data
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert any("prefetch.reports" in issue.get("expression", []) for issue in body["issue"])
    assert ACCESS_TOKEN not in response.get_data(as_text=True)
    assert ACCESS_TOKEN not in caplog.text
    assert "pat-1" not in caplog.text


@pytest.mark.parametrize("service_id", SERVICE_IDS)
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_on_optional_data_is_200_within_deadline(app, fhir, release, service_id, fault):
    FAULTS[fault](fhir, URL_OF["observations"], release)
    started = time.monotonic()
    response = app.test_client().post(
        f"/cds-services/{service_id}", json=request_missing(service_id, "observations")
    )
    elapsed = time.monotonic() - started
    assert elapsed < DEADLINE + MARGIN
    assert response.status_code == 200, response.data
    assert "cards" in response.get_json()
    assert ACCESS_TOKEN not in response.get_data(as_text=True)


def test_endless_paging_is_bounded(app, fhir):
    url = FHIR + "/DiagnosticReport"
    page = dict(empty_searchset(), link=[{"relation": "next", "url": url + "?page=again"}])
    fhir.add(responses.GET, re.compile(re.escape(url) + ".*"), json=page)
    response = app.test_client().post(
        "/cds-services/msk-imaging-patient-view", json=request_missing("msk-imaging-patient-view", "reports")
    )
    assert response.status_code == 200
    assert len(fhir.calls) <= MAX_PAGES


def test_prefetched_bundle_with_next_link_to_a_dead_server_keeps_what_came(app, fhir):
    body = request_missing("msk-imaging-patient-view", "observations")
    body["prefetch"]["reports"] = dict(empty_searchset(), link=[{"relation": "next", "url": FHIR + "/p2"}])
    fhir.add_callback(responses.GET, re.compile(re.escape(FHIR) + ".*"),
                           callback=_raise(requests.ConnectionError("down")))
    response = app.test_client().post("/cds-services/msk-imaging-patient-view", json=body)
    assert response.status_code == 200


def test_next_link_to_another_origin_is_not_followed_with_the_token(app, fhir):
    url = FHIR + "/DiagnosticReport"
    page = dict(empty_searchset(), link=[{"relation": "next", "url": "https://attacker.example/steal"}])
    fhir.add(responses.GET, re.compile(re.escape(url) + ".*"), json=page)
    fhir.add(responses.GET, re.compile("https://attacker.example/.*"), json=empty_searchset())
    response = app.test_client().post(
        "/cds-services/msk-imaging-patient-view", json=request_missing("msk-imaging-patient-view", "reports")
    )
    assert response.status_code == 200
    assert all(ACCESS_TOKEN not in (c.request.headers.get("Authorization") or "")
               for c in fhir.calls if "attacker" in c.request.url)


def test_every_key_slow_still_answers_within_deadline(app, fhir, release):
    fhir.add_callback(responses.GET, re.compile(re.escape(FHIR) + ".*"), callback=_slow(release))
    body = hook_request("msk-imaging-patient-view", prefetch={})
    body["fhirServer"] = FHIR
    started = time.monotonic()
    response = app.test_client().post("/cds-services/msk-imaging-patient-view", json=body)
    assert time.monotonic() - started < DEADLINE + MARGIN
    assert response.status_code == 412
    expressions = {e for issue in response.get_json()["issue"] for e in issue.get("expression", [])}
    assert {"prefetch.patient", "prefetch.conditions", "prefetch.reports"} <= expressions


def test_fetch_sends_the_access_token_only_to_the_fhir_server(app, fhir):
    fhir.add(responses.GET, re.compile(re.escape(FHIR) + ".*"), json=empty_searchset())
    response = app.test_client().post(
        "/cds-services/msk-imaging-patient-view", json=request_missing("msk-imaging-patient-view", "reports")
    )
    assert response.status_code == 200
    assert [c.request.headers["Authorization"] for c in fhir.calls] == [f"Bearer {ACCESS_TOKEN}"]
    assert ACCESS_TOKEN not in response.get_data(as_text=True)
