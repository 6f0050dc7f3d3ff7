"""PHI-free logs and error bodies: requests full of recognisable PHI; none of it may reach a log line or an error."""
from __future__ import annotations

import io
import json
import logging
import re
import uuid

import pytest
import responses

from service import create_app
from service.logs import FIELDS, JsonLineFormatter, configure_logging
from test_security_helpers import BASE, ISSUER, SERVICE_IDS, bearer, ec_key, jwks, mint

KEY = ec_key()
FHIR = "https://fhir.example.org/r4"

PHI = {
    "name": "Zelda Quackenbush-Ferreira",
    "given": "Zeldaprime",
    "mrn": "MRN-88-4431-77",
    "ssn": "999-12-3456",
    "birth_date": "1961-07-23",
    "phone": "+1-555-867-5309",
    "address": "742 Evergreen Terrace",
    "email": "zelda.q@example.net",
    "patient_id": "phi-patient-5521",
    "report_text": "Marked synovitis of the left sacroiliac joint in this carpenter from Springfield",
    "comment": "Patient Zelda refused because of her divorce",
    "access_token": "fhir-access-token-PHI-SECRET-31337",
    "practitioner": "Practitioner/dr-hibbert-771",
}


def phi_patient() -> dict:
    return {
        "resourceType": "Patient",
        "id": PHI["patient_id"],
        "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": PHI["mrn"]},
                       {"system": "http://hl7.org/fhir/sid/us-ssn", "value": PHI["ssn"]}],
        "name": [{"text": PHI["name"], "family": "Quackenbush-Ferreira", "given": [PHI["given"]]}],
        "birthDate": PHI["birth_date"],
        "telecom": [{"system": "phone", "value": PHI["phone"]}, {"system": "email", "value": PHI["email"]}],
        "address": [{"line": [PHI["address"]], "city": "Springfield"}],
        "gender": "female",
    }


def phi_report() -> dict:
    return {
        "resourceType": "DiagnosticReport",
        "id": "rep-phi-1",
        "status": "final",
        "code": {"text": "MRI sacroiliac joints"},
        "subject": {"reference": f"Patient/{PHI['patient_id']}", "display": PHI["name"]},
        "conclusion": f"{PHI['report_text']}. Mild synovitis of the left SI joint. {PHI['name']}, MRN {PHI['mrn']}.",
        "presentedForm": [{"contentType": "text/plain", "data": "UEhJIHJlcG9ydCB0ZXh0"}],
    }


def bundle(*resources) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def phi_request(hook: str = "patient-view", **extra) -> dict:
    context = {"userId": PHI["practitioner"], "patientId": PHI["patient_id"]}
    if hook != "patient-view":
        order = {"resourceType": "MedicationRequest", "id": "draft-1", "status": "draft", "intent": "order",
                 "subject": {"reference": f"Patient/{PHI['patient_id']}", "display": PHI["name"]},
                 "medicationCodeableConcept": {"text": "naproxen 500 mg"},
                 "note": [{"text": PHI["comment"]}]}
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": order}]}
        if hook == "order-select":
            context["selections"] = ["MedicationRequest/draft-1"]
    body = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": FHIR,
        "fhirAuthorization": {"access_token": PHI["access_token"], "token_type": "Bearer", "expires_in": 300,
                              "scope": "patient/*.read", "subject": "msk-cds", "patient": PHI["patient_id"]},
        "context": context,
        "prefetch": {
            "patient": phi_patient(),
            "conditions": bundle({"resourceType": "Condition", "id": "c1", "code": {"text": PHI["report_text"]},
                                  "subject": {"reference": f"Patient/{PHI['patient_id']}"},
                                  "note": [{"text": PHI["comment"]}]}),
            "reports": bundle(phi_report()),
        },
    }
    body.update(extra)
    return body


@pytest.fixture
def captured():
    """Every log record as our JSON formatter writes it, from DEBUG up."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLineFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous)


@pytest.fixture
def app(tmp_path):
    return create_app({
        "DATABASE_URL": f"sqlite:///{tmp_path / 'phi.db'}",
        "TRUSTED_ISSUERS": json.dumps([{"iss": ISSUER, "jwks": jwks(KEY)}]),
        "FHIR_FETCH_DEADLINE_SECONDS": 1.0,
        "LOG_LEVEL": "DEBUG",
        "TESTING": True,
    })


def assert_no_phi(text: str, where: str, extra: tuple[str, ...] = ()) -> None:
    for label, value in list(PHI.items()) + [(f"extra{i}", v) for i, v in enumerate(extra)]:
        assert value not in text, f"{label} leaked into {where}"


def _all_record_values(records) -> str:
    """getMessage() and every attribute of every record: what any other handler could print."""
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.extend(repr(v) for k, v in vars(record).items() if k not in ("exc_info", "msg", "args"))
    return "\n".join(parts)


def test_phi_never_reaches_logs_or_error_bodies(app, captured, caplog):
    caplog.set_level(logging.DEBUG)
    client = app.test_client()
    tokens: list[str] = []
    bodies: list[str] = []

    def send(method, path, body=None, headers=None, raw=None):
        token = mint(KEY, BASE + path)
        tokens.append(token)
        all_headers = dict(bearer(token), **(headers or {}))
        if raw is not None:
            response = client.open(path, method=method, data=raw, headers=all_headers,
                                   content_type="application/json")
        elif method == "GET":
            response = client.get(path, headers=all_headers)
        else:
            response = client.post(path, json=body, headers=all_headers)
        bodies.append((response.status_code, response.get_data(as_text=True)))
        return response

    with responses.RequestsMock(assert_all_requests_are_fired=False) as fhir:
        # the FHIR server answers with more PHI for keys that were not prefetched
        fhir.get(re.compile(re.escape(FHIR) + r"/MedicationRequest.*"),
                 json=bundle({"resourceType": "MedicationRequest", "id": "m1", "status": "active",
                              "intent": "order", "subject": {"reference": f"Patient/{PHI['patient_id']}",
                                                             "display": PHI["name"]},
                              "medicationCodeableConcept": {"text": "ibuprofen"},
                              "note": [{"text": PHI["comment"]}]}))
        fhir.get(re.compile(re.escape(FHIR) + r"/Observation.*"), status=500, body=PHI["name"])
        fhir.get(re.compile(re.escape(FHIR) + r"/AllergyIntolerance.*"), body="not json " + PHI["mrn"])
        fhir.get(re.compile(re.escape(FHIR) + r"/MedicationStatement.*"), status=404)

        send("GET", "/cds-services")
        for service_id, hook in zip(SERVICE_IDS, ("patient-view", "order-select", "order-sign")):
            send("POST", f"/cds-services/{service_id}", phi_request(hook))
        # errors that carry PHI in the fields they complain about
        send("POST", f"/cds-services/{SERVICE_IDS[0]}", phi_request(hookInstance=PHI["name"]))
        send("POST", f"/cds-services/{SERVICE_IDS[0]}", phi_request(hook=PHI["mrn"]))
        send("POST", f"/cds-services/{SERVICE_IDS[0]}", phi_request(fhirServer=PHI["email"]))
        send("POST", f"/cds-services/{SERVICE_IDS[1]}", phi_request("order-select", context={
            "userId": PHI["name"], "patientId": PHI["patient_id"], "selections": PHI["mrn"],
            "draftOrders": PHI["report_text"]}))
        missing = phi_request()
        del missing["prefetch"]["reports"]
        fhir.get(re.compile(re.escape(FHIR) + r"/DiagnosticReport.*"), status=403, body=PHI["ssn"])
        send("POST", f"/cds-services/{SERVICE_IDS[0]}", missing)                 # 412
        send("POST", f"/cds-services/{PHI['mrn']}", phi_request())             # 404
        send("POST", f"/cds-services/{SERVICE_IDS[0]}", raw=json.dumps(phi_request())[:-9])   # bad JSON
        send("POST", f"/cds-services/{SERVICE_IDS[0]}",
             raw='{"hook": "' + PHI["name"] + '", "hook": "' + PHI["mrn"] + '"}')             # duplicate key
        send("POST", f"/cds-services/{SERVICE_IDS[0]}/feedback", {"feedback": [{
            "card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-11-22T05:00:00Z",
            "overrideReason": {"userComment": PHI["comment"]}}]})
        send("POST", f"/cds-services/{SERVICE_IDS[0]}/feedback", {"feedback": [{
            "card": PHI["mrn"], "outcome": PHI["name"], "outcomeTimestamp": PHI["birth_date"]}]})

    # a refused token: must not be logged either
    bad = mint(ec_key(kid=KEY.kid), BASE + "/cds-services")
    tokens.append(bad)
    bodies.append((client.get("/cds-services", headers=bearer(bad)).status_code, ""))

    statuses = [status for status, _ in bodies]
    assert 200 in statuses and 400 in statuses and 404 in statuses and 412 in statuses and 401 in statuses
    assert all(status < 500 for status in statuses), statuses

    json_lines = captured.getvalue()
    assert json_lines.count('"event":"request"') >= len(bodies)
    token_parts = tuple(part for token in tokens for part in token.split(".") if len(part) > 8)
    assert_no_phi(json_lines, "the JSON log", token_parts)
    assert_no_phi(caplog.text, "caplog text", token_parts)
    assert_no_phi(_all_record_values(caplog.records), "log record attributes", token_parts)
    for status, text in bodies:
        if status >= 400:
            assert_no_phi(text, f"a {status} body", token_parts)
    for line in json_lines.splitlines():
        json.loads(line)                                      # every line is one JSON object

    # nor stored: every row of every table (the clinician's own feedback comment is the one thing kept on purpose)
    from sqlalchemy import select

    from service import storage

    engine = app.extensions[storage.EXTENSION_KEY].engine
    with engine.connect() as conn:
        rows = [repr(tuple(row)) for table in storage.metadata.sorted_tables
                for row in conn.execute(select(table))]
    assert rows, "the requests above must have stored something (replay guard, feedback, ledger)"
    stored = "\n".join(rows)
    for label, value in PHI.items():
        if label != "comment":
            assert value not in stored, (label, [r for r in rows if value in r])
    for part in token_parts:
        assert part not in stored, "a JWT stored in the database"


def test_formatter_writes_only_whitelisted_fields_and_never_interpolates():
    formatter = JsonLineFormatter()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "fetched %s for %s",
                               (f"{FHIR}/Patient/{PHI['patient_id']}", PHI["name"]), None)
    record.patient_name = PHI["name"]
    record.url = f"{FHIR}/Patient/{PHI['patient_id']}"
    record.service = "msk-imaging-patient-view"
    record.status = 200
    record.reason = {"nested": PHI["name"]}                # not a scalar: dropped
    line = json.loads(formatter.format(record))
    assert line["event"] == "fetched %s for %s"
    assert line["service"] == "msk-imaging-patient-view" and line["status"] == 200
    assert set(line) <= {"ts", "level", "logger", "event", *FIELDS, "trace"}
    assert_no_phi(json.dumps(line), "a formatted line")


def test_exception_message_is_not_written_only_its_type_and_place():
    formatter = JsonLineFormatter()
    try:
        raise ValueError(f"bad value {PHI['name']} for {PHI['mrn']}")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = json.loads(formatter.format(record))
    assert line["error_type"] == "ValueError"
    assert line["trace"] and all(":" in frame for frame in line["trace"])
    assert_no_phi(json.dumps(line), "an exception line")


def test_werkzeug_access_log_is_silenced_and_would_not_leak():
    configure_logging("INFO")
    assert logging.getLogger("werkzeug").getEffectiveLevel() >= logging.WARNING
    record = logging.LogRecord("werkzeug", logging.INFO, __file__, 1, '%s - - [%s] "%s" %s %s',
                               ("127.0.0.1", "now", f"GET /x?patient={PHI['patient_id']} HTTP/1.1", 200, "-"), None)
    assert PHI["patient_id"] not in JsonLineFormatter().format(record)


def test_request_line_has_service_status_latency_and_card_count(app, captured):
    client = app.test_client()
    body = phi_request()
    body.pop("fhirServer")
    body.pop("fhirAuthorization")
    response = client.post(f"/cds-services/{SERVICE_IDS[0]}", json=body,
                           headers=bearer(mint(KEY, BASE + f"/cds-services/{SERVICE_IDS[0]}")))
    assert response.status_code == 200
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    request_line = next(line for line in lines if line["event"] == "request")
    assert request_line["service"] == SERVICE_IDS[0]
    assert request_line["status"] == 200
    assert request_line["hook_instance"] == body["hookInstance"]
    assert request_line["iss"] == ISSUER
    assert isinstance(request_line["latency_ms"], (int, float))
    assert request_line["cards"] == len(response.get_json()["cards"])


def test_hook_instance_that_is_not_an_identifier_is_not_logged(app, captured):
    client = app.test_client()
    body = phi_request(hookInstance=PHI["name"])
    client.post(f"/cds-services/{SERVICE_IDS[0]}", json=body,
                headers=bearer(mint(KEY, BASE + f"/cds-services/{SERVICE_IDS[0]}")))
    assert PHI["name"] not in captured.getvalue()


def test_log_calls_in_our_code_use_constant_event_names():
    """Every logging call in service/ and hooks/ passes a literal message: data goes in whitelisted `extra` only."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    levels = {"debug", "info", "warning", "error", "exception", "critical", "log"}
    offenders = []
    for path in sorted([*root.joinpath("service").rglob("*.py"), *root.joinpath("hooks").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in levels and node.args):
                continue
            receiver = node.func.value
            name = receiver.attr if isinstance(receiver, ast.Attribute) else getattr(receiver, "id", "")
            if not name.lower().endswith(("log", "logger")):
                continue
            message = node.args[1] if node.func.attr == "log" and len(node.args) > 1 else node.args[0]
            if not (isinstance(message, ast.Constant) and isinstance(message.value, str)):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == [], f"log messages built from data (use a constant event + extra fields): {offenders}"
