"""Issue 12 items 8-12: what a hostile caller or an unsafe default could do, each refused with a clear answer.

Allowlist escapes, credentials in fhirServer, the JWT audience following Host, production start-up on unsafe
settings, /metrics as an oracle, and feedback values no database stores faithfully. Every refusal is a 400 naming
the field (never 500, never HTML, never the value echoed) or a bare 401."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import responses

from conftest import build_request
from service import create_app
from service.config import ConfigError
from service.fhirurl import UnsafeUrl, canonical_base_url
from test_security_helpers import BASE, ISSUER, bearer, ec_key, jwks, mint

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "msk-imaging-patient-view"
INVOKE = f"/cds-services/{SERVICE}"
FEEDBACK = f"{INVOKE}/feedback"
LISTED = "http://127.0.0.1:18095/fhir"
KEY = ec_key()


# --- item 9: the allowlist compares one canonical form; traversal spellings never reach the network ----------------

TRAVERSALS = [
    f"{LISTED}/../evil", f"{LISTED}/%2e%2e/evil", f"{LISTED}/%2E%2E/evil", f"{LISTED}/..;/evil",
    f"{LISTED}/x/../../evil", f"{LISTED}/./../evil", f"{LISTED}/%252e%252e/evil", f"{LISTED}/..%2fevil",
    f"{LISTED}/..%5cevil", f"{LISTED}\\..\\evil", f"{LISTED};jsessionid=1", f"{LISTED}/.%2e/evil",
]


@pytest.mark.parametrize("url", TRAVERSALS)
def test_traversal_spellings_are_a_400_and_nothing_is_fetched(app_factory, url):
    client = app_factory(FHIR_SERVER_ALLOWLIST=LISTED).test_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(re.compile(r"http://127\.0\.0\.1:18095/.*"), json={"resourceType": "Bundle", "type": "searchset"})
        response = client.post(INVOKE, json=build_request(prefetch=None, fhir_server=url))
        assert len(mock.calls) == 0
    assert response.status_code == 400
    issue = response.get_json()["issue"][0]
    assert issue["expression"] == ["fhirServer"] and "evil" not in issue["diagnostics"]


@pytest.mark.parametrize("spelling", [
    "HTTP://127.0.0.1:18095/fhir", "http://127.0.0.1:18095/fhir/", "http://127.0.0.1:18095/fhir/Patient/..x",
    "http://127.0.0.1:18095/%66hir",
])
def test_equivalent_spellings_of_a_listed_server_are_allowed(app_factory, spelling):
    client = app_factory(FHIR_SERVER_ALLOWLIST=LISTED).test_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(re.compile(r"http://127\.0\.0\.1:18095/fhir/.*"), json={"resourceType": "Bundle", "type": "searchset"})
        mock.get(re.compile(r"http://127\.0\.0\.1:18095/fhir/Patient/.*"),
                 json={"resourceType": "Patient", "id": "pat-1"})
        client.post(INVOKE, json=build_request(prefetch=None, fhir_server=spelling))
        assert mock.calls and all(c.request.url.startswith(LISTED + "/") for c in mock.calls)


def test_default_ports_case_and_trailing_slash_are_one_server():
    assert canonical_base_url("HTTPS://EHR.Example.org:443/fhir/") == "https://ehr.example.org/fhir"
    assert canonical_base_url("http://ehr.example.org:80/R4") == "http://ehr.example.org/R4"
    assert canonical_base_url("http://ehr.example.org:8080/R4") == "http://ehr.example.org:8080/R4"
    # the path keeps its case: /FHIR is another path than /fhir on most servers
    assert canonical_base_url("http://h/FHIR") != canonical_base_url("http://h/fhir")


def test_sibling_path_with_the_same_prefix_is_not_below(app_factory):
    client = app_factory(FHIR_SERVER_ALLOWLIST=LISTED).test_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(re.compile(r"http://127\.0\.0\.1:18095/.*"), json={"resourceType": "Bundle", "type": "searchset"})
        response = client.post(INVOKE, json=build_request(prefetch=None, fhir_server=LISTED + "-evil"))
        assert len(mock.calls) == 0
    assert response.status_code == 412


def test_allowlist_entries_with_traversal_stop_start_up(tmp_path):
    with pytest.raises(ConfigError, match="FHIR_SERVER_ALLOWLIST"):
        create_app({"AUTH_DISABLED": True, "DATABASE_URL": f"sqlite:///{tmp_path}/a.db",
                    "FHIR_SERVER_ALLOWLIST": "http://h/fhir/../x"})


# --- item 10: credentials in fhirServer, even with an empty user --------------------------------------------------

@pytest.mark.parametrize("url", ["http://:pass@127.0.0.1:18095/fhir", "http://user:@127.0.0.1:18095/fhir",
                                 "http://@127.0.0.1:18095/fhir", "http://user@127.0.0.1:18095/fhir"])
def test_credentials_in_fhir_server_are_a_400_and_never_sent(app_factory, url):
    client = app_factory().test_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(re.compile(r"http://127\.0\.0\.1:18095/.*"), json={"resourceType": "Bundle", "type": "searchset"})
        response = client.post(INVOKE, json=build_request(prefetch=None, fhir_server=url))
        assert len(mock.calls) == 0
    assert response.status_code == 400
    assert b"127.0.0.1" not in response.data and b":pass@" not in response.data
    assert "credentials" in response.get_json()["issue"][0]["diagnostics"]


# --- item 8: the JWT audience never follows the Host header ---------------------------------------------------------

def _auth_app(tmp_path, **settings):
    config = {"DATABASE_URL": f"sqlite:///{tmp_path}/auth.db", "TESTING": True,
              "TRUSTED_ISSUERS": json.dumps([{"iss": ISSUER, "jwks": jwks(KEY)}])}
    config.update(settings)
    return create_app(config)


def test_dev_without_public_base_url_refuses_a_token_minted_for_the_host_the_caller_chose(tmp_path):
    client = _auth_app(tmp_path).test_client()
    evil = mint(KEY, "http://evil.example/cds-services")
    response = client.get("/cds-services", headers=bearer(evil), base_url="http://evil.example")
    assert response.status_code == 401 and response.data == b""
    # on loopback (the developer's own machine, the local Sandbox) the request URL is the audience
    local = mint(KEY, BASE + "/cds-services")
    assert client.get("/cds-services", headers=bearer(local)).status_code == 200


def test_with_public_base_url_host_is_ignored(tmp_path):
    client = _auth_app(tmp_path, PUBLIC_BASE_URL="https://cds.hospital.example").test_client()
    token = mint(KEY, "https://cds.hospital.example/cds-services")
    assert client.get("/cds-services", headers=bearer(token), base_url="http://anything.example").status_code == 200
    evil = mint(KEY, "http://evil.example/cds-services")
    assert client.get("/cds-services", headers=bearer(evil), base_url="http://evil.example").status_code == 401


# --- items 8 and 11: production refuses to start unsafe, with one line naming each problem -----------------------

SAFE = {"PRODUCTION": True, "PUBLIC_BASE_URL": "https://cds.hospital.example", "FHIR_SERVER_ALLOWLIST": LISTED,
        "METRICS_TOKEN": "m" * 32}


@pytest.mark.parametrize("drop,named", [
    ("PUBLIC_BASE_URL", "PUBLIC_BASE_URL"), ("FHIR_SERVER_ALLOWLIST", "FHIR_SERVER_ALLOWLIST"),
    ("METRICS_TOKEN", "METRICS_TOKEN"),
])
def test_production_refuses_each_unsafe_setting(tmp_path, drop, named):
    settings = {k: v for k, v in SAFE.items() if k != drop}
    with pytest.raises(ConfigError, match=named) as error:
        _auth_app(tmp_path, **settings)
    assert "\n" not in str(error.value)
    _auth_app(tmp_path, **SAFE)                                     # and starts when all are set


def test_production_explicit_opt_outs(tmp_path):
    _auth_app(tmp_path, **{**SAFE, "FHIR_SERVER_ALLOWLIST": "", "FHIR_SERVER_ALLOW_ANY": True})
    _auth_app(tmp_path, **{**SAFE, "METRICS_TOKEN": None, "METRICS_ENABLED": False})
    _auth_app(tmp_path, **{**SAFE, "PUBLIC_BASE_URL": None, "AUTH_DISABLED": True})


def test_production_entry_point_prints_one_line_and_exits_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PUBLIC_BASE_URL", "FHIR_SERVER_ALLOWLIST",
                                                           "METRICS_TOKEN", "AUTH_DISABLED", "PRODUCTION")}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path}/p.db", TRUSTED_ISSUERS=json.dumps([{"iss": ISSUER,
                                                                                       "jwks": jwks(KEY)}]))
    done = subprocess.run([sys.executable, "-c", "from service.production import production_app; production_app()"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("msk-cds:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr
    for name in ("PUBLIC_BASE_URL", "FHIR_SERVER_ALLOWLIST", "METRICS_TOKEN"):
        assert name in lines[0]


# --- item 11: /metrics needs its token and is no oracle -----------------------------------------------------------

def test_metrics_token_required_when_set(app_factory):
    client = app_factory(METRICS_TOKEN="t" * 32).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer " + "x" * 32}).status_code == 401
    response = client.get("/metrics", headers={"Authorization": "Bearer " + "t" * 32})
    assert response.status_code == 200 and b"msk_cds_" in response.data


# --- item 12: feedback values that broke storage, and an empty overrideReason ------------------------------------

def _feedback(client, **item):
    body = {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z"}
    body.update(item)
    return client.post(FEEDBACK, json={"feedback": [body]})


@pytest.mark.parametrize("item,path", [
    ({"outcomeTimestamp": "9999-12-31T23:59:59-23:59"}, "feedback[0].outcomeTimestamp"),
    ({"outcomeTimestamp": "0001-01-01T00:00:00+23:59"}, "feedback[0].outcomeTimestamp"),
    ({"overrideReason": {}}, "feedback[0].overrideReason"),
    ({"overrideReason": {"userComment": "bad\x00comment"}}, "feedback[0].overrideReason.userComment"),
    ({"card": "abc\x00"}, "feedback[0].card"),
])
def test_feedback_values_no_database_stores_are_a_400(app_factory, item, path):
    client = app_factory().test_client()
    response = _feedback(client, **item)
    assert response.status_code == 400, response.data
    assert path in response.get_json()["issue"][0]["expression"]


def test_lone_surrogate_in_feedback_is_a_400(app_factory):
    client = app_factory().test_client()
    raw = (b'{"feedback":[{"card":"c1","outcome":"overridden","outcomeTimestamp":"2026-01-01T00:00:00Z",'
           b'"overrideReason":{"userComment":"x\\ud800y"}}]}')
    response = client.post(FEEDBACK, data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["feedback[0].overrideReason.userComment"]


def test_nul_and_surrogates_refused_on_postgresql_too(tmp_path):
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        pytest.skip("TEST_POSTGRES_URL not set")
    client = create_app({"AUTH_DISABLED": True, "DATABASE_URL": url, "TESTING": True}).test_client()
    assert _feedback(client, overrideReason={"userComment": "a\x00b"}).status_code == 400
    assert _feedback(client, overrideReason={"userComment": "fine"}).status_code == 200
