"""Issue 12 items 3, 4 and 7 against the real PostgreSQL of CI (deploy/postgres-dev.sh): the cluster is frozen
(SIGSTOP) and restarted while calls and feedback arrive. Every answer is 200 or a JSON 503 with Retry-After within
a bound set by the DB_* timeouts; nothing acknowledged is lost and a retried item is stored once; no call is a 401
(the credentials were fine) or a 500; threads and open files come back to where they were."""
from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, func, select

from faultkit import PgCluster, open_files, postgres_url, settle
from service import create_app
from service.storage import feedback_table
from test_security_helpers import BASE, ISSUER, bearer, ec_key, hook_request, jwks, mint


SERVICE = "msk-imaging-patient-view"
INVOKE = f"/cds-services/{SERVICE}"
FEEDBACK = f"{INVOKE}/feedback"
KEY = ec_key()
TIMEOUTS = {"DB_CONNECT_TIMEOUT_SECONDS": 1.0, "DB_STATEMENT_TIMEOUT_SECONDS": 1.0, "DB_POOL_TIMEOUT_SECONDS": 1.0}
#: the longest any answer may take with the database frozen: ping (connect) + lease (statement + connect) + pool
BOUND_SECONDS = 5.0


@pytest.fixture(scope="module")
def cluster():
    return PgCluster.from_env()


def _app(**settings):
    config = {"DATABASE_URL": postgres_url(), "TESTING": True, **TIMEOUTS}
    config.update(settings)
    return create_app(config)


def _auth_app():
    return _app(TRUSTED_ISSUERS=json.dumps([{"iss": ISSUER, "jwks": jwks(KEY)}]))


def _item(card: str) -> dict:
    return {"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-12-01T10:00:00Z",
            "overrideReason": {"userComment": "fault suite"}}


def _rows_for(cards: list[str]) -> dict[str, int]:
    engine = create_engine(postgres_url())
    try:
        with engine.connect() as conn:
            query = (select(feedback_table.c.card_uuid, func.count())
                     .where(feedback_table.c.card_uuid.in_(cards)).group_by(feedback_table.c.card_uuid))
            return {card: count for card, count in conn.execute(query)}
    finally:
        engine.dispose()


def _assert_503(response, started: float) -> None:
    assert response.status_code == 503, (response.status_code, response.data[:200])
    assert response.headers["Retry-After"].isdigit()
    assert response.content_type.startswith("application/fhir+json")
    assert response.get_json()["issue"][0]["code"] == "transient"
    assert time.monotonic() - started < BOUND_SECONDS


def test_frozen_database_with_auth_on_is_503_fast_and_readiness_tells_the_truth(cluster):
    app = _auth_app()
    client = app.test_client()
    assert client.post(INVOKE, json=hook_request(SERVICE), headers=bearer(mint(KEY, BASE + INVOKE))).status_code == 200
    assert client.get("/readyz").status_code == 200
    with cluster.frozen():
        for path in (INVOKE, "/cds-services", FEEDBACK):
            started = time.monotonic()
            token = bearer(mint(KEY, BASE + path))
            if path == "/cds-services":
                response = client.get(path, headers=token)
            elif path == FEEDBACK:
                response = client.post(path, json={"feedback": [_item(str(uuid.uuid4()))]}, headers=token)
            else:
                response = client.post(path, json=hook_request(SERVICE), headers=token)
            _assert_503(response, started)                          # not 401: the token was fine
        started = time.monotonic()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.get_json()["checks"]["database"] == "failing"
        assert time.monotonic() - started < BOUND_SECONDS
        assert client.get("/healthz").status_code == 200            # the process itself is fine
    # thawed: the same kind of call works again without a restart of the service
    assert settle(lambda: client.get("/readyz").status_code == 200, 10)
    assert client.post(INVOKE, json=hook_request(SERVICE), headers=bearer(mint(KEY, BASE + INVOKE))).status_code == 200
    app.extensions["msk_cds.storage"].dispose()


def test_feedback_retried_after_an_answer_was_lost_is_stored_once(cluster):
    client = _app(AUTH_DISABLED=True).test_client()
    card = str(uuid.uuid4())
    body = {"feedback": [_item(card), {**_item(card), "overrideReason": {"userComment": "second item"}}]}
    for _ in range(3):               # the EHR did not see the first answer and sends the same feedback again
        assert client.post(FEEDBACK, json=body).get_json() == {"stored": 2}
    assert _rows_for([card]) == {card: 2}


def test_restart_and_freeze_under_load_lose_nothing_acknowledged(cluster):
    """Four clients send feedback (and retry each 503 like an EHR honouring Retry-After, shortened here) while the
    cluster is restarted, then frozen for 3 s, then thawed."""
    app = _app(AUTH_DISABLED=True)
    client = app.test_client()
    client.post(FEEDBACK, json={"feedback": [_item(str(uuid.uuid4()))]})
    threads_before, files_before = threading.active_count(), open_files()
    stop = threading.Event()
    statuses: list[int] = []
    slowest = [0.0]
    acknowledged: list[str] = []
    lock = threading.Lock()

    def sender(worker: int) -> None:
        local = app.test_client()
        while not stop.is_set():
            card = f"fault-{worker}-{uuid.uuid4()}"
            while True:                         # retry the same item until it is acknowledged
                started = time.monotonic()
                response = local.post(FEEDBACK, json={"feedback": [_item(card)]})
                elapsed = time.monotonic() - started
                with lock:
                    statuses.append(response.status_code)
                    slowest[0] = max(slowest[0], elapsed)
                assert response.content_type.startswith("application/"), response.content_type
                if response.status_code == 200:
                    with lock:
                        acknowledged.append(card)
                    break
                assert response.status_code == 503 and response.headers.get("Retry-After")
                time.sleep(0.2)
                if stop.is_set() and time.monotonic() > deadline:
                    return

    deadline = float("inf")
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(sender, n) for n in range(4)]
        time.sleep(1.0)
        cluster.restart()
        time.sleep(1.0)
        with cluster.frozen():
            time.sleep(3.0)
        time.sleep(1.5)
        deadline = time.monotonic() + 15
        stop.set()
        for future in futures:
            future.result(timeout=60)

    assert acknowledged, "no feedback was acknowledged at all"
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert 503 in statuses, "the faults never reached the service (test did not test anything)"
    assert slowest[0] < BOUND_SECONDS, slowest[0]
    rows = _rows_for(acknowledged)
    assert all(rows.get(card) == 1 for card in acknowledged), \
        {card: rows.get(card) for card in acknowledged if rows.get(card) != 1}
    app.extensions["msk_cds.storage"].dispose()
    # no thread (watchdog aside) and no socket is left behind by the outage
    assert settle(lambda: threading.active_count() <= threads_before + 1, 5), threading.enumerate()
    assert settle(lambda: open_files() <= files_before + 2, 5), (open_files(), files_before)
