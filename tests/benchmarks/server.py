"""HTTP under gunicorn on loopback: cold start, a bounded concurrent load generator (threads, one keep-alive-capable
connection each), and resident memory per worker. Only 127.0.0.1 is ever addressed."""
from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from . import workload
from .stats import Series

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def server_env(tmp: Path, name: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "AUTH_DISABLED": "true",
        "DATABASE_URL": f"sqlite:///{tmp / (name + '.sqlite3')}",
        "FIXED_NOW": workload.now_of_typical(),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"{name}-metrics"),
        "LOG_LEVEL": "INFO",
    })
    env.pop("WEB_CONCURRENCY", None)
    return env


class Server:
    """`msk-cds serve --production --workers N` (gunicorn, E's config) on a free loopback port."""

    def __init__(self, workers: int, tmp: Path) -> None:
        self.workers = workers
        self.port = free_port()
        name = f"gunicorn-{workers}w"
        self.log_path = tmp / f"{name}.log"
        argv = [sys.executable, "-m", "service.cli", "serve", "--production", "--workers", str(workers),
                "--bind", f"{HOST}:{self.port}"]
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=server_env(tmp, name), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 30) -> int:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def wait_first_answer(self, path: str = "/cds-services", timeout: float = 90) -> float:
        """Seconds from process spawn to the first 200 on `path`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if self.request("GET", path, timeout=2) == 200:
                    return time.perf_counter() - self.started
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.01)
        raise RuntimeError(f"gunicorn did not answer within {timeout}s; see {self.log_path}")

    def wait_workers(self, timeout: float = 30) -> None:
        """Until every worker is forked (discovery may be answered by the first one already)."""
        deadline = time.monotonic() + timeout
        while len(self.worker_pids()) < self.workers and time.monotonic() < deadline:
            time.sleep(0.02)

    def worker_pids(self) -> list[int]:
        return children_of(self.proc.pid)

    def memory(self) -> dict[str, Any]:
        workers = [process_memory(pid) for pid in self.worker_pids()]
        return {"master": process_memory(self.proc.pid), "workers": [w for w in workers if w]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: fields after the last ')'
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append(int(entry.name))
    return sorted(out)


def process_cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes, from /proc/<pid>/stat (processes that are gone count 0)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def process_memory(pid: int) -> dict[str, float] | None:
    """VmRSS and PSS (proportional: pages shared after the preload fork counted once across processes), in MB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out: dict[str, float] = {"pid": pid}
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            out["rss_mb"] = int(line.split()[1]) / 1024
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["pss_mb"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


# -- load generator -------------------------------------------------------------------------------------------------

def load(port: int, path: str, body_of: Callable[[int], bytes], concurrency: int, max_requests: int,
         max_seconds: float) -> dict[str, Any]:
    """`concurrency` threads POST until `max_requests` are sent or `max_seconds` pass (whichever first); each
    thread keeps its connection while the server keeps it open (gunicorn's sync workers close after each answer)."""
    counter = itertools.count()
    stop_at = time.monotonic() + max_seconds
    latencies: list[list[int]] = [[] for _ in range(concurrency)]
    statuses: list[Counter] = [Counter() for _ in range(concurrency)]
    bodies_ready = threading.Barrier(concurrency + 1)

    def worker(index: int) -> None:
        conn: http.client.HTTPConnection | None = None
        mine, seen = latencies[index], statuses[index]
        bodies_ready.wait()
        while True:
            k = next(counter)
            if k >= max_requests or time.monotonic() >= stop_at:
                break
            body = body_of(k)
            if conn is None:
                conn = http.client.HTTPConnection(HOST, port, timeout=60)
            start = time.perf_counter_ns()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                status: Any = response.status
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
                conn = None
            mine.append(time.perf_counter_ns() - start)
            seen[status] += 1
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    cpu_before = time.process_time()
    bodies_ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join(timeout=max_seconds + 120)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    series = Series("http")
    for values in latencies:
        for value in values:
            series.add_ns(value)
    total: Counter = Counter()
    for seen in statuses:
        total.update(seen)
    ok = total.get(200, 0)
    return {
        "concurrency": concurrency,
        "requests": series.n,
        "ok": ok,
        "errors": {str(k): v for k, v in total.items() if k != 200},
        "seconds": wall,
        "rps": ok / wall if wall > 0 else float("nan"),
        "latency": series,
        "generator_cpu_pct": 100 * cpu / wall if wall > 0 else float("nan"),
    }


def run_gunicorn(tmp: Path, workers: int, concurrencies: tuple[int, ...], seconds: float, max_requests: int,
                 variant_base: int) -> dict[str, Any]:
    """Start gunicorn, time its cold start, load it at each concurrency (same chart again, then never-seen charts),
    read its workers' memory, stop it."""
    request = workload.typical_request("patient-view")
    variants = workload.Variants(request)
    path = f"/cds-services/{workload.SERVICE_IDS['patient-view']}"
    server = Server(workers, tmp)
    result: dict[str, Any] = {"workers": workers, "runs": []}
    try:
        result["first_discovery_s"] = server.wait_first_answer()
        status = server.request("POST", path, variants.make(variant_base))
        result["first_invoke_s"] = time.perf_counter() - server.started
        result["first_invoke_status"] = status
        server.wait_workers()
        result["memory_idle"] = server.memory()
        # Warm every worker (each has its own caches and lazy state), as a running service would be.
        load(server.port, path, lambda k: variants.make(variant_base + 1 + k), max(4, 2 * workers), 60, 10)
        offset = variant_base + 100
        pids = [server.proc.pid, *server.worker_pids()]

        def measured(body_of: Callable[[int], bytes], concurrency: int, mode: str) -> None:
            # Server CPU per answer does not depend much on what else runs on the machine: it gives the
            # throughput two dedicated cores could reach even when this run's req/s is held down by neighbours.
            cpu_before = process_cpu_seconds(pids)
            run = load(server.port, path, body_of, concurrency, max_requests, seconds)
            run["server_cpu_ms"] = 1000 * (process_cpu_seconds(pids) - cpu_before) / max(run["ok"], 1)
            run["mode"] = mode
            result["runs"].append(run)

        for concurrency in concurrencies:
            same = variants.make(offset)
            load(server.port, path, lambda k, b=same: b, concurrency, 4 * concurrency, 10)   # seen by all workers
            measured(lambda k, b=same: b, concurrency, "same chart again")
            offset += 1
            start = offset
            measured(lambda k, s=start: variants.make(s + k), concurrency, "never-seen charts")
            offset += max_requests + 1
        result["memory_loaded"] = server.memory()
    finally:
        server.stop()
    return result


# -- in-process cold start, step by step ----------------------------------------------------------------------------

_COLD_START_CHILD = r"""
import time
t = began = time.perf_counter()
import json, sys
steps = {}
def lap(name):
    global t
    now = time.perf_counter()
    steps[name] = now - t
    t = now
# The heavy imports create_app would do anyway, one group at a time, so each has its own line (no profiler: a
# profiler inflates import-heavy start-up several times over).
import flask, sqlalchemy, prometheus_client, jwt
lap("import Flask, SQLAlchemy, prometheus_client, PyJWT")
import fhir.resources.R4B, pydantic
lap("import fhir.resources R4B, pydantic")
import spacy, medspacy.context
lap("import spaCy, medspaCy")
from service import create_app
lap("import service")
app = create_app({"AUTH_DISABLED": True, "DATABASE_URL": sys.argv[1], "FIXED_NOW": sys.argv[2]})
lap("create_app (knowledge, NLP pipeline, FHIR models, warm-up, database)")
client = app.test_client()
assert client.get("/cds-services").status_code == 200
lap("first discovery")
body = open(sys.argv[3], "rb").read()
status = client.post(sys.argv[4], data=body, content_type="application/json").status_code
lap("first patient-view (typical chart)")
steps["status"] = status
steps["_began"], steps["_answered"] = began, t
print("BENCH " + json.dumps(steps), flush=True)
"""


def cold_start_in_process(tmp: Path) -> dict[str, Any]:
    """A fresh interpreter, step by step: start, imports, create_app, first discovery, first invoke (seconds)."""
    body_path = tmp / "cold-start-body.json"
    body_path.write_bytes(workload.Variants(workload.typical_request("patient-view")).make(1))
    argv = [sys.executable, "-c", _COLD_START_CHILD, f"sqlite:///{tmp / 'cold.sqlite3'}", workload.now_of_typical(),
            str(body_path), f"/cds-services/{workload.SERVICE_IDS['patient-view']}"]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "LOG_LEVEL": "WARNING"})
    total = time.perf_counter() - started
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        return {"error": f"exit {done.returncode}", "total": total}
    steps = json.loads(line[6:])
    # perf_counter is CLOCK_MONOTONIC on Linux, shared by parent and child: spawn -> child's first line
    began, answered = steps.pop("_began"), steps.pop("_answered")
    out = {"interpreter start (spawn -> first line)": began - started, **steps}
    out["total"] = answered - started
    out["exit (not part of the cold start)"] = total - (answered - started)
    return out
