"""Validation of a CDS Hooks 2.0 service request (hook, hookInstance, fhirServer, fhirAuthorization, context,
prefetch) into a `HookCall`. Collects every problem and raises one CdsError naming each path and reason.

Two rules protect the FHIR access token beyond the field checks: it is never accepted for a plain-http fhirServer
(CDS Hooks 2.0: fhirServer MUST be https with production data; FHIR_ALLOW_INSECURE_HTTP relaxes this for
development), and a token scoped to one patient (fhirAuthorization.patient) is never used for another
(context.patientId). Without fhirAuthorization an http fhirServer stays allowed: no token can leak, and the CDS
Hooks Sandbox with an open local FHIR server sends none."""
from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from service.errors import CdsError, Issue
from service.fhirurl import UnsafeUrl, canonical_base_url

logger = logging.getLogger(__name__)

# FHIR id: [A-Za-z0-9\-\.]{1,64}
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
REFERENCE = re.compile(r"^(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[A-Za-z0-9\-.]{1,64})$")

USER_TYPES_ANY = ("Practitioner", "PractitionerRole", "Patient", "RelatedPerson")
USER_TYPES_ORDERING = ("Practitioner", "PractitionerRole")


@dataclass(frozen=True)
class HookContextRule:
    """What a hook's context must carry (CDS Hooks library, hookVersion 1.0)."""

    user_types: tuple[str, ...]
    selections: bool = False          # order-select: REQUIRED selections
    draft_orders: bool = False        # order-select / order-sign: REQUIRED draftOrders


HOOK_RULES: Mapping[str, HookContextRule] = {
    "patient-view": HookContextRule(USER_TYPES_ANY),
    "order-select": HookContextRule(USER_TYPES_ORDERING, selections=True, draft_orders=True),
    "order-sign": HookContextRule(USER_TYPES_ORDERING, draft_orders=True),
}


@dataclass(frozen=True)
class FhirAuthorization:
    access_token: str
    token_type: str
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None

    def __repr__(self) -> str:  # never show the token in logs or tracebacks
        return "FhirAuthorization(access_token=***)"


@dataclass(frozen=True)
class HookCall:
    hook: str
    hook_instance: str
    context: Mapping[str, Any]
    prefetch: Mapping[str, Any]              # only the keys that came (values: resource dict or None)
    fhir_server: str | None = None
    fhir_authorization: FhirAuthorization | None = None


def _is_nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _check_url(value: Any, path: str, issues: list[Issue]) -> str | None:
    """The canonical base URL (service.fhirurl): what the allowlist compares is exactly what is read."""
    if not _is_nonempty_str(value):
        issues.append(Issue("must be a non-empty string", path))
        return None
    try:
        return canonical_base_url(value)
    except UnsafeUrl as exc:
        issues.append(Issue(f"must be an absolute http(s) base URL: {exc}", path))
        return None


def _check_authorization(value: Any, issues: list[Issue]) -> FhirAuthorization | None:
    base = "fhirAuthorization"
    if not isinstance(value, dict):
        issues.append(Issue("must be an object", base))
        return None
    before = len(issues)
    for name in ("access_token", "scope", "subject"):
        if not _is_nonempty_str(value.get(name)):
            issues.append(Issue("required non-empty string", f"{base}.{name}"))
    token_type = value.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        issues.append(Issue('must be "Bearer"', f"{base}.token_type"))
    expires_in = value.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int):
        issues.append(Issue("required integer", f"{base}.expires_in"))
    patient = value.get("patient")
    if patient is not None and not (isinstance(patient, str) and FHIR_ID.match(patient)):
        issues.append(Issue("must be a FHIR id", f"{base}.patient"))
    if len(issues) > before:
        return None
    return FhirAuthorization(
        value["access_token"], "Bearer", value["expires_in"], value["scope"], value["subject"], patient
    )


def _check_context(hook: str, context: Any, issues: list[Issue]) -> None:
    if not isinstance(context, dict):
        issues.append(Issue("required object", "context"))
        return
    rule = HOOK_RULES.get(hook)
    if rule is None:
        return
    user_id = context.get("userId")
    match = REFERENCE.match(user_id) if isinstance(user_id, str) else None
    if user_id is None:
        issues.append(Issue("required", "context.userId"))
    elif match is None or match.group("type") not in rule.user_types:
        issues.append(Issue(f"must be a reference to one of {', '.join(rule.user_types)} (Type/id)",
                            "context.userId"))
    patient_id = context.get("patientId")
    if patient_id is None:
        issues.append(Issue("required", "context.patientId"))
    elif not (isinstance(patient_id, str) and FHIR_ID.match(patient_id)):
        issues.append(Issue("must be a FHIR id", "context.patientId"))
    encounter_id = context.get("encounterId")
    if encounter_id is not None and not (isinstance(encounter_id, str) and FHIR_ID.match(encounter_id)):
        issues.append(Issue("must be a FHIR id", "context.encounterId"))
    draft_refs: set[str] | None = None
    if rule.draft_orders:
        draft_refs = _check_draft_orders(context.get("draftOrders"), issues)
    if rule.selections:
        _check_selections(context.get("selections"), draft_refs, issues)


def _check_draft_orders(value: Any, issues: list[Issue]) -> set[str] | None:
    path = "context.draftOrders"
    if value is None:
        issues.append(Issue("required", path))
        return None
    if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
        issues.append(Issue("must be a FHIR Bundle", path))
        return None
    entries = value.get("entry", [])
    if not isinstance(entries, list):
        issues.append(Issue("must be an array", f"{path}.entry"))
        return None
    refs: set[str] = set()
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            issues.append(Issue("must be an object with a resource", f"{path}.entry[{index}]"))
            continue
        if isinstance(resource.get("id"), str):
            refs.add(f"{resource['resourceType']}/{resource['id']}")
    return refs


def _check_selections(value: Any, draft_refs: set[str] | None, issues: list[Issue]) -> None:
    path = "context.selections"
    if value is None:
        issues.append(Issue("required", path))
        return
    if not isinstance(value, list) or not value:
        issues.append(Issue("must be a non-empty array of references", path))
        return
    for index, item in enumerate(value):
        if not (isinstance(item, str) and REFERENCE.match(item)):
            issues.append(Issue("must be a reference (Type/id)", f"{path}[{index}]"))
        elif draft_refs is not None and item not in draft_refs:
            issues.append(Issue("does not name a resource in context.draftOrders", f"{path}[{index}]"))


def _check_prefetch(value: Any, issues: list[Issue]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        issues.append(Issue("must be an object", "prefetch"))
        return {}
    out: dict[str, Any] = {}
    for key, item in value.items():
        if item is None:
            out[key] = None
        elif isinstance(item, dict) and _is_nonempty_str(item.get("resourceType")):
            out[key] = item
        else:
            issues.append(Issue("must be a FHIR resource or null", f"prefetch.{_safe_key(key)}"))
    return out


def _safe_key(key: str) -> str:
    """Prefetch keys come from the client; name them only when they look like keys, never echo anything else."""
    return key if re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", key) else "(key)"


def _is_plain_http(url: str) -> bool:
    try:
        return urlsplit(url).scheme == "http"          # urlsplit lower-cases the scheme
    except ValueError:
        return False


def validate_call(body: Mapping[str, Any], service_hook: str, *, allow_insecure_http: bool = False) -> HookCall:
    """Check a service request against CDS Hooks 2.0 and the service's hook; raise CdsError(400) listing all.

    allow_insecure_http (setting FHIR_ALLOW_INSECURE_HTTP): accept fhirAuthorization with an http:// fhirServer,
    logging one warning; otherwise that is a 400 naming fhirServer, before anything is fetched."""
    issues: list[Issue] = []
    hook = body.get("hook")
    if not _is_nonempty_str(hook):
        issues.append(Issue("required non-empty string", "hook"))
    elif hook != service_hook:
        issues.append(Issue(f"this service answers the {service_hook} hook", "hook"))
    hook_instance = body.get("hookInstance")
    if not _is_nonempty_str(hook_instance):
        issues.append(Issue("required non-empty string", "hookInstance"))
    else:
        try:
            uuid.UUID(hook_instance)
        except ValueError:
            issues.append(Issue("must be a UUID", "hookInstance"))
    fhir_server = None
    if "fhirServer" in body:
        fhir_server = _check_url(body["fhirServer"], "fhirServer", issues)
    authorization = None
    if "fhirAuthorization" in body:
        if "fhirServer" not in body:
            issues.append(Issue("fhirAuthorization requires fhirServer", "fhirServer"))
        authorization = _check_authorization(body["fhirAuthorization"], issues)
    insecure_token = "fhirAuthorization" in body and fhir_server is not None and _is_plain_http(fhir_server)
    if insecure_token and not allow_insecure_http:
        issues.append(Issue("must be https when fhirAuthorization is sent (the access token is never sent over "
                            "plain http)", "fhirServer"))
    context = body.get("context")
    if "context" not in body:
        issues.append(Issue("required object", "context"))
    else:
        _check_context(service_hook, context, issues)
        patient_id = context.get("patientId") if isinstance(context, dict) else None
        if authorization is not None and authorization.patient is not None and isinstance(patient_id, str) \
                and FHIR_ID.match(patient_id) and authorization.patient != patient_id:
            issues.append(Issue("does not match context.patientId (the token is scoped to another patient)",
                                "fhirAuthorization.patient"))
    prefetch = _check_prefetch(body.get("prefetch"), issues)
    if issues:
        raise CdsError.invalid(issues)
    if insecure_token:
        # allowed by FHIR_ALLOW_INSECURE_HTTP; the event name and reason only (no URL, no token)
        logger.warning("fhir_server_insecure_http", extra={"reason": "fhir_authorization_with_http_fhir_server"})
    return HookCall(service_hook, hook_instance, context, prefetch, fhir_server, authorization)
