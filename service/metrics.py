"""Prometheus metrics: request latency, cards, prefetch, FHIR fetches, auth failures and feedback, served at /metrics.

Under gunicorn (PROMETHEUS_MULTIPROC_DIR set before prometheus_client is imported, see service/gunicorn_conf.py) every
worker writes its samples to that directory and /metrics sums them, so any worker answers for all. Otherwise each app
keeps its own registry, which lets tests build independent apps. Label values are bounded: anything outside the
known set is reported as "unknown" or "other", so a caller cannot grow the series count.
"""
from __future__ import annotations

import hmac
import os
import re
import time
from dataclasses import dataclass
from typing import Iterable, Mapping

from flask import Blueprint, Flask, Response, current_app, g, has_app_context, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector

EXTENSION_KEY = "msk_cds.metrics"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INDICATORS = frozenset({"info", "warning", "critical"})
PREFETCH_SOURCES = frozenset({"provided", "fetched", "unavailable"})
FEEDBACK_OUTCOMES = frozenset({"accepted", "overridden"})
SUPPRESSION_REASONS = frozenset({"shown_at_order_select", "overridden_by_user"})
# Resource types the prefetch templates ask for; a fetch of anything else is counted under "other".
FHIR_RESOURCES = frozenset({
    "Patient", "Condition", "DiagnosticReport", "MedicationRequest", "MedicationStatement", "Observation",
    "AllergyIntolerance", "ServiceRequest", "Encounter", "Medication", "Procedure", "DocumentReference", "Binary",
    "DeviceRequest", "NutritionOrder", "VisionPrescription",
})
# Reasons and error kinds are chosen by our own code, but guard their shape and count anyway.
_FREE_LABEL = re.compile(r"^[a-z0-9_\-]{1,40}$")
_MAX_FREE_VALUES = 32
_SERVICE_PATH = re.compile(r"^/cds-services(?:/(?P<id>[^/]+)(?P<feedback>/feedback)?)?/?$")


def _ensure_multiprocess_values() -> None:
    """prometheus_client picks its value store when first imported; if that happened before the directory was set
    (e.g. a package import ahead of the gunicorn config), pick again so samples reach the shared files."""
    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.get_value_class()


def multiprocess_dir() -> str | None:
    """The shared sample directory when multiprocess mode is asked for. prometheus_client writes there as soon as
    the variable is set, so a missing directory is created; if it cannot be, this process counts on its own."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        values.ValueClass = values.MutexValue
        return None
    return path


@dataclass
class Metrics:
    """The app's metric families and the label bounds that go with them."""

    registry: CollectorRegistry
    known_services: frozenset[str]
    request_latency: Histogram
    cards: Counter
    cards_suppressed: Counter
    prefetch_keys: Counter
    fhir_fetch_latency: Histogram
    fhir_fetch_errors: Counter
    auth_failures: Counter
    feedback: Counter
    incomplete_records: Counter
    intake_issues: Counter | None = None

    @classmethod
    def build(cls, known_services: Iterable[str]) -> "Metrics":
        registry = CollectorRegistry(auto_describe=True)
        if multiprocess_dir():
            _ensure_multiprocess_values()
            # Families live in the per-process files; the registry only collects them for /metrics.
            MultiProcessCollector(registry)
            target = None
        else:
            target = registry
        return cls(
            registry=registry,
            known_services=frozenset(known_services),
            request_latency=Histogram(
                "msk_cds_request_duration_seconds", "CDS Hooks request latency by service, endpoint and status",
                ["service", "endpoint", "status"], buckets=LATENCY_BUCKETS, registry=target),
            cards=Counter(
                "msk_cds_cards_returned", "Cards returned, by service and indicator",
                ["service", "indicator"], registry=target),
            cards_suppressed=Counter(
                "msk_cds_cards_suppressed", "Cards withheld (already shown at order-select, or overridden before)",
                ["service", "reason"], registry=target),
            prefetch_keys=Counter(
                "msk_cds_prefetch_keys", "Prefetch keys by source: provided by the EHR, fetched by us, unavailable",
                ["service", "source"], registry=target),
            fhir_fetch_latency=Histogram(
                "msk_cds_fhir_fetch_duration_seconds", "Latency of FHIR reads made to fill missing prefetch",
                ["resource"], buckets=LATENCY_BUCKETS, registry=target),
            fhir_fetch_errors=Counter(
                "msk_cds_fhir_fetch_errors", "Failed FHIR reads by resource type and kind of failure",
                ["resource", "kind"], registry=target),
            auth_failures=Counter(
                "msk_cds_auth_failures", "Rejected CDS Hooks calls by reason", ["reason"], registry=target),
            feedback=Counter(
                "msk_cds_feedback_items", "Feedback items received by service and outcome",
                ["service", "outcome"], registry=target),
            incomplete_records=Counter(
                "msk_cds_incomplete_records", "Calls answered before every report was read (work budget reached)",
                ["service"], registry=target),
            intake_issues=Counter(
                "msk_cds_intake_issues", "FHIR elements the tolerant reader repaired, dropped or skipped, by "
                "resource type, element path and kind (hooks/fhirread.py)",
                ["service", "resource", "path", "kind", "action"], registry=target),
        )

    def service_label(self, service_id: str | None) -> str:
        return service_id if service_id in self.known_services else "unknown"

    def render(self) -> bytes:
        return generate_latest(self.registry)


_seen_free_values: set[str] = set()


def _free_label(value: str | None) -> str:
    """A label from a small vocabulary chosen by our code (auth reasons, error kinds); bounded in shape and count."""
    if not value or not _FREE_LABEL.match(value):
        return "other"
    if value not in _seen_free_values:
        if len(_seen_free_values) >= _MAX_FREE_VALUES:
            return "other"
        _seen_free_values.add(value)
    return value


def _current() -> Metrics | None:
    if not has_app_context():
        return None
    return current_app.extensions.get(EXTENSION_KEY)


# --- calls made from the request path (each a no-op outside an app or with METRICS_ENABLED false) ---------------


def observe_request(service_id: str | None, endpoint: str, status: int, seconds: float) -> None:
    """One answered HTTP call to discovery, a service or feedback (done by this module's request hooks)."""
    metrics = _current()
    if metrics is None:
        return
    label = "discovery" if endpoint == "discovery" else metrics.service_label(service_id)
    metrics.request_latency.labels(label, endpoint, str(int(status))).observe(max(seconds, 0.0))


def count_cards(service_id: str | None, cards: Iterable[Mapping]) -> None:
    metrics = _current()
    if metrics is None:
        return
    service = metrics.service_label(service_id)
    for card in cards:
        indicator = card.get("indicator") if isinstance(card, Mapping) else None
        metrics.cards.labels(service, indicator if indicator in INDICATORS else "other").inc()


def count_suppressed(service_id: str | None, reason: str, count: int = 1) -> None:
    metrics = _current()
    if metrics is None or count <= 0:
        return
    label = reason if reason in SUPPRESSION_REASONS else "other"
    metrics.cards_suppressed.labels(metrics.service_label(service_id), label).inc(count)


def count_prefetch(service_id: str | None, *, provided: int = 0, fetched: int = 0, unavailable: int = 0) -> None:
    """Prefetch keys of one call: how many came with the request, were fetched by us, could not be had."""
    metrics = _current()
    if metrics is None:
        return
    service = metrics.service_label(service_id)
    for source, count in (("provided", provided), ("fetched", fetched), ("unavailable", unavailable)):
        if count > 0:
            metrics.prefetch_keys.labels(service, source).inc(count)


def observe_fhir_fetch(resource_type: str | None, seconds: float, error: str | None = None) -> None:
    """One FHIR read (all its pages); `error` names the failure kind (e.g. timeout, http_5xx) when it failed."""
    metrics = _current()
    if metrics is None:
        return
    resource = resource_type if resource_type in FHIR_RESOURCES else "other"
    metrics.fhir_fetch_latency.labels(resource).observe(max(seconds, 0.0))
    if error:
        metrics.fhir_fetch_errors.labels(resource, _free_label(error)).inc()


#: auth failures are counted by class only: the exact reason (bad_signature vs unknown_kid vs audience_mismatch...)
#: would tell a prober which part of a forged token to fix next; it stays in the log, which only operators read
AUTH_FAILURE_CLASSES = {"missing_token": "missing_token", "replay_guard_unavailable": "unavailable"}


def count_auth_failure(reason: str | None) -> None:
    metrics = _current()
    if metrics is None:
        return
    metrics.auth_failures.labels(AUTH_FAILURE_CLASSES.get(reason or "", "rejected")).inc()


def count_incomplete_record(service_id: str | None) -> None:
    """A call whose chart was too large to read completely within its work budget."""
    metrics = _current()
    if metrics is None:
        return
    metrics.incomplete_records.labels(metrics.service_label(service_id)).inc()


def count_feedback(service_id: str | None, outcome: str | None) -> None:
    metrics = _current()
    if metrics is None:
        return
    label = outcome if outcome in FEEDBACK_OUTCOMES else "invalid"
    metrics.feedback.labels(metrics.service_label(service_id), label).inc()


INTAKE_ACTIONS = frozenset({"repaired", "dropped", "skipped"})
_INTAKE_PATH = re.compile(r"^[A-Za-z]{1,40}(\.([A-Za-z]{1,40}(\[x\])?|\(unknown\))){0,8}$")
_MAX_INTAKE_PATHS = 256
_seen_intake_paths: set[str] = set()


def _intake_path(path: str) -> str:
    """Element paths come from the FHIR schema (never values); still bounded in shape and count."""
    if not _INTAKE_PATH.match(path):
        return "other"
    if path not in _seen_intake_paths:
        if len(_seen_intake_paths) >= _MAX_INTAKE_PATHS:
            return "other"
        _seen_intake_paths.add(path)
    return path


def count_intake(service_id: str | None, counts: Mapping[tuple[str, str, str, str], int]) -> None:
    """One call's intake repairs and drops: (resource type, element path, kind, action) -> count."""
    metrics = _current()
    if metrics is None or metrics.intake_issues is None or not counts:
        return
    service = metrics.service_label(service_id)
    for (resource, path, kind, action), count in counts.items():
        metrics.intake_issues.labels(
            service, resource if resource in FHIR_RESOURCES else "other", _intake_path(path), _free_label(kind),
            action if action in INTAKE_ACTIONS else "other").inc(count)


# --- wiring ------------------------------------------------------------------------------------------------------

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    """Prometheus text; with METRICS_TOKEN set, only for `Authorization: Bearer <METRICS_TOKEN>` (else a bare 401)."""
    token = current_app.config.get("METRICS_TOKEN")
    if token:
        scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), str(token).encode()):
            return Response(status=401, headers={"WWW-Authenticate": "Bearer"})
    metrics = current_app.extensions[EXTENSION_KEY]
    return Response(metrics.render(), mimetype=None, content_type=CONTENT_TYPE_PLAIN_0_0_4)


def _classify(path: str) -> tuple[str, str | None] | None:
    """(endpoint, service id) for CDS Hooks paths; None for operations routes, which are not measured."""
    match = _SERVICE_PATH.match(path)
    if match is None:
        return None
    if match.group("id") is None:
        return "discovery", None
    return ("feedback" if match.group("feedback") else "service"), match.group("id")


def _start_timer() -> None:
    g._msk_metrics_start = time.perf_counter()


def _record_request(response: Response) -> Response:
    start = g.pop("_msk_metrics_start", None)
    route = _classify(request.path)
    if start is not None and route is not None:
        endpoint, service_id = route
        observe_request(service_id, endpoint, response.status_code, time.perf_counter() - start)
    # service.auth leaves the reason of a rejected call in g (the 401 itself stays bare).
    if response.status_code in (401, 503) and g.get("auth_reason"):
        count_auth_failure(g.get("auth_reason"))
    return response


def init_app(app: Flask) -> None:
    """Attach metrics unless METRICS_ENABLED is false; measures every CDS Hooks call through request hooks."""
    enabled = app.config.get("METRICS_ENABLED", True)
    if isinstance(enabled, str):
        enabled = enabled.strip().lower() not in {"0", "false", "no", "off"}
    if not enabled:
        return
    from service.config import service_registry

    app.extensions[EXTENSION_KEY] = Metrics.build(service_registry(app).keys())
    # First of all before-request functions, so calls that auth rejects are timed too.
    app.before_request_funcs.setdefault(None, []).insert(0, _start_timer)
    app.after_request(_record_request)
    app.register_blueprint(bp)
