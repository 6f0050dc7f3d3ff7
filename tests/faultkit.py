"""Tools of the fault-injection suite (issue 12): the CI PostgreSQL cluster restarted and frozen, loopback FHIR
servers that drip or stall, slow-header clients, and process bounds (threads, open files, memory)."""
from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest


def postgres_url() -> str:
    """TEST_POSTGRES_URL, or skip (fail under CI=true: the fault suite must not silently go untested)."""
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but TEST_POSTGRES_URL is not set: .ci/run must start PostgreSQL")
        pytest.skip("TEST_POSTGRES_URL not set; start one with: eval \"$(deploy/postgres-dev.sh start)\"")
    return url


class PgCluster:
    """The throwaway cluster of deploy/postgres-dev.sh (MSK_PG_DIR): freeze with SIGSTOP, restart with pg_ctl."""

    def __init__(self, directory: str) -> None:
        self.dir = Path(directory)
        self.data = self.dir / "data"
        self.bindir = (self.dir / "bindir").read_text().strip()
        self.owner = (self.dir / "owner").read_text().strip()

    @classmethod
    def from_env(cls) -> "PgCluster":
        postgres_url()
        directory = os.environ.get("MSK_PG_DIR")
        if not directory or not (Path(directory) / "data").is_dir():
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail("MSK_PG_DIR not set: the fault suite restarts and freezes the CI cluster")
            pytest.skip("MSK_PG_DIR not set (deploy/postgres-dev.sh start exports it)")
        return cls(directory)

    def _as_owner(self, *argv: str) -> subprocess.CompletedProcess:
        if os.geteuid() == 0 and self.owner != "root":
            argv = ("runuser", "-u", self.owner, "--", *argv)
        return subprocess.run(argv, capture_output=True, text=True, timeout=90)

    def pids(self) -> list[int]:
        """The postmaster and every backend and helper process it forked."""
        master = int((self.data / "postmaster.pid").read_text().split()[0])
        return [master, *child_pids(master)]

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Every process of the cluster stopped (SIGSTOP): connections open, nothing answers."""
        pids = self.pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass

    def restart(self) -> None:
        done = self._as_owner(f"{self.bindir}/pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "restart",
                              "-l", str(self.dir / "server.log"))
        assert done.returncode == 0, done.stderr[-2000:]


# --- process bounds ----------------------------------------------------------------------------------------------

def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def settle(predicate: Callable[[], bool], seconds: float) -> bool:
    """Wait up to `seconds` for predicate() (background threads finishing, sockets closing)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# --- hostile FHIR servers on loopback ----------------------------------------------------------------------------

class HostileFhir:
    """A FHIR server on 127.0.0.1 whose every answer is produced by `behaviour(handler)`. It runs in a forked
    process, so the threads and sockets it holds never count as the service's own."""

    def __init__(self, behaviour: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self._count = multiprocessing.get_context("fork").Value("i", 0)
        count = self._count

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:           # noqa: N802
                with count.get_lock():
                    count.value += 1
                try:
                    behaviour(self)
                except OSError:
                    pass                        # the client gave up: what a slow server sees

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.process = multiprocessing.get_context("fork").Process(target=self.server.serve_forever, daemon=True)

    @property
    def requests(self) -> int:
        return self._count.value

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/fhir"

    def __enter__(self) -> "HostileFhir":
        self.process.start()
        self.server.socket.close()             # the child listens; this process keeps no copy
        return self

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.join(timeout=10)


def drip(seconds_per_byte: float, total: float) -> Callable[[BaseHTTPRequestHandler], None]:
    """Headers at once, then one body byte every `seconds_per_byte` for `total` seconds: no read ever times out."""
    def behaviour(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/fhir+json")
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        end = time.monotonic() + total
        handler.wfile.write(b'{"resourceType":"Bundle","type":"searchset","entry":[')
        handler.wfile.flush()
        while time.monotonic() < end:
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(seconds_per_byte)
    return behaviour


def stall(seconds: float) -> Callable[[BaseHTTPRequestHandler], None]:
    def behaviour(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(seconds)
    return behaviour


def slow_header_client(port: int, seconds_per_line: float, lines: int) -> threading.Thread:
    """A client that sends one header line every `seconds_per_line` (a slowloris)."""
    def run() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                for index in range(lines):
                    time.sleep(seconds_per_line)
                    sock.sendall(f"X-Slow-{index}: a\r\n".encode())
        except OSError:
            pass
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
