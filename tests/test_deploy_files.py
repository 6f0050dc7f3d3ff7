"""deploy/ is valid and consistent: YAML parses, Kubernetes objects carry probes, limits and non-root settings,
compose references what exists, the Dockerfile is non-root with a healthcheck and installs what CI installs.
Docker and a cluster are not available here, so these checks read the files; `kubectl kustomize` runs when present.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.auth import parse_trusted_issuers
from service.config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SETTING_NAMES = {s.name for s in SETTINGS}
# Process-level variables read by gunicorn_conf / prometheus_client rather than by the app's settings.
PROCESS_VARIABLES = {"WEB_CONCURRENCY", "PROMETHEUS_MULTIPROC_DIR", "PORT", "BIND", "GUNICORN_THREADS",
                     "GUNICORN_MAX_REQUESTS", "FORWARDED_ALLOW_IPS", "GUNICORN_WORKER_TMP_DIR",
                     "GUNICORN_HEADER_TIMEOUT", "GUNICORN_REQUEST_DEADLINE"}


def documents(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert docs, f"{path} has no YAML document"
    return docs


def k8s_objects() -> dict[tuple[str, str], dict]:
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in documents(path):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path):
    for doc in documents(path):
        assert isinstance(doc, dict)


def test_kustomization_lists_every_manifest():
    kustomization = documents(K8S / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_k8s_kinds():
    kinds = {kind for kind, _ in k8s_objects()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "PodDisruptionBudget"} <= kinds


def deployment() -> dict:
    return k8s_objects()[("Deployment", "msk-cds")]


def containers() -> dict[str, dict]:
    return {c["name"]: c for c in deployment()["spec"]["template"]["spec"]["containers"]}


def test_k8s_kinds_include_namespace_and_network_policy():
    kinds = {kind for kind, _ in k8s_objects()}
    assert {"Namespace", "NetworkPolicy"} <= kinds


def test_deployment_probes_resources_and_non_root():
    pod = deployment()["spec"]["template"]["spec"]
    by_name = containers()
    assert set(by_name) == {"msk-cds", "nginx"}
    app = by_name["msk-cds"]
    port_names = {p["name"]: p["containerPort"] for p in app["ports"]}
    assert app["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert app["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert app[probe]["httpGet"]["port"] in port_names
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in by_name.values():
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), container["name"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert container["securityContext"].get("runAsUser", 1) != 0
        # read-only root: /tmp (gunicorn heartbeat, metric files; nginx temp files) must be a writable emptyDir
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in volumes[tmp["name"]]
    assert app["args"][:3] == ["msk-cds", "serve", "--production"]


def test_secrets_are_files_not_environment_variables():
    pod = deployment()["spec"]["template"]["spec"]
    app = containers()["msk-cds"]
    assert not any("valueFrom" in e and "secretKeyRef" in e["valueFrom"] for e in app.get("env", []))
    assert not any("secretRef" in source for source in app.get("envFrom", []))
    env = {e["name"]: e.get("value") for e in app["env"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret_volume = next(v for v in volumes.values() if "secret" in v)
    assert secret_volume["secret"]["secretName"] == "msk-cds-secrets"
    mount = next(m for m in app["volumeMounts"] if m["name"] == secret_volume["name"])
    assert mount["readOnly"] is True
    from service.config import SECRET_FILE_SETTINGS

    for name in ("DATABASE_URL", "METRICS_TOKEN"):
        assert name in SECRET_FILE_SETTINGS
        assert env[f"{name}_FILE"] == f"{mount['mountPath']}/{name}"
    assert all(not c.get("volumeMounts") or all(m["name"] != secret_volume["name"] for m in c["volumeMounts"])
               for c in containers().values() if c["name"] != "msk-cds"), "only the app container sees the secrets"


def test_deployment_settings_from_configmap():
    objects = k8s_objects()
    app = containers()["msk-cds"]
    (source,) = app["envFrom"]
    settings = objects[("ConfigMap", source["configMapRef"]["name"])]["data"]
    assert "DATABASE_URL" not in settings and "METRICS_TOKEN" not in settings
    unknown = set(settings) - SETTING_NAMES - PROCESS_VARIABLES
    assert not unknown, f"ConfigMap keys that nothing reads: {unknown}"
    for setting in SETTINGS:
        if setting.name in settings:
            setting.parse(settings[setting.name])      # raises on a value the service would refuse at start-up
    assert settings["AUTH_DISABLED"] == "false"


def test_trusted_issuers_configmap_is_mounted_where_the_setting_points():
    objects = k8s_objects()
    pod = deployment()["spec"]["template"]["spec"]
    container = containers()["msk-cds"]
    settings = objects[("ConfigMap", "msk-cds-settings")]["data"]
    path = Path(settings["TRUSTED_ISSUERS_FILE"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    issuers_map = objects[("ConfigMap", volume["configMap"]["name"])]["data"]
    issuers = parse_trusted_issuers(json.loads(issuers_map[path.name]), "configmap")
    assert issuers and all(iss.startswith("https://") for iss in issuers)


def test_namespace_and_image_reference_with_registry():
    kustomization = documents(K8S / "kustomization.yaml")[0]
    namespace = k8s_objects()[("Namespace", kustomization["namespace"])]
    assert namespace["metadata"]["name"] not in {"default", "kube-system"}
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    (image,) = [i for i in kustomization["images"] if i["name"] == containers()["msk-cds"]["image"]]
    registry = image["newName"].split("/")[0]
    assert "." in registry or ":" in registry, "the image names a registry host"
    assert image["newTag"] == re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(),
                                        re.M).group(1)
    # third-party images are pinned to an exact version (no `latest`)
    nginx = containers()["nginx"]["image"]
    assert re.search(r":\d+\.\d+\.\d+", nginx) and "latest" not in nginx
    generated = {g["name"]: g["files"] for g in kustomization["configMapGenerator"]}
    nginx_volume = next(v for v in deployment()["spec"]["template"]["spec"]["volumes"] if v["name"] == "nginx-conf")
    assert generated[nginx_volume["configMap"]["name"]] == ["nginx.conf"]


def test_network_policy_keeps_metrics_to_the_monitoring_namespace():
    policy = k8s_objects()[("NetworkPolicy", "msk-cds")]
    pod_labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    nginx_ports = {p["name"]: p["containerPort"] for p in containers()["nginx"]["ports"]}
    app_ports = {p["name"] for p in containers()["msk-cds"]["ports"]}
    rules = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            rules[port["port"]] = rule.get("from")
    assert set(rules) == {"http", "metrics"} and not set(rules) & app_ports, "gunicorn's own port stays closed"
    assert rules["http"] is None
    (source,) = rules["metrics"]
    assert source == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == nginx_ports["metrics"]


def test_service_and_hpa_target_the_deployment():
    objects = k8s_objects()
    pod_labels = deployment()["spec"]["template"]["metadata"]["labels"]
    service = objects[("Service", "msk-cds")]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert "http" in {p["name"] for p in containers()["nginx"]["ports"]}, "the Service sends callers to nginx"
    hpa = objects[("HorizontalPodAutoscaler", "msk-cds")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "msk-cds"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_renders():
    rendered = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    objects = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    kustomization = documents(K8S / "kustomization.yaml")[0]
    generated = ["ConfigMap"] * len(kustomization.get("configMapGenerator", []))
    assert sorted(d["kind"] for d in objects) == sorted([kind for kind, _ in k8s_objects()] + generated)
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == kustomization["namespace"], obj["metadata"]["name"]
    (rendered_deployment,) = [d for d in objects if d["kind"] == "Deployment"]
    images = {c["name"]: c["image"] for c in rendered_deployment["spec"]["template"]["spec"]["containers"]}
    (image,) = kustomization["images"]
    assert images["msk-cds"] == f"{image['newName']}:{image['newTag']}"
    # the generated nginx ConfigMap (name with its content hash) is the one the pod mounts
    config_maps = {d["metadata"]["name"] for d in objects if d["kind"] == "ConfigMap"}
    mounted = {v["configMap"]["name"] for v in rendered_deployment["spec"]["template"]["spec"]["volumes"]
               if "configMap" in v}
    assert mounted <= config_maps


def compose() -> dict:
    return documents(DEPLOY / "compose.yaml")[0]


def test_compose_references_resolve():
    spec = compose()
    services = spec["services"]
    assert {"cds", "postgres"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in spec.get("volumes", {}), f"{name} uses undeclared volume {source}"
    build = services["cds"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
    assert "healthcheck" in services["postgres"]
    assert services["cds"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_settings_are_known_and_database_points_at_postgres():
    services = compose()["services"]
    environment = services["cds"]["environment"]
    assert not set(environment) - SETTING_NAMES - PROCESS_VARIABLES
    database_url = environment["DATABASE_URL"]
    assert database_url.startswith("postgresql+psycopg://")
    pg = services["postgres"]["environment"]
    assert f"@postgres:5432/{pg['POSTGRES_DB']}" in database_url and f"//{pg['POSTGRES_USER']}:" in database_url
    assert services["fhir"]["profiles"] == ["fhir"] and services["fhir-loader"]["profiles"] == ["fhir"]
    # the mounted issuers file is one the service accepts
    mount = next(v for v in services["cds"]["volumes"] if v.split(":")[1] == environment["TRUSTED_ISSUERS_FILE"])
    source = DEPLOY / mount.split(":")[0]
    assert parse_trusted_issuers(json.loads(source.read_text(encoding="utf-8")), str(source))


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_dockerfile_is_pinned_non_root_with_healthcheck():
    instructions = dockerfile_instructions()
    base = next(rest for keyword, rest in instructions if keyword == "FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    healthcheck = next(rest for keyword, rest in instructions if keyword == "HEALTHCHECK")
    assert "/healthz" in healthcheck and "curl" not in healthcheck
    cmd = json.loads(next(rest for keyword, rest in instructions if keyword == "CMD"))
    assert cmd == ["msk-cds", "serve", "--production"]
    for keyword, rest in instructions:
        if keyword == "COPY":
            for source in shlex.split(rest)[:-1]:
                assert (ROOT / source).exists(), f"COPY source {source} missing"


def pip_targets(command_text: str) -> list[str]:
    """The install targets of each `pip install` line, with -e and extras removed: what gets installed."""
    targets = []
    for line in command_text.replace("\\\n", " ").splitlines():
        if "pip install" not in line:
            continue
        try:
            words = shlex.split(line.split("pip install", 1)[1].split("&&")[0])
        except ValueError:          # the words "pip install" inside a quoted message, not a command
            continue
        targets += [re.sub(r"\[.*\]$", "", w) for w in words if not w.startswith("-")]
    return targets


def test_dockerfile_installs_what_ci_installs():
    ci = ROOT / ".ci" / "run"
    assert ci.exists(), ".ci/run is missing"
    ci_text = ci.read_text(encoding="utf-8")
    docker_run = "\n".join(rest for keyword, rest in dockerfile_instructions() if keyword == "RUN")
    docker_targets, ci_targets = pip_targets(docker_run), pip_targets(ci_text)
    assert docker_targets == ["."]
    assert "." in ci_targets, ci_targets
    # the image's Python is the one pyproject allows and CI tests with
    base = next(rest for keyword, rest in dockerfile_instructions() if keyword == "FROM")
    requires = re.search(r'requires-python = "([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    minor = base.split(":")[1].rsplit(".", 1)[0].split("-")[0]
    assert f">={minor}" in requires
    # CI brings up PostgreSQL the documented way before the tests
    assert "deploy/postgres-dev.sh" in ci_text and "TEST_POSTGRES_URL" in ci_text


def test_gunicorn_config_loads_from_deploy_and_package(tmp_path):
    probe = (
        "import json, runpy; c = runpy.run_path('deploy/gunicorn.conf.py');"
        "print(json.dumps({k: c[k] for k in ('workers', 'timeout', 'preload_app', 'wsgi_app', 'threads', 'control_socket_disable',"
        " 'worker_class', 'max_requests', 'max_requests_jitter')}"
        " | {'hooks': [k for k in ('post_fork', 'child_exit', 'when_ready', 'on_exit') if callable(c.get(k))]}))"
    )
    env = {"WEB_CONCURRENCY": "3", "FHIR_FETCH_DEADLINE_SECONDS": "10", "PATH": "/usr/bin:/bin",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert config["workers"] == 3 and config["preload_app"] is True and config["threads"] == 8
    # issue 12: gthread with header deadlines and JSON refusals; workers recycled by default (with jitter)
    assert config["worker_class"] == "service.gunicorn_worker.JsonErrorThreadWorker"
    assert config["max_requests"] == 5000 and config["max_requests_jitter"] == 500
    assert config["control_socket_disable"] is True
    assert config["timeout"] > 10 and config["wsgi_app"] == "service.production:production_app()"
    assert config["hooks"] == ["post_fork", "child_exit", "when_ready", "on_exit"]


def test_worker_count_and_timeout_rules(monkeypatch):
    from service import production

    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert production.default_workers(cpus=1) == 3
    assert production.default_workers(cpus=16) == 8
    monkeypatch.setenv("WEB_CONCURRENCY", "5")
    assert production.default_workers(cpus=1) == 5
    assert production.request_timeout(4.0) == 30
    assert production.request_timeout(20.0) > 20


def test_production_command_line():
    from service.production import gunicorn_argv

    argv = gunicorn_argv(workers=2, bind="127.0.0.1:9000")
    assert argv[1:5] == ["-m", "gunicorn", "--config", "python:service.gunicorn_conf"]
    assert argv[-1] == "service.production:production_app()" and "--workers" in argv and "127.0.0.1:9000" in argv


def test_postgres_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(DEPLOY / "postgres-dev.sh")], timeout=30).returncode == 0


def test_fixture_loader_builds_put_transactions():
    sys.path.insert(0, str(DEPLOY))
    try:
        import load_fixtures
    finally:
        sys.path.remove(str(DEPLOY))
    request = {"hook": "patient-view", "prefetch": {
        "patient": {"resourceType": "Patient", "id": "p1"},
        "reports": {"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": {"resourceType": "DiagnosticReport", "id": "r1"}},
            {"resource": {"resourceType": "DiagnosticReport", "id": "r1"}},
            {"resource": {"resourceType": "Observation"}},               # no id: cannot be PUT
        ]},
        "allergies": None,
    }}
    bundle = load_fixtures.transaction(list(load_fixtures.resources_in(request)))
    assert bundle["type"] == "transaction"
    assert [e["request"] for e in bundle["entry"]] == [
        {"method": "PUT", "url": "Patient/p1"}, {"method": "PUT", "url": "DiagnosticReport/r1"}]


def test_fixture_loader_reads_the_fixture_requests():
    requests_dir = ROOT / "fixtures" / "requests"
    loader_command = compose()["services"]["fhir-loader"]["command"]
    assert loader_command[-1] == "/app/fixtures/requests"
    sys.path.insert(0, str(DEPLOY))
    try:
        import load_fixtures
    finally:
        sys.path.remove(str(DEPLOY))
    files = load_fixtures.fixture_files([requests_dir])
    if not files:
        pytest.skip("no fixture requests built yet (python -m fixtures.build)")
    for path in files:
        resources = list(load_fixtures.resources_in(json.loads(path.read_text(encoding="utf-8"))))
        assert any(r["resourceType"] == "Patient" for r in resources), path.name


def test_readme_documents_every_setting_and_process_variable():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = sorted(name for name in SETTING_NAMES | PROCESS_VARIABLES - {"GUNICORN_WORKER_TMP_DIR"}
                     if f"`{name}`" not in readme)
    assert not missing, f"README configuration tables lack {missing}"


def test_docker_context_excludes_the_virtualenv_but_not_what_is_copied():
    # at the build context root, where both the legacy builder and BuildKit read it
    assert not (DEPLOY / "Dockerfile.dockerignore").exists()
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert {".venv", ".venv-*", ".git", "tests", "fixtures"} <= set(ignored)
    copied = [shlex.split(rest)[:-1] for keyword, rest in dockerfile_instructions() if keyword == "COPY"]
    for source in (s for sources in copied for s in sources):
        assert source.split("/")[0] not in ignored, f"{source} is copied but excluded from the build context"
