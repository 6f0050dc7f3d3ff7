"""The request's path from record to cards: record -> findings -> facts -> assessments -> cards."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from hooks.cards.order_cards import order_card
from hooks.cards.render import CardContext, pathway_card, reason_reference
from hooks.cards.suggestions import OrderContext
from hooks.knowledge.clinical import ClinicalKnowledge, clinical_knowledge
from hooks.model import FindingSet, HookResult
from hooks.pathways.engine import active_pathway_ids, assess
from hooks.pathways.facts import patient_facts
from hooks.pathways.orders import review_drafts
from hooks.registry import HookRequest


def _anything_to_act_on(findings: FindingSet) -> bool:
    """Affirmed or uncertain current findings; negated ones alone never start a pathway."""
    return any(f.certainty != "negated" and not f.historical for f in findings.findings)


def _findings(request: HookRequest) -> FindingSet:
    from hooks.findings import extract_findings   # imported here: findings load their NLP pipeline on first use

    return extract_findings(request.record, request.now)


def _context(request: HookRequest, intent: str) -> CardContext:
    patient = request.patient_id or "unknown"
    return CardContext(request.hook_instance, OrderContext(patient, request.user_reference, request.now, intent, None))


def patient_view_cards(request: HookRequest, k: ClinicalKnowledge | None = None) -> HookResult:
    """One card per active pathway; no finding, no card."""
    k = k or clinical_knowledge()
    findings = _findings(request)
    if not _anything_to_act_on(findings):
        return HookResult()
    facts = patient_facts(request.record, request.now, k)
    cctx = _context(request, "proposal")
    cards = [pathway_card(a, facts, cctx, k) for a in assess(findings, facts, k)]
    return HookResult(cards=tuple(_without_repeated_orders(cards)))


def _order_key(action: Mapping[str, Any]) -> tuple[Any, ...] | None:
    resource = action.get("resource") if action.get("type") == "create" else None
    if not isinstance(resource, Mapping):
        return None
    concept = resource.get("code") or resource.get("medicationCodeableConcept") or {}
    return (resource.get("resourceType"),
            tuple((c.get("system"), c.get("code")) for c in concept.get("coding", ())))


def _without_repeated_orders(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two pathways may suggest the same order (osteomyelitis and Charcot both refer to the diabetic foot team):
    in an "any" card, a single-order suggestion already offered by an earlier card is dropped, so accepting every
    card's suggestions never orders the same thing twice. Alternatives (at-most-one) are left whole."""
    offered: set[tuple[Any, ...]] = set()
    for card in cards:
        suggestions = card.get("suggestions") or []
        keys = [[_order_key(a) for a in s.get("actions", ())] for s in suggestions]
        if card.get("selectionBehavior") == "any":
            kept = [s for s, ks in zip(suggestions, keys) if not (len(ks) == 1 and ks[0] in offered)]
            if len(kept) != len(suggestions):
                if kept:
                    card["suggestions"] = kept
                else:
                    card.pop("suggestions", None)
                    card.pop("selectionBehavior", None)
        offered.update(k for ks in keys for k in ks if k is not None)
    return cards


def _selected(drafts: Iterable[Any], selections: Any) -> list[Any]:
    if not isinstance(selections, list):
        return []
    wanted = {"/".join(s.rstrip("/").split("/")[-2:]) for s in selections if isinstance(s, str) and "/" in s}
    return [d for d in drafts if f"{d.get_resource_type()}/{getattr(d, 'id', None)}" in wanted]


def order_hook_cards(request: HookRequest, selected_only: bool, k: ClinicalKnowledge | None = None) -> HookResult:
    """Checks of the draft orders (the selected ones at order-select, all at order-sign) against the pathway."""
    k = k or clinical_knowledge()
    drafts = list(request.record.draft_orders)
    if selected_only:
        drafts = _selected(drafts, request.context.get("selections"))
    if not drafts:
        return HookResult()
    findings = _findings(request)
    if not _anything_to_act_on(findings):
        return HookResult()
    facts = patient_facts(request.record, request.now, k)
    assessments = assess(findings, facts, k)
    active = active_pathway_ids(findings, facts, k)
    issues = review_drafts(drafts, assessments, active, findings, facts, k)
    cctx = _context(request, "order")
    by_pathway: Mapping[str, Any] = {a.pathway.id: a for a in assessments}
    cards = []
    for issue in issues:
        a = by_pathway.get(issue.pathway)
        reason = reason_reference(a.pathway, a.findings, facts) if a is not None else None
        cards.append(order_card(issue, reason, cctx, k))
    return HookResult(cards=tuple(cards))
