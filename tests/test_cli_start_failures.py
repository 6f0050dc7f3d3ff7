"""A start that fails leaves nothing behind: gunicorn's temporary metrics directory is removed when the master exits
on a failed bind or a failed app load (it is otherwise removed only by on_exit after a clean start), and the command
line says what failed in one line."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def environment(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(TMPDIR=str(tmp_path), AUTH_DISABLED="true", FHIR_SERVER_ALLOW_ANY="true", METRICS_TOKEN="t" * 20,
               DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3", **extra)
    return env


@pytest.mark.gunicorn
def test_failed_gunicorn_bind_leaves_no_metrics_directory(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "gunicorn", "--config", "python:service.gunicorn_conf", "--bind",
             f"127.0.0.1:{port}", "--workers", "1", "service.production:production_app()"],
            cwd=ROOT, env=environment(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Address already in use" in done.stderr or "Can't connect" in done.stderr, done.stderr[-500:]
    assert not list(tmp_path.glob("msk-cds-metrics-*")), "the temporary metrics directory was left behind"


def test_serve_production_on_a_taken_port_is_one_line_and_leaves_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run([str(Path(sys.executable).parent / "msk-cds"), "serve", "--production", "--bind",
                               f"127.0.0.1:{port}"], cwd=tmp_path, env=environment(tmp_path), capture_output=True,
                              text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"msk-cds serve: error: cannot listen on 127.0.0.1:{port}: "
                                                "Address already in use"]
    assert not list(tmp_path.glob("msk-cds-metrics-*"))


def test_serve_with_a_bad_setting_is_one_line(tmp_path):
    done = subprocess.run([str(Path(sys.executable).parent / "msk-cds"), "serve", "--production", "--bind",
                           "127.0.0.1:0"], cwd=tmp_path, env=environment(tmp_path, MAX_REQUEST_BYTES="lots"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("msk-cds serve: error: bad configuration: setting MAX_REQUEST_BYTES")
    assert "lots" not in line                     # values are never echoed (they can be secrets)
    assert not list(tmp_path.glob("msk-cds-metrics-*"))
