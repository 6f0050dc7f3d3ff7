"""The analytics command on a seeded database: ledger rows written by the real ledger, feedback by the real storage."""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import subprocess
import sys

import pytest

from service import analytics
from service.ledger import CardLedger
from service.storage import Storage

NOW = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.timezone.utc)
SERVER = "https://ehr.example.org/fhir"


def card(uuid: str, rule: str, pathway: str, suggestions: list[tuple[str, str]] = (), indicator: str = "info") -> dict:
    result = {
        "uuid": uuid,
        "summary": "s",
        "indicator": indicator,
        "source": {"label": "x"},
        "extension": {"org.msk-cds.rule": rule, "org.msk-cds.pathway": pathway, "org.msk-cds.dedupe-key": rule},
    }
    if suggestions:
        result["suggestions"] = [{"uuid": sid, "label": label} for sid, label in suggestions]
        result["selectionBehavior"] = "at-most-one"
    return result


def show(ledger: CardLedger, cards: list[dict], when: dt.datetime, patient: str = "p1") -> None:
    kept, _ = ledger.filter_and_record(
        service_id="msk-imaging-patient-view", hook="patient-view", hook_instance="hi-" + cards[0]["uuid"],
        fhir_server=SERVER, patient_id=patient, user_id="Practitioner/1", now=when, cards=cards,
    )
    assert len(kept) == len(cards)


def feedback(card_uuid: str, outcome: str, **extra) -> dict:
    return {"card": card_uuid, "outcome": outcome, "outcome_timestamp": NOW, **extra}


@pytest.fixture()
def seeded_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'analytics.sqlite3'}"
    store = Storage(url)
    store.create_schema()
    ledger = CardLedger(store.engine, salt="test-salt")
    naproxen = ("s-nap", "Start naproxen 500 mg twice daily")
    ibuprofen = ("s-ibu", "Start ibuprofen 800 mg three times daily")
    # axspa.nsaid-trial: shown 4 times; 2 accepted (naproxen twice), 1 overridden with a reason
    for i in range(4):
        show(ledger, [card(f"n{i}", "axspa.nsaid-trial", "axspa",
                           [(f"{naproxen[0]}{i}", naproxen[1]), (f"{ibuprofen[0]}{i}", ibuprofen[1])])], NOW)
    # axspa.tnf-inhibitor: shown twice (t0's call retried by the EHR: same card uuid, one showing);
    # 1 overridden without a reason, 1 overridden with one
    show(ledger, [card("t0", "axspa.tnf-inhibitor", "axspa", indicator="warning")], NOW)
    show(ledger, [card("t0", "axspa.tnf-inhibitor", "axspa", indicator="warning")], NOW)
    show(ledger, [card("t1", "axspa.tnf-inhibitor", "axspa", indicator="warning")], NOW, patient="p2")
    # shown long ago: only counted without --since
    show(ledger, [card("old", "hip.fai-referral", "hip")], NOW - dt.timedelta(days=60))
    store.save_feedback("msk-imaging-patient-view", [
        feedback("n0", "accepted", accepted_suggestions=["s-nap0"]),
        feedback("n0", "accepted", accepted_suggestions=["s-nap0"]),       # a repeat counts once
        feedback("n1", "accepted", accepted_suggestions=["s-nap1"]),
        feedback("n2", "overridden", override_reason_code="patient-declined",
                 override_reason_display="Patient declined"),
        feedback("t0", "overridden"),
        feedback("t1", "overridden", override_reason_code="already-on-biologic"),
        feedback("old", "accepted", accepted_suggestions=["unknown-id"]),
        feedback("never-shown", "accepted", accepted_suggestions=["x"]),   # no ledger row: not counted
    ])
    store.dispose()
    return url


EXPECTED_TABLE = """\
rule                  shown  accepted  overridden  acceptance
-------------------------------------------------------------
axspa.nsaid-trial         4         2           1       50.0%
    accepted: Start naproxen 500 mg twice daily: 2
    overridden: patient-declined (Patient declined): 1
axspa.tnf-inhibitor       2         0           2        0.0%
    overridden: (no reason given): 1
    overridden: already-on-biologic: 1
"""


def run(url: str, *options: str) -> str:
    parser = argparse.ArgumentParser()
    analytics.add_arguments(parser)
    out = io.StringIO()
    assert analytics.run(parser.parse_args(["--database-url", url, *options]), out) == 0
    return out.getvalue()


def test_table_per_rule_since(seeded_url):
    assert run(seeded_url, "--since", "2026-11-01") == EXPECTED_TABLE


def test_json_includes_older_cards_without_since(seeded_url):
    report = json.loads(run(seeded_url, "--format", "json"))
    rules = {r["rule"]: r for r in report["rules"]}
    assert list(rules) == ["axspa.nsaid-trial", "axspa.tnf-inhibitor", "hip.fai-referral"]
    assert rules["axspa.nsaid-trial"] == {
        "rule": "axspa.nsaid-trial",
        "pathway": "axspa",
        "shown": 4,
        "accepted": 2,
        "overridden": 1,
        "acceptanceRate": 0.5,
        "acceptedSuggestions": {"Start naproxen 500 mg twice daily": 2},
        "overrideReasons": {"patient-declined (Patient declined)": 1},
    }
    assert rules["hip.fai-referral"]["acceptedSuggestions"] == {analytics.UNKNOWN_SUGGESTION: 1}
    assert rules["hip.fai-referral"]["acceptanceRate"] == 1.0


def test_service_filter_and_empty_period(seeded_url):
    assert run(seeded_url, "--service", "msk-imaging-order-sign") == "No cards recorded in this period.\n"
    assert run(seeded_url, "--since", "2027-01-01") == "No cards recorded in this period.\n"


def test_console_script_entry(seeded_url):
    """The same report through the command line, as `msk-cds analytics` runs it."""
    completed = subprocess.run(
        [sys.executable, "-m", "service.cli", "analytics", "--database-url", seeded_url, "--since", "2026-11-01"],
        capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == EXPECTED_TABLE


def test_bad_since_is_a_usage_error(seeded_url, capsys):
    parser = argparse.ArgumentParser()
    analytics.add_arguments(parser)
    assert analytics.run(parser.parse_args(["--database-url", seeded_url, "--since", "yesterday"]), io.StringIO()) == 2


def test_feedback_posted_over_http_joins_the_ledger(tmp_path):
    """The real path: a card recorded by the invoke-path call, feedback through the endpoint, then the report."""
    from hooks.record import PatientRecord
    from hooks.registry import HookRequest
    from service import create_app, ledger

    url = f"sqlite:///{tmp_path / 'http.sqlite3'}"
    app = create_app({"AUTH_DISABLED": True, "DATABASE_URL": url})
    request = HookRequest(
        service_id="msk-imaging-order-select", hook="order-select", hook_instance="hi-1",
        context={"patientId": "p1", "userId": "Practitioner/1"}, record=PatientRecord.from_prefetch({}),
        now=NOW, fhir_server=SERVER,
    )
    with app.app_context():
        ledger.after_handler(request, [card("h1", "axspa.steroid-avoid", "axspa", [("h1-s", "Stop prednisone")],
                                            indicator="warning")])
    client = app.test_client()
    body = {"feedback": [{"card": "h1", "outcome": "accepted", "acceptedSuggestions": [{"id": "h1-s"}],
                          "outcomeTimestamp": "2026-11-20T09:05:00Z"}]}
    assert client.post("/cds-services/msk-imaging-order-select/feedback", json=body).status_code == 200
    report = json.loads(run(url, "--format", "json"))["rules"]
    assert report == [{"rule": "axspa.steroid-avoid", "pathway": "axspa", "shown": 1, "accepted": 1, "overridden": 0,
                       "acceptanceRate": 1.0, "acceptedSuggestions": {"Stop prednisone": 1}, "overrideReasons": {}}]


def test_the_knowledge_review_status_of_each_rule_goes_to_governance(tmp_path):
    """Issue 16: the review status of the knowledge is shown to governance (analytics), not on the card."""
    url = f"sqlite:///{tmp_path}/review.db"
    store = Storage(url)
    store.create_schema()
    ledger = CardLedger(store.engine, salt="test-salt")
    show(ledger, [card("c-osteo", "bme_differential.osteomyelitis_diabetic", "bme_differential", indicator="critical"),
                  card("c-nsaid", "axspa_si_synovitis.nsaid_trial", "axspa_si_synovitis")], NOW)
    store.dispose()
    report = {r["rule"]: r for r in json.loads(run(url, "--format", "json"))["rules"]}
    # IWGDF/IDSA 2023 is cited from memory (unverified); ASAS-EULAR 2022's DOI is not verified either
    assert report["bme_differential.osteomyelitis_diabetic"]["knowledgeReview"] == "unverified"
    assert report["axspa_si_synovitis.nsaid_trial"]["knowledgeReview"] in ("verified", "unverified")
    assert "knowledge review: unverified" in run(url)
