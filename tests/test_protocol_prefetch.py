"""Protocol conformance: prefetch resolution. Complete, partial, missing (fetched with and without
fhirAuthorization), null, OperationOutcome in place of data, 412 vs optional keys, paging and the deadline."""
from __future__ import annotations

import json
import threading
import time

import pytest
import responses

from conftest import FHIR_BASE, PATIENT_ID, complete_prefetch, patient, searchset
from hooks.services import default_registry
from service import prefetch as prefetch_module
from service.hookcall import validate_call
from service.templates import TemplateError, render, token_values

PV = "/cds-services/msk-imaging-patient-view"
DEFINITION = default_registry()["msk-imaging-patient-view"]
OPTIONAL_KEYS = ("medicationRequests", "medicationStatements", "observations", "allergies")


def resolve(app, body):
    """Run the real prefetch resolution on a request body inside a request context."""
    with app.test_request_context():
        return prefetch_module.resolve(DEFINITION, validate_call(body, DEFINITION.hook))


def _outcome_paths(response) -> list[str]:
    return [i["expression"][0] for i in json.loads(response.data)["issue"]]


def test_complete_prefetch_needs_no_fhir_server(client, cds_request, fhir_server, app):
    response = client.post(PV, json=cds_request("patient-view"))
    assert response.status_code == 200
    assert fhir_server.calls == []
    resolved = resolve(app, cds_request("patient-view"))
    assert resolved.unavailable == frozenset()
    assert resolved.provided == len(DEFINITION.prefetch) and resolved.fetched == 0


def test_partial_prefetch_fetches_only_the_missing_keys(client, cds_request, fhir_server, app):
    fhir_server.search("Condition", searchset([{"resourceType": "Condition", "id": "c1",
                                                 "subject": {"reference": f"Patient/{PATIENT_ID}"}}]))
    fhir_server.search("Observation")
    prefetch = complete_prefetch()
    del prefetch["conditions"], prefetch["observations"]
    body = cds_request("patient-view", prefetch=prefetch, fhir_server=FHIR_BASE)
    response = client.post(PV, json=body)
    assert response.status_code == 200
    paths = sorted(p.split("?")[0] for p in fhir_server.paths())
    assert paths == ["/fhir/Condition", "/fhir/Observation"]
    resolved = resolve(app, body)
    assert resolved.data["conditions"]["entry"][0]["resource"]["id"] == "c1"
    assert resolved.fetched == 2 and resolved.unavailable == frozenset()


def test_missing_prefetch_fetched_with_bearer_token(client, cds_request, fhir_server):
    fhir_server.serve_everything()
    body = cds_request("patient-view", prefetch=None, fhir_server=FHIR_BASE, access_token="tok-123")
    response = client.post(PV, json=body)
    assert response.status_code == 200
    assert len(fhir_server.calls) == len(DEFINITION.prefetch)
    for call in fhir_server.calls:
        assert call.request.headers["Authorization"] == "Bearer tok-123"
        assert "fhir+json" in call.request.headers["Accept"]


def test_missing_prefetch_fetched_without_authorization_header_when_none_given(client, cds_request, fhir_server):
    """The CDS Hooks Sandbox sends no fhirAuthorization: call the open FHIR server without a header."""
    fhir_server.serve_everything()
    response = client.post(PV, json=cds_request("patient-view", prefetch=None, fhir_server=FHIR_BASE))
    assert response.status_code == 200
    assert len(fhir_server.calls) == len(DEFINITION.prefetch)
    assert all("Authorization" not in call.request.headers for call in fhir_server.calls)


def test_templates_are_rendered_with_context_values(cds_request, fhir_server, client):
    fhir_server.serve_everything()
    client.post(PV, json=cds_request("patient-view", prefetch=None, fhir_server=FHIR_BASE))
    paths = fhir_server.paths()
    assert f"/fhir/Patient/{PATIENT_ID}" in paths
    assert f"/fhir/Condition?patient={PATIENT_ID}" in paths
    observation = next(p for p in paths if p.startswith("/fhir/Observation"))
    assert f"patient={PATIENT_ID}" in observation and "code=" in observation
    assert all("{{" not in p and "%7B" not in p for p in paths)


def test_null_means_no_data_and_is_not_fetched(client, cds_request, fhir_server, app):
    prefetch = complete_prefetch()
    prefetch["conditions"] = None
    prefetch["reports"] = None
    body = cds_request("patient-view", prefetch=prefetch, fhir_server=FHIR_BASE)
    response = client.post(PV, json=body)
    assert response.status_code == 200
    assert fhir_server.calls == []
    resolved = resolve(app, body)
    assert resolved.data["conditions"] is None and "conditions" not in resolved.unavailable


def test_operation_outcome_in_place_of_data_is_fetched(client, cds_request, fhir_server, app):
    fhir_server.search("DiagnosticReport", searchset([{"resourceType": "DiagnosticReport", "id": "r1",
                                                        "status": "final", "code": {"text": "MRI SI joints"}}]))
    prefetch = complete_prefetch()
    prefetch["reports"] = {"resourceType": "OperationOutcome",
                           "issue": [{"severity": "error", "code": "timeout"}]}
    body = cds_request("patient-view", prefetch=prefetch, fhir_server=FHIR_BASE)
    assert client.post(PV, json=body).status_code == 200
    assert [p.split("?")[0] for p in fhir_server.paths()] == ["/fhir/DiagnosticReport"]
    resolved = resolve(app, body)
    assert resolved.data["reports"]["entry"][0]["resource"]["id"] == "r1"


def test_operation_outcome_without_fhir_server_for_required_key_is_412(client, cds_request):
    prefetch = complete_prefetch()
    prefetch["patient"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}
    response = client.post(PV, json=cds_request("patient-view", prefetch=prefetch))
    assert response.status_code == 412
    assert _outcome_paths(response) == ["prefetch.patient"]


def test_no_fhir_access_and_required_keys_missing_is_412(client, cds_request):
    prefetch = complete_prefetch()
    del prefetch["patient"], prefetch["reports"]
    response = client.post(PV, json=cds_request("patient-view", prefetch=prefetch))
    assert response.status_code == 412
    body = json.loads(response.data)
    assert body["resourceType"] == "OperationOutcome"
    assert sorted(_outcome_paths(response)) == ["prefetch.patient", "prefetch.reports"]
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_no_fhir_access_and_only_optional_keys_missing_is_200(client, cds_request, app, conformant):
    prefetch = complete_prefetch()
    for key in OPTIONAL_KEYS:
        del prefetch[key]
    body = cds_request("patient-view", prefetch=prefetch)
    response = client.post(PV, json=body)
    assert response.status_code == 200
    conformant(response.get_json())
    assert resolve(app, body).unavailable == frozenset(OPTIONAL_KEYS)


def test_fhir_server_errors_make_required_keys_412_and_optional_keys_unavailable(client, cds_request, fhir_server,
                                                                                 app):
    fhir_server.serve_everything()
    prefetch = complete_prefetch()
    del prefetch["allergies"]
    fhir_server.mock.replace(responses.GET, f"{FHIR_BASE}/AllergyIntolerance", status=500,
                             json={"resourceType": "OperationOutcome", "issue": []})
    body = cds_request("patient-view", prefetch=prefetch, fhir_server=FHIR_BASE)
    assert client.post(PV, json=body).status_code == 200
    assert resolve(app, body).unavailable == {"allergies"}

    del prefetch["patient"]
    fhir_server.mock.replace(responses.GET, f"{FHIR_BASE}/Patient/{PATIENT_ID}", status=404,
                             json={"resourceType": "OperationOutcome", "issue": []})
    response = client.post(PV, json=cds_request("patient-view", prefetch=prefetch, fhir_server=FHIR_BASE))
    assert response.status_code == 412
    assert _outcome_paths(response) == ["prefetch.patient"]


@pytest.mark.parametrize("answer", [
    {"body": "<html>oops</html>", "content_type": "text/html"},
    {"json": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden"}]}},
    {"json": ["not", "a", "resource"]},
    {"status": 302, "headers": {"Location": "https://elsewhere.example.org/"}, "body": ""},
])
def test_unusable_fhir_answers_count_as_unobtainable(client, cds_request, fhir_server, answer):
    fhir_server.mock.get(f"{FHIR_BASE}/Patient/{PATIENT_ID}", **answer)
    prefetch = complete_prefetch()
    del prefetch["patient"]
    response = client.post(PV, json=cds_request("patient-view", prefetch=prefetch, fhir_server=FHIR_BASE))
    assert response.status_code == 412


def _paged_condition_server(fhir_server, pages: int):
    """Condition search answering page n with one condition and a `next` link to page n+1 (of `pages`)."""
    served: list[int] = []

    def callback(request):
        page = int(request.params.get("page", "1"))
        served.append(page)
        condition = {"resourceType": "Condition", "id": f"c{page}", "subject": {"reference": "Patient/pat-1"}}
        next_url = f"{FHIR_BASE}/Condition?patient={PATIENT_ID}&page={page + 1}" if page < pages else None
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(searchset([condition], next_url))

    fhir_server.mock.add_callback(responses.GET, f"{FHIR_BASE}/Condition", callback=callback)
    return served


def test_next_links_are_followed(app_factory, cds_request, fhir_server):
    app = app_factory(FHIR_MAX_PAGES=10)
    served = _paged_condition_server(fhir_server, pages=4)
    prefetch = complete_prefetch()
    del prefetch["conditions"]
    body = cds_request("patient-view", prefetch=prefetch, fhir_server=FHIR_BASE, access_token="tok")
    resolved = resolve(app, body)
    assert served == [1, 2, 3, 4]
    ids = [e["resource"]["id"] for e in resolved.data["conditions"]["entry"]]
    assert ids == ["c1", "c2", "c3", "c4"]
    assert "link" not in resolved.data["conditions"]
    assert all(c.request.headers["Authorization"] == "Bearer tok" for c in fhir_server.calls)


def test_paging_is_bounded_by_fhir_max_pages(app_factory, cds_request, fhir_server):
    app = app_factory(FHIR_MAX_PAGES=3)
    served = _paged_condition_server(fhir_server, pages=50)
    prefetch = complete_prefetch()
    del prefetch["conditions"]
    body = cds_request("patient-view", prefetch=prefetch, fhir_server=FHIR_BASE)
    resolved = resolve(app, body)
    assert served == [1, 2, 3]
    assert len(resolved.data["conditions"]["entry"]) == 3
    assert app.test_client().post(PV, json=body).status_code == 200


def test_prefetched_bundle_with_next_link_is_completed_from_fhir_server(app, cds_request, fhir_server):
    served = _paged_condition_server(fhir_server, pages=3)
    prefetch = complete_prefetch()
    prefetch["conditions"] = searchset([{"resourceType": "Condition", "id": "c1"}],
                                       f"{FHIR_BASE}/Condition?patient={PATIENT_ID}&page=2")
    resolved = resolve(app, cds_request("patient-view", prefetch=prefetch, fhir_server=FHIR_BASE))
    assert served == [2, 3]
    assert [e["resource"]["id"] for e in resolved.data["conditions"]["entry"]] == ["c1", "c2", "c3"]


def test_token_is_never_sent_to_another_origin(app, cds_request, fhir_server):
    foreign = "https://attacker.example.net/fhir/Condition"
    fhir_server.mock.get(foreign, json=searchset())
    fhir_server.search("Condition", searchset([{"resourceType": "Condition", "id": "c1"}], foreign + "?page=2"))
    prefetch = complete_prefetch()
    del prefetch["conditions"]
    resolved = resolve(app, cds_request("patient-view", prefetch=prefetch, fhir_server=FHIR_BASE,
                                        access_token="tok"))
    assert all(not c.request.url.startswith("https://attacker") for c in fhir_server.calls)
    assert len(resolved.data["conditions"]["entry"]) == 1


def test_slow_fhir_server_cannot_hang_the_request(app_factory, cds_request, fhir_server):
    """The patient read stalls far past the deadline: the request answers 412 (required key) well before the
    stall ends, and an optional key that stalls leaves a 200 with the key unavailable."""
    release = threading.Event()

    def stall(request):
        release.wait(20)
        return 200, {}, json.dumps(patient())

    app = app_factory(FHIR_FETCH_DEADLINE_SECONDS=0.5)
    fhir_server.mock.add_callback(responses.GET, f"{FHIR_BASE}/Patient/{PATIENT_ID}", callback=stall)
    fhir_server.mock.add_callback(responses.GET, f"{FHIR_BASE}/AllergyIntolerance", callback=stall)
    try:
        prefetch = complete_prefetch()
        del prefetch["patient"]
        started = time.monotonic()
        response = app.test_client().post(PV, json=cds_request("patient-view", prefetch=prefetch,
                                                               fhir_server=FHIR_BASE))
        elapsed = time.monotonic() - started
        assert response.status_code == 412
        assert _outcome_paths(response) == ["prefetch.patient"]
        assert elapsed < 10, "the request waited for the stalled FHIR server instead of its deadline"

        prefetch = complete_prefetch()
        del prefetch["allergies"]
        started = time.monotonic()
        body = cds_request("patient-view", prefetch=prefetch, fhir_server=FHIR_BASE)
        response = app.test_client().post(PV, json=body)
        assert response.status_code == 200
        assert time.monotonic() - started < 10
        assert resolve(app, body).unavailable == {"allergies"}
    finally:
        release.set()


def test_fetches_run_concurrently(app_factory, cds_request, fhir_server):
    """Two reads that each wait for the other can only both finish if they run at the same time."""
    barrier = threading.Barrier(2, timeout=5)

    def meet(request):
        barrier.wait()
        return 200, {}, json.dumps(searchset())

    app = app_factory(FHIR_FETCH_DEADLINE_SECONDS=8)
    fhir_server.mock.add_callback(responses.GET, f"{FHIR_BASE}/Condition", callback=meet)
    fhir_server.mock.add_callback(responses.GET, f"{FHIR_BASE}/DiagnosticReport", callback=meet)
    prefetch = complete_prefetch()
    del prefetch["conditions"], prefetch["reports"]
    response = app.test_client().post(PV, json=cds_request("patient-view", prefetch=prefetch,
                                                           fhir_server=FHIR_BASE))
    assert response.status_code == 200


def test_user_tokens_come_from_user_id():
    values = token_values({"userId": "Practitioner/prac-9", "patientId": "p1", "encounterId": "e1",
                           "selections": ["MedicationRequest/1"], "draftOrders": {"resourceType": "Bundle"}})
    assert values["userPractitionerId"] == "prac-9"
    assert "userPatientId" not in values
    assert render("PractitionerRole?practitioner={{userPractitionerId}}", values) == \
        "PractitionerRole?practitioner=prac-9"
    assert render("Encounter/{{context.encounterId}}", values) == "Encounter/e1"
    for name, kind in (("userPractitionerRoleId", "PractitionerRole"), ("userPatientId", "Patient"),
                       ("userRelatedPersonId", "RelatedPerson")):
        assert token_values({"userId": f"{kind}/x1"})[name] == "x1"


def test_only_root_primitive_context_fields_are_tokens():
    values = token_values({"patientId": "p1", "selections": ["A/1"], "draftOrders": {"a": 1}})
    for template in ("X?s={{context.selections}}", "X?d={{context.draftOrders}}", "X?u={{userPatientId}}",
                     "X?n={{context.draftOrders.id}}"):
        with pytest.raises(TemplateError):
            render(template, values)
    assert render("Patient/{{ context.patientId }}", values) == "Patient/p1"


def test_token_values_are_percent_encoded():
    assert render("Observation?code={{context.code}}", {"context.code": "a&patient=other"}) == \
        "Observation?code=a%26patient%3Dother"


def test_real_socket_server_dripping_bytes_cannot_hang_the_request(app_factory, cds_request):
    """A real HTTP server (no mock) that sends headers, then one byte at a time: the per-call timeout alone would
    never fire, the overall deadline does."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    stop = threading.Event()

    class Drip(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            while not stop.is_set():
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return
                stop.wait(0.05)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        app = app_factory(FHIR_FETCH_DEADLINE_SECONDS=0.5)
        prefetch = complete_prefetch()
        del prefetch["patient"]
        base = f"http://127.0.0.1:{server.server_address[1]}/fhir"
        started = time.monotonic()
        response = app.test_client().post(PV, json=cds_request("patient-view", prefetch=prefetch, fhir_server=base))
        assert response.status_code == 412
        assert time.monotonic() - started < 10
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
