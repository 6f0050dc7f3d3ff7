"""Protocol conformance: the feedback endpoint validates CDS Hooks 2.0 feedback and stores every item durably."""
from __future__ import annotations

import datetime as dt
import json
import sqlite3
import uuid

import pytest

from service.feedback import parse_rfc3339
from service.storage import normalise_url

FEEDBACK = "/cds-services/msk-imaging-patient-view/feedback"
CARD = str(uuid.uuid4())
SUGGESTION = str(uuid.uuid4())


def accepted(**overrides):
    item = {"card": CARD, "outcome": "accepted", "acceptedSuggestions": [{"id": SUGGESTION}],
            "outcomeTimestamp": "2026-11-20T10:15:30Z"}
    item.update(overrides)
    return item


def overridden(**overrides):
    item = {"card": CARD, "outcome": "overridden", "outcomeTimestamp": "2026-11-20T10:16:00.123+01:00",
            "overrideReason": {"reason": {"code": "patient-declined", "system": "https://example.org/override",
                                          "display": "Patient declined"}, "userComment": "prefers physio first"}}
    item.update(overrides)
    return item


def test_feedback_is_stored_and_survives_a_new_app_on_the_same_file(app_factory):
    first = app_factory()
    response = first.test_client().post(FEEDBACK, json={"feedback": [accepted(), overridden()]})
    assert response.status_code == 200
    assert response.get_json() == {"stored": 2}
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    first.extensions["msk_cds.storage"].dispose()

    second = app_factory()                       # same DATABASE_URL: a fresh engine, a fresh process view
    rows = second.extensions["msk_cds.storage"].feedback_rows("msk-imaging-patient-view")
    assert [r["outcome"] for r in rows] == ["accepted", "overridden"]
    first_row, second_row = rows
    assert first_row["card_uuid"] == CARD and first_row["accepted_suggestions"] == [SUGGESTION]
    assert first_row["outcome_timestamp"] == dt.datetime(2026, 11, 20, 10, 15, 30, tzinfo=dt.timezone.utc)
    assert second_row["override_reason_code"] == "patient-declined"
    assert second_row["override_reason_system"] == "https://example.org/override"
    assert second_row["override_reason_display"] == "Patient declined"
    assert second_row["user_comment"] == "prefers physio first"
    assert second_row["outcome_timestamp"] == dt.datetime(2026, 11, 20, 9, 16, 0, 123000, tzinfo=dt.timezone.utc)
    assert second_row["accepted_suggestions"] == []
    assert second_row["received_at"].tzinfo is not None
    assert second_row["issuer"] is None                  # no JWT: auth is off in this test
    assert second.extensions["msk_cds.storage"].feedback_rows("msk-imaging-order-sign") == []


def test_sqlite_file_uses_wal_and_parent_directory_is_created(app_factory, tmp_path):
    path = tmp_path / "nested" / "dir" / "fb.sqlite3"
    app = app_factory(DATABASE_URL=f"sqlite:///{path}")
    app.test_client().post(FEEDBACK, json={"feedback": [accepted()]})
    app.extensions["msk_cds.storage"].dispose()
    assert path.exists()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("SELECT count(*) FROM cds_feedback").fetchone()[0] == 1


def test_sandbox_style_override_without_display_or_comment(client, app):
    item = {"card": CARD, "outcome": "overridden", "outcomeTimestamp": "2026-11-20T10:16:00Z",
            "overrideReason": {"reason": {"code": "not-relevant", "system": "http://example.org"}}}
    assert client.post(FEEDBACK, json={"feedback": [item]}).status_code == 200
    row = app.extensions["msk_cds.storage"].feedback_rows()[0]
    assert row["override_reason_display"] is None and row["user_comment"] is None


def _issue_paths(response):
    return [i["expression"][0] for i in json.loads(response.data)["issue"]]


@pytest.mark.parametrize("item,path", [
    ({"outcome": "accepted", "acceptedSuggestions": [{"id": "s"}], "outcomeTimestamp": "2026-11-20T10:15:30Z"},
     "feedback[0].card"),
    (accepted(card=""), "feedback[0].card"),
    (accepted(outcome="ignored"), "feedback[0].outcome"),
    (accepted(outcome=None), "feedback[0].outcome"),
    ({k: v for k, v in accepted().items() if k != "acceptedSuggestions"}, "feedback[0].acceptedSuggestions"),
    (accepted(acceptedSuggestions=[]), "feedback[0].acceptedSuggestions"),
    (accepted(acceptedSuggestions=[{"uuid": "s"}]), "feedback[0].acceptedSuggestions[0].id"),
    (accepted(acceptedSuggestions=["s"]), "feedback[0].acceptedSuggestions[0]"),
    ({k: v for k, v in accepted().items() if k != "outcomeTimestamp"}, "feedback[0].outcomeTimestamp"),
    (accepted(outcomeTimestamp="2026-11-20 10:15"), "feedback[0].outcomeTimestamp"),
    (accepted(outcomeTimestamp="2026-11-20T10:15:30"), "feedback[0].outcomeTimestamp"),
    (accepted(outcomeTimestamp="2026-13-40T10:15:30Z"), "feedback[0].outcomeTimestamp"),
    (accepted(outcomeTimestamp=1700000000), "feedback[0].outcomeTimestamp"),
    (overridden(overrideReason="no"), "feedback[0].overrideReason"),
    (overridden(overrideReason={"reason": {"code": "x"}}), "feedback[0].overrideReason.reason.system"),
    (overridden(overrideReason={"reason": "x"}), "feedback[0].overrideReason.reason"),
    (overridden(overrideReason={"userComment": 5}), "feedback[0].overrideReason.userComment"),
    (overridden(overrideReason={"userComment": "x" * 10_001}), "feedback[0].overrideReason.userComment"),
    ("card", "feedback[0]"),
])
def test_invalid_feedback_item_is_400_naming_the_path(client, item, path):
    response = client.post(FEEDBACK, json={"feedback": [item]})
    assert response.status_code == 400
    assert path in _issue_paths(response)


@pytest.mark.parametrize("body", [{}, {"feedback": []}, {"feedback": {"card": "x"}}, {"items": []}])
def test_feedback_body_shape(client, body):
    response = client.post(FEEDBACK, json=body)
    assert response.status_code == 400
    assert _issue_paths(response) == ["feedback"]


def test_one_bad_item_stores_nothing_and_names_each_problem(client, app):
    response = client.post(FEEDBACK, json={"feedback": [accepted(), accepted(outcome="x"), overridden(card=7)]})
    assert response.status_code == 400
    assert _issue_paths(response) == ["feedback[1].outcome", "feedback[2].card"]
    assert app.extensions["msk_cds.storage"].feedback_rows() == []


def test_feedback_errors_do_not_echo_values(client):
    secret = "Jane Doe MRN 1234567"
    response = client.post(FEEDBACK, json={"feedback": [accepted(card=secret * 50, outcome=secret)]})
    assert response.status_code == 400
    assert b"Jane" not in response.data


def test_feedback_for_unknown_service_is_404_and_malformed_json_400(client):
    assert client.post("/cds-services/nope/feedback", json={"feedback": [accepted()]}).status_code == 404
    response = client.post(FEEDBACK, data=b'{"feedback": [', content_type="application/json")
    assert response.status_code == 400


def test_feedback_records_the_jwt_issuer_when_known(app):
    storage = app.extensions["msk_cds.storage"]
    item = {"card": CARD, "outcome": "accepted", "accepted_suggestions": ["s"],
            "outcome_timestamp": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}
    assert storage.save_feedback("msk-imaging-order-sign", [item], issuer="https://ehr.example.org") == 1
    assert storage.feedback_rows("msk-imaging-order-sign")[0]["issuer"] == "https://ehr.example.org"


def test_rfc3339_parsing():
    assert parse_rfc3339("2026-11-20T10:15:30.123456789Z") == dt.datetime(2026, 11, 20, 10, 15, 30, 123456,
                                                                          tzinfo=dt.timezone.utc)
    assert parse_rfc3339("2026-11-20t10:15:30-05:00").hour == 15
    assert parse_rfc3339("2026-11-20T10:15:30") is None
    assert parse_rfc3339("20261120T101530Z") is None


def test_postgres_urls_use_psycopg3():
    assert normalise_url("postgresql://u:p@db/cds") == "postgresql+psycopg://u:p@db/cds"
    assert normalise_url("postgres://db/cds") == "postgresql+psycopg://db/cds"
    assert normalise_url("postgresql+psycopg://db/cds") == "postgresql+psycopg://db/cds"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"


@pytest.mark.postgres
def test_feedback_round_trip_on_postgresql(app_factory):
    import os

    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        pytest.skip("TEST_POSTGRES_URL not set")
    card = str(uuid.uuid4())
    first = app_factory(DATABASE_URL=url)
    assert first.test_client().post(FEEDBACK, json={"feedback": [accepted(card=card)]}).status_code == 200
    first.extensions["msk_cds.storage"].dispose()
    rows = app_factory(DATABASE_URL=url).extensions["msk_cds.storage"].feedback_rows("msk-imaging-patient-view")
    mine = [r for r in rows if r["card_uuid"] == card]
    assert len(mine) == 1 and mine[0]["accepted_suggestions"] == [SUGGESTION]
    assert mine[0]["outcome_timestamp"] == dt.datetime(2026, 11, 20, 10, 15, 30, tzinfo=dt.timezone.utc)
