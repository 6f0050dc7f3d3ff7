"""Protocol conformance: what the service hands a hook handler (typed record, unavailable keys, evaluation time,
context) and what it returns from it (cards as produced, systemActions only when there are some).

A probe service is declared on its handler and handed to the app in a ServiceRegistry beside the product's own
(the way a fourth service would be added in hooks/).
"""
from __future__ import annotations

import datetime as dt
import uuid

import pytest

from conftest import FHIR_BASE, complete_prefetch
from hooks import registry
from hooks.model import HookResult
from hooks.services import default_registry

PROBE_ID = "protocol-probe"
PATH = f"/cds-services/{PROBE_ID}"
seen: list[registry.HookRequest] = []


def _action():
    return {"type": "update", "description": "Mark the order reviewed",
            "resource": {"resourceType": "ServiceRequest", "id": "sr-1", "status": "draft", "intent": "order",
                         "subject": {"reference": "Patient/pat-1"}}}


def _card():
    return {"uuid": str(uuid.uuid4()), "summary": "Probe card", "indicator": "info",
            "source": {"label": "probe"}, "extension": {"org.msk-cds.rule": "probe"}}


@pytest.fixture
def probe_service():
    seen.clear()

    @registry.cds_service(id=PROBE_ID, hook="patient-view", title="Probe", description="Records its request.",
                          prefetch={"patient": "Patient/{{context.patientId}}",
                                    "practitioner": "Practitioner/{{userPractitionerId}}",
                                    "conditions": "Condition?patient={{context.patientId}}"},
                          required_prefetch=("patient",))
    def probe(request: registry.HookRequest) -> HookResult:
        seen.append(request)
        actions = (_action(),) if request.context.get("encounterId") == "with-actions" else ()
        return HookResult(cards=(_card(),), system_actions=actions)

    services = default_registry()
    services.register(probe.cds_service)
    return services


@pytest.fixture
def app(app_factory, probe_service):
    return app_factory(services=probe_service)


def test_handler_gets_a_typed_record_and_the_unavailable_keys(app_factory, cds_request, probe_service, fhir_server,
                                                             conformant):
    app = app_factory(services=probe_service, FIXED_NOW="2026-03-04T05:06:07Z")
    fhir_server.mock.get(f"{FHIR_BASE}/Practitioner/prac-1", status=500)
    body = cds_request("patient-view", prefetch={"patient": complete_prefetch()["patient"]}, fhir_server=FHIR_BASE)
    body["context"]["encounterId"] = "enc-1"
    # Condition is not registered on the mock server: the read fails like a refused connection -> unavailable
    response = app.test_client().post(PATH, json=body)
    assert response.status_code == 200
    payload = response.get_json()
    conformant(payload)
    assert list(payload) == ["cards"]                       # no empty systemActions
    assert payload["cards"][0]["extension"] == {"org.msk-cds.rule": "probe"}
    request = seen[-1]
    assert request.service_id == PROBE_ID and request.hook == "patient-view"
    assert request.hook_instance == body["hookInstance"]
    assert request.now == dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)
    assert request.patient_id == "pat-1" and request.user_reference == "Practitioner/prac-1"
    assert request.context["encounterId"] == "enc-1"
    assert request.fhir_server == FHIR_BASE
    assert request.record.unavailable == {"practitioner", "conditions"}
    assert request.record.patient.id == "pat-1"
    assert request.record.patient.get_resource_type() == "Patient"


def test_user_token_template_is_rendered_from_user_id(app, cds_request, probe_service, fhir_server):
    fhir_server.mock.get(f"{FHIR_BASE}/Practitioner/prac-1",
                         json={"resourceType": "Practitioner", "id": "prac-1"})
    fhir_server.search("Condition")
    body = cds_request("patient-view", prefetch={"patient": complete_prefetch()["patient"]}, fhir_server=FHIR_BASE)
    assert app.test_client().post(PATH, json=body).status_code == 200
    assert "/fhir/Practitioner/prac-1" in fhir_server.paths()
    assert seen[-1].record.unavailable == frozenset()
    assert [p.id for p in seen[-1].record.of_type("Practitioner")] == ["prac-1"]


def test_user_token_that_does_not_apply_leaves_the_key_unavailable(app, cds_request, probe_service, fhir_server):
    fhir_server.search("Condition")
    body = cds_request("patient-view", prefetch={"patient": complete_prefetch()["patient"]}, fhir_server=FHIR_BASE,
                       user_id="RelatedPerson/rp-1")
    assert app.test_client().post(PATH, json=body).status_code == 200
    assert all("Practitioner" not in p for p in fhir_server.paths())
    assert seen[-1].record.unavailable == {"practitioner"}


def test_system_actions_are_returned_when_there_are_some(app, cds_request, probe_service, conformant):
    body = cds_request("patient-view", prefetch={"patient": complete_prefetch()["patient"], "practitioner": None,
                                                 "conditions": None})
    body["context"]["encounterId"] = "with-actions"
    payload = app.test_client().post(PATH, json=body).get_json()
    conformant(payload)
    assert payload["systemActions"] == [_action()]


def test_probe_appears_in_discovery_while_declared(client, probe_service):
    ids = [s["id"] for s in client.get("/cds-services").get_json()["services"]]
    assert PROBE_ID in ids and len(ids) == 4
