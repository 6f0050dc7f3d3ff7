"""FHIR_SERVER_ALLOWLIST: the service reads only from listed FHIR servers, so a caller cannot point it (and the
access token) at an arbitrary URL."""
from __future__ import annotations

import pytest

from service.config import ConfigError, load_settings
from conftest import FHIR_BASE, PREFETCH_KEYS


def test_listed_server_is_read(app_factory, cds_request, fhir_server):
    fhir_server.serve_everything()
    client = app_factory(FHIR_SERVER_ALLOWLIST="HTTPS://EHR.example.org/fhir/").test_client()
    response = client.post("/cds-services/msk-imaging-patient-view",
                           json=cds_request(prefetch=None, fhir_server=FHIR_BASE, access_token="tok-allowed"))
    assert response.status_code == 200
    assert len(fhir_server.calls) == len(PREFETCH_KEYS)


def test_unlisted_server_is_never_contacted_and_missing_required_data_is_412(app_factory, cds_request, fhir_server):
    fhir_server.serve_everything()
    client = app_factory(FHIR_SERVER_ALLOWLIST="https://other-ehr.example.org/fhir").test_client()
    response = client.post("/cds-services/msk-imaging-patient-view",
                           json=cds_request(prefetch=None, fhir_server=FHIR_BASE, access_token="secret-token"))
    assert response.status_code == 412
    assert fhir_server.calls == []
    assert b"secret-token" not in response.data


def test_prefix_match_is_on_path_segments(app_factory, cds_request, fhir_server):
    fhir_server.serve_everything()
    # "https://ehr.example.org/fh" must not allow ".../fhir": only the exact base or paths below it.
    client = app_factory(FHIR_SERVER_ALLOWLIST="https://ehr.example.org/fh").test_client()
    response = client.post("/cds-services/msk-imaging-patient-view",
                           json=cds_request(prefetch=None, fhir_server=FHIR_BASE))
    assert response.status_code == 412
    assert fhir_server.calls == []


def test_complete_prefetch_needs_no_listed_server(app_factory, cds_request, fhir_server):
    client = app_factory(FHIR_SERVER_ALLOWLIST="https://other-ehr.example.org/fhir").test_client()
    response = client.post("/cds-services/msk-imaging-patient-view",
                           json=cds_request(fhir_server=FHIR_BASE))
    assert response.status_code == 200
    assert fhir_server.calls == []


@pytest.mark.parametrize("bad", ["ftp://x.example.org", "ehr.example.org/fhir", "https://"])
def test_bad_allowlist_stops_start_up_without_echoing_it(bad):
    with pytest.raises(ConfigError) as error:
        load_settings({"FHIR_SERVER_ALLOWLIST": bad}, environ={})
    assert "FHIR_SERVER_ALLOWLIST" in str(error.value) and bad not in str(error.value)
