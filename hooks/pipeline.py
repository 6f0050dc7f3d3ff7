"""The request's path, top to bottom: record -> findings -> facts -> assessment -> cards.

Each stage is a plain function over plain data; the hook handlers in hooks/services.py call `patient_view_cards`
or `order_cards`. Cards are planned (hooks/cards/plans.py) and rendered by the one renderer (hooks/cards/render.py).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

from hooks.cards.intake_cards import unreadable_draft_cards
from hooks.cards.plans import plan_order_card, plan_pathway_card
from hooks.cards.render import render
from hooks.cards.suggestions import OrderContext
from hooks.knowledge.cards import card_wording
from hooks.knowledge.clinical import ClinicalKnowledge, clinical_knowledge
from hooks.model import Card, FindingSet, HookResult
from hooks.pathways.engine import active_pathway_ids, assess
from hooks.pathways.facts import patient_facts
from hooks.pathways.orders import review_drafts
from hooks.record import PatientRecord
from hooks.registry import HookRequest


# ------------------------------------------------------------------------------------------------ stages
def findings_of(record: PatientRecord, now: Any = None) -> FindingSet:
    """Findings of the record; `now` decides which studies are current (older ones come out historical)."""
    from hooks.findings import extract_findings   # imported here: findings load their NLP pipeline on first use

    return extract_findings(record, now)


def anything_to_act_on(findings: FindingSet) -> bool:
    """Affirmed or uncertain current findings; negated ones alone never start a pathway."""
    return any(f.certainty != "negated" and not f.historical for f in findings.findings)


def selected_drafts(drafts: Iterable[Any], selections: Any) -> list[Any]:
    if not isinstance(selections, list):
        return []
    wanted = {"/".join(s.rstrip("/").split("/")[-2:]) for s in selections if isinstance(s, str) and "/" in s}
    return [d for d in drafts if f"{d.get_resource_type()}/{getattr(d, 'id', None)}" in wanted]


def _orders_context(request: HookRequest, intent: str) -> OrderContext:
    return OrderContext(request.patient_id or "unknown", request.user_reference, request.now, intent, None)


def pathway_cards(findings: FindingSet, facts: Any, hook_instance: str, octx: OrderContext,
                  k: ClinicalKnowledge | None = None) -> list[Card]:
    """assessment -> cards: one rendered card per active pathway, no order offered twice across them."""
    k = k or clinical_knowledge()
    wording = card_wording()
    return without_repeated_orders([render(plan_pathway_card(a, findings, facts, hook_instance, octx, k, wording), k,
                                           wording, hook_instance) for a in assess(findings, facts, k)])


# ------------------------------------------------------------------------------------------------ hooks
def patient_view_cards(request: HookRequest, k: ClinicalKnowledge | None = None) -> HookResult:
    """One card per active pathway; no finding, no card."""
    k = k or clinical_knowledge()
    record = request.record
    findings = findings_of(record, request.now)
    if not anything_to_act_on(findings):
        return HookResult()
    facts = patient_facts(record, request.now, k)
    cards = pathway_cards(findings, facts, request.hook_instance, _orders_context(request, "proposal"), k)
    return HookResult(cards=tuple(c.to_json() for c in cards))


def order_cards(request: HookRequest, selected_only: bool, k: ClinicalKnowledge | None = None) -> HookResult:
    """Checks of the draft orders (the selected ones at order-select, all at order-sign) against the pathway."""
    # a draft the intake could not read is never silent: an info card names it (hooks/cards/intake_cards.py)
    not_checked = unreadable_draft_cards(request.record.unreadable_drafts, request.hook_instance,
                                         request.context.get("selections") if selected_only else None)
    result = _checked_order_cards(request, selected_only, k)
    return replace(result, cards=(*result.cards, *not_checked)) if not_checked else result


def _checked_order_cards(request: HookRequest, selected_only: bool, k: ClinicalKnowledge | None) -> HookResult:
    k = k or clinical_knowledge()
    record = request.record
    drafts = list(record.draft_orders)
    if selected_only:
        drafts = selected_drafts(drafts, request.context.get("selections"))
    if not drafts:
        return HookResult()
    findings = findings_of(record, request.now)
    if not anything_to_act_on(findings):
        return HookResult()
    facts = patient_facts(record, request.now, k)
    assessments = assess(findings, facts, k)
    issues = review_drafts(drafts, assessments, active_pathway_ids(findings, facts, k), findings, facts, k)
    by_pathway = {a.pathway.id: a for a in assessments}
    cards_text = card_wording()
    octx = _orders_context(request, "order")
    cards = [render(plan_order_card(issue, by_pathway.get(issue.pathway), findings, facts, request.hook_instance,
                                    octx, k, cards_text), k, cards_text, request.hook_instance) for issue in issues]
    return HookResult(cards=tuple(c.to_json() for c in cards))


# ------------------------------------------------------------------------------------------------ across cards
def _order_key(card_action: Any) -> tuple[Any, ...] | None:
    resource = card_action.resource if card_action.type == "create" else None
    if not resource:
        return None
    concept = resource.get("code") or resource.get("medicationCodeableConcept") or {}
    return (resource.get("resourceType"),
            tuple((c.get("system"), c.get("code")) for c in concept.get("coding", ())))


def without_repeated_orders(cards: list[Card]) -> list[Card]:
    """Two pathways may suggest the same order (osteomyelitis and Charcot both refer to the diabetic foot team):
    in an "any" card, a single-order suggestion already offered by an earlier card is dropped, so accepting every
    card's suggestions never orders the same thing twice. Alternatives (at-most-one) are left whole."""
    offered: set[tuple[Any, ...]] = set()
    out = []
    for card in cards:
        keys = [[_order_key(a) for a in s.actions] for s in card.suggestions]
        if card.selection_behavior == "any":
            kept = tuple(s for s, ks in zip(card.suggestions, keys) if not (len(ks) == 1 and ks[0] in offered))
            if len(kept) != len(card.suggestions):
                card = replace(card, suggestions=kept, selection_behavior="any" if kept else None)
        offered.update(key for ks in keys for key in ks if key is not None)
        out.append(card)
    return out
