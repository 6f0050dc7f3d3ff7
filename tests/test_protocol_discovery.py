"""Protocol conformance: discovery, CORS, health, and the shapes of error answers (404/405/500, never HTML)."""
from __future__ import annotations

import json

from hooks.knowledge import knowledge_version
from service.conformance import check_discovery

SERVICES = {
    "msk-imaging-patient-view": "patient-view",
    "msk-imaging-order-select": "order-select",
    "msk-imaging-order-sign": "order-sign",
}


def test_discovery_lists_the_three_services_with_prefetch_and_knowledge_version(client):
    response = client.get("/cds-services")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert check_discovery(body) == []
    by_id = {s["id"]: s for s in body["services"]}
    assert {k: v["hook"] for k, v in by_id.items()} == SERVICES
    for service in by_id.values():
        assert service["title"] and service["description"]
        assert service["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        assert all("{{context.patientId}}" in t for t in service["prefetch"].values())
        assert service["extension"]["org.msk-cds.knowledge-version"] == knowledge_version()
        review = service["extension"]["org.msk-cds.knowledge-review"]          # governance, not the cards
        assert review["status"] in ("verified", "pending-review") and review["sourcesUnverified"] >= 0


def test_discovery_checker_rejects_bad_shapes():
    assert check_discovery({"services": [{"hook": "patient-view", "id": "x"}]}) == ["services[0].description: required string"]
    assert check_discovery({"services": [{"hook": "h", "id": "x", "description": "d", "prefetch": {}}]})
    assert check_discovery({}) == ["services: required array"]


def test_cors_headers_on_success(client):
    response = client.get("/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_preflight_on_every_cds_route_without_auth(app_factory):
    client = app_factory(AUTH_DISABLED=False, TRUSTED_ISSUERS="[]").test_client()
    headers = {"Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization,content-type"}
    for path in ("/cds-services", "/cds-services/msk-imaging-patient-view",
                 "/cds-services/msk-imaging-order-sign/feedback"):
        response = client.options(path, headers=headers)
        assert response.status_code == 204, path
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
        assert response.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
        assert int(response.headers["Access-Control-Max-Age"]) > 0
    # and the real call is refused without a JWT, still with CORS headers so the browser can read the 401
    refused = client.get("/cds-services")
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == "*"
    assert refused.data == b""


def test_configured_origin_is_used(app_factory):
    client = app_factory(CORS_ALLOW_ORIGIN="https://ehr.example.org").test_client()
    response = client.get("/cds-services")
    assert response.headers["Access-Control-Allow-Origin"] == "https://ehr.example.org"
    assert "Origin" in response.headers["Vary"]


def _assert_outcome(response, status, code=None):
    assert response.status_code == status
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "html" not in (response.content_type or "")
    body = json.loads(response.data)
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"] and all(i["severity"] == "error" and i["diagnostics"] for i in body["issue"])
    if code:
        assert body["issue"][0]["code"] == code
    return body


def test_unknown_service_is_404_operation_outcome(client, cds_request):
    _assert_outcome(client.post("/cds-services/no-such-service", json=cds_request()), 404, "not-found")
    _assert_outcome(client.post("/cds-services/no-such-service/feedback", json={"feedback": []}), 404)
    _assert_outcome(client.get("/nothing/here"), 404, "not-found")


def test_wrong_method_is_405_with_allow_header(client):
    response = client.get("/cds-services/msk-imaging-patient-view")
    _assert_outcome(response, 405)
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"POST", "OPTIONS"}
    response = client.delete("/cds-services")
    _assert_outcome(response, 405)
    assert "GET" in response.headers["Allow"]
    _assert_outcome(client.put("/cds-services/msk-imaging-patient-view/feedback"), 405)


def test_unexpected_exception_is_json_500_without_details(app_factory):
    app = app_factory()

    def boom():
        raise RuntimeError("patient Jane Doe secret")

    app.add_url_rule("/boom", view_func=boom)
    response = app.test_client().get("/boom")
    body = _assert_outcome(response, 500, "exception")
    assert b"Jane" not in response.data and b"Traceback" not in response.data
    assert body["issue"][0]["diagnostics"] == "internal error"


def test_health_and_readiness(client, app):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"database": "ok", "knowledge": "ok"}
    app.extensions["msk_cds.storage"].engine.dispose()


def test_readiness_fails_when_database_is_unreachable(app_factory, tmp_path):
    app = app_factory()
    storage = app.extensions["msk_cds.storage"]
    from sqlalchemy import create_engine

    # point the storage at a database path that cannot be opened (a directory)
    storage.engine = create_engine(f"sqlite:///{tmp_path}")
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"] == "failing"


def test_import_opens_no_database(tmp_path, monkeypatch):
    import importlib
    import sys

    monkeypatch.chdir(tmp_path)
    for name in [m for m in sys.modules if m == "service" or m.startswith("service.")]:
        monkeypatch.delitem(sys.modules, name)
    importlib.import_module("service")
    assert not (tmp_path / "instance").exists()
