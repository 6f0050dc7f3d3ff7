"""The read-only FHIR R4 server over the fixture patients (fixtures/fhir_server.py), which the CDS Hooks Sandbox reads.

What the Sandbox does at start and before each hook call (see docs/sandbox.md) is what these tests ask: the
CapabilityStatement with an R4 fhirVersion, the patient list, a patient, the problem list, and the service's prefetch
searches as POST `_search` (form-encoded) and as GET, all with CORS open; and nothing can be written.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:           # `fixtures` is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from fixtures import fhir_server  # noqa: E402
from hooks.services import PREFETCH  # noqa: E402

REQUESTS = ROOT / "fixtures" / "requests"


@pytest.fixture(scope="module")
def client():
    return fhir_server.create_app([REQUESTS]).test_client()


def fixture_request(name: str) -> dict:
    return json.loads((REQUESTS / f"{name}.json").read_text(encoding="utf-8"))


def ids(bundle: dict) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry") or []}


def test_metadata_is_an_r4_capability_statement_with_cors(client):
    response = client.get("/fhir/metadata", headers={"Origin": "http://127.0.0.1:8480"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    body = response.get_json()
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"].startswith("4.0")          # the Sandbox builds R4 drafts (doseAndRate) from this
    types = {r["type"] for r in body["rest"][0]["resource"]}
    assert {"Patient", "Condition", "DiagnosticReport", "MedicationRequest", "Observation"} <= types


def test_preflight_of_a_search_is_answered(client):
    response = client.options("/fhir/Observation/_search", headers={
        "Origin": "http://127.0.0.1:8480", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert response.status_code in (200, 204)
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_patient_list_read_and_not_found(client):
    listing = client.get("/fhir/Patient").get_json()
    assert listing["type"] == "searchset" and "pat-46" in ids(listing)
    patient = client.get("/fhir/Patient/pat-46").get_json()
    assert patient["resourceType"] == "Patient" and patient["id"] == "pat-46"
    missing = client.get("/fhir/Patient/nobody")
    assert missing.status_code == 404
    assert missing.get_json()["resourceType"] == "OperationOutcome"
    assert "nobody" not in missing.get_data(as_text=True)


def test_problem_list_of_a_patient_is_the_fixture_problem_list(client):
    """GI bleed history patient (scenario 46): the Sandbox's `Condition?patient=` shows exactly the fixture's list."""
    expected = ids(fixture_request("46_a_gi_risk_prior_ulcer_corticosteroid__patient-view")["prefetch"]["conditions"])
    got = client.get("/fhir/Condition?patient=pat-46").get_json()
    assert ids(got) == expected and got["total"] == len(expected)
    assert "cond-46-ulcer" in expected


@pytest.mark.parametrize("key", sorted(k for k in PREFETCH if k != "patient"))
def test_every_prefetch_search_of_the_service_gives_the_fixture_data(client, key):
    """The service's own prefetch templates, run by POST _search and by GET, return what the fixture request holds."""
    request = fixture_request("40_ord_methotrexate_axial__order-select")
    template = PREFETCH[key].replace("{{context.patientId}}", "pat-40")
    path, _, query = template.partition("?")
    expected = ids(request["prefetch"].get(key) or {})     # a key the fixture does not fill: nothing on the server
    by_get = client.get(f"/fhir/{path}?{query}").get_json()
    by_post = client.post(f"/fhir/{path}/_search", data=query,
                          content_type="application/x-www-form-urlencoded").get_json()
    assert ids(by_get) == expected
    assert ids(by_post) == expected
    others = {e["resource"].get("subject", e["resource"].get("patient", {})).get("reference")
              for e in by_get.get("entry") or []}
    assert others <= {"Patient/pat-40"}, "another patient's data leaked into the search"


def test_token_search_system_code_or_and_bare_code(client):
    both = client.get("/fhir/Condition?code=http://hl7.org/fhir/sid/icd-10-cm|K26.4").get_json()
    assert "cond-46-ulcer" in ids(both)
    bare = client.get("/fhir/Condition?code=K26.4").get_json()
    assert ids(bare) == ids(both)
    wrong_system = client.get("/fhir/Condition?code=http://snomed.info/sct|K26.4").get_json()
    assert "cond-46-ulcer" not in ids(wrong_system)
    none_of_that_type = client.get("/fhir/Condition?patient=pat-46&type=http://loinc.org|18748-4").get_json()
    assert ids(none_of_that_type) == set()                # Condition has no `type`: nothing matches
    either = client.get("/fhir/Condition?patient=pat-46&code=K26.4,M35.3").get_json()
    assert {"cond-46-ulcer", "cond-46-pmr"} <= ids(either)


def test_date_prefix_sort_and_paging(client):
    reports = client.get("/fhir/Observation?patient=pat-40&_sort=-date").get_json()
    days = [fhir_server._resource_day(e["resource"], "date") for e in reports["entry"]]
    assert days == sorted(days, reverse=True) and len(days) >= 2
    newest = days[0]
    after = client.get(f"/fhir/Observation?patient=pat-40&date=ge{newest}").get_json()
    assert all(fhir_server._resource_day(e["resource"], "date") >= newest for e in after["entry"])
    assert len(after["entry"]) < len(days)
    first = client.get("/fhir/Observation?patient=pat-40&_count=1").get_json()
    assert len(first["entry"]) == 1 and first["total"] == len(days)
    next_url = [link["url"] for link in first["link"] if link["relation"] == "next"][0]
    parts = urlsplit(next_url)
    second = client.get(f"{parts.path}?{parts.query}").get_json()
    assert len(second["entry"]) == 1 and ids(second) != ids(first)


def test_unsupported_parameters_are_ignored_and_left_out_of_the_self_link(client):
    bundle = client.get("/fhir/Condition?patient=pat-46&_elements=code&_summary=true").get_json()
    assert len(ids(bundle)) == 3
    self_link = [link["url"] for link in bundle["link"] if link["relation"] == "self"][0]
    assert "patient=pat-46" in self_link and "_elements" not in self_link


def test_unknown_type_gives_an_empty_searchset(client):
    bundle = client.get("/fhir/Procedure?patient=pat-46").get_json()
    assert bundle["resourceType"] == "Bundle" and bundle["total"] == 0 and "entry" not in bundle


@pytest.mark.parametrize("method", ["put", "delete", "patch"])
def test_the_server_is_read_only(client, method):
    response = getattr(client, method)("/fhir/Patient/pat-46", json={"resourceType": "Patient", "id": "pat-46"})
    assert response.status_code == 405
    assert client.get("/fhir/Patient/pat-46").get_json().get("gender") is not None
    post = client.post("/fhir/Patient", json={"resourceType": "Patient"})
    assert post.status_code == 405
