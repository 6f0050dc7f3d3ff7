"""/metrics in one process: what each CDS Hooks call adds, bounded labels, auth failures, and METRICS_ENABLED."""
from __future__ import annotations

import json

import pytest

from conftest import PREFETCH_KEYS
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from service import create_app, metrics
from test_security_helpers import BASE, ISSUER, bearer, ec_key, hook_request, jwks, mint

KEY = ec_key()
SERVICE = "msk-imaging-patient-view"


def samples(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    result = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


def value(table, name, **labels) -> float:
    return table.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture()
def open_app(tmp_path):
    return create_app({"AUTH_DISABLED": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'm.sqlite3'}"})


def test_calls_are_counted_by_service_endpoint_and_status(open_app):
    client = open_app.test_client()
    client.get("/cds-services")
    assert client.post(f"/cds-services/{SERVICE}", json=hook_request(SERVICE)).status_code == 200
    assert client.post(f"/cds-services/{SERVICE}", json={"hook": "patient-view"}).status_code == 400
    assert client.post("/cds-services/no-such-service", json={}).status_code == 404
    feedback = {"feedback": [{"card": "c1", "outcome": "accepted", "acceptedSuggestions": [{"id": "s1"}],
                              "outcomeTimestamp": "2026-11-20T10:00:00Z"}]}
    assert client.post(f"/cds-services/{SERVICE}/feedback", json=feedback).status_code == 200
    client.get("/healthz")

    table = samples(client)
    count = "msk_cds_request_duration_seconds_count"
    assert value(table, count, service="discovery", endpoint="discovery", status="200") == 1
    assert value(table, count, service=SERVICE, endpoint="service", status="200") == 1
    assert value(table, count, service=SERVICE, endpoint="service", status="400") == 1
    # an id that is not a service must not become a label value
    assert value(table, count, service="unknown", endpoint="service", status="404") == 1
    assert not any("no-such-service" in str(labels) for _, labels in table)
    assert value(table, count, service=SERVICE, endpoint="feedback", status="200") == 1
    assert value(table, "msk_cds_feedback_items_total", service=SERVICE, outcome="accepted") == 1
    # the complete prefetch of the request came with it: every key provided, none fetched
    assert value(table, "msk_cds_prefetch_keys_total", service=SERVICE, source="provided") == len(PREFETCH_KEYS)
    assert value(table, "msk_cds_prefetch_keys_total", service=SERVICE, source="fetched") == 0
    # operations routes are not CDS Hooks calls
    assert sum(v for (name, _), v in table.items() if name == count) == 5


def test_auth_failures_by_class_not_by_exact_reason(tmp_path):
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'a.sqlite3'}",
                      "TRUSTED_ISSUERS": json.dumps([{"iss": ISSUER, "jwks": jwks(KEY)}])})
    client = app.test_client()
    assert client.get("/cds-services").status_code == 401
    token = mint(KEY, BASE + "/cds-services")
    assert client.get("/cds-services", headers=bearer(token)).status_code == 200
    assert client.get("/cds-services", headers=bearer(token)).status_code == 401      # replayed
    forged = mint(KEY, "http://evil.example/cds-services")
    assert client.get("/cds-services", headers=bearer(forged)).status_code == 401       # audience mismatch
    table = samples(client)          # no METRICS_TOKEN here: /metrics is open (development)
    assert value(table, "msk_cds_auth_failures_total", reason="missing_token") == 1
    # replayed_jti and audience_mismatch are one class: the exact reason would guide a prober (it stays in the log)
    assert value(table, "msk_cds_auth_failures_total", reason="rejected") == 2
    assert value(table, "msk_cds_auth_failures_total", reason="replayed_jti") == 0
    assert value(table, "msk_cds_auth_failures_total", reason="audience_mismatch") == 0
    # refused calls are timed too (the timer runs before authentication)
    assert value(table, "msk_cds_request_duration_seconds_count",
                 service="discovery", endpoint="discovery", status="401") == 3


def test_metrics_can_be_switched_off(tmp_path):
    app = create_app({"AUTH_DISABLED": True, "METRICS_ENABLED": "false",
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'off.sqlite3'}"})
    client = app.test_client()
    assert client.get("/cds-services").status_code == 200
    assert client.get("/metrics").status_code in (401, 404)
    assert metrics.EXTENSION_KEY not in app.extensions


def test_free_text_labels_are_bounded(open_app):
    with open_app.app_context():
        metrics.count_auth_failure("Bearer eyJhbGciOi...")          # not a reason word: never a label
        metrics.observe_fhir_fetch("Patient/123", 0.01, error="timeout")
        metrics.count_cards(SERVICE, [{"indicator": "hard-stop"}, {"indicator": "info"}, "not-a-card"])
    table = samples(open_app.test_client())
    assert value(table, "msk_cds_auth_failures_total", reason="rejected") == 1
    assert value(table, "msk_cds_fhir_fetch_errors_total", resource="other", kind="timeout") == 1
    assert value(table, "msk_cds_cards_returned_total", service=SERVICE, indicator="other") == 2
    assert value(table, "msk_cds_cards_returned_total", service=SERVICE, indicator="info") == 1


def test_calls_outside_an_app_are_harmless():
    metrics.observe_request(SERVICE, "service", 200, 0.1)
    metrics.count_feedback(SERVICE, "accepted")
    with Flask("bare").app_context():                              # an app without metrics attached
        metrics.count_prefetch(SERVICE, provided=1)


def test_multiprocess_directory_is_created_when_missing(tmp_path):
    """The image sets PROMETHEUS_MULTIPROC_DIR; a process started without gunicorn (the dev server, a one-off
    command) must still count, not fail on a directory nobody made."""
    import subprocess
    import sys

    target = tmp_path / "not-yet" / "metrics"
    probe = (
        "from service import create_app\n"
        f"app = create_app({{'AUTH_DISABLED': True, 'DATABASE_URL': 'sqlite:///{tmp_path / 'p.sqlite3'}'}})\n"
        "c = app.test_client()\n"
        "assert c.get('/cds-services').status_code == 200\n"
        "text = c.get('/metrics').get_data(as_text=True)\n"
        "assert 'msk_cds_request_duration_seconds_count{endpoint=\"discovery\",service=\"discovery\",status=\"200\"} 1.0' in text, text\n"
    )
    import os

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(target)}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(target.glob("histogram_*.db"))
