"""JWT verification of every call (discovery, service, feedback): keys made in the test, each attack -> bare 401."""
from __future__ import annotations

import json
import logging
import time

import pytest
import responses
from cryptography.hazmat.primitives.asymmetric import ec

from service import create_app
from service.auth import AuthError, JwtVerifier, KeyStore, parse_trusted_issuers
from test_security_helpers import (
    BASE,
    ISSUER,
    SERVICE_IDS,
    bearer,
    claims,
    ec_key,
    feedback_body,
    hmac_with_public_key,
    hook_request,
    jwks,
    SigningKey,
    mint,
    mint_raw,
    rsa_key,
    unsigned,
)

EC = ec_key()
RSA = rsa_key()
SERVICE = SERVICE_IDS[0]
DISCOVERY = "/cds-services"
INVOKE = f"/cds-services/{SERVICE}"
FEEDBACK = f"/cds-services/{SERVICE}/feedback"


def make_app(tmp_path, issuers=None, db="auth.db", **settings):
    config = {
        "DATABASE_URL": f"sqlite:///{tmp_path / db}",
        "TRUSTED_ISSUERS": json.dumps(issuers if issuers is not None else [{"iss": ISSUER, "jwks": jwks(EC, RSA)}]),
        "TESTING": True,
    }
    config.update(settings)
    return create_app(config)


@pytest.fixture
def client(tmp_path):
    return make_app(tmp_path).test_client()


def call(client, path, token=None, headers=None):
    all_headers = dict(bearer(token)) if token else {}
    all_headers.update(headers or {})
    if path == DISCOVERY:
        return client.get(path, headers=all_headers)
    body = feedback_body() if path.endswith("/feedback") else hook_request(SERVICE)
    return client.post(path, json=body, headers=all_headers)


def assert_bare_401(response):
    assert response.status_code == 401
    assert response.data == b""
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.headers.get("Access-Control-Allow-Origin"), "CORS headers must be on the 401 too"


ENDPOINTS = [DISCOVERY, INVOKE, FEEDBACK]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("key", [EC, RSA], ids=["ES384-P384", "RS384-RSA2048"])
def test_valid_token_accepted(client, path, key):
    response = call(client, path, mint(key, BASE + path))
    assert response.status_code == 200, response.data


@pytest.mark.parametrize("alg", ["RS256", "RS512", "PS256", "PS384", "PS512"])
def test_other_rsa_variants_accepted(tmp_path, alg):
    key = rsa_key(kid=f"rsa-{alg}", alg=alg)
    client = make_app(tmp_path, [{"iss": ISSUER, "jwks": jwks(key)}]).test_client()
    assert call(client, DISCOVERY, mint(key, BASE + DISCOVERY)).status_code == 200


@pytest.mark.parametrize("alg,curve", [("ES256", ec.SECP256R1()), ("ES512", ec.SECP521R1())])
def test_other_ec_variants_accepted(tmp_path, alg, curve):
    key = ec_key(kid=f"ec-{alg}", alg=alg, curve=curve)
    client = make_app(tmp_path, [{"iss": ISSUER, "jwks": jwks(key)}]).test_client()
    assert call(client, DISCOVERY, mint(key, BASE + DISCOVERY)).status_code == 200


def _other_ec():
    return ec_key(kid=EC.kid)  # same kid, a different private key: the signature cannot verify


ATTACKS = {
    "wrong_issuer": lambda aud: mint(EC, aud, iss="https://attacker.example"),
    "wrong_audience": lambda aud: mint(EC, aud, aud="https://elsewhere.example/cds-services"),
    "audience_of_other_endpoint": lambda aud: mint(EC, aud, aud=BASE + "/cds-services/other"),
    "expired": lambda aud: mint(EC, aud, exp=int(time.time()) - 120, iat=int(time.time()) - 420),
    "not_yet_valid_nbf": lambda aud: mint(EC, aud, nbf=int(time.time()) + 600),
    "issued_in_future": lambda aud: mint(EC, aud, iat=int(time.time()) + 600, exp=int(time.time()) + 900),
    "missing_iss": lambda aud: mint(EC, aud, iss=None),
    "missing_aud": lambda aud: mint(EC, aud, aud=None),
    "missing_exp": lambda aud: mint(EC, aud, exp=None),
    "missing_iat": lambda aud: mint(EC, aud, iat=None),
    "missing_jti": lambda aud: mint(EC, aud, jti=None),
    "missing_kid": lambda aud: mint(EC, aud, headers={"kid": None}),
    "bad_signature": lambda aud: mint(_other_ec(), aud),
    "tampered_payload": lambda aud: _tamper(mint(EC, aud)),
    "unknown_kid": lambda aud: mint(ec_key(kid="not-in-jwks"), aud),
    "alg_none": lambda aud: unsigned(aud, EC.kid),
    "alg_none_uppercase": lambda aud: unsigned(aud, EC.kid, alg="None"),
    "hs256_with_public_key": lambda aud: hmac_with_public_key(RSA, aud),
    "hs256_with_ec_public_key": lambda aud: hmac_with_public_key(EC, aud),
    "alg_differs_from_jwk_alg": lambda aud: mint(SigningKey(RSA.kid, "RS256", RSA.private), aud),
    "ec_kid_rsa_signature": lambda aud: mint(rsa_key(kid=EC.kid, alg="RS384"), aud),
    "disallowed_jku": lambda aud: mint(EC, aud, headers={"jku": "https://attacker.example/jwks.json"}),
    "typ_not_jwt": lambda aud: mint(EC, aud, headers={"typ": "at+jwt"}),
    "lifetime_too_long": lambda aud: mint(EC, aud, exp=int(time.time()) + 30 * 86400),
    "jti_not_string": lambda aud: mint(EC, aud, jti=12345),
    "exp_not_number": lambda aud: mint(EC, aud, exp="tomorrow"),
    "aud_list_without_us": lambda aud: mint(EC, aud, aud=["https://a.example", "https://b.example"]),
    "aud_object": lambda aud: mint(EC, aud, aud={"url": aud}),
    "iss_list": lambda aud: mint_raw(EC.private, "ES384", {"kid": EC.kid, "typ": "JWT"}, claims(aud, iss=[ISSUER])),
    "exp_boolean": lambda aud: mint(EC, aud, exp=True),
    "nbf_string": lambda aud: mint(EC, aud, nbf="now"),
    "embedded_jwk_header": lambda aud: _with_embedded_jwk(aud),
    "x5u_header_only": lambda aud: mint(_other_ec(), aud, headers={"x5u": "https://attacker.example/cert.pem"}),
    "kid_path_traversal": lambda aud: mint(ec_key(kid="../../../../dev/null"), aud),
    "kid_sql": lambda aud: mint(ec_key(kid="' OR 1=1 --"), aud),
    "ec_p256_key_claiming_es384": lambda aud: mint_raw(ec_key(curve=ec.SECP256R1()).private, "ES384",
                                                       {"kid": EC.kid, "typ": "JWT"}, claims(aud)),
}


def _with_embedded_jwk(aud: str) -> str:
    # the attacker's own public key in the header must never be used to verify
    attacker = _other_ec()
    return mint(attacker, aud, headers={"jwk": attacker.public_jwk()})


def _tamper(token: str) -> str:
    import base64

    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["iss"] = ISSUER
    claims["tenant"] = "other-hospital"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_refused_with_bare_401(client, path, attack):
    assert_bare_401(call(client, path, ATTACKS[attack](BASE + path)))


MALFORMED_HEADERS = {
    "no_header": {},
    "basic_scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
    "bearer_without_token": {"Authorization": "Bearer "},
    "not_a_jwt": {"Authorization": "Bearer not-a-jwt"},
    "garbage_segments": {"Authorization": "Bearer a.b.c"},
    "four_segments": {"Authorization": "Bearer a.b.c.d"},
    "huge_token": {"Authorization": "Bearer " + "a" * 20000 + ".b.c"},
    "json_header_not_object": {"Authorization": "Bearer WzFd.e30.AA"},
}


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("case", sorted(MALFORMED_HEADERS))
def test_malformed_authorization_refused(client, path, case):
    assert_bare_401(call(client, path, headers=MALFORMED_HEADERS[case]))


def test_unknown_service_is_401_not_404_without_token(client):
    # an unauthenticated caller learns nothing about which services exist
    assert_bare_401(client.post("/cds-services/does-not-exist", json={}))


def test_replayed_jti_refused(client):
    token = mint(EC, BASE + INVOKE)
    assert call(client, INVOKE, token).status_code == 200
    assert_bare_401(call(client, INVOKE, token))


def test_replay_guard_holds_across_two_instances_sharing_a_database(tmp_path):
    first = make_app(tmp_path, db="shared.db").test_client()
    second = make_app(tmp_path, db="shared.db").test_client()
    token = mint(EC, BASE + DISCOVERY)
    assert call(first, DISCOVERY, token).status_code == 200
    assert_bare_401(call(second, DISCOVERY, token))
    # and the other way round
    token = mint(RSA, BASE + INVOKE)
    assert call(second, INVOKE, token).status_code == 200
    assert_bare_401(call(first, INVOKE, token))


def test_same_jti_from_two_issuers_is_not_a_replay(tmp_path):
    other = ec_key(kid="other-ec")
    client = make_app(
        tmp_path, [{"iss": ISSUER, "jwks": jwks(EC)}, {"iss": "https://ehr2.example", "jwks": jwks(other)}]
    ).test_client()
    assert call(client, DISCOVERY, mint(EC, BASE + DISCOVERY, jti="shared-jti")).status_code == 200
    token = mint(other, BASE + DISCOVERY, jti="shared-jti", iss="https://ehr2.example")
    assert call(client, DISCOVERY, token).status_code == 200


def test_a_refused_token_does_not_burn_its_jti(client):
    # an attacker who knows a jti must not be able to lock the real token out with a forged one
    assert_bare_401(call(client, DISCOVERY, mint(_other_ec(), BASE + DISCOVERY, jti="victim-jti")))
    assert call(client, DISCOVERY, mint(EC, BASE + DISCOVERY, jti="victim-jti")).status_code == 200


def test_key_without_alg_in_jwks_still_refuses_a_mismatched_algorithm(tmp_path):
    client = make_app(tmp_path, [{"iss": ISSUER, "jwks": {"keys": [EC.public_jwk(with_alg=False)]}}]).test_client()
    assert call(client, DISCOVERY, mint(EC, BASE + DISCOVERY)).status_code == 200
    header = {"kid": EC.kid, "typ": "JWT"}
    same_key_wrong_hash = mint_raw(EC.private, "ES512", header, claims(BASE + DISCOVERY))
    assert_bare_401(call(client, DISCOVERY, same_key_wrong_hash))
    rsa_under_ec_kid = mint_raw(RSA.private, "RS384", header, claims(BASE + DISCOVERY))
    assert_bare_401(call(client, DISCOVERY, rsa_under_ec_kid))


def test_audience_as_list_containing_the_endpoint(client):
    token = mint(EC, BASE + DISCOVERY, aud=["https://other.example", BASE + DISCOVERY])
    assert call(client, DISCOVERY, token).status_code == 200


def test_small_clock_skew_within_leeway_accepted(client):
    now = int(time.time())
    token = mint(EC, BASE + DISCOVERY, iat=now + 10, exp=now - 10 + 300)
    assert call(client, DISCOVERY, token).status_code == 200
    assert call(client, DISCOVERY, mint(EC, BASE + DISCOVERY, exp=now - 10)).status_code == 200


def test_public_base_url_is_the_audience_behind_a_proxy(tmp_path):
    client = make_app(tmp_path, PUBLIC_BASE_URL="https://cds.hospital.example/msk/").test_client()
    public = "https://cds.hospital.example/msk" + DISCOVERY
    assert call(client, DISCOVERY, mint(EC, public)).status_code == 200
    assert_bare_401(call(client, DISCOVERY, mint(EC, BASE + DISCOVERY)))


def test_token_for_another_service_host_is_refused_with_a_public_base_url(tmp_path):
    # the Host header is the caller's choice: with PUBLIC_BASE_URL the audience no longer follows it
    client = make_app(tmp_path, PUBLIC_BASE_URL="https://cds.hospital.example").test_client()
    foreign = "https://other-vendor.example/cds-services"
    token = mint(EC, foreign)
    response = client.get(DISCOVERY, headers=bearer(token), base_url="https://other-vendor.example")
    assert_bare_401(response)


def test_without_public_base_url_start_up_warns_that_host_decides_the_audience(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    make_app(tmp_path)
    assert any("PUBLIC_BASE_URL not set" in r.getMessage() for r in caplog.records)


def test_concurrent_replays_of_one_token_only_one_succeeds(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    app = make_app(tmp_path)
    token = mint(EC, BASE + DISCOVERY)

    def attempt(_):
        return app.test_client().get(DISCOVERY, headers=bearer(token)).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(attempt, range(16)))
    assert statuses == [200] + [401] * 15


def test_tenant_allowlist(tmp_path):
    client = make_app(tmp_path, [{"iss": ISSUER, "jwks": jwks(EC), "tenants": ["north", "south"]}]).test_client()
    assert call(client, DISCOVERY, mint(EC, BASE + DISCOVERY, tenant="north")).status_code == 200
    assert_bare_401(call(client, DISCOVERY, mint(EC, BASE + DISCOVERY, tenant="west")))
    assert_bare_401(call(client, DISCOVERY, mint(EC, BASE + DISCOVERY, tenant=["north"])))
    assert_bare_401(call(client, DISCOVERY, mint(EC, BASE + DISCOVERY, tenant={"id": "north"})))
    assert_bare_401(call(client, DISCOVERY, mint(EC, BASE + DISCOVERY)))


def test_issuer_algorithm_allowlist(tmp_path):
    client = make_app(tmp_path, [{"iss": ISSUER, "jwks": jwks(EC, RSA), "algorithms": ["ES384"]}]).test_client()
    assert call(client, DISCOVERY, mint(EC, BASE + DISCOVERY)).status_code == 200
    assert_bare_401(call(client, DISCOVERY, mint(RSA, BASE + DISCOVERY)))


def test_open_paths_and_preflight_need_no_token(client):
    assert client.get("/healthz").status_code == 200
    for path in ENDPOINTS:
        preflight = client.options(
            path, headers={"Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code in (200, 204)
        assert preflight.headers.get("Access-Control-Allow-Origin")


def test_token_and_claims_never_logged(client, caplog):
    caplog.set_level(logging.DEBUG)
    good = mint(EC, BASE + INVOKE)
    bad = mint(_other_ec(), BASE + INVOKE)
    call(client, INVOKE, good)
    call(client, INVOKE, bad)
    for token in (good, bad):
        for part in token.split("."):
            assert part not in caplog.text
    reasons = [getattr(r, "reason", None) for r in caplog.records if r.getMessage() == "auth_rejected"]
    assert reasons == ["bad_signature"]


def test_auth_rejection_logged_with_iss_jti_reason(client, caplog):
    caplog.set_level(logging.INFO)
    call(client, DISCOVERY, mint(EC, BASE + DISCOVERY, iss="https://attacker.example", jti="jti-77"))
    record = next(r for r in caplog.records if r.getMessage() == "auth_rejected")
    assert (record.iss, record.jti, record.reason) == ("https://attacker.example", "jti-77", "issuer_not_trusted")


# --- configuration ---------------------------------------------------------------------------------------------


def test_auth_disabled_is_explicit_and_logged(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    client = make_app(tmp_path, AUTH_DISABLED=True).test_client()
    assert "authentication disabled: development only" in caplog.text
    assert call(client, DISCOVERY).status_code == 200


def test_auth_on_by_default_without_issuers_refuses_everything_without_crashing(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    client = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "TESTING": True}).test_client()
    assert any("no trusted issuers" in r.getMessage() for r in caplog.records)
    assert_bare_401(call(client, DISCOVERY, mint(EC, BASE + DISCOVERY)))
    assert client.get("/healthz").status_code == 200


def test_trusted_issuers_file_json_yaml_and_jwks_file(tmp_path):
    (tmp_path / "keys.json").write_text(json.dumps(jwks(EC)))
    (tmp_path / "issuers.yaml").write_text(f"issuers:\n  - iss: {ISSUER}\n    jwks_file: keys.json\n")
    client = make_app(tmp_path, [], TRUSTED_ISSUERS=None, TRUSTED_ISSUERS_FILE=str(tmp_path / "issuers.yaml"))
    assert call(client.test_client(), DISCOVERY, mint(EC, BASE + DISCOVERY)).status_code == 200


def test_sandbox_trust_file_loads():
    from pathlib import Path

    from service.auth import load_trusted_issuers

    path = Path(__file__).parents[1] / "deploy" / "trusted-issuers.sandbox.json"
    issuers = load_trusted_issuers({"TRUSTED_ISSUERS_FILE": str(path)})
    assert list(issuers) == ["https://sandbox.cds-hooks.org"]
    assert issuers["https://sandbox.cds-hooks.org"].jku == {"https://sandbox.cds-hooks.org/.well-known/jwks.json"}
    assert KeyStore().key_for(issuers["https://sandbox.cds-hooks.org"], "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f", None)


@pytest.mark.parametrize(
    "document,fragment",
    [
        ([{"iss": ISSUER, "jwks": jwks(EC), "algorithms": ["HS256"]}], "algorithms"),
        ([{"iss": ISSUER, "jwks": jwks(EC), "algorithms": ["none"]}], "algorithms"),
        ([{"iss": ISSUER}], "keys"),
        ([{"iss": ISSUER, "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}}], "no usable"),
        ([{"iss": ISSUER, "jwks": jwks(EC), "surprise": 1}], "unknown field"),
        ([{"jwks": jwks(EC)}], "iss"),
        ({"not": "a list"}, "list"),
    ],
)
def test_bad_trust_configuration_stops_start_up(document, fragment):
    from service.auth import AuthConfigError

    with pytest.raises(AuthConfigError, match=fragment):
        parse_trusted_issuers(document, "TRUSTED_ISSUERS")


# --- JWK Sets fetched by URL -----------------------------------------------------------------------------------

JWKS_URL = "https://ehr.example.org/.well-known/jwks.json"
JKU = "https://keys.ehr.example.org/jwks.json"


@responses.activate
def test_jwks_url_fetched_once_and_cached(tmp_path):
    responses.get(JWKS_URL, json=jwks(EC))
    client = make_app(tmp_path, [{"iss": ISSUER, "jwks_url": JWKS_URL}]).test_client()
    for _ in range(3):
        assert call(client, DISCOVERY, mint(EC, BASE + DISCOVERY)).status_code == 200
    assert len(responses.calls) == 1


@responses.activate
def test_allowlisted_jku_used_and_disallowed_jku_never_fetched(tmp_path):
    responses.get(JKU, json=jwks(EC))
    client = make_app(tmp_path, [{"iss": ISSUER, "jku": [JKU]}]).test_client()
    assert call(client, DISCOVERY, mint(EC, BASE + DISCOVERY, headers={"jku": JKU})).status_code == 200
    evil = "https://attacker.example/jwks.json"
    responses.get(evil, json=jwks(_other_ec()))
    assert_bare_401(call(client, DISCOVERY, mint(_other_ec(), BASE + DISCOVERY, headers={"jku": evil})))
    assert [c.request.url for c in responses.calls] == [JKU]


@responses.activate
def test_sandbox_shaped_token_with_jku_uses_the_inline_copy_offline(tmp_path):
    # the CDS Hooks Sandbox always sends a jku that is unreachable offline: the inline copy of its set is used
    sandbox_jku = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
    key = ec_key(kid="44823f3d-0b01-4a6c-a80e-b9d3e8a7226f")
    client = make_app(tmp_path, [{"iss": "https://sandbox.cds-hooks.org", "jku": [sandbox_jku], "jwks": jwks(key),
                                  "algorithms": ["ES384"]}]).test_client()
    token = mint(key, BASE + DISCOVERY, headers={"jku": sandbox_jku}, iss="https://sandbox.cds-hooks.org")
    assert call(client, DISCOVERY, token).status_code == 200
    assert len(responses.calls) == 0


@responses.activate
def test_key_rotation_refetches_on_unknown_kid(tmp_path):
    rotated = ec_key(kid="ec-2027")
    responses.get(JWKS_URL, json=jwks(EC))
    responses.get(JWKS_URL, json=jwks(EC, rotated))
    client = make_app(tmp_path, [{"iss": ISSUER, "jwks_url": JWKS_URL}], JWKS_REFETCH_MIN_SECONDS=0).test_client()
    assert call(client, DISCOVERY, mint(EC, BASE + DISCOVERY)).status_code == 200
    assert call(client, DISCOVERY, mint(rotated, BASE + DISCOVERY)).status_code == 200
    assert len(responses.calls) == 2


@responses.activate
def test_unknown_kid_refetch_is_rate_limited(tmp_path):
    responses.get(JWKS_URL, json=jwks(EC))
    client = make_app(tmp_path, [{"iss": ISSUER, "jwks_url": JWKS_URL}], JWKS_REFETCH_MIN_SECONDS=3600).test_client()
    assert call(client, DISCOVERY, mint(EC, BASE + DISCOVERY)).status_code == 200
    for n in range(20):
        assert_bare_401(call(client, DISCOVERY, mint(ec_key(kid=f"junk-{n}"), BASE + DISCOVERY)))
    assert len(responses.calls) == 1, "a flood of unknown kids must not turn into a flood of JWKS fetches"


def test_keystore_rate_limit_and_ttl_with_a_clock():
    now = [1000.0]
    fetched = []

    class Session:
        def get(self, url, **kwargs):
            fetched.append(url)
            return _FakeResponse(jwks(EC))

    store = KeyStore(cache_seconds=300, refetch_min_seconds=30, clock=lambda: now[0], session=Session())
    issuer = parse_trusted_issuers([{"iss": ISSUER, "jwks_url": JWKS_URL}], "t")[ISSUER]
    store.key_for(issuer, EC.kid, None)
    with pytest.raises(AuthError):
        store.key_for(issuer, "unknown", None)        # within 30 s of the last fetch: no re-fetch
    now[0] += 31
    with pytest.raises(AuthError):
        store.key_for(issuer, "unknown", None)        # after 30 s: one re-fetch
    store.key_for(issuer, EC.kid, None)               # known kid, fresh cache: no fetch
    now[0] += 301
    store.key_for(issuer, EC.kid, None)               # stale: re-fetch
    assert len(fetched) == 3


@responses.activate
def test_jwks_server_down_keeps_previous_keys_and_refuses_unknown(tmp_path):
    responses.get(JWKS_URL, json=jwks(EC))
    responses.get(JWKS_URL, status=503)
    client = make_app(
        tmp_path, [{"iss": ISSUER, "jwks_url": JWKS_URL}], JWKS_REFETCH_MIN_SECONDS=0, JWKS_CACHE_SECONDS=0
    ).test_client()
    assert call(client, DISCOVERY, mint(EC, BASE + DISCOVERY)).status_code == 200
    assert call(client, DISCOVERY, mint(EC, BASE + DISCOVERY)).status_code == 200
    assert_bare_401(call(client, DISCOVERY, mint(ec_key(kid="new"), BASE + DISCOVERY)))


@responses.activate
def test_jwks_answer_that_is_not_a_jwk_set(tmp_path):
    responses.get(JWKS_URL, body=b"<html>login</html>", content_type="text/html")
    client = make_app(tmp_path, [{"iss": ISSUER, "jwks_url": JWKS_URL}]).test_client()
    assert_bare_401(call(client, DISCOVERY, mint(EC, BASE + DISCOVERY)))


class _FakeResponse:
    status_code = 200

    def __init__(self, document):
        self.body = json.dumps(document).encode()

    def iter_content(self, size):
        for start in range(0, len(self.body), size):
            yield self.body[start:start + size]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_verifier_order_issuer_checked_before_signature():
    issuers = parse_trusted_issuers([{"iss": ISSUER, "jwks": jwks(EC)}], "t")
    verifier = JwtVerifier(issuers, KeyStore(), None)
    aud = BASE + DISCOVERY
    with pytest.raises(AuthError) as caught:
        verifier.verify("Bearer " + mint(_other_ec(), aud, iss="https://x.example"), aud)
    assert caught.value.reason == "issuer_not_trusted"
    with pytest.raises(AuthError) as caught:
        verifier.verify("Bearer " + mint(_other_ec(), aud, aud="https://x.example"), aud)
    assert caught.value.reason == "audience_mismatch"


def test_keys_outlive_a_short_key_server_outage_but_not_a_long_one():
    now = [0.0]
    answers = [jwks(EC)]

    class Session:
        def get(self, url, **kwargs):
            if not answers:
                raise __import__("requests").ConnectionError("down")
            return _FakeResponse(answers.pop())

    store = KeyStore(cache_seconds=300, refetch_min_seconds=30, clock=lambda: now[0], session=Session())
    issuer = parse_trusted_issuers([{"iss": ISSUER, "jwks_url": JWKS_URL}], "t")[ISSUER]
    store.key_for(issuer, EC.kid, None)
    now[0] += 301
    assert store.key_for(issuer, EC.kid, None)            # server down, cache stale: keys kept
    now[0] += 3600
    with pytest.raises(AuthError):
        store.key_for(issuer, EC.kid, None)               # down for over an hour: keys dropped


@responses.activate
def test_oversized_jwks_answer_is_not_used(tmp_path):
    huge = jwks(EC)
    huge["padding"] = "x" * (300 * 1024)
    responses.get(JWKS_URL, json=huge)
    client = make_app(tmp_path, [{"iss": ISSUER, "jwks_url": JWKS_URL}]).test_client()
    assert_bare_401(call(client, DISCOVERY, mint(EC, BASE + DISCOVERY)))


@responses.activate
def test_jwks_redirect_is_not_followed(tmp_path):
    responses.get(JWKS_URL, status=302, headers={"Location": "https://attacker.example/jwks.json"})
    responses.get("https://attacker.example/jwks.json", json=jwks(EC))
    client = make_app(tmp_path, [{"iss": ISSUER, "jwks_url": JWKS_URL}]).test_client()
    assert_bare_401(call(client, DISCOVERY, mint(EC, BASE + DISCOVERY)))
    assert [c.request.url for c in responses.calls] == [JWKS_URL]


def test_replay_guard_remembers_until_expiry_then_lets_the_jti_go(tmp_path):
    from service.auth import ReplayGuard
    from service.storage import Storage

    store = Storage(f"sqlite:///{tmp_path / 'guard.db'}")
    store.create_schema()
    guard = ReplayGuard(store.engine, purge_every_seconds=10_000)
    guard.remember(ISSUER, "j-1", expires_at=1_000, now=900)
    with pytest.raises(AuthError, match="replayed_jti"):
        guard.remember(ISSUER, "j-1", expires_at=1_100, now=950)      # still within the first token's life
    guard.remember(ISSUER, "j-1", expires_at=1_300, now=1_001)         # first token expired: the jti is free
    with pytest.raises(AuthError, match="replayed_jti"):
        guard.remember(ISSUER, "j-1", expires_at=1_300, now=1_002)
    guard.remember("https://other.example", "j-1", expires_at=1_300, now=1_002)


def test_replay_guard_fails_closed_when_the_database_is_gone(tmp_path):
    from sqlalchemy import create_engine

    from service.auth import ReplayGuard

    guard = ReplayGuard(create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'no.db'}"))
    with pytest.raises(AuthError, match="replay_guard_unavailable"):
        guard.remember(ISSUER, "j-2", expires_at=2_000, now=1_000)
