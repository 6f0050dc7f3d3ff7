"""Card ledger: pseudonymous keys, order-sign no-repeat, override suppression, and the invoke-path call."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, text

from hooks.record import PatientRecord
from hooks.registry import HookRequest
from service import create_app, ledger
from service.ledger import CardLedger, card_ledger
from service.storage import Storage

NOW = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.timezone.utc)
SERVER = "https://ehr.example.org/fhir"
USER = "Practitioner/dr-a"


def card(uuid: str, rule: str = "axspa.nsaid-trial", dedupe: str | None = None, indicator: str = "warning") -> dict:
    return {
        "uuid": uuid,
        "summary": "Consider an NSAID trial",
        "indicator": indicator,
        "source": {"label": "ASAS-EULAR 2022"},
        "suggestions": [{"uuid": f"{uuid}-s1", "label": "Start naproxen"}],
        "selectionBehavior": "at-most-one",
        "extension": {"org.msk-cds.rule": rule, "org.msk-cds.pathway": rule.split(".")[0],
                      "org.msk-cds.dedupe-key": dedupe or f"{rule}|MedicationRequest/draft-1"},
    }


@pytest.fixture()
def store(tmp_path):
    store = Storage(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    store.create_schema()
    yield store
    store.dispose()


def show(ledger_: CardLedger, hook: str, cards: list[dict], *, patient="p1", user=USER, now=NOW):
    return ledger_.filter_and_record(
        service_id=f"msk-imaging-{hook}", hook=hook, hook_instance=f"hi-{hook}-{now.isoformat()}",
        fhir_server=SERVER, patient_id=patient, user_id=user, now=now, cards=cards,
    )


def test_rows_hold_pseudonyms_never_raw_ids(store):
    book = CardLedger(store.engine, salt="s1")
    show(book, "patient-view", [card("c1")], patient="patient-123", user="Practitioner/dr-a")
    with store.engine.connect() as conn:
        row = conn.execute(select(card_ledger)).one()._mapping
    assert row["card_uuid"] == "c1" and row["rule_id"] == "axspa.nsaid-trial" and row["pathway"] == "axspa"
    assert row["hook"] == "patient-view" and row["indicator"] == "warning"
    dump = " ".join(str(v) for v in row.values())
    assert "patient-123" not in dump and "dr-a" not in dump
    assert len(row["patient_key"]) == 64 and row["patient_key"] == book.pseudonym(SERVER, "patient-123")
    # the same id on another FHIR server, or under another key, is another pseudonym
    assert book.pseudonym("https://other.example.org/fhir", "patient-123") != row["patient_key"]
    assert CardLedger(store.engine, salt="s2").pseudonym(SERVER, "patient-123") != row["patient_key"]


def test_database_key_is_shared_by_instances(store):
    first, second = CardLedger(store.engine), CardLedger(store.engine)
    assert first.pseudonym(SERVER, "p1") == second.pseudonym(SERVER, "p1")
    assert first.pseudonym(SERVER, "p1") != CardLedger(store.engine, salt="explicit").pseudonym(SERVER, "p1")


def test_order_sign_does_not_repeat_order_select_card(store):
    book = CardLedger(store.engine, salt="s")
    show(book, "order-select", [card("sel-1"), card("sel-2", rule="axspa.steroid-avoid")])
    kept, withheld = show(book, "order-sign", [
        card("sign-1"),                                                       # same dedupe key: withheld
        card("sign-2", dedupe="axspa.nsaid-trial|MedicationRequest/draft-2"),  # another draft order: shown
    ], now=NOW + dt.timedelta(minutes=5))
    assert [c["uuid"] for c in kept] == ["sign-2"]
    assert withheld == {"shown_at_order_select": 1, "overridden_by_user": 0}
    # another patient, or after the window, sees it again
    kept, _ = show(book, "order-sign", [card("sign-3")], patient="p2")
    assert [c["uuid"] for c in kept] == ["sign-3"]
    kept, _ = show(book, "order-sign", [card("sign-4")], now=NOW + dt.timedelta(hours=25))
    assert [c["uuid"] for c in kept] == ["sign-4"]
    # order-select itself is never filtered by the no-repeat rule
    kept, _ = show(book, "order-select", [card("sel-3")], now=NOW + dt.timedelta(minutes=6))
    assert [c["uuid"] for c in kept] == ["sel-3"]


def test_overridden_card_is_withheld_for_that_clinician_and_patient_only(store):
    quiet = CardLedger(store.engine, salt="s", suppress_overridden=True)
    show(quiet, "patient-view", [card("pv-1")])
    store.save_feedback("msk-imaging-patient-view", [{
        "card": "pv-1", "outcome": "overridden", "outcome_timestamp": NOW,
        "override_reason_code": "patient-declined",
    }])
    later = NOW + dt.timedelta(days=1)
    kept, withheld = show(quiet, "patient-view", [card("pv-2"), card("pv-3", rule="axspa.tnf-screening")], now=later)
    assert [c["uuid"] for c in kept] == ["pv-3"] and withheld["overridden_by_user"] == 1
    assert [c["uuid"] for c in show(quiet, "patient-view", [card("pv-4")], user="Practitioner/dr-b", now=later)[0]] \
        == ["pv-4"]
    assert [c["uuid"] for c in show(quiet, "patient-view", [card("pv-5")], patient="p2", now=later)[0]] == ["pv-5"]
    # with the setting off (the default) nothing is withheld
    loud = CardLedger(store.engine, salt="s")
    assert [c["uuid"] for c in show(loud, "patient-view", [card("pv-6")], now=later)[0]] == ["pv-6"]
    # the memory of an override ends with its window
    assert [c["uuid"] for c in show(quiet, "patient-view", [card("pv-7")], now=NOW + dt.timedelta(days=31))[0]] \
        == ["pv-7"]


def test_cards_without_uuid_are_shown_but_not_recorded(store):
    book = CardLedger(store.engine, salt="s")
    bare = {"summary": "no uuid", "indicator": "info", "source": {"label": "x"}}
    kept, _ = show(book, "patient-view", [bare])
    assert kept == [bare]
    with store.engine.connect() as conn:
        assert conn.execute(select(card_ledger)).all() == []


def hook_request(hook: str, patient: str = "p1") -> HookRequest:
    return HookRequest(
        service_id=f"msk-imaging-{hook}", hook=hook, hook_instance="6f1c7a52-0000-4b8e-9f49-6a1d2f1b7c10",
        context={"patientId": patient, "userId": USER}, record=PatientRecord.from_prefetch({}),
        now=NOW, fhir_server=SERVER,
    )


@pytest.fixture()
def app(tmp_path):
    return create_app({"AUTH_DISABLED": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'app.sqlite3'}"})


def metric_value(app, name: str, **labels) -> float:
    registry = app.extensions["msk_cds.metrics"].registry
    return registry.get_sample_value(name, labels) or 0.0


def test_invoke_path_call_filters_records_and_counts(app):
    with app.app_context():
        ledger.after_handler(hook_request("order-select"), [card("a1")])
        shown = ledger.after_handler(hook_request("order-sign"), [card("a2"), card("a3", dedupe="other")])
    assert [c["uuid"] for c in shown] == ["a3"]
    labels = {"service": "msk-imaging-order-sign", "indicator": "warning"}
    assert metric_value(app, "msk_cds_cards_returned_total", **labels) == 1
    assert metric_value(app, "msk_cds_cards_suppressed_total", service="msk-imaging-order-sign",
                        reason="shown_at_order_select") == 1


def test_ledger_failure_still_returns_the_cards(app, caplog):
    engine = app.extensions["msk_cds.storage"].engine
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE card_ledger"))
    with app.app_context():
        shown = ledger.after_handler(hook_request("order-sign"), [card("b1")])
    assert [c["uuid"] for c in shown] == ["b1"]
    assert "card_ledger_unavailable" in caplog.text
    assert "p1" not in caplog.text


def test_order_sign_over_http_does_not_repeat_order_select_cards(tmp_path):
    """The fixture scenarios with both order hooks, through one app: order-sign repeats none of order-select's
    cards (same draft order, same patient), while a fresh database shows them at order-sign."""
    import json
    from pathlib import Path

    requests_dir = Path(__file__).resolve().parent.parent / "fixtures" / "requests"
    pairs = [(p, p.with_name(p.name.replace("__order-select", "__order-sign")))
             for p in sorted(requests_dir.glob("*__order-select.json"))]
    pairs = [(s, t) for s, t in pairs if t.exists()]
    if not pairs:
        pytest.skip("no order-select/order-sign fixture pairs built yet")
    checked = 0
    for select_path, sign_path in pairs:
        select_body = json.loads(select_path.read_text(encoding="utf-8"))
        sign_body = json.loads(sign_path.read_text(encoding="utf-8"))
        settings = {"AUTH_DISABLED": True, "FIXED_NOW": "2026-11-20T09:00:00Z"}
        shared = create_app({**settings, "DATABASE_URL": f"sqlite:///{tmp_path / (select_path.stem + '.db')}"})
        fresh = create_app({**settings, "DATABASE_URL": f"sqlite:///{tmp_path / (sign_path.stem + '.db')}"})
        client = shared.test_client()
        selected = client.post("/cds-services/msk-imaging-order-select", json=select_body).get_json()["cards"]
        signed = client.post("/cds-services/msk-imaging-order-sign", json=sign_body).get_json()["cards"]
        alone = fresh.test_client().post("/cds-services/msk-imaging-order-sign", json=sign_body).get_json()["cards"]
        key = lambda c: c.get("extension", {}).get(ledger.DEDUPE_EXTENSION)   # noqa: E731
        shown_keys = {key(c) for c in selected if key(c)}
        assert not shown_keys & {key(c) for c in signed}, select_path.name
        assert {key(c) for c in alone} - {key(c) for c in signed} == shown_keys & {key(c) for c in alone}
        checked += len(shown_keys & {key(c) for c in alone})
    if not checked:
        pytest.skip("the order hooks return no card shown at both order-select and order-sign yet")
