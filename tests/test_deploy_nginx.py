"""The nginx reverse proxy of deploy/ (deploy/k8s/nginx.conf, the Kubernetes sidecar and the compose `proxy`):
its limits agree with the service's settings, its logs carry no request line, `nginx -t` accepts it, and a real nginx
in front of the real app buffers slow clients, refuses oversized bodies with JSON and keeps /metrics off the API
port. nginx comes from NGINX_BIN or PATH (.ci/run unpacks Debian's package); under CI=true a missing nginx fails.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from service.config import SETTINGS
from service.production import request_timeout

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "deploy" / "k8s" / "nginx.conf"
TEXT = CONF.read_text(encoding="utf-8")
UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def directive(name: str) -> str:
    found = re.findall(rf"^\s*{name}\s+([^;]+);", TEXT, re.M)
    assert len(found) == 1, f"{name}: {found}"
    return found[0].strip()


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)?", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, None: 1, "m": 60}[unit]


def k8s_settings() -> dict:
    return next(d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "configmap.yaml").read_text())
                if d["metadata"]["name"] == "msk-cds-settings")["data"]


def setting_default(name: str):
    return next(s.default for s in SETTINGS if s.name == name)


def test_body_limit_is_max_request_bytes():
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", directive("client_max_body_size").lower()).groups()
    limit = int(number) * UNITS[unit]
    assert limit == int(k8s_settings()["MAX_REQUEST_BYTES"]) == setting_default("MAX_REQUEST_BYTES")
    assert f"larger than {limit} bytes" in TEXT          # the 413 body names the same number


def test_proxy_waits_longer_than_gunicorns_own_timeout_and_slow_clients_are_bounded():
    gunicorn_timeout = request_timeout(float(k8s_settings()["FHIR_FETCH_DEADLINE_SECONDS"]))
    assert seconds(directive("proxy_read_timeout")) > gunicorn_timeout
    assert request_timeout(setting_default("FHIR_FETCH_DEADLINE_SECONDS")) < seconds(directive("proxy_read_timeout"))
    for name in ("client_header_timeout", "client_body_timeout", "send_timeout"):
        assert seconds(directive(name)) <= 15, name
    assert directive("proxy_request_buffering") == "on" and directive("proxy_buffering") == "on"


def test_upstream_is_the_app_containers_bind_address():
    upstream = re.search(r"upstream\s+msk_cds\s*{\s*server\s+([^;\s]+);", TEXT).group(1)
    port = upstream.rsplit(":", 1)[1]
    deployment = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    app = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "msk-cds")
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["BIND"].rsplit(":", 1)[1] == port
    assert {p["containerPort"] for p in app["ports"]} == {int(port)}
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]
    assert compose["cds"]["environment"]["BIND"] == upstream
    assert compose["proxy"]["network_mode"] == "service:cds"
    assert "./k8s/nginx.conf:/etc/nginx/nginx.conf:ro" in compose["proxy"]["volumes"]


def test_logs_carry_no_request_line_uri_or_query_string():
    log_format = re.search(r"log_format\s+\w+[^;]*;", TEXT, re.S).group(0)
    for variable in ("$request ", "$request\"", "$request_uri", "$uri", "$args", "$query_string", "$arg_",
                     "$http_authorization", "$http_referer"):
        assert variable not in log_format, variable
    assert re.search(r"access_log\s+\S+\s+msk_cds_no_phi;", TEXT)
    assert directive("error_log").split()[-1] in {"crit", "alert", "emerg"}   # error lines quote the request


def nginx_binary() -> str:
    found = os.environ.get("NGINX_BIN") or shutil.which("nginx")
    if not found:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("nginx is not installed (.ci/run unpacks Debian's nginx and sets NGINX_BIN)")
        pytest.skip("nginx not installed: apt-get install nginx, or set NGINX_BIN (.ci/run does)")
    return found


def local_copy(tmp_path: Path, upstream_port: int, api_port: int, metrics_port: int, **timeouts: str) -> Path:
    """The shipped file with only its machine-specific parts changed: /tmp paths, ports, and (to keep the test short)
    the client timeouts given."""
    text = TEXT.replace("/tmp/", f"{tmp_path}/")
    text = text.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};")
    text = re.sub(r"listen 8080;", f"listen 127.0.0.1:{api_port};", text)
    text = re.sub(r"listen 9090;", f"listen 127.0.0.1:{metrics_port};", text)
    text = re.sub(r"\s*listen \[::\]:\d+;", "", text)
    text = text.replace("access_log /dev/stdout", f"access_log {tmp_path}/access.log")
    text = text.replace("error_log /dev/stderr", f"error_log {tmp_path}/error.log")
    for name, value in timeouts.items():
        text = re.sub(rf"{name}\s+[^;]+;", f"{name} {value};", text)
    path = tmp_path / "nginx.conf"
    path.write_text(text, encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nginx_accepts_the_shipped_configuration(tmp_path):
    binary = nginx_binary()
    conf = local_copy(tmp_path, 8000, free_port(), free_port())
    done = subprocess.run([binary, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr


@pytest.fixture
def proxied_app(tmp_path, app_factory):
    """The real app on a single-threaded server (one request at a time, like one gunicorn sync worker) behind a real
    nginx started from the shipped configuration."""
    from werkzeug.serving import make_server

    binary = nginx_binary()
    app = app_factory(METRICS_TOKEN="m" * 20)
    upstream = make_server("127.0.0.1", 0, app, threaded=False)
    seen: list[str] = []
    original = upstream.RequestHandlerClass.handle_one_request

    def counting(handler):
        seen.append("request")
        return original(handler)

    upstream.RequestHandlerClass.handle_one_request = counting
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    api, metrics = free_port(), free_port()
    conf = local_copy(tmp_path, upstream.server_port, api, metrics, client_header_timeout="4s",
                      client_body_timeout="2s")
    extra = "daemon off; user root root;" if os.geteuid() == 0 else "daemon off;"
    nginx = subprocess.Popen([binary, "-p", str(tmp_path), "-c", str(conf), "-g", extra],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", api), timeout=1).close()
                break
            except OSError:
                assert nginx.poll() is None, nginx.stderr.read().decode()
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield {"api": f"http://127.0.0.1:{api}", "metrics": f"http://127.0.0.1:{metrics}", "seen": seen,
               "access_log": tmp_path / "access.log", "api_port": api}
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        upstream.shutdown()
        upstream.server_close()


def test_real_nginx_buffers_slow_clients_and_refuses_oversized_bodies(proxied_app):
    api = proxied_app["api"]
    assert requests.get(f"{api}/healthz", timeout=10).status_code == 200
    discovery = requests.get(f"{api}/cds-services", timeout=10)
    assert discovery.status_code == 200 and discovery.json()["services"]

    # A client that sends half its headers and stalls: nginx holds it, the single upstream worker never sees it
    # and keeps answering; after client_header_timeout nginx drops the connection.
    before = len(proxied_app["seen"])
    slow = socket.create_connection(("127.0.0.1", proxied_app["api_port"]), timeout=10)
    slow.sendall(b"POST /cds-services/msk-imaging-patient-view HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    assert requests.get(f"{api}/healthz", timeout=5).status_code == 200
    assert time.monotonic() - started < 4          # answered while the stalled client still holds its connection
    slow.settimeout(10)
    try:
        answer = slow.recv(1024)
    except ConnectionResetError:        # reset_timedout_connection: nginx resets instead of a polite close
        answer = b""
    assert time.monotonic() - started < 10, "nginx kept a stalled client past client_header_timeout"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:40]
    slow.close()
    assert len(proxied_app["seen"]) == before + 1          # only the /healthz call reached the app

    # A body over MAX_REQUEST_BYTES: 413 as JSON from nginx; the app never reads it
    before = len(proxied_app["seen"])
    big = requests.post(f"{api}/cds-services/msk-imaging-patient-view", data=b"x" * (5 * 1024 * 1024 + 1),
                        headers={"Content-Type": "application/json"}, timeout=30)
    assert big.status_code == 413
    assert big.json()["resourceType"] == "OperationOutcome"
    assert len(proxied_app["seen"]) == before

    # /metrics: not on the API port; on the metrics port it is the app's (bearer token required)
    hidden = requests.get(f"{api}/metrics", timeout=10)
    assert hidden.status_code == 404 and hidden.json()["resourceType"] == "OperationOutcome"
    assert requests.get(f"{proxied_app['metrics']}/metrics", timeout=10).status_code == 401
    token = {"Authorization": "Bearer " + "m" * 20}
    assert requests.get(f"{proxied_app['metrics']}/metrics", headers=token, timeout=10).status_code == 200
    assert requests.get(f"{proxied_app['metrics']}/cds-services", timeout=10).status_code == 404


def test_real_nginx_access_log_has_no_query_string_or_path(proxied_app):
    api = proxied_app["api"]
    requests.get(f"{api}/healthz?patient=pat-secret-4711&birthdate=1980-04-02", timeout=10)
    requests.get(f"{api}/cds-services/pat-secret-4711", timeout=10)
    time.sleep(0.2)
    log = proxied_app["access_log"].read_text(encoding="utf-8")
    lines = [json.loads(line) for line in log.splitlines()]
    assert len(lines) == 2 and lines[0]["status"] == 200 and lines[1]["status"] >= 400
    assert "pat-secret-4711" not in log and "1980-04-02" not in log and "healthz" not in log
