"""Shared helpers of the security and robustness tests: keys made in the test, token minting, minimal requests."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://ehr.example.org"
SERVICE_IDS = ("msk-imaging-patient-view", "msk-imaging-order-select", "msk-imaging-order-sign")
HOOK_OF = dict(zip(SERVICE_IDS, ("patient-view", "order-select", "order-sign")))
BASE = "http://localhost"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def public_jwk(self, with_alg: bool = True) -> dict[str, Any]:
        jwk = json.loads(jwt.get_algorithm_by_name(self.alg).to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, use="sig")
        if with_alg:
            jwk["alg"] = self.alg
        return jwk

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def ec_key(kid: str = "ec-p384", alg: str = "ES384", curve: Any = None) -> SigningKey:
    return SigningKey(kid, alg, ec.generate_private_key(curve or ec.SECP384R1()))


def rsa_key(kid: str = "rsa-2048", alg: str = "RS384") -> SigningKey:
    return SigningKey(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.public_jwk() for k in keys]}


def claims(audience: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": audience, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def mint(key: SigningKey, audience: str, headers: dict[str, Any] | None = None, **overrides: Any) -> str:
    header = {"kid": key.kid, "typ": "JWT"}
    header.update(headers or {})
    header = {k: v for k, v in header.items() if v is not None}
    return jwt.encode(claims(audience, **overrides), key.private, algorithm=key.alg, headers=header)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(audience: str, kid: str, alg: str = "none") -> str:
    """`alg: none`: header and claims, empty signature."""
    header = _b64(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims(audience)).encode())}."


def hmac_with_public_key(key: SigningKey, audience: str) -> str:
    """The key-confusion attack: HS256 'signed' with the issuer's public key as the shared secret."""
    header = _b64(json.dumps({"alg": "HS256", "kid": key.kid, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims(audience)).encode())
    signature = hmac.new(key.public_pem(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def mint_raw(private: Any, alg: str, header: dict[str, Any], body: dict[str, Any]) -> str:
    """Sign without PyJWT's safety checks (which refuse, e.g., a P-256 key for ES384 or a non-string iss)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    digest = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[2:]]
    signing_input = f"{_b64(json.dumps(dict(header, alg=alg)).encode())}.{_b64(json.dumps(body).encode())}"
    if isinstance(private, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(private.sign(signing_input.encode(), ec.ECDSA(digest)))
        size = (private.curve.key_size + 7) // 8
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    else:
        signature = private.sign(signing_input.encode(), padding.PKCS1v15(), digest)
    return f"{signing_input}.{_b64(signature)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def empty_searchset() -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": 0}


def patient(patient_id: str = "pat-1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": patient_id, "gender": "female", "birthDate": "1980-01-01"}


def full_prefetch(patient_id: str = "pat-1") -> dict[str, Any]:
    return {
        "patient": patient(patient_id),
        "conditions": empty_searchset(),
        "reports": empty_searchset(),
        "imagingNotes": empty_searchset(),
        "medicationRequests": empty_searchset(),
        "medicationStatements": empty_searchset(),
        "observations": empty_searchset(),
        "allergies": empty_searchset(),
    }


def draft_orders() -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": "draft-1",
                    "status": "draft",
                    "intent": "order",
                    "medicationCodeableConcept": {"text": "naproxen 500 mg tablet"},
                    "subject": {"reference": "Patient/pat-1"},
                }
            }
        ],
    }


def hook_request(service_id: str, prefetch: dict[str, Any] | None = None, patient_id: str = "pat-1") -> dict:
    """A minimal valid request for the service, data given inline (no FHIR server needed)."""
    hook = HOOK_OF[service_id]
    context: dict[str, Any] = {"userId": "Practitioner/prac-1", "patientId": patient_id}
    if hook == "order-select":
        context["selections"] = ["MedicationRequest/draft-1"]
        context["draftOrders"] = draft_orders()
    elif hook == "order-sign":
        context["draftOrders"] = draft_orders()
    return {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": context,
        "prefetch": full_prefetch(patient_id) if prefetch is None else prefetch,
    }


def feedback_body(card_uuid: str | None = None) -> dict[str, Any]:
    return {
        "feedback": [
            {
                "card": card_uuid or str(uuid.uuid4()),
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-22T05:00:00Z",
            }
        ]
    }
