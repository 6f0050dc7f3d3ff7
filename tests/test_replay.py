"""`msk-cds replay` against a real server on loopback: cards printed readably, errors as status + diagnostics."""
from __future__ import annotations

import argparse
import io
import json
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from service import create_app
from service.cli import build_parser
from service.replay import markdown_to_text, run

ROOT = Path(__file__).resolve().parent.parent
REQUEST = {
    "hook": "patient-view",
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "context": {"patientId": "p1", "userId": "Practitioner/dr1"},
    "prefetch": {
        "patient": {"resourceType": "Patient", "id": "p1", "birthDate": "1985-02-01", "gender": "female"},
        "conditions": {"resourceType": "Bundle", "type": "searchset", "entry": []},
        "reports": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
            "resourceType": "DiagnosticReport", "id": "r1", "status": "final", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "36031-3"}], "text": "MR Sacroiliac joint"},
            "effectiveDateTime": "2026-10-30T09:00:00Z",
            "conclusion": "Mild synovitis of the left sacroiliac joint. No erosions. STIR and T1 sequences."}}]},
        "medicationRequests": {"resourceType": "Bundle", "type": "searchset", "entry": []},
        "medicationStatements": {"resourceType": "Bundle", "type": "searchset", "entry": []},
        "observations": {"resourceType": "Bundle", "type": "searchset", "entry": []},
        "allergies": {"resourceType": "Bundle", "type": "searchset", "entry": []},
    },
}


@pytest.fixture()
def server(tmp_path):
    app = create_app({"FIXED_NOW": "2026-11-02T09:00:00Z", "AUTH_DISABLED": True,
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'replay.sqlite3'}"})
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    thread.join(timeout=5)


def args_for(path, url, **extra):
    return argparse.Namespace(path=str(path), url=url, service=extra.get("service"), token=extra.get("token"),
                              timeout=10.0, json=extra.get("json", False))


def test_replay_prints_cards_and_suggestions(server, tmp_path):
    path = tmp_path / "request.json"
    path.write_text(json.dumps(REQUEST))
    out = io.StringIO()
    assert run(args_for(path, server), out) == 0
    text = out.getvalue()
    assert "INFO: SI-joint synovitis on MRI" in text
    assert "rule: axspa_si_synovitis.nsaid_trial" in text
    assert "create MedicationRequest: naproxen 500 MG Oral Tablet [RxNorm 198014]" in text
    assert "create ServiceRequest: Physiotherapy" in text
    assert "*recommended*" not in text                      # no NSAID is preferred by the guideline (issue 16)
    assert "\\(" not in text and "&lt;" not in text        # Markdown escapes are undone for reading


def test_replay_reports_errors_with_status_and_diagnostics(server, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"hook": "patient-view", "context": {}}))
    out = io.StringIO()
    assert run(args_for(path, server), out) == 1
    assert "HTTP 400" in out.getvalue()


def test_replay_a_fixture_folder_and_count(server, tmp_path):
    for i in range(2):
        (tmp_path / f"{i}.json").write_text(json.dumps(REQUEST))
    out = io.StringIO()
    assert run(args_for(tmp_path, server), out) == 0
    assert "2 of 2 requests answered 200" in out.getvalue()


def test_replay_unreachable_service_says_so(tmp_path):
    path = tmp_path / "request.json"
    path.write_text(json.dumps(REQUEST))
    out = io.StringIO()
    assert run(args_for(path, "http://127.0.0.1:9", timeout=1), out) == 1
    assert "cannot reach" in out.getvalue()


def test_replay_is_a_cli_subcommand():
    args = build_parser().parse_args(["replay", "x.json", "--url", "http://localhost:8080", "--token", "t"])
    assert args.command == "replay" and args.token == "t"


def test_markdown_to_text_undoes_escaping_and_links():
    assert markdown_to_text("**Evidence**\n- [ACR](<https://doi.org/x>): a\\(1\\) &lt;b&gt;") == \
        "Evidence\n- ACR (https://doi.org/x): a(1) <b>"
