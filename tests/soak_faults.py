"""Fault soak (issue 12), not part of pytest: a real gunicorn (2 workers) on PostgreSQL under steady load for a few
minutes while the cluster is restarted and frozen, slow-header clients connect and hostile FHIR servers drip.

    eval "$(deploy/postgres-dev.sh start)"
    .venv/bin/python tests/soak_faults.py --minutes 5

Prints a Markdown summary: answers by status (every one must be 200, 412 or a JSON 503 with Retry-After), the
acknowledged feedback found in the database exactly once, /healthz latency, worker memory over time. Exit status 1
when any of these fails. Loopback only."""
from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import requests  # noqa: E402
from sqlalchemy import create_engine, func, select  # noqa: E402

from faultkit import HostileFhir, PgCluster, child_pids, drip, rss_kib, slow_header_client  # noqa: E402

SERVICE = "msk-imaging-patient-view"
METRICS_TOKEN = "soak-metrics-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chart(reports: int) -> dict:
    sentence = "Mild synovitis of the left sacroiliac joint with subchondral bone marrow oedema. No erosions. "
    entries = []
    for i in range(reports):
        text = f"MRI SI JOINTS {uuid.uuid4()}. FINDINGS: {sentence * 20}"
        entries.append({"resource": {
            "resourceType": "DiagnosticReport", "id": f"r{i}", "status": "final",
            "code": {"text": "MRI sacroiliac joints"}, "effectiveDateTime": f"{2000 + i % 26}-01-01",
            "presentedForm": [{"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode()}]}})
    empty = {"resourceType": "Bundle", "type": "searchset"}
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/p1", "patientId": "pat-1"},
            "prefetch": {"patient": {"resourceType": "Patient", "id": "pat-1", "gender": "female"},
                         "reports": {"resourceType": "Bundle", "type": "searchset", "entry": entries},
                         **{k: empty for k in ("conditions", "medicationRequests", "medicationStatements",
                                               "observations", "allergies")}}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url or not os.environ.get("MSK_PG_DIR"):
        print("start PostgreSQL first: eval \"$(deploy/postgres-dev.sh start)\"", file=sys.stderr)
        return 2
    cluster = PgCluster(os.environ["MSK_PG_DIR"])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tmp = Path(f"/tmp/msk-soak-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    env = {**os.environ, "AUTH_DISABLED": "true", "FHIR_SERVER_ALLOW_ANY": "true", "METRICS_TOKEN": METRICS_TOKEN,
           "DATABASE_URL": url, "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT), "WEB_CONCURRENCY": "2",
           "FHIR_FETCH_DEADLINE_SECONDS": "2", "DB_CONNECT_TIMEOUT_SECONDS": "2", "DB_STATEMENT_TIMEOUT_SECONDS": "2"}
    log = open(tmp / "gunicorn.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--production", "--bind",
                               f"127.0.0.1:{port}"], cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200 and len(child_pids(server.pid)) == 2:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    else:
        print("gunicorn did not start", file=sys.stderr)
        return 2

    stop = threading.Event()
    statuses: Counter = Counter()
    problems: list[str] = []
    acknowledged: list[str] = []
    health: list[float] = []
    memory: list[tuple[float, list[int]]] = []
    lock = threading.Lock()
    started = time.monotonic()

    def record(kind: str, response: requests.Response) -> None:
        with lock:
            statuses[(kind, response.status_code)] += 1
        if response.status_code not in (200, 412, 503) or "json" not in response.headers.get("Content-Type", ""):
            problems.append(f"{kind}: {response.status_code} {response.headers.get('Content-Type')}")
        if response.status_code == 503 and not response.headers.get("Retry-After"):
            problems.append(f"{kind}: 503 without Retry-After")

    def feedback_client(n: int) -> None:
        while not stop.is_set():
            card = f"soak-{n}-{uuid.uuid4()}"
            body = {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-12-01T10:00:00Z",
                                  "overrideReason": {"userComment": "soak"}}]}
            while not stop.is_set():            # retry the same item until acknowledged, as an EHR would
                try:
                    response = requests.post(f"{base}/cds-services/{SERVICE}/feedback", json=body, timeout=30)
                except requests.RequestException as exc:
                    problems.append(f"feedback: {type(exc).__name__}")
                    time.sleep(0.5)
                    continue
                record("feedback", response)
                if response.status_code == 200:
                    with lock:
                        acknowledged.append(card)
                    break
                time.sleep(0.3)

    def invoke_client(n: int) -> None:
        bodies = [chart(30), chart(300)]
        i = 0
        while not stop.is_set():
            body = bodies[i % 2]
            body["hookInstance"] = str(uuid.uuid4())
            i += 1
            try:
                record("invoke", requests.post(f"{base}/cds-services/{SERVICE}", json=body, timeout=40))
            except requests.RequestException as exc:
                problems.append(f"invoke: {type(exc).__name__}")

    def hostile_fhir_client(fhir_base: str) -> None:
        while not stop.is_set():
            body = chart(1)
            body.pop("prefetch")
            body["fhirServer"] = fhir_base
            try:
                record("invoke-slow-fhir", requests.post(f"{base}/cds-services/{SERVICE}", json=body, timeout=40))
            except requests.RequestException as exc:
                problems.append(f"invoke-slow-fhir: {type(exc).__name__}")

    def observer() -> None:
        while not stop.is_set():
            t = time.monotonic()
            try:
                requests.get(f"{base}/healthz", timeout=30)
                health.append(time.monotonic() - t)
            except requests.RequestException:
                health.append(float("inf"))
            if int(time.monotonic() - started) % 15 == 0:
                memory.append((time.monotonic() - started, [rss_kib(p) for p in child_pids(server.pid)]))
            for _ in range(4):
                slow_header_client(port, 1.0, 20)
            time.sleep(1.0)

    total = args.minutes * 60
    with HostileFhir(drip(0.5, 60)) as hostile:
        threads = [threading.Thread(target=feedback_client, args=(n,), daemon=True) for n in range(args.clients)]
        threads += [threading.Thread(target=invoke_client, args=(0,), daemon=True),
                    threading.Thread(target=hostile_fhir_client, args=(hostile.base,), daemon=True),
                    threading.Thread(target=observer, daemon=True)]
        for thread in threads:
            thread.start()
        faults = [(0.2, "restart"), (0.35, "freeze"), (0.6, "restart"), (0.8, "freeze")]
        for at, fault in faults:
            time.sleep(max(0.0, started + at * total - time.monotonic()))
            if fault == "restart":
                cluster.restart()
            else:
                with cluster.frozen():
                    time.sleep(5)
        time.sleep(max(0.0, started + total - time.monotonic()))
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    engine = create_engine(url)
    from service.storage import feedback_table
    with engine.connect() as conn:
        rows = dict(conn.execute(select(feedback_table.c.card_uuid, func.count())
                                 .where(feedback_table.c.card_uuid.in_(acknowledged))
                                 .group_by(feedback_table.c.card_uuid)).all()) if acknowledged else {}
    engine.dispose()
    lost = [c for c in acknowledged if rows.get(c, 0) == 0]
    doubled = [c for c in acknowledged if rows.get(c, 0) > 1]
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)
    finite = sorted(h for h in health if h != float("inf"))
    print(f"# Fault soak: {args.minutes} min, PostgreSQL restarted twice and frozen twice (5 s), slow-header "
          f"clients and a dripping FHIR server throughout\n")
    print("| answer | count |\n|---|---|")
    for (kind, status), count in sorted(statuses.items()):
        print(f"| {kind} {status} | {count} |")
    print(f"\nfeedback acknowledged: {len(acknowledged)}, found once: {len(acknowledged) - len(lost) - len(doubled)}, "
          f"lost: {len(lost)}, stored twice: {len(doubled)}")
    if finite:
        print(f"/healthz: {len(health)} probes, median {finite[len(finite) // 2] * 1000:.1f} ms, "
              f"max {max(health) * 1000:.1f} ms")
    for at, rss in memory:
        print(f"t={at:5.0f}s worker RSS (MiB): {[round(r / 1024, 1) for r in rss]}")
    if problems:
        print(f"\nproblems ({len(problems)}): {Counter(problems).most_common(10)}")
    ok = not problems and not lost and not doubled and acknowledged and max(health, default=0) < 5
    print("\nRESULT:", "pass" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
