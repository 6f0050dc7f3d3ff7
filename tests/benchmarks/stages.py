"""Where a request's time goes: the invoke path's stage functions called one after another on the same input,
outside Flask's request handling, each timed. Nothing in production code is wrapped or changed for this.

The clinical stages are found by name (findings, assessment, cards), because they are the clinical engine's public
entry points; a stage whose entry point is missing is reported as such and its work stays inside "handler".
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import workload
from .stats import Series

REQUEST_STAGES = ("request parsing", "request validation", "prefetch resolution", "FHIR parsing")
CLINICAL_STAGES = ("findings", "assessment", "cards")
RESPONSE_STAGES = ("card ledger", "serialization")


def _optional(module: str, name: str) -> Callable[..., Any] | None:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _patient_view_cards() -> Callable[..., Any] | None:
    """patient-view's card step as hooks/pipeline.py composes it: one planned and rendered card per assessment."""
    plan = _optional("hooks.cards.plans", "plan_pathway_card")
    render_card = _optional("hooks.cards.render", "render")
    wording = _optional("hooks.knowledge.cards", "card_wording")
    context = _optional("hooks.pipeline", "_orders_context")
    knowledge = _optional("hooks.knowledge.clinical", "clinical_knowledge")
    if not (plan and render_card and wording and context and knowledge):
        return None

    def render(request: Any, facts: Any, assessments: Any, findings: Any = None) -> list[Any]:
        from hooks.model import FindingSet

        k, cards = knowledge(), wording()
        octx = context(request, "proposal")
        found = findings if findings is not None else FindingSet()
        return [render_card(plan(a, found, facts, request.hook_instance, octx, k, cards), k, cards,
                            request.hook_instance) for a in assessments]

    return render


@dataclass
class ClinicalEntryPoints:
    """The clinical engine's stage functions, where they exist."""

    extract_findings: Callable[..., Any] | None
    patient_facts: Callable[..., Any] | None
    assess: Callable[..., Any] | None
    render_cards: Callable[..., Any] | None

    @classmethod
    def discover(cls) -> "ClinicalEntryPoints":
        return cls(
            extract_findings=_optional("hooks.findings", "extract_findings"),
            patient_facts=_optional("hooks.pathways.facts", "patient_facts"),
            assess=_optional("hooks.pathways.engine", "assess"),
            render_cards=_patient_view_cards(),
        )

    def stages(self) -> list[str]:
        """The clinical stages that can be timed separately; when not all can, the handler is timed whole."""
        names = []
        if self.extract_findings:
            names.append("findings")
        if self.patient_facts and self.assess and self.extract_findings:
            names.append("assessment")
        if self.render_cards and "assessment" in names:
            names.append("cards")
        return names

    @property
    def complete(self) -> bool:
        return self.stages() == list(CLINICAL_STAGES)


def stage_names(entry: ClinicalEntryPoints) -> list[str]:
    clinical = entry.stages() if entry.complete else [*entry.stages(), "handler"]
    return [*REQUEST_STAGES, *clinical, *RESPONSE_STAGES]


class _Lap:
    """Adds the time since the previous lap to the named series."""

    def __init__(self, series: dict[str, Series]) -> None:
        self.series = series
        self.last = 0

    def start(self) -> None:
        self.last = time.perf_counter_ns()

    def __call__(self, name: str) -> None:
        now = time.perf_counter_ns()
        self.series[name].add_ns(now - self.last)
        self.last = now


def _run_once(app: Any, hook: str, body: bytes, entry: ClinicalEntryPoints, series: dict[str, Series]) -> None:
    from hooks.record import PatientRecord
    from hooks.registry import HookRequest
    from hooks.services import default_registry
    from service import ledger, prefetch
    from service.cds import evaluation_time, json_response
    from service.hookcall import validate_call
    from service.jsonbody import parse_json

    definition = default_registry()[workload.SERVICE_IDS[hook]]
    lap = _Lap(series)
    with app.app_context():
        lap.start()
        parsed = parse_json(body, int(app.config["MAX_JSON_DEPTH"]))
        lap("request parsing")

        call = validate_call(parsed, definition.hook)
        lap("request validation")

        resolved = prefetch.resolve(definition, call)
        lap("prefetch resolution")

        # FHIR parsing: the record validates lazily; ask for every type present, as the rules will.
        record = PatientRecord.from_prefetch(resolved.data, call.context.get("draftOrders"), resolved.unavailable)
        for resource_type in sorted(record.resource_types):
            record.of_type(resource_type)
        record.draft_orders
        request = HookRequest(service_id=definition.id, hook=call.hook, hook_instance=call.hook_instance,
                              context=call.context, record=record, now=evaluation_time(),
                              fhir_server=call.fhir_server)
        lap("FHIR parsing")

        if entry.complete:
            findings = entry.extract_findings(record)
            lap("findings")
            facts = entry.patient_facts(record, request.now)
            assessments = entry.assess(findings, facts)
            lap("assessment")
            # patient-view answers nothing without an active finding (hooks/pipeline.py does the same)
            active = any(f.active for f in findings.findings)
            cards = [c.to_json() for c in entry.render_cards(request, facts, assessments, findings)] if active else []
            lap("cards")
            system_actions: tuple = ()
        else:
            # What can be split is timed first; the handler then does the whole clinical work on the same record
            # (its findings and facts are computed again, so "handler" is the clinical total, not a remainder).
            findings = None
            if entry.extract_findings:
                findings = entry.extract_findings(record)
                lap("findings")
            if "assessment" in entry.stages():
                entry.assess(findings, entry.patient_facts(record, request.now))
                lap("assessment")
            result = definition.handler(request)
            cards, system_actions = list(result.cards), result.system_actions
            lap("handler")

        shown = ledger.after_handler(request, cards)
        lap("card ledger")

        payload: dict[str, Any] = {"cards": shown}
        if system_actions:
            payload["systemActions"] = list(system_actions)
        json_response(payload).get_data()
        lap("serialization")


def stage_split(app: Any, hook: str, bodies: list[bytes], entry: ClinicalEntryPoints) -> dict[str, Series]:
    series = {name: Series(name) for name in stage_names(entry)}
    for body in bodies:
        _run_once(app, hook, body, entry, series)
    return series


def same_answer_as_handler(app: Any, body: bytes, entry: ClinicalEntryPoints) -> bool | None:
    """Whether the stage-by-stage path gives the handler's cards (rules and summaries): proof that the stages
    timed are the work the service does. None when the clinical stages are not all separable."""
    if not entry.complete:
        return None
    from hooks.record import PatientRecord
    from hooks.registry import HookRequest
    from hooks.services import default_registry
    from service import prefetch
    from service.cds import evaluation_time
    from service.hookcall import validate_call
    from service.jsonbody import parse_json

    definition = default_registry()[workload.SERVICE_IDS["patient-view"]]
    with app.app_context():
        call = validate_call(parse_json(body, 64), definition.hook)
        resolved = prefetch.resolve(definition, call)

        def request() -> Any:
            record = PatientRecord.from_prefetch(resolved.data, None, resolved.unavailable)
            return HookRequest(service_id=definition.id, hook=call.hook, hook_instance=call.hook_instance,
                               context=call.context, record=record, now=evaluation_time(),
                               fhir_server=call.fhir_server)

        def key(cards: Any) -> list[tuple[Any, Any]]:
            return [(c.get("summary"), len(c.get("suggestions", ()))) for c in cards]

        handler_cards = key(definition.handler(request()).cards)
        req = request()
        findings = entry.extract_findings(req.record)
        facts = entry.patient_facts(req.record, req.now)
        staged = key(c.to_json() for c in entry.render_cards(req, facts, entry.assess(findings, facts), findings))
    return handler_cards == staged
