"""The pathway engine: findings + patient facts -> one Assessment per active pathway (where the patient is, why,
what comes next, the medication options after safety checks). Pure functions over the knowledge data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from hooks.knowledge.clinical import ClinicalKnowledge, Cond, Pathway, SiteGroup, Step, clinical_knowledge
from hooks.model import Finding, FindingSet
from hooks.pathways.facts import PatientFacts
from hooks.safety.checks import DrugSafety, evaluate_drug

BIOLOGIC_CLASSES = frozenset({"tnf_inhibitor", "il17_inhibitor", "jak_inhibitor"})


@dataclass(frozen=True)
class Reason:
    """One fact behind the step, with the resources it came from."""

    fact: str
    label: str
    value: str
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class MedicationOption:
    drug: str
    dosing: str
    recommended: bool
    safety: DrugSafety


@dataclass(frozen=True)
class Assessment:
    pathway: Pathway
    step: Step
    findings: tuple[Finding, ...]
    reasons: tuple[Reason, ...]
    options: tuple[MedicationOption, ...] = ()          # suggestible (not blocked)
    blocked: tuple[MedicationOption, ...] = ()          # withheld by a safety check (said in the card)
    already_on: tuple[str, ...] = ()                    # current drugs that make a suggestion unnecessary
    services: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    text_values: dict[str, str] = field(default_factory=dict)
    companions: tuple[str, ...] = ()                    # services ordered with each medication option
    withheld: tuple[MedicationOption, ...] = ()         # drugs the next steps mention that a safety check blocks
    summary: str | None = None                          # a fallback's own summary when it was used

    @property
    def rule(self) -> str:
        return self.pathway.rule(self.step.id)

    @property
    def citations(self) -> tuple[str, ...]:
        out = list(self.pathway.evidence)
        for option in (*self.options, *self.blocked):
            for flag in option.safety.flags:
                out.extend(c for c in flag.citations if c not in out)
        return tuple(out)


@dataclass
class _Context:
    findings: FindingSet
    facts: PatientFacts
    active_pathways: frozenset[str] = frozenset()
    offered_classes: frozenset[str] = frozenset()
    unknown_facts: set[str] = field(default_factory=set)
    used_facts: list[str] = field(default_factory=list)
    site_groups: Mapping[str, SiteGroup] = field(default_factory=dict)
    parameters: Mapping[str, float] = field(default_factory=dict)


def _in_group(finding: Finding, group: SiteGroup, findings: FindingSet) -> bool:
    if finding.site is not None:
        return finding.site in group.sites
    region = next((r.region for r in findings.reports if r.reference == finding.source.reference), None)
    return region in group.regions


def holds(cond: Cond, ctx: _Context) -> bool:
    """Evaluate one condition of the pathway language. Unknown facts make their condition false."""
    if cond.all is not None:
        return all(holds(c, ctx) for c in cond.all)
    if cond.any is not None:
        return any(holds(c, ctx) for c in cond.any)
    if cond.not_ is not None:
        return not holds(cond.not_, ctx)
    group = ctx.site_groups[cond.at] if cond.at is not None else None
    if cond.finding is not None:
        return any(group is None or _in_group(f, group, ctx.findings) for f in ctx.findings.active(cond.finding))
    if cond.possible is not None:
        return any(not f.historical and f.certainty in ("affirmed", "uncertain")
                   and (group is None or _in_group(f, group, ctx.findings))
                   for f in ctx.findings.findings if f.concept == cond.possible)
    if cond.condition is not None:
        return bool(ctx.facts.conditions.get(cond.condition))
    if cond.pathway is not None:
        return cond.pathway in ctx.active_pathways
    if cond.step_offers is not None:
        return cond.step_offers in ctx.offered_classes
    name = cond.fact
    value = ctx.facts.get(name)
    if name not in ctx.used_facts:
        ctx.used_facts.append(name)
    if value is None:
        ctx.unknown_facts.add(name)
        return False
    for op, name in (("gt", cond.gt), ("ge", cond.ge), ("lt", cond.lt), ("le", cond.le)):
        if name is not None:
            limit = ctx.parameters[name]
            return {"gt": value > limit, "ge": value >= limit, "lt": value < limit, "le": value <= limit}[op]
    return bool(value)



def fact_text(value: Any) -> str:
    if value is None:
        return "unknown"
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def text_values(facts: PatientFacts, reassess_date: str | None = None,
                k: ClinicalKnowledge | None = None) -> dict[str, str]:
    """Values for the {fields} of the step wording ("unknown" when a fact is unknown), with the named parameters."""
    k = k or clinical_knowledge()
    values = {name: fact_text(k.pathway_file.param(name)) for name in k.pathway_file.parameters}
    values.update({name: fact_text(value) for name, value in facts.values.items()})
    values.update({key: "unknown" for key in ("nsaid_trial_due", "response_check_due", "reassess_date")})
    values.update(facts.dates)
    if reassess_date:
        values["reassess_date"] = reassess_date
    return values


def _template_fields(text: str) -> list[str]:
    import string

    return [name for _, name, _, _ in string.Formatter().parse(text) if name]


def _options(step: Step, facts: PatientFacts, k: ClinicalKnowledge) -> tuple[list, list, list, Any]:
    """(suggestible options, blocked options, drugs already on, the medication action used)."""
    med = step.medications
    if med is None:
        return [], [], [], None
    already = [d for d in sorted(facts.current_drugs) if set(k.drugs[d].classes) & set(med.skip_if_current)]
    if already:
        return [], [], already, med
    blocked: list[MedicationOption] = []
    while med is not None:
        candidates = [d for d in med.drugs if d not in facts.current_drugs]
        if med.exclude_failed_family:
            candidates = [d for d in candidates if (k.drugs[d].biosimilar_family or d) not in facts.failed_families]
        evaluated = [(d, evaluate_drug(d, facts, k)) for d in candidates]
        allowed = [(d, s) for d, s in evaluated if not s.blocked]
        blocked += [MedicationOption(d, med.dosing, False, s) for d, s in evaluated if s.blocked]
        if allowed or med.fallback is None:
            break
        med = med.fallback
    prefer = list(med.prefer_in_pregnancy) if facts.get("pregnant") else []
    if facts.gi_risk_factors and any("nsaid" in k.drugs[d].classes for d, _ in allowed):
        prefer.append(k.checks["gi_risk"].params["prefer_drug"])
    recommended = next((d for d, _ in allowed if d in prefer), None)
    if recommended is None and med.recommended_classes:
        recommended = next((d for d, _ in allowed if set(k.drugs[d].classes) & set(med.recommended_classes)), None)
    if recommended is None and allowed and not med.no_recommendation:
        recommended = allowed[0][0]
    allowed.sort(key=lambda item: item[0] != recommended)      # the recommended alternative goes first
    options = [MedicationOption(d, s.dosing or _indication_dosing(d, med, facts, k), d == recommended, s)
               for d, s in allowed]
    return options, blocked, [], med


def _indication_dosing(drug: str, med: Any, facts: PatientFacts, k: ClinicalKnowledge) -> str:
    """The dosing for the patient's coded indication (dosing_by_condition), else the action's default."""
    for value_set, key in med.dosing_by_condition.items():
        if facts.conditions.get(value_set) and key in k.drugs[drug].dosing:
            return key
    return med.dosing


def assess(findings: FindingSet, facts: PatientFacts, k: ClinicalKnowledge | None = None) -> tuple[Assessment, ...]:
    """One Assessment per active pathway (deferring pathways give way), in pathways.yaml order."""
    k = k or clinical_knowledge()
    ctx = _Context(findings, facts, site_groups=k.pathway_file.site_groups, parameters=k.pathway_file.parameters)
    active = frozenset(p.id for p in k.pathway_file.pathways if holds(p.entry, ctx))
    ctx.active_pathways = active
    out: list[Assessment] = []
    for pathway in k.pathway_file.pathways:
        if pathway.id not in active or set(pathway.defer_to) & active:
            continue
        ctx.used_facts, ctx.unknown_facts = [], set()
        chosen: Step | None = None
        for step in pathway.steps:
            if set(step.defer_to) & active:
                continue
            ctx.used_facts = []
            if step.when is None or holds(step.when, ctx):
                chosen = step
                break
        if chosen is None:
            continue
        out.append(_assessment(pathway, chosen, ctx, k))
    return tuple(out)


def _assessment(pathway: Pathway, step: Step, ctx: _Context, k: ClinicalKnowledge) -> Assessment:
    facts = ctx.facts
    shown = [f for concept in pathway.findings_shown for f in ctx.findings.findings
             if f.concept == concept and not f.historical]
    named = list(ctx.used_facts)
    for text in (step.where, step.summary):
        named += [n for n in _template_fields(text) if n in facts.values and n not in named]
    reasons = tuple(Reason(n, k.pathway_file.fact_labels.get(n, n), fact_text(facts.get(n)), tuple(facts.sources.get(n, ())))
                    for n in named)
    options, blocked, already, used = _options(step, facts, k)
    notes = list(pathway.notes)
    if pathway.t1_required:
        for report in ctx.findings.reports:
            if report.fluid_sensitive_sequence and not report.t1_sequence:
                notes.insert(0, k.pathway_file.t1_missing_note.format(report=report.reference))
    unknown = sorted({k.pathway_file.fact_labels.get(n, n) for n in ctx.unknown_facts} | set(facts.unknown))
    return Assessment(
        pathway=pathway, step=step, findings=tuple(shown), reasons=reasons, options=tuple(options),
        blocked=tuple(blocked), already_on=tuple(already), services=tuple(step.services), notes=tuple(notes),
        unknown=tuple(unknown), text_values=text_values(facts, k=k),
        companions=tuple(used.companions) if used is not None else (),
        summary=used.summary if used is not None and used is not step.medications and options else None,
        withheld=tuple(MedicationOption(d, "", False, s) for d, s in
                       ((d, evaluate_drug(d, facts, k)) for d in step.also_check) if s.blocked),
    )


def active_pathway_ids(findings: FindingSet, facts: PatientFacts, k: ClinicalKnowledge | None = None) -> frozenset[str]:
    """Ids of the pathways whose entry holds (before deferral): what the order checks test against."""
    k = k or clinical_knowledge()
    ctx = _Context(findings, facts, site_groups=k.pathway_file.site_groups, parameters=k.pathway_file.parameters)
    return frozenset(p.id for p in k.pathway_file.pathways if holds(p.entry, ctx))


def evaluate(cond: Cond, findings: FindingSet, facts: PatientFacts, active: Iterable[str],
             offered_classes: Iterable[str] = ()) -> bool:
    """Evaluate a condition outside a pathway (order checks)."""
    k = clinical_knowledge()
    return holds(cond, _Context(findings, facts, frozenset(active), frozenset(offered_classes),
                                site_groups=k.pathway_file.site_groups, parameters=k.pathway_file.parameters))
