"""Shared pytest fixtures: app factory on a temporary SQLite file, test client, minimal valid CDS Hooks requests
per hook, and a `responses`-based stand-in for the EHR's FHIR server."""
from __future__ import annotations

import copy
import socket
import uuid
from typing import Any, Callable, Iterable, Mapping

import pytest
import responses

from service import create_app
from service.conformance import check_response

FHIR_BASE = "https://ehr.example.org/fhir"

# Tests never leave the machine: a name lookup of anything but loopback fails as it would offline, so a test that
# forgot to stand in for the EHR's FHIR server (`responses`) sends no traffic (and gets the app's offline answer).
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "ip6-localhost", "0.0.0.0", "", None}
_real_getaddrinfo = socket.getaddrinfo


def _loopback_only_getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name not in _LOOPBACK_NAMES and not str(name).startswith("127."):
        raise socket.gaierror(socket.EAI_NONAME, f"tests resolve loopback names only, not {name!r}")
    return _real_getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _loopback_only_getaddrinfo

PATIENT_ID = "pat-1"
USER_ID = "Practitioner/prac-1"
SERVICE_OF_HOOK = {
    "patient-view": "msk-imaging-patient-view",
    "order-select": "msk-imaging-order-select",
    "order-sign": "msk-imaging-order-sign",
}
PREFETCH_KEYS = ("patient", "conditions", "reports", "imagingNotes", "medicationRequests", "medicationStatements",
                 "observations", "allergies")


def searchset(resources: Iterable[Mapping[str, Any]] = (), next_url: str | None = None) -> dict[str, Any]:
    """A FHIR searchset Bundle of `resources` (with a `next` link when given)."""
    entries = [{"fullUrl": f"{FHIR_BASE}/{r['resourceType']}/{r.get('id', '')}", "resource": dict(r)}
               for r in resources]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(entries)}
    if entries:
        bundle["entry"] = entries
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def patient(patient_id: str = PATIENT_ID) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": patient_id, "gender": "female", "birthDate": "1980-04-02"}


def draft_medication_request(order_id: str = "draft-1", patient_id: str = PATIENT_ID) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest", "id": order_id, "status": "draft", "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationCodeableConcept": {"text": "naproxen 500 mg oral tablet"},
    }


def complete_prefetch(patient_id: str = PATIENT_ID) -> dict[str, Any]:
    """Every declared prefetch key filled: the patient and empty searchsets."""
    prefetch: dict[str, Any] = {key: searchset() for key in PREFETCH_KEYS}
    prefetch["patient"] = patient(patient_id)
    return prefetch


def build_request(hook: str = "patient-view", *, prefetch: Mapping[str, Any] | None | str = "complete",
                  patient_id: str = PATIENT_ID, user_id: str = USER_ID, draft_orders: list | None = None,
                  fhir_server: str | None = None, access_token: str | None = None,
                  **fields: Any) -> dict[str, Any]:
    """A minimal valid CDS Hooks request for `hook`.

    prefetch="complete" fills every key; None omits `prefetch`; a mapping is used as given. `access_token`
    adds a valid fhirAuthorization (needs fhir_server). Extra keyword fields are set at the top level.
    """
    context: dict[str, Any] = {"userId": user_id, "patientId": patient_id}
    if hook in ("order-select", "order-sign"):
        orders = draft_orders if draft_orders is not None else [draft_medication_request(patient_id=patient_id)]
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                  "entry": [{"resource": o} for o in orders]}
        if hook == "order-select":
            context["selections"] = [f"{o['resourceType']}/{o['id']}" for o in orders[:1]]
    body: dict[str, Any] = {"hookInstance": str(uuid.uuid4()), "hook": hook, "context": context}
    if prefetch == "complete":
        body["prefetch"] = complete_prefetch(patient_id)
    elif prefetch is not None:
        body["prefetch"] = copy.deepcopy(dict(prefetch))
    if fhir_server:
        body["fhirServer"] = fhir_server
    if access_token:
        body["fhirAuthorization"] = {
            "access_token": access_token, "token_type": "Bearer", "expires_in": 300,
            "scope": "patient/*.read", "subject": "msk-cds",
        }
    body.update(fields)
    return body


class FhirServer:
    """The EHR's FHIR server, played by `responses`: register reads and searches, inspect the calls."""

    def __init__(self, mock: responses.RequestsMock, base: str = FHIR_BASE) -> None:
        self.mock = mock
        self.base = base

    def read(self, resource: Mapping[str, Any], status: int = 200) -> None:
        self.mock.get(f"{self.base}/{resource['resourceType']}/{resource['id']}", json=dict(resource), status=status)

    def search(self, resource_type: str, bundle: Mapping[str, Any] | None = None, status: int = 200,
               url: str | None = None) -> None:
        """Answer `GET {base}/{resource_type}?...` (any query) with `bundle` (default: an empty searchset)."""
        self.mock.get(url or f"{self.base}/{resource_type}", json=dict(bundle or searchset()), status=status)

    def fail(self, path: str, status: int = 500, body: Any = None) -> None:
        self.mock.get(f"{self.base}/{path}", json=body or {"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "exception"}]}, status=status)

    def serve_everything(self, patient_id: str = PATIENT_ID) -> None:
        """Every prefetch query answered: the patient and empty searchsets."""
        self.read(patient(patient_id))
        for resource_type in ("Condition", "DiagnosticReport", "DocumentReference", "MedicationRequest",
                              "MedicationStatement",
                              "Observation", "AllergyIntolerance"):
            self.search(resource_type)

    @property
    def calls(self) -> list[Any]:
        return list(self.mock.calls)

    def paths(self) -> list[str]:
        return [call.request.path_url for call in self.mock.calls]


@pytest.fixture
def app_factory(tmp_path) -> Callable[..., Any]:
    """Build apps on a temporary SQLite file; keyword settings override (auth off unless given)."""
    built = []

    def make(services: Any = None, **settings: Any):
        merged = {"AUTH_DISABLED": True, "DATABASE_URL": f"sqlite:///{tmp_path}/t.db", "TESTING": True}
        merged.update(settings)
        app = create_app(merged, services)
        built.append(app)
        return app

    yield make
    for app in built:
        storage = app.extensions.get("msk_cds.storage")
        if storage is not None:
            storage.dispose()


@pytest.fixture
def app(app_factory):
    return app_factory()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def cds_request() -> Callable[..., dict[str, Any]]:
    """`cds_request(hook, **options)`: see build_request."""
    return build_request


@pytest.fixture
def fhir_server():
    """A `responses` FHIR server at FHIR_BASE; unregistered URLs fail like a refused connection."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FhirServer(mock)


@pytest.fixture
def conformant() -> Callable[[Any], None]:
    """`conformant(json)` asserts a service response passes the CDS Hooks 2.0 checker."""

    def check(body: Any) -> None:
        problems = check_response(body)
        assert problems == [], problems

    return check
