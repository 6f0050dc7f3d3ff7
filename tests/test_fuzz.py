"""Property-based fuzzing of request bodies (hypothesis): whatever arrives, the answer is never a 500.

Deterministic by default (derandomized) so CI is stable; FUZZ_RANDOM=1 explores new cases and FUZZ_SCALE=10 runs
ten times as many. The default run is 3,400 cases.
"""
from __future__ import annotations

import copy
import json
import os

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import create_app
from service.auth import AuthError, JwtVerifier, KeyStore, parse_trusted_issuers
from test_security_helpers import ISSUER, SERVICE_IDS, claims, ec_key, hook_request, jwks, mint_raw

SCALE = int(os.environ.get("FUZZ_SCALE", "1"))
FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=os.environ.get("FUZZ_RANDOM") != "1",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
SENTINEL = "FUZZ-ECHO-7d2e"
RESOURCE_TYPES = ["Patient", "Condition", "DiagnosticReport", "MedicationRequest", "MedicationStatement",
                  "Observation", "AllergyIntolerance", "ServiceRequest", "Bundle", "OperationOutcome",
                  "Spaceship", "", "Medication", "Encounter"]
FIELD_NAMES = ["id", "status", "code", "subject", "conclusion", "conclusionCode", "effectiveDateTime", "entry",
               "resource", "valueQuantity", "clinicalStatus", "verificationStatus", "category", "intent",
               "medicationCodeableConcept", "dosageInstruction", "onsetDateTime", "text", "coding", "system",
               "display", "birthDate", "gender", "type", "link", "relation", "url", "presentedForm", "data",
               "contentType", "reaction", "substance", "note", "extension", "meta", "contained"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from([SENTINEL, "2026-11-22", "2026-11-22T05:00:00Z", "Patient/pat-1", "final", "draft",
                      "http://snomed.info/sct", "M46.1", "<script>alert(1)</script>", "\u0000", "\ud7ff"])
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)
fhir_like = st.recursive(
    st.fixed_dictionaries({"resourceType": st.sampled_from(RESOURCE_TYPES)},
                          optional={name: json_values for name in FIELD_NAMES[:12]}),
    lambda children: st.fixed_dictionaries(
        {"resourceType": st.just("Bundle"), "type": st.sampled_from(["searchset", "collection", "x"])},
        optional={"entry": st.lists(st.fixed_dictionaries({}, optional={"resource": children}), max_size=4)},
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app({
        "AUTH_DISABLED": True,
        "DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'f.db'}",
        "MAX_REQUEST_BYTES": 256 * 1024,
        "FIXED_NOW": "2026-11-22T08:00:00+00:00",
        "TESTING": True,
    })
    return app.test_client()


PATHS = [f"/cds-services/{s}" for s in SERVICE_IDS] + [f"/cds-services/{s}/feedback" for s in SERVICE_IDS]


def post(client, path, data: bytes):
    response = client.post(path, data=data, content_type="application/json")
    assert response.status_code < 500, (path, response.status_code, response.data[:200])
    text = response.get_data(as_text=True)
    assert "<html" not in text.lower() and "Traceback" not in text
    if response.status_code >= 400:
        assert SENTINEL not in text
        assert json.loads(text)["resourceType"] == "OperationOutcome"
    return response


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, prefix + (index,))


def _set(document, path, value):
    if not path:
        return value
    document = copy.deepcopy(document)
    node = document
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return document


TEMPLATES = {s: hook_request(s) for s in SERVICE_IDS}
TEMPLATE_PATHS = {s: list(_paths(TEMPLATES[s])) for s in SERVICE_IDS}


@settings(FUZZ, max_examples=600 * SCALE)
@given(path=st.sampled_from(PATHS), body=json_values)
def test_random_json_bodies(client, path, body):
    post(client, path, json.dumps(body).encode())


@settings(FUZZ, max_examples=1000 * SCALE)
@given(service_id=st.sampled_from(SERVICE_IDS), data=st.data())
def test_valid_requests_with_one_field_replaced(client, service_id, data):
    """Every field of a valid request, at any depth, replaced by any JSON value (wrong types included)."""
    where = data.draw(st.sampled_from(TEMPLATE_PATHS[service_id]))
    value = data.draw(json_values)
    body = _set(TEMPLATES[service_id], where, value)
    post(client, f"/cds-services/{service_id}", json.dumps(body).encode())


@settings(FUZZ, max_examples=400 * SCALE)
@given(service_id=st.sampled_from(SERVICE_IDS), key=st.sampled_from(sorted(TEMPLATES[SERVICE_IDS[0]]["prefetch"])),
       resource=fhir_like)
def test_random_fhir_shaped_prefetch(client, service_id, key, resource):
    body = copy.deepcopy(TEMPLATES[service_id])
    body["prefetch"][key] = resource
    if "draftOrders" in body["context"]:
        body["context"]["draftOrders"]["entry"].append({"resource": resource})
    post(client, f"/cds-services/{service_id}", json.dumps(body).encode())


@settings(FUZZ, max_examples=300 * SCALE)
@given(path=st.sampled_from(PATHS), raw=st.binary(max_size=300))
def test_random_bytes(client, path, raw):
    post(client, path, raw)


@settings(FUZZ, max_examples=300 * SCALE)
@given(service_id=st.sampled_from(SERVICE_IDS), data=st.data())
def test_feedback_items_with_one_field_replaced(client, service_id, data):
    item = {"card": "c0ffee00-0000-4000-8000-000000000000", "outcome": "accepted",
            "acceptedSuggestions": [{"id": "c0ffee00-0000-4000-8000-000000000001"}],
            "overrideReason": {"reason": {"code": "x", "system": "https://x.example", "display": "X"},
                               "userComment": "c"},
            "outcomeTimestamp": "2026-11-22T05:00:00Z"}
    document = {"feedback": [item]}
    where = data.draw(st.sampled_from(list(_paths(document))))
    body = _set(document, where, data.draw(json_values))
    post(client, f"/cds-services/{service_id}/feedback", json.dumps(body).encode())


# --- JWTs: any header and claim values, correctly signed, end in a verdict (AuthError), never an exception ---------


JWT_KEY = ec_key()
AUDIENCE = "http://localhost/cds-services"
CLAIM_NAMES = ["iss", "aud", "exp", "iat", "nbf", "jti", "tenant", "sub"]
HEADER_NAMES = ["kid", "typ", "jku", "x5u", "jwk", "crit", "cty"]


@pytest.fixture(scope="module")
def verifier():
    issuers = parse_trusted_issuers([{"iss": ISSUER, "jwks": jwks(JWT_KEY), "tenants": ["north"],
                                      "jku": ["https://keys.example/jwks.json"]}], "t")
    return JwtVerifier(issuers, KeyStore(session=_NoNetwork()), None)


class _NoNetwork:
    def get(self, url, **kwargs):
        raise requests.ConnectionError("no network in fuzzing")


@settings(FUZZ, max_examples=500 * SCALE)
@given(claim_changes=st.dictionaries(st.sampled_from(CLAIM_NAMES), json_values, max_size=4),
       header_changes=st.dictionaries(st.sampled_from(HEADER_NAMES), json_values, max_size=3))
def test_any_claim_or_header_value_ends_in_a_verdict(verifier, claim_changes, header_changes):
    body = claims(AUDIENCE, tenant="north")
    body.update(claim_changes)
    header = {"kid": JWT_KEY.kid, "typ": "JWT"}
    header.update(header_changes)
    try:
        token = mint_raw(JWT_KEY.private, "ES384", header, body)
    except (TypeError, ValueError):
        return
    try:
        verifier.verify("Bearer " + token, AUDIENCE)
    except AuthError:
        pass


@settings(FUZZ, max_examples=300 * SCALE)
@given(authorization=st.text(max_size=300) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_authorization_header_ends_in_a_verdict(verifier, authorization):
    try:
        verifier.verify(authorization, AUDIENCE)
    except AuthError:
        pass
