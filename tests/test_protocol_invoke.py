"""Protocol conformance: service invocation request validation and body parsing (400/413/415), never HTML,
no request value echoed in an error body."""
from __future__ import annotations

import json

import pytest

PV = "/cds-services/msk-imaging-patient-view"
OSEL = "/cds-services/msk-imaging-order-select"
OSIGN = "/cds-services/msk-imaging-order-sign"
PATH_OF = {"patient-view": PV, "order-select": OSEL, "order-sign": OSIGN}


def _issues(response) -> dict[str, str]:
    body = json.loads(response.data)
    assert body["resourceType"] == "OperationOutcome"
    return {(i.get("expression") or ["(body)"])[0]: i["diagnostics"] for i in body["issue"]}


@pytest.mark.parametrize("hook", ["patient-view", "order-select", "order-sign"])
def test_minimal_valid_request_answers_conformant_cards(client, cds_request, conformant, hook):
    response = client.post(PATH_OF[hook], json=cds_request(hook))
    assert response.status_code == 200, response.data
    body = response.get_json()
    assert isinstance(body["cards"], list)
    conformant(body)


def _without(body: dict, dotted: str) -> dict:
    target = body
    *head, last = dotted.split(".")
    for part in head:
        target = target[part]
    del target[last]
    return body


@pytest.mark.parametrize("hook,field", [
    ("patient-view", "hook"), ("patient-view", "hookInstance"), ("patient-view", "context"),
    ("patient-view", "context.userId"), ("patient-view", "context.patientId"),
    ("order-select", "context.userId"), ("order-select", "context.patientId"),
    ("order-select", "context.selections"), ("order-select", "context.draftOrders"),
    ("order-sign", "context.userId"), ("order-sign", "context.patientId"), ("order-sign", "context.draftOrders"),
])
def test_each_missing_required_field_is_400_naming_its_path(client, cds_request, hook, field):
    response = client.post(PATH_OF[hook], json=_without(cds_request(hook), field))
    assert response.status_code == 400
    assert field in _issues(response)


@pytest.mark.parametrize("field,value", [
    ("hook", 7), ("hookInstance", "not-a-uuid"), ("hookInstance", ""), ("context", []),
    ("context.userId", "Device/1"), ("context.userId", 5), ("context.patientId", "has space"),
    ("context.patientId", ""), ("context.encounterId", {"id": 1}), ("prefetch", []),
    ("prefetch.patient", "Patient/1"), ("prefetch.conditions", {"entry": []}),
    ("fhirServer", "ftp://ehr.example.org"), ("fhirServer", "https://ehr.example.org/fhir?x=1"),
    ("fhirServer", "relative/path"),
])
def test_each_wrong_field_is_400_naming_its_path(client, cds_request, field, value):
    body = cds_request("patient-view")
    target = body
    *head, last = field.split(".")
    for part in head:
        target = target[part]
    target[last] = value
    response = client.post(PV, json=body)
    assert response.status_code == 400
    assert field in _issues(response)


def test_every_problem_is_named_at_once(client, cds_request):
    body = cds_request("order-select")
    body["hookInstance"] = "nope"
    del body["context"]["patientId"]
    body["context"]["selections"] = ["MedicationRequest/not-in-draft-orders", 3]
    issues = _issues(client.post(OSEL, json=body))
    assert {"hookInstance", "context.patientId", "context.selections[0]", "context.selections[1]"} <= set(issues)
    assert "draftOrders" in issues["context.selections[0]"]


def test_order_select_user_must_be_practitioner_or_role(client, cds_request):
    response = client.post(OSEL, json=cds_request("order-select", user_id="Patient/pat-1"))
    assert "context.userId" in _issues(response)
    assert client.post(PV, json=cds_request("patient-view", user_id="Patient/pat-1")).status_code == 200


def test_draft_orders_must_be_a_bundle(client, cds_request):
    body = cds_request("order-sign")
    body["context"]["draftOrders"] = {"resourceType": "MedicationRequest"}
    assert "context.draftOrders" in _issues(client.post(OSIGN, json=body))
    body["context"]["draftOrders"] = {"resourceType": "Bundle", "entry": [{"resource": "x"}]}
    assert "context.draftOrders.entry[0]" in _issues(client.post(OSIGN, json=body))


def test_hook_that_does_not_match_the_service_is_400(client, cds_request):
    response = client.post(PV, json=cds_request("order-sign"))
    assert response.status_code == 400
    issues = _issues(response)
    assert "patient-view" in issues["hook"]


@pytest.mark.parametrize("auth,missing", [
    ({"token_type": "Bearer", "expires_in": 300, "scope": "s", "subject": "c"}, "access_token"),
    ({"access_token": "t", "token_type": "MAC", "expires_in": 300, "scope": "s", "subject": "c"}, "token_type"),
    ({"access_token": "t", "token_type": "Bearer", "expires_in": "300", "scope": "s", "subject": "c"}, "expires_in"),
    ({"access_token": "t", "token_type": "Bearer", "expires_in": True, "scope": "s", "subject": "c"}, "expires_in"),
    ({"access_token": "t", "token_type": "Bearer", "expires_in": 300, "subject": "c"}, "scope"),
    ({"access_token": "t", "token_type": "Bearer", "expires_in": 300, "scope": "s"}, "subject"),
])
def test_fhir_authorization_fields(client, cds_request, auth, missing):
    body = cds_request("patient-view", fhir_server="https://ehr.example.org/fhir")
    body["fhirAuthorization"] = auth
    assert f"fhirAuthorization.{missing}" in _issues(client.post(PV, json=body))


def test_fhir_authorization_requires_fhir_server(client, cds_request):
    body = cds_request("patient-view", access_token="secret-token-value")
    response = client.post(PV, json=body)
    assert "fhirServer" in _issues(response)
    assert b"secret-token-value" not in response.data


@pytest.mark.parametrize("data,reason", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe{}", "UTF-8"),
    (b'{"hook": "a", "hook": "b"}', "duplicate key"),
    (b"[1, 2]", "JSON object"),
    (b'"text"', "JSON object"),
    (b"", "empty"),
    (b'{"a": NaN}', "NaN"),
    (b'{"a": 1e999}', "NaN"),
    (b"[" * 100 + b"]" * 100, "nesting"),
    (b"[" * 1_000_000 + b"]" * 1_000_000, "nesting"),
    (b'{"a":' * 70 + b"1" + b"}" * 70, "nesting"),
])
def test_malformed_bodies_are_400_with_a_reason(client, data, reason):
    response = client.post(PV, data=data, content_type="application/json")
    assert response.status_code == 400
    diagnostics = " ".join(_issues(response).values())
    assert reason in diagnostics


def test_depth_limit_is_a_setting(app_factory, cds_request):
    client = app_factory(MAX_JSON_DEPTH=2).test_client()   # prefetch.patient.{...} is 3 deep
    response = client.post(PV, json=cds_request("patient-view"))
    assert response.status_code == 400
    assert "nesting" in " ".join(_issues(response).values())


def test_body_over_the_limit_is_413(app_factory, cds_request):
    client = app_factory(MAX_REQUEST_BYTES=2000).test_client()
    body = cds_request("patient-view")
    body["prefetch"]["patient"]["text"] = {"status": "generated", "div": "x" * 5000}
    response = client.post(PV, json=body)
    assert response.status_code == 413
    assert json.loads(response.data)["issue"][0]["code"] == "too-costly"
    assert response.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_unsupported_content_type_is_415(client, cds_request, content_type):
    data = json.dumps(cds_request("patient-view"))
    response = client.post(PV, data=data, content_type=content_type)
    assert response.status_code == 415
    assert "Content-Type" in _issues(response)


def test_fhir_json_media_type_is_accepted(client, cds_request):
    response = client.post(PV, data=json.dumps(cds_request("patient-view")),
                           content_type="application/fhir+json; charset=utf-8")
    assert response.status_code == 200


def test_no_patient_value_is_echoed_in_error_bodies(client, cds_request):
    secret = "Smith^Johnathan-1961"
    bodies = []
    body = cds_request("patient-view")
    body["context"]["patientId"] = secret
    bodies.append(body)
    body = cds_request("patient-view")
    body["hook"] = secret
    bodies.append(body)
    body = cds_request("patient-view")
    body["prefetch"] = {secret: secret}
    bodies.append(body)
    body = cds_request("patient-view")
    body["context"]["userId"] = secret
    bodies.append(body)
    for body in bodies:
        response = client.post(PV, json=body)
        assert response.status_code == 400
        assert b"Smith" not in response.data and b"Johnathan" not in response.data
    response = client.post(PV, data=b'{"context": {"patientId": "Smith^Johnathan" ', content_type="application/json")
    assert response.status_code == 400 and b"Smith" not in response.data


def test_no_input_produces_html(client, cds_request):
    attempts = [
        client.get("/"), client.get("/cds-services/"), client.post("/cds-services"),
        client.post(PV, data=b"<html>", content_type="text/html"),
        client.post(PV, data=b"\x00\x01", content_type="application/json"),
        client.patch(PV), client.post(PV + "/feedback", data=b"[]", content_type="application/json"),
        client.get("/cds-services/%ff%fe"), client.post("/cds-services/" + "a" * 5000, json={}),
    ]
    for response in attempts:
        assert response.status_code < 500
        assert "html" not in (response.content_type or "")
        assert b"<" not in response.data[:1]
        assert response.headers["Access-Control-Allow-Origin"] == "*"
