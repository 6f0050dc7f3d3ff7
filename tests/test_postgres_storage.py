"""Storage on a real PostgreSQL server: feedback, the JWT replay guard across instances, the card ledger, analytics.

Runs when TEST_POSTGRES_URL is set (deploy/postgres-dev.sh starts a throwaway server and prints it). In CI (CI=true)
a missing TEST_POSTGRES_URL is a failure, not a skip, so the PostgreSQL path cannot silently go untested.
Each run works in a database of its own, created here and dropped at the end.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import threading
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service import analytics, create_app
from service.auth import AuthError, ReplayGuard
from service.ledger import CardLedger
from service.storage import Storage, normalise_url
from test_security_helpers import BASE, ISSUER, bearer, ec_key, hook_request, jwks, mint

pytestmark = pytest.mark.postgres

NOW = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.timezone.utc)
SERVER = "https://ehr.example.org/fhir"
SIGNING_KEY = ec_key()


@pytest.fixture(scope="module")
def pg_url():
    base = os.environ.get("TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("CI=true but TEST_POSTGRES_URL is not set: .ci/run must start PostgreSQL "
                        "(eval \"$(deploy/postgres-dev.sh start)\") before the tests")
        pytest.skip("TEST_POSTGRES_URL not set; start a server with: eval \"$(deploy/postgres-dev.sh start)\"")
    base_url = make_url(normalise_url(base))
    if base_url.get_backend_name() != "postgresql":
        pytest.fail("TEST_POSTGRES_URL must be a postgresql:// URL")
    name = f"msk_cds_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield base_url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture()
def store(pg_url):
    store = Storage(pg_url)
    assert store.engine.dialect.name == "postgresql"
    store.create_schema()
    with store.engine.begin() as conn:
        conn.execute(text("TRUNCATE cds_feedback, card_ledger, jwt_replay"))
    yield store
    store.dispose()


_apps: list = []


@pytest.fixture(autouse=True)
def _dispose_apps():
    yield
    while _apps:
        _apps.pop().extensions["msk_cds.storage"].dispose()


def make_app(pg_url, **settings):
    config = {
        "DATABASE_URL": pg_url,
        "TRUSTED_ISSUERS": json.dumps([{"iss": ISSUER, "jwks": jwks(SIGNING_KEY)}]),
        "TESTING": True,
    }
    config.update(settings)
    app = create_app(config)
    _apps.append(app)
    return app


def test_schema_creation_is_idempotent_across_instances(pg_url, store):
    other = Storage(pg_url)
    other.create_schema()
    other.dispose()
    with store.engine.connect() as conn:
        tables = set(conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
    assert {"cds_feedback", "card_ledger", "ledger_secret", "jwt_replay"} <= tables


def test_feedback_round_trip(store):
    stamp = dt.datetime(2026, 11, 20, 10, 30, 15, 123000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    stored = store.save_feedback("msk-imaging-patient-view", [
        {"card": "c-1", "outcome": "accepted", "accepted_suggestions": ["s-1", "s-2"], "outcome_timestamp": stamp},
        {"card": "c-2", "outcome": "overridden", "override_reason_code": "patient-declined",
         "override_reason_system": "http://example.org/reasons", "override_reason_display": "Patient declined",
         "user_comment": "prefers physiotherapy", "outcome_timestamp": stamp},
    ], issuer=ISSUER)
    assert stored == 2
    rows = store.feedback_rows("msk-imaging-patient-view")
    assert [(r["card_uuid"], r["outcome"]) for r in rows] == [("c-1", "accepted"), ("c-2", "overridden")]
    assert rows[0]["accepted_suggestions"] == ["s-1", "s-2"]
    assert rows[0]["outcome_timestamp"] == stamp and rows[0]["outcome_timestamp"].tzinfo is not None
    assert rows[1]["override_reason_display"] == "Patient declined" and rows[1]["issuer"] == ISSUER


def test_feedback_through_http_lands_in_postgres(pg_url, store):
    client = make_app(pg_url, AUTH_DISABLED=True).test_client()
    body = {"feedback": [{"card": "http-card", "outcome": "overridden",
                          "overrideReason": {"reason": {"code": "not-relevant", "system": "http://example.org/r"}},
                          "outcomeTimestamp": "2026-11-20T10:00:00Z"}]}
    response = client.post("/cds-services/msk-imaging-patient-view/feedback", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    rows = store.feedback_rows()
    assert [(r["card_uuid"], r["override_reason_code"]) for r in rows] == [("http-card", "not-relevant")]


def test_replay_guard_holds_across_two_app_instances(pg_url, store):
    first, second = make_app(pg_url).test_client(), make_app(pg_url).test_client()
    token = mint(SIGNING_KEY, BASE + "/cds-services")
    assert first.get("/cds-services", headers=bearer(token)).status_code == 200
    assert second.get("/cds-services", headers=bearer(token)).status_code == 401
    service = "/cds-services/msk-imaging-patient-view"
    token = mint(SIGNING_KEY, BASE + service)
    assert second.post(service, json=hook_request("msk-imaging-patient-view"), headers=bearer(token)).status_code \
        == 200
    assert first.post(service, json=hook_request("msk-imaging-patient-view"), headers=bearer(token)).status_code \
        == 401


def test_replay_guard_insert_or_fail_under_concurrency(store):
    guards = [ReplayGuard(store.engine) for _ in range(8)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(guards))

    def use(guard: ReplayGuard) -> None:
        barrier.wait()
        try:
            guard.remember(ISSUER, "race-jti", expires_at=2_000_000_000, now=1_800_000_000)
            outcomes.append("accepted")
        except AuthError as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=use, args=(g,)) for g in guards]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["accepted"] + ["replayed_jti"] * (len(guards) - 1)


def card(uuid_: str, rule: str = "axspa.nsaid-trial", dedupe: str = "axspa.nsaid-trial|MedicationRequest/draft-1"):
    return {"uuid": uuid_, "summary": "s", "indicator": "info", "source": {"label": "x"},
            "suggestions": [{"uuid": f"{uuid_}-s", "label": "Start naproxen"}],
            "extension": {"org.msk-cds.rule": rule, "org.msk-cds.pathway": "axspa", "org.msk-cds.dedupe-key": dedupe}}


def show(book: CardLedger, hook: str, cards: list[dict], now=NOW, user="Practitioner/dr-a"):
    return book.filter_and_record(service_id=f"msk-imaging-{hook}", hook=hook, hook_instance=str(uuid.uuid4()),
                                  fhir_server=SERVER, patient_id="p1", user_id=user, now=now, cards=cards)[0]


def test_card_ledger_rules_on_postgres(store):
    book = CardLedger(store.engine, suppress_overridden=True)
    show(book, "order-select", [card("sel")])
    assert show(book, "order-sign", [card("sign")], now=NOW + dt.timedelta(minutes=2)) == []
    show(book, "patient-view", [card("pv", rule="axspa.tnf-screening", dedupe="axspa.tnf-screening")])
    store.save_feedback("msk-imaging-patient-view", [
        {"card": "pv", "outcome": "overridden", "outcome_timestamp": NOW},
        {"card": "sel", "outcome": "accepted", "accepted_suggestions": ["sel-s"], "outcome_timestamp": NOW},
    ])
    later = NOW + dt.timedelta(hours=1)
    assert show(book, "patient-view", [card("pv2", rule="axspa.tnf-screening", dedupe="axspa.tnf-screening")],
                now=later) == []
    report = {s.rule: s for s in analytics.build_report(store.engine)}
    assert report["axspa.nsaid-trial"].shown == 1 and report["axspa.nsaid-trial"].accepted == 1
    assert report["axspa.nsaid-trial"].accepted_suggestions == {"Start naproxen": 1}
    assert report["axspa.tnf-screening"].overridden == 1


def test_pseudonym_key_settles_on_one_value_when_instances_race(pg_url, store):
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM ledger_secret"))
    engines = [Storage(pg_url).engine for _ in range(6)]
    keys: list[str] = []
    barrier = threading.Barrier(len(engines))

    def derive(engine) -> None:
        barrier.wait()
        keys.append(CardLedger(engine).pseudonym(SERVER, "p1"))

    threads = [threading.Thread(target=derive, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(keys) == len(engines) and len(set(keys)) == 1
    for engine in engines:
        engine.dispose()
