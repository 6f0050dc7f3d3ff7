"""`msk-cds serve --production` under real gunicorn with 2 workers: discovery and a service call over HTTP from
several concurrent clients, then /metrics adds the calls up across both workers."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.gunicorn

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "msk-imaging-patient-view"
CALLS_EACH = 24
CLIENTS = 6
START_TIMEOUT = 40
METRICS_TOKEN = "gunicorn-test-metrics-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_request() -> dict:
    """A patient-view request from the fixtures when they exist, else a minimal valid one with its data inline."""
    made = sorted((ROOT / "fixtures" / "requests").glob("*patient-view*.json"))
    if made:
        body = json.loads(made[0].read_text(encoding="utf-8"))
        if body.get("hook") == "patient-view":
            return body
    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/prac-1", "patientId": "pat-1"},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": "pat-1", "gender": "female", "birthDate": "1980-01-01"},
            **{key: empty for key in ("conditions", "reports", "medicationRequests", "medicationStatements",
                                      "observations", "allergies")},
        },
    }


@pytest.fixture()
def server(tmp_path):
    port = free_port()
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "AUTH_DISABLED": "true",
        # production refuses to start without these (issue 12): the allowlist opt-out and the metrics token
        "FHIR_SERVER_ALLOW_ANY": "true",
        "METRICS_TOKEN": METRICS_TOKEN,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'gunicorn.sqlite3'}",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("WEB_CONCURRENCY", None)
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--production", "--workers", "2",
             "--bind", f"127.0.0.1:{port}"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"gunicorn exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"gunicorn not ready within {START_TIMEOUT} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base, process, metrics_dir, log_path
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def request_counts(base: str) -> dict[tuple[str, str, str], float]:
    response = requests.get(f"{base}/metrics", timeout=10, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name != "msk_cds_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_count"):
                key = (sample.labels["service"], sample.labels["endpoint"], sample.labels["status"])
                counts[key] = counts.get(key, 0) + sample.value
    return counts


def test_two_workers_serve_and_metrics_add_up(server):
    base, process, metrics_dir, log_path = server
    body = service_request()

    def discovery(_: int) -> int:
        return requests.get(f"{base}/cds-services", timeout=15).status_code

    def invoke(_: int) -> int:
        return requests.post(f"{base}/cds-services/{SERVICE}", json=body, timeout=15).status_code

    with ThreadPoolExecutor(CLIENTS) as pool:
        discovery_status = list(pool.map(discovery, range(CALLS_EACH)))
        invoke_status = list(pool.map(invoke, range(CALLS_EACH)))
    assert discovery_status == [200] * CALLS_EACH
    assert invoke_status == [200] * CALLS_EACH, log_path.read_text()[-2000:]

    # Each worker keeps its samples in files named after its pid: both workers served calls.
    worker_pids = {p.stem.rsplit("_", 1)[-1] for p in metrics_dir.glob("histogram_*.db")}
    assert len(worker_pids) >= 2, worker_pids

    # Whichever worker answers /metrics reports the calls of all workers.
    for _ in range(4):
        counts = request_counts(base)
        assert counts.get(("discovery", "discovery", "200")) == CALLS_EACH
        assert counts.get((SERVICE, "service", "200")) == CALLS_EACH

    # gunicorn stops cleanly on SIGTERM (what Kubernetes and docker stop send).
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
