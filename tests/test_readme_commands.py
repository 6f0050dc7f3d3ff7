"""Every command in the README's shell blocks is exercised here, so the README cannot drift from what works.

Each command found in a ```bash / ```sh block must match one rule below; a new command that no rule covers fails
`test_every_readme_command_is_covered`. Commands are run as written, with two substitutions: `.venv/bin/` is the
virtualenv running these tests, and http://127.0.0.1:8080 (or :8081) is the loopback address of the server the test
started (`--port 0`: the port it prints). The install command and the test command are what .ci/run runs on a fresh
clone (checked here, not re-run inside the suite); docker and a cluster are not available here, so their commands
are checked by rendering (`kubectl kustomize`, `kubectl create --dry-run=client`) and against the files they name.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent
SERVING = re.compile(r"serving on (http://[\d.]+:\d+)/cds-services")


def readme_commands() -> list[str]:
    """The shell commands of the README's bash/sh blocks, continuation lines and multi-line quotes joined."""
    commands = []
    for block in re.finditer(r"^( *)```(bash|sh)\n(.*?)^\1```", README, re.S | re.M):
        buffer = ""
        for line in block.group(3).splitlines():
            line = line.strip() if not buffer else line
            buffer = f"{buffer}\n{line}" if buffer else line
            if buffer.endswith("\\"):
                continue
            try:
                words = shlex.split(buffer, comments=True)
            except ValueError:              # a quoted string goes on on the next line
                continue
            if words:
                commands.append(buffer)
            buffer = ""
        assert not buffer, f"unterminated command in the README: {buffer[:80]}"
    return commands


def local(command: str, address: str | None = None) -> str:
    """The command for this checkout: our virtualenv's programs and the test server's address."""
    command = command.replace(".venv/bin/", f"{BIN}/")
    if address:
        command = re.sub(r"http://127\.0\.0\.1:808[01]", address, command)
    return command


def run(command: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def start_server(command: str, cwd: Path, env: dict | None = None):
    """Start a `msk-cds serve` command of the README on a free port; returns (process, base address)."""
    words = shlex.split(local(command))
    environment = dict(os.environ)
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        environment[name] = str(ROOT / value) if value.startswith("deploy/") else value
    words = [w for i, w in enumerate(words) if w != "--port" and (i == 0 or words[i - 1] != "--port")]
    environment.update(env or {})
    process = subprocess.Popen(words + ["--port", "0"], cwd=cwd, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        found = SERVING.search(line)
        if found:
            return process, found.group(1)
    process.kill()
    pytest.fail("the server never printed its address:\n" + "".join(seen[-10:]))


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


COMMANDS = readme_commands()
RULES: dict[str, re.Pattern] = {
    "quick start install + serve": re.compile(r"^python3 -m venv \.venv && \.venv/bin/pip install -e '\.\[test\]' && "
                                              r"\.venv/bin/msk-cds serve --dev-no-auth$"),
    "test command": re.compile(r"^\.venv/bin/python -m pytest$"),
    "curl": re.compile(r"^curl -s "),
    "replay": re.compile(r"^\.venv/bin/msk-cds replay "),
    "analytics": re.compile(r"^\.venv/bin/msk-cds analytics "),
    "serve with auth": re.compile(r"^TRUSTED_ISSUERS_FILE=\S+ \.venv/bin/msk-cds serve "),
    "compose": re.compile(r"^docker compose -f deploy/compose\.yaml "),
    "docker build/push": re.compile(r"^docker (build|push) "),
    "kubectl": re.compile(r"^kubectl "),
    "postgres-dev": re.compile(r"^(eval \"\$\(deploy/postgres-dev\.sh start\)\"|deploy/postgres-dev\.sh stop "
                               r"\"\$MSK_PG_DIR\"|\.venv/bin/python -m pytest -m postgres)$"),
    "benchmark": re.compile(r"^\.venv/bin/python tests/benchmarks( --quick)?$"),
    "fault soak": re.compile(r"^\.venv/bin/python tests/soak_faults\.py --minutes \d+$"),
}


def commands_of(rule: str) -> list[str]:
    return [c for c in COMMANDS if RULES[rule].search(c.split("  #")[0].strip())]


def test_every_readme_command_is_covered():
    assert len(COMMANDS) >= 15
    uncovered = [c for c in COMMANDS if not any(r.search(c.split("  #")[0].strip()) for r in RULES.values())]
    assert not uncovered, f"README commands that no test here runs: {uncovered}"
    for rule in RULES:
        assert commands_of(rule), f"rule {rule!r} matches no README command (README changed?)"


def test_install_and_test_commands_are_what_ci_runs():
    (quick_start,) = commands_of("quick start install + serve")
    install = quick_start.split(" && ")[1]                           # .venv/bin/pip install -e '.[test]'
    ci_lines = [line.strip().replace(" --quiet", "") for line in CI.splitlines()]
    assert 'rm -rf .venv' in ci_lines and '"$PYTHON" -m venv .venv' in ci_lines
    assert install in ci_lines, "CI installs with the README's command"
    assert "run_suite .venv \"Python $PRIMARY_MINOR\"" in ci_lines
    assert '"$1/bin/python" -m pytest || status=$?' in ci_lines       # with .venv: the README's test command
    assert commands_of("test command") == [".venv/bin/python -m pytest"]


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory):
    """The quick start's server, started as documented (in an empty working directory, like a fresh checkout's)."""
    (quick_start,) = commands_of("quick start install + serve")
    cwd = tmp_path_factory.mktemp("readme-quick-start")
    process, address = start_server(quick_start.split(" && ")[2], cwd)
    yield address, cwd
    stop(process)


def test_quick_start_server_and_curl_examples(dev_server):
    address, cwd = dev_server
    assert (cwd / "instance" / "msk_cds.sqlite3").exists()          # the embedded default the README names
    discovery, invocation, feedback = commands_of("curl")
    services = json.loads(run(local(discovery, address), cwd).stdout)["services"]
    assert {s["id"] for s in services} == {"msk-imaging-patient-view", "msk-imaging-order-select",
                                           "msk-imaging-order-sign"}
    answer = json.loads(run(local(invocation, address), cwd).stdout)
    (card,) = answer["cards"]
    # the README names the uuid this example returns, and the feedback example uses it
    assert f"`{card['uuid']}`" in README
    assert f'"card": "{card["uuid"]}"' in feedback
    stored = json.loads(run(local(feedback, address), cwd).stdout)
    assert stored == {"stored": 1}


def test_replay_explains_order_sign_without_cards(dev_server):
    address, _ = dev_server
    (replay,) = commands_of("replay")
    if not list((ROOT / "fixtures" / "requests").glob("*.json")):
        pytest.skip("no fixture requests built (python -m fixtures.build)")
    done = run(local(replay, address), ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    total = len(list((ROOT / "fixtures" / "requests").glob("*.json")))
    assert f"{total} of {total} requests answered 200" in done.stdout
    blocks = dict(re.findall(r"^== (\S+)\.json -> \S+\n(.*?)(?=^== |^\d+ of |\Z)", done.stdout, re.S | re.M))
    explained = 0
    for name, block in blocks.items():
        if not name.endswith("__order-sign"):
            continue
        select = blocks.get(name.replace("__order-sign", "__order-select"), "")
        if "(no cards" in block and "(no cards" not in select:
            assert "(no cards: this patient's order-select call above already showed its cards" in block, name
            explained += 1
        elif "(no cards" in block:
            assert "(no cards)" in block, name               # nothing shown at order-select: nothing to explain
    assert explained, "no order-sign replay after an order-select with cards"


def test_analytics_reads_the_feedback_of_the_curl_example(dev_server):
    address, cwd = dev_server
    test_quick_start_server_and_curl_examples(dev_server)            # the feedback it reports on (idempotent)
    (analytics,) = commands_of("analytics")
    done = run(local(analytics, address), cwd)
    assert done.returncode == 0, done.stderr
    assert "overridden" in done.stdout and "Declined" in done.stdout


def test_serve_with_the_sandbox_issuers_requires_a_token(tmp_path):
    (command,) = commands_of("serve with auth")
    process, address = start_server(command, tmp_path)
    try:
        assert requests.get(f"{address}/cds-services", timeout=10).status_code == 401
        assert requests.get(f"{address}/healthz", timeout=10).status_code == 200
    finally:
        stop(process)


def test_cli_misuse_is_one_line(tmp_path):
    for argv, expected in (
        (["analytics", "--database-url", "bad"], "not a database URL"),
        (["analytics", "--database-url", f"sqlite:///{tmp_path}/missing/dir/x.db"], "cannot use the database"),
        (["analytics", "--since", "yesterday"], "--since must be"),
        (["serve", "--port", "70000"], "port out of range"),
        (["replay", "fixtures/requests"], "--url"),
        (["nosuch"], "invalid choice"),
    ):
        done = subprocess.run([str(BIN / "msk-cds"), *argv], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode in (1, 2), argv
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], done.stderr
        assert "Traceback" not in done.stderr


def test_deploy_commands_render(tmp_path):
    compose = commands_of("compose")
    assert all((ROOT / "deploy" / "compose.yaml").exists() for _ in compose)
    profiles = {p for c in compose for p in re.findall(r"--profile (\w+)", c)}
    services = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]
    assert profiles <= {p for s in services.values() for p in s.get("profiles", [])}
    # docker build / push: the Dockerfile named, built from the repository root, with the kustomization's image
    kustomization = yaml.safe_load((ROOT / "deploy" / "k8s" / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    for command in commands_of("docker build/push"):
        assert f"{image['newName']}:{image['newTag']}" in command
        if command.startswith("docker build"):
            words = shlex.split(command)
            assert (ROOT / words[words.index("-f") + 1]).exists() and words[-1] == "."
    kubectl = shutil.which("kubectl")
    for command in commands_of("kubectl"):
        words = shlex.split(command.replace("\\\n", " "))
        if words[1:3] == ["apply", "-f"]:
            (namespace,) = [d for d in yaml.safe_load_all((ROOT / words[3]).read_text()) if d]
            assert namespace["kind"] == "Namespace" and namespace["metadata"]["name"] == kustomization["namespace"]
        elif words[1:3] == ["apply", "-k"]:
            if kubectl:
                rendered = subprocess.run([kubectl, "kustomize", str(ROOT / words[3])], capture_output=True,
                                          text=True, timeout=60)
                assert rendered.returncode == 0, rendered.stderr
        elif "create" in words and "secret" in words:
            assert words[words.index("-n") + 1] == kustomization["namespace"]
            if kubectl:
                done = run(command.replace("\\\n", " ") + " --dry-run=client -o json", ROOT, timeout=60)
                assert done.returncode == 0, done.stderr
                secret = json.loads(done.stdout)
                deployment = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
                volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v)
                assert secret["metadata"]["name"] == volume["secret"]["secretName"]
                app = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "msk-cds")
                files = {Path(e["value"]).name for e in app["env"] if e["name"].endswith("_FILE")}
                assert files == set(secret["data"])
        else:
            pytest.fail(f"a kubectl command this test does not know: {command}")


def test_fault_soak_command_is_real():
    (soak,) = commands_of("fault soak")
    help_text = run(local(soak.split("#")[0].strip().split(" --minutes")[0] + " --help"), ROOT, timeout=120)
    assert help_text.returncode == 0 and "--minutes" in help_text.stdout, help_text.stderr


def test_postgres_and_benchmark_commands_are_real():
    start, tests, stop_command = (c.split("  #")[0].strip() for c in commands_of("postgres-dev"))
    assert start == 'eval "$(deploy/postgres-dev.sh start)"' and stop_command.startswith("deploy/postgres-dev.sh stop")
    assert 'PG_EXPORTS="$(deploy/postgres-dev.sh start)"' in CI and 'deploy/postgres-dev.sh stop "$PG_DIR"' in CI
    assert tests == ".venv/bin/python -m pytest -m postgres"
    assert re.search(r'"postgres: ', (ROOT / "pyproject.toml").read_text())      # the marker exists
    full, quick = commands_of("benchmark")
    help_text = run(local(quick.split("#")[0].strip() + " --help"), ROOT, timeout=120)
    assert help_text.returncode == 0 and "--quick" in help_text.stdout, help_text.stderr
