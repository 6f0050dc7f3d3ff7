"""Draft orders against the pathway: avoid rules (order_check.*), safety checks on drafted drugs, and ordering
guidance for a drafted drug that fits the current step. Pure: it returns issues, the cards module renders them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from hooks.fhirutil import concept_text, reference_of
from hooks.knowledge.clinical import ClinicalKnowledge, MedicationAction, OrderCheck, clinical_knowledge
from hooks.model import FindingSet
from hooks.pathways.engine import Assessment, MedicationOption, evaluate
from hooks.pathways.facts import PatientFacts, _matches, drug_index, medication_concept, order_duration_days
from hooks.safety.checks import DrugSafety, SafetyFlag, evaluate_drug


@dataclass(frozen=True)
class DraftOrder:
    """A draft order as the checks see it."""

    reference: str
    resource_type: str
    drug: str | None
    kinds: tuple[str, ...]
    duration_days: float | None
    display: str | None = None      # the draft's own text (from the resource: escape before display)


@dataclass(frozen=True)
class OrderIssue:
    """One card's worth of advice about one draft order."""

    draft: DraftOrder
    kind: str                                   # "order_check", "safety" or "guidance"
    rule: str
    pathway: str
    indicator: str
    check: OrderCheck | None = None
    flags: tuple[SafetyFlag, ...] = ()
    replacements: tuple[MedicationOption, ...] = ()
    replacement_companions: tuple[str, ...] = ()
    replacement_service: str | None = None
    add_services: tuple[str, ...] = ()          # keep the draft and add these (screening tests)
    add_drugs: tuple[tuple[str, str], ...] = () # keep the draft and add these (a PPI)
    delete: bool = False
    hold: bool = False                          # the added tests come first: the drafted drug after their results
    guidance: tuple[str, str] | None = None     # (drug id, dosing key) for ordering guidance
    step_title: str | None = None


def draft_order(order: Any, k: ClinicalKnowledge) -> DraftOrder:
    resource_type = order.get_resource_type()
    drug = kinds = None
    duration = None
    if resource_type == "MedicationRequest":
        drug = drug_index().drug_of(medication_concept(order))
        duration = order_duration_days(order)
    elif resource_type == "ServiceRequest":
        code = getattr(order, "code", None)
        kinds = tuple(name for name, vs in k.services.order_kinds.items() if code is not None and _matches(code, vs))
    concept = medication_concept(order) if resource_type == "MedicationRequest" else getattr(order, "code", None)
    return DraftOrder(reference_of(order), resource_type, drug, kinds or (), duration, concept_text(concept))


def _matches_check(check: OrderCheck, draft: DraftOrder, k: ClinicalKnowledge) -> bool:
    match = check.match
    hit = False
    if draft.drug and set(k.drugs[draft.drug].classes) & set(match.drug_classes):
        hit = True
    if set(draft.kinds) & set(match.order_kinds):
        hit = True
    if hit and match.min_days is not None and draft.duration_days is not None:
        hit = draft.duration_days >= match.min_days
    return hit


def _pathway_drugs(med: MedicationAction | None) -> dict[str, str]:
    out: dict[str, str] = {}
    while med is not None:
        for d in med.drugs:
            out.setdefault(d, med.dosing)
        med = med.fallback
    return out


def _replacement(assessments: Iterable[Assessment], exclude_classes: Iterable[str], k: ClinicalKnowledge
                 ) -> tuple[tuple[MedicationOption, ...], tuple[str, ...], str | None]:
    """The current step's suggestible options (not of the drafted drug's classes), their companions, the pathway."""
    exclude = set(exclude_classes)
    for a in assessments:
        options = tuple(o for o in a.options if not set(k.drugs[o.drug].classes) & exclude)
        if options:
            return options, a.companions, a.pathway.id
    return (), (), None


def review_drafts(drafts: Iterable[Any], assessments: tuple[Assessment, ...], active: frozenset[str],
                  findings: FindingSet, facts: PatientFacts, k: ClinicalKnowledge | None = None) -> list[OrderIssue]:
    """Issues for each draft order (only when the patient is on a pathway: no finding, no advice)."""
    k = k or clinical_knowledge()
    if not active:
        return []
    default_pathway = assessments[0].pathway.id if assessments else sorted(active)[0]
    offered = frozenset(c for a in assessments for d in _pathway_drugs(a.step.medications) for c in k.drugs[d].classes)
    issues: list[OrderIssue] = []
    for order in drafts:
        draft = draft_order(order, k)
        if draft.drug is None and not draft.kinds:
            continue
        warned = False
        for check in k.pathway_file.order_checks:
            if not _matches_check(check, draft, k) or not evaluate(check.when, findings, facts, active, offered):
                continue
            warned = True
            pathway = next((p for p in k.pathway_file.pathways if p.id in active and any(
                n.pathway == p.id for n in check.when.walk())), None)
            pathway_id = pathway.id if pathway else default_pathway
            replacements, companions = (), ()
            if check.fix == "replace_with_pathway_step":
                exclude = k.drugs[draft.drug].classes if draft.drug else []
                replacements, companions, found = _replacement(assessments, exclude, k)
                pathway_id = found or pathway_id
            current = next((a for a in assessments if a.pathway.id == pathway_id), None)
            issues.append(OrderIssue(
                draft, "order_check", check.rule, pathway_id, "warning", check=check, replacements=replacements,
                replacement_companions=companions, replacement_service=check.replacement_service, delete=True,
                step_title=current.step.summary.format_map(current.text_values) if current else None))
        if draft.drug is None:
            continue
        safety: DrugSafety = evaluate_drug(draft.drug, facts, k)
        classes = set(k.drugs[draft.drug].classes)
        on_ppi = "ppi" in facts.current_classes()
        serious = [f for f in safety.flags if f.effect in ("block", "withhold", "warn")]
        gi = [f for f in safety.flags if f.effect == "substitute" and "cox2_inhibitor" not in classes and not on_ppi]
        screening = [f for f in safety.flags if f.effect == "require_orders"]
        if serious or gi or screening:
            warned = True
            blocked = safety.blocked
            replacements, companions = (), ()
            if blocked or gi:
                replacements, companions, _ = _replacement(assessments, classes if blocked else [], k)
                if gi and not blocked:
                    preferred = k.checks["gi_risk"].params["prefer_drug"]
                    replacements = tuple(o for o in replacements if o.drug == preferred)
            flags = tuple(serious + gi + screening)
            issues.append(OrderIssue(
                draft, "safety", flags[0].rule, default_pathway, "warning", flags=flags, replacements=replacements,
                replacement_companions=companions, add_services=safety.add_services if not blocked else (),
                add_drugs=safety.add_drugs if gi and not blocked else (), delete=blocked,
                hold=safety.hold and not blocked))
        if warned:
            continue
        for a in assessments:
            dosing = _pathway_drugs(a.step.medications).get(draft.drug)
            if dosing:
                issues.append(OrderIssue(draft, "guidance", f"{a.pathway.id}.order_guidance", a.pathway.id, "info",
                                         flags=tuple(safety.flags), guidance=(draft.drug, dosing),
                                         step_title=a.step.title))
                break
    return issues
