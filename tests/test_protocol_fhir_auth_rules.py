"""fhirAuthorization rules: the access token is never accepted for a plain-http fhirServer (CDS Hooks 2.0: fhirServer
MUST be https with production data) unless FHIR_ALLOW_INSECURE_HTTP says so, and a token scoped to one patient
(fhirAuthorization.patient) is never used to read another patient's data (context.patientId)."""
from __future__ import annotations

import json
import logging

import pytest
import responses

from conftest import FHIR_BASE, FhirServer, PATIENT_ID, PREFETCH_KEYS
from service.config import ConfigError, load_settings

PV = "/cds-services/msk-imaging-patient-view"
HTTP_BASE = "http://fhir.local.test:8080/fhir"
TOKEN = "secret-token-7f3a9c"


@pytest.fixture
def http_fhir_server():
    """A `responses` FHIR server at a plain-http base URL."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FhirServer(mock, base=HTTP_BASE)


def _issues(response) -> dict[str, str]:
    body = json.loads(response.data)
    assert body["resourceType"] == "OperationOutcome"
    return {(i.get("expression") or ["(body)"])[0]: i["diagnostics"] for i in body["issue"]}


def _with_patient(body: dict, patient: object) -> dict:
    body["fhirAuthorization"]["patient"] = patient
    return body


def test_http_fhir_server_with_token_is_400_and_never_contacted(client, cds_request, http_fhir_server):
    http_fhir_server.serve_everything()
    response = client.post(PV, json=cds_request(prefetch=None, fhir_server=HTTP_BASE, access_token=TOKEN))
    assert response.status_code == 400
    issues = _issues(response)
    assert "https" in issues["fhirServer"]
    assert http_fhir_server.calls == []
    assert TOKEN.encode() not in response.data
    assert HTTP_BASE.encode() not in response.data


def test_http_scheme_is_recognised_in_any_case(client, cds_request, http_fhir_server):
    response = client.post(PV, json=cds_request(prefetch=None, fhir_server="HTTP://fhir.local.test:8080/fhir",
                                                access_token=TOKEN))
    assert response.status_code == 400
    assert "fhirServer" in _issues(response)
    assert http_fhir_server.calls == []


def test_http_fhir_server_with_token_is_refused_even_with_complete_prefetch(client, cds_request):
    # Nothing would be fetched, but the EHR is still handing out a token for a plain-http server.
    response = client.post(PV, json=cds_request(fhir_server=HTTP_BASE, access_token=TOKEN))
    assert response.status_code == 400
    assert "fhirServer" in _issues(response)


def test_http_fhir_server_without_token_is_read(client, cds_request, http_fhir_server):
    # The CDS Hooks Sandbox with an open local FHIR server: no fhirAuthorization, nothing to leak.
    http_fhir_server.serve_everything()
    response = client.post(PV, json=cds_request(prefetch=None, fhir_server=HTTP_BASE))
    assert response.status_code == 200, response.data
    assert len(http_fhir_server.calls) == len(PREFETCH_KEYS)
    assert all("Authorization" not in call.request.headers for call in http_fhir_server.calls)


def test_setting_allows_http_with_token_and_logs_one_warning(app_factory, cds_request, http_fhir_server, caplog):
    http_fhir_server.serve_everything()
    client = app_factory(FHIR_ALLOW_INSECURE_HTTP="true").test_client()
    caplog.set_level(logging.WARNING, logger="service.hookcall")
    response = client.post(PV, json=cds_request(prefetch=None, fhir_server=HTTP_BASE, access_token=TOKEN))
    assert response.status_code == 200, response.data
    assert len(http_fhir_server.calls) == len(PREFETCH_KEYS)
    assert http_fhir_server.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"
    warnings = [r for r in caplog.records if r.name == "service.hookcall" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage() == "fhir_server_insecure_http"
    logged = caplog.text + "".join(repr(vars(r)) for r in warnings)
    assert TOKEN not in logged and "fhir.local.test" not in logged and PATIENT_ID not in logged


def test_setting_true_logs_nothing_for_https(app_factory, cds_request, fhir_server, caplog):
    fhir_server.serve_everything()
    client = app_factory(FHIR_ALLOW_INSECURE_HTTP=True).test_client()
    caplog.set_level(logging.WARNING, logger="service.hookcall")
    response = client.post(PV, json=cds_request(prefetch=None, fhir_server=FHIR_BASE, access_token=TOKEN))
    assert response.status_code == 200
    assert not [r for r in caplog.records if r.name == "service.hookcall"]


def test_https_fhir_server_with_token_is_read_with_the_token(client, cds_request, fhir_server):
    fhir_server.serve_everything()
    response = client.post(PV, json=cds_request(prefetch=None, fhir_server=FHIR_BASE, access_token=TOKEN))
    assert response.status_code == 200, response.data
    assert len(fhir_server.calls) == len(PREFETCH_KEYS)
    assert all(call.request.headers["Authorization"] == f"Bearer {TOKEN}" for call in fhir_server.calls)


def test_patient_of_another_patient_is_400_and_never_fetched(client, cds_request, fhir_server):
    fhir_server.serve_everything()
    body = _with_patient(cds_request(prefetch=None, fhir_server=FHIR_BASE, access_token=TOKEN), "pat-other-99")
    response = client.post(PV, json=body)
    assert response.status_code == 400
    issues = _issues(response)
    assert "context.patientId" in issues["fhirAuthorization.patient"]
    assert fhir_server.calls == []
    for secret in (TOKEN, "pat-other-99", PATIENT_ID):
        assert secret.encode() not in response.data


def test_patient_matching_context_is_read(client, cds_request, fhir_server):
    fhir_server.serve_everything()
    body = _with_patient(cds_request(prefetch=None, fhir_server=FHIR_BASE, access_token=TOKEN), PATIENT_ID)
    response = client.post(PV, json=body)
    assert response.status_code == 200, response.data
    assert len(fhir_server.calls) == len(PREFETCH_KEYS)


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_patient_mismatch_is_checked_on_every_hook(client, cds_request, hook):
    body = _with_patient(cds_request(hook, fhir_server=FHIR_BASE, access_token=TOKEN), "pat-other-99")
    response = client.post(f"/cds-services/msk-imaging-{hook}", json=body)
    assert response.status_code == 400
    assert "fhirAuthorization.patient" in _issues(response)


@pytest.mark.parametrize("bad", [123, ["pat-1"], {"id": "pat-1"}, "", "Patient/pat-1", True])
def test_patient_must_be_a_fhir_id_string(client, cds_request, bad):
    body = _with_patient(cds_request(fhir_server=FHIR_BASE, access_token=TOKEN), bad)
    response = client.post(PV, json=body)
    assert response.status_code == 400
    assert "fhirAuthorization.patient" in _issues(response)
    assert TOKEN.encode() not in response.data


def test_both_problems_are_named_in_one_answer(client, cds_request, http_fhir_server):
    body = _with_patient(cds_request(prefetch=None, fhir_server=HTTP_BASE, access_token=TOKEN), "pat-other-99")
    response = client.post(PV, json=body)
    assert response.status_code == 400
    assert {"fhirServer", "fhirAuthorization.patient"} <= set(_issues(response))
    assert http_fhir_server.calls == []
    assert TOKEN.encode() not in response.data


def test_setting_defaults_to_false_and_parses_as_a_boolean():
    assert load_settings({}, environ={})["FHIR_ALLOW_INSECURE_HTTP"] is False
    assert load_settings({}, environ={"FHIR_ALLOW_INSECURE_HTTP": "true"})["FHIR_ALLOW_INSECURE_HTTP"] is True
    with pytest.raises(ConfigError) as error:
        load_settings({"FHIR_ALLOW_INSECURE_HTTP": "perhaps"}, environ={})
    assert "FHIR_ALLOW_INSECURE_HTTP" in str(error.value)
