"""The CDS Hooks routes: discovery, service invocation and feedback."""
from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

import orjson
from flask import Blueprint, Response, current_app, g

from hooks import budget
from hooks.knowledge import knowledge_version
from hooks.record import PatientRecord
from hooks.registry import CdsServiceDefinition, HookRequest
from service.config import service_registry
from service import explain, intake, logs, metrics, prefetch
from service.errors import CdsError
from service.feedback import validate_feedback
from service.hookcall import validate_call
from service.jsonbody import json_body
from service import ledger
from service.storage import get_storage

bp = Blueprint("cds", __name__)

KNOWLEDGE_EXTENSION = "org.msk-cds.knowledge-version"
REVIEW_EXTENSION = "org.msk-cds.knowledge-review"


def knowledge_review() -> dict[str, Any]:
    """Governance view of the knowledge in discovery: how many cited sources are verified (cards never say it)."""
    from hooks.knowledge.clinical import clinical_knowledge

    sources = list(clinical_knowledge().evidence.values())
    unverified = sorted(s.id for s in sources if s.status != "verified")
    return {"status": "verified" if not unverified else "pending-review",
            "sourcesVerified": len(sources) - len(unverified), "sourcesUnverified": len(unverified)}
RECORD_NOTICE_SOURCE = "MSK imaging CDS: service notice"
INTAKE_EXTENSION = "org.msk-cds.intake"


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(type(value).__name__)


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload, default=_json_default), status=status, content_type="application/json")


def _definition(service_id: str) -> CdsServiceDefinition:
    definition = service_registry().get(service_id)
    if definition is None:
        raise CdsError.one(404, None, "no CDS service with this id", "not-found")
    return definition


def evaluation_time() -> dt.datetime:
    fixed = current_app.config.get("FIXED_NOW")
    return fixed if isinstance(fixed, dt.datetime) else dt.datetime.now(dt.timezone.utc)


@bp.get("/cds-services")
def discovery() -> Response:
    extension = {KNOWLEDGE_EXTENSION: knowledge_version(), REVIEW_EXTENSION: knowledge_review()}
    services = [d.discovery_entry(extension) for d in service_registry().values()]
    return json_response({"services": services})


@bp.post("/cds-services/<service_id>")
def invoke(service_id: str) -> Response:
    definition = _definition(service_id)
    # g.cds_* fields are what service.logs writes on the request line (PHI-free counts and ids).
    g.cds_service_id = definition.id
    body = json_body()
    call = validate_call(body, definition.hook,
                         allow_insecure_http=bool(current_app.config.get("FHIR_ALLOW_INSECURE_HTTP")))
    g.cds_hook_instance = call.hook_instance
    resolved = prefetch.resolve(definition, call)
    g.cds_prefetch = {"provided": resolved.provided, "fetched": resolved.fetched,
                      "unavailable": len(resolved.unavailable)}
    record = PatientRecord.from_prefetch(resolved.data, call.context.get("draftOrders"), resolved.unavailable,
                                         local_timezone=intake.local_zone(current_app.config.get("EHR_LOCAL_TIMEZONE")),
                                         expected_types=intake.prefetch_types(definition.prefetch))
    request = HookRequest(
        service_id=definition.id,
        hook=call.hook,
        hook_instance=call.hook_instance,
        context=call.context,
        record=record,
        now=evaluation_time(),
        fhir_server=call.fhir_server,
    )
    # issue 12: one work budget over the evaluation (hooks.budget): a chart too large to read in time is read
    # newest report first, and an info card says what was left unread
    work = budget.WorkBudget(float(current_app.config["EVALUATION_BUDGET_SECONDS"]),
                             int(current_app.config["EVALUATION_MAX_REPORT_CHARS"]))
    with budget.scope(work):
        result = definition.handler(request)
    result_cards = list(result.cards)
    if work.incomplete:
        result_cards.append(budget.incomplete_record_card(work, RECORD_NOTICE_SOURCE))
        metrics.count_incomplete_record(definition.id)
    logs.annotate(reports_read=work.reports_read, reports_not_read=work.reports_skipped,
                  evaluation_ms=round(work.elapsed() * 1000, 1))
    # order-sign does not repeat order-select cards; overridden cards may be withheld; cards are recorded and counted
    cards = explain.add_links(ledger.after_handler(request, result_cards))
    payload: dict[str, Any] = {"cards": cards}
    if result.system_actions:
        payload["systemActions"] = list(result.system_actions)
    g.cds_card_count = len(cards)
    report = intake.report(record)
    logs.annotate(system_actions=len(result.system_actions), skipped_resources=len(record.skipped),
                  **report.log_fields())
    metrics.count_intake(definition.id, report.counts)
    if current_app.config.get("INTAKE_DIAGNOSTICS_EXTENSION") and report.counts:
        payload["extension"] = {INTAKE_EXTENSION: report.extension()}
    return json_response(payload)


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    definition = _definition(service_id)
    g.cds_service_id = definition.id
    items = validate_feedback(json_body())
    # g.auth_issuer is set by service.auth when the call carried a verified JWT.
    stored = get_storage().save_feedback(definition.id, items, issuer=g.get("auth_issuer"))
    logs.annotate(stored=stored)
    for item in items:
        metrics.count_feedback(definition.id, item["outcome"])
    return json_response({"stored": stored})
