"""Every official FHIR R4 example as prefetch data (alone, and in searchset Bundles) to every service: zero 500s.

The examples live outside the repository, in ../shared/fhir-r4-examples (the `shared/` folder beside the repository
root, as laid out for developers and CI). A clone without it skips this whole module (~340 tests) and says so; for the
full run, put the repository beside shared/ (README "Tests").
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from service import create_app
from service.conformance import check_response
from test_security_helpers import SERVICE_IDS, full_prefetch, hook_request, patient

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "fhir-r4-examples"
FILES = sorted(EXAMPLES.glob("*.json")) if EXAMPLES.is_dir() else []
BUNDLE_KEYS = ("conditions", "reports", "medicationRequests", "medicationStatements", "observations", "allergies")

if not FILES:
    pytest.skip(f"needs ../shared/fhir-r4-examples (the official FHIR R4 examples beside the repository root), "
                f"not found at {EXAMPLES}: clone the repository beside shared/ for the full run (README, Tests)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app({
        "AUTH_DISABLED": True,
        "DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('examples') / 'e.db'}",
        "FIXED_NOW": "2026-11-22T08:00:00+00:00",
        "TESTING": True,
    })
    return app.test_client()


def searchset(*resources) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"urn:uuid:{i}", "resource": r, "search": {"mode": "match"}}
                      for i, r in enumerate(resources)]}


def load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def variants(resource):
    """The ways an example can arrive: as every prefetch value, in every searchset, as a draft order."""
    alone = {key: resource for key in full_prefetch()}
    bundled = full_prefetch()
    for key in BUNDLE_KEYS:
        bundled[key] = searchset(resource)
    if isinstance(resource, dict) and resource.get("resourceType") == "Patient":
        bundled["patient"] = resource
    yield "alone", alone, None
    yield "searchset", bundled, resource


def check(client, service_id, prefetch, draft=None):
    body = hook_request(service_id, prefetch)
    if draft is not None and "draftOrders" in body["context"]:
        body["context"]["draftOrders"]["entry"].append({"resource": draft})
    response = client.post(f"/cds-services/{service_id}", json=body)
    assert response.status_code < 500, response.data[:300]
    text = response.get_data(as_text=True)
    assert "<html" not in text.lower()
    if response.status_code == 200:
        problems = check_response(response.get_json())
        assert problems == [], problems
    return response.status_code


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_example_as_prefetch_to_every_service(client, path):
    resource = load(path)
    for service_id in SERVICE_IDS:
        for _, prefetch, draft in variants(resource):
            check(client, service_id, prefetch, draft)


def test_all_examples_of_the_record_types_in_one_request(client):
    by_key = {key: [] for key in BUNDLE_KEYS}
    key_of = {"Condition": "conditions", "DiagnosticReport": "reports", "MedicationRequest": "medicationRequests",
              "MedicationStatement": "medicationStatements", "Observation": "observations",
              "AllergyIntolerance": "allergies"}
    patients = []
    for path in FILES:
        resource = load(path)
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if kind in key_of:
            by_key[key_of[kind]].append(resource)
        elif kind == "Patient":
            patients.append(resource)
    prefetch = {key: searchset(*resources) for key, resources in by_key.items()}
    for person in patients[:5] or [patient()]:
        prefetch["patient"] = person
        for service_id in SERVICE_IDS:
            assert check(client, service_id, prefetch) == 200


def test_examples_wrapped_in_other_bundle_types(client):
    resources = [load(p) for p in FILES[:60]]
    for bundle_type in ("collection", "transaction", "batch-response", "history", "document"):
        prefetch = full_prefetch()
        prefetch["reports"] = {"resourceType": "Bundle", "type": bundle_type,
                               "entry": [{"resource": r} for r in resources]}
        for service_id in SERVICE_IDS:
            check(client, service_id, prefetch)
