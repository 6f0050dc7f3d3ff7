"""What each card says, as data (`CardPlan`): pathway cards from an Assessment, draft-order cards from an OrderIssue.
The suggestions are built here from the same drug, dosing and service data as the card's step and labels, so the
text and the one-click orders cannot disagree. One order per suggestion, except orders that belong together (a PPI
with its NSAID, screening tests held before their drug, a swap that deletes the draft it replaces)."""
from __future__ import annotations

import datetime as dt
from typing import Any, Iterable

from hooks.cards.render import LABEL_MAX, CardPlan, card_uuid, fill, findings_provenance, short, study_name
from hooks.cards.suggestions import OrderContext, create, medication_request, service_request
from hooks.knowledge.cards import CardsFile, RuleWording
from hooks.knowledge.clinical import ClinicalKnowledge, Dosing, Pathway
from hooks.model import Action, Finding, FindingSet, Suggestion
from hooks.pathways.engine import Assessment, MedicationOption
from hooks.pathways.facts import PatientFacts
from hooks.pathways.orders import OrderIssue


def override_reasons(k: ClinicalKnowledge) -> tuple[dict[str, str], ...]:
    system = k.safety.override_system
    return tuple({"system": system, "code": r.code, "display": r.display} for r in k.safety.override_reasons)


def reason_reference(pathway: Pathway, findings: Iterable[Finding], facts: PatientFacts) -> str | None:
    """The Condition that supports the pathway, else the report of its first affirmed finding."""
    for value_set in pathway.reason_conditions:
        refs = facts.conditions.get(value_set)
        if refs:
            return refs[0]
    for f in findings:
        if f.active and f.source.reference.startswith(("DiagnosticReport/", "Condition/")):
            return f.source.reference
    return None


def wording_for(rule: str, pathway: Pathway | None, step_summary: str | None, step_next: list[str] | None,
                citations: list[str], cards: CardsFile) -> RuleWording:
    """The rule's entry in cards.yaml; a rule without one falls back to its own summary, first step line and
    citations, so a new step renders before its wording is written."""
    wording = cards.rules.get(rule)
    if wording is not None:
        return wording
    return RuleWording(summary=short(step_summary or "", 139) or None, step=short((step_next or [""])[0], 200),
                       sources=citations or (pathway.evidence if pathway else ["seed_000"]))


# ------------------------------------------------------------------------------------------------ labels
def _timing(frequency: int, period: float, unit: str, cards: CardsFile) -> str:
    return cards.frequency.get(f"{frequency}/{period:g}/{unit}") or cards.frequency_other.format(
        frequency=frequency, period=f"{period:g}", unit=cards.period_units.get(unit, unit))


def dose_text(dosing: Dosing, cards: CardsFile) -> str:
    """"500 mg twice daily" (with its loading doses first) from the same dose and timing the order carries."""
    amount = f"{dosing.dose.value:g} {dosing.dose.unit}"
    if dosing.count == 1:
        return f"{amount} {cards.single_dose}"
    text = f"{amount} {_timing(dosing.frequency, dosing.period, dosing.period_unit, cards)}"
    text += f" {cards.as_needed}" if getattr(dosing, "as_needed", False) else ""
    load = getattr(dosing, "loading", None)
    if load is not None:
        first = f"{load.dose.value:g} {load.dose.unit}"
        first += f" {cards.single_dose}" if load.count == 1 else \
            f" {_timing(load.frequency, load.period, load.period_unit, cards)} x{load.count}"
        text = cards.loading.format(loading=first, dose=text)
    return text


def drug_label(drug_id: str, dosing_key: str, k: ClinicalKnowledge, cards: CardsFile) -> tuple[str, str]:
    drug = k.drugs[drug_id]
    return drug.name, dose_text(drug.dosing[dosing_key], cards)


def label(text: str) -> str:
    return short(text, LABEL_MAX)


def service_label(service_id: str, k: ClinicalKnowledge, cards: CardsFile) -> str:
    return label(cards.service_labels.get(service_id) or k.services.services[service_id].text)


def _service_short(service_id: str, k: ClinicalKnowledge, cards: CardsFile) -> str:
    if service_id in cards.short_names:
        return cards.short_names[service_id]
    text = cards.service_labels.get(service_id) or k.services.services[service_id].text
    return text.split(" ", 1)[1] if text.split(" ", 1)[0] in ("Order", "Refer") and " " in text else text


# ------------------------------------------------------------------------------------------------ suggestions
class _Builder:
    def __init__(self, k: ClinicalKnowledge, cards: CardsFile, octx: OrderContext, hook_instance: str, key: str,
                 reassess_note: str) -> None:
        self.k, self.cards, self.octx, self.hook_instance, self.key = k, cards, octx, hook_instance, key
        self.reassess_note = reassess_note
        self.index = 0

    def _uuid(self) -> str:
        self.index += 1
        return card_uuid(self.hook_instance, self.key, f"s{self.index - 1}")

    def drug_action(self, drug_id: str, dosing_key: str) -> Action:
        return create(medication_request(drug_id, dosing_key, self.octx, self.k, self.reassess_note),
                      self.k.drugs[drug_id].dosing[dosing_key].text)

    def service_action(self, service_id: str, priority: str = "routine") -> Action:
        return create(service_request(service_id, self.octx, self.k, priority), self.k.services.services[service_id].text)

    def medication(self, option: MedicationOption, priority: str = "routine", pre: tuple[Action, ...] = (),
                   template: str | None = None) -> Suggestion:
        """The drug (with a PPI when GI risk asks for one; with its missing screening tests when the safety data
        ask for them); held drugs become "order the tests first"."""
        labels = self.cards.labels
        name, dose = drug_label(option.drug, option.dosing, self.k, self.cards)
        safety = option.safety
        if safety.hold:
            actions = [self.service_action(s, priority) for s in safety.add_services]
            tests = ", ".join(_service_short(s, self.k, self.cards) for s in safety.add_services)
            return Suggestion(label(labels.tests_first.format(tests=tests, drug=_class_name(option.drug, self.k,
                                                                                          self.cards))), self._uuid(),
                              (*pre, *actions), option.recommended)
        actions = [self.drug_action(option.drug, option.dosing)]
        extras: list[str] = []
        for drug_id, dosing_key in safety.add_drugs:
            actions.append(self.drug_action(drug_id, dosing_key))
            extras.append(self.k.drugs[drug_id].name)
        for service_id in safety.add_services:
            actions.append(self.service_action(service_id, priority))
            extras.append(_service_short(service_id, self.k, self.cards))
        text = (template or labels.start).format(drug=name, dose=dose)
        if extras:
            text = labels.start_with.format(drug=name, dose=dose, companion=", ".join(extras)) if template is None \
                else f"{text} + {', '.join(extras)}"
            if len(text) > LABEL_MAX:
                text = (template or labels.start).format(drug=name, dose="").rstrip() + f" + {', '.join(extras)}"
        return Suggestion(label(text), self._uuid(), (*pre, *actions), option.recommended)

    def service(self, service_id: str, priority: str = "routine", pre: tuple[Action, ...] = (),
                text: str | None = None) -> Suggestion:
        return Suggestion(label(text or service_label(service_id, self.k, self.cards)), self._uuid(),
                          (*pre, self.service_action(service_id, priority)))

    def plain(self, text: str, actions: tuple[Action, ...], recommended: bool = False) -> Suggestion:
        return Suggestion(label(text), self._uuid(), actions, recommended)


# ------------------------------------------------------------------------------------------------ pathway cards
def _finding_name(a: Assessment, cards: CardsFile) -> str:
    """The finding a pathway card leads with (the step's or entry's concept first), capitalised for a summary."""
    concepts = [c for c in decisive_concepts(a) if c != "|"]
    shown = [f for f in a.findings if f.certainty != "negated" and not f.historical]
    ordered = sorted(shown, key=lambda f: concepts.index(f.concept) if f.concept in concepts else len(concepts))
    name = cards.findings.get(ordered[0].concept, "") if ordered else (a.pathway.topic.display or "")
    return name[:1].upper() + name[1:]


def _class_name(drug_id: str, k: ClinicalKnowledge, cards: CardsFile) -> str:
    return next((cards.classes[c] for c in k.drugs[drug_id].classes if c in cards.classes), k.drugs[drug_id].name)


def _lower(label: str) -> str:
    """"On an anticoagulant" -> "on an anticoagulant"; acronyms ("NSAID allergy", "eGFR") stay."""
    return label if label[1:2].isupper() or label[:1].islower() else label[:1].lower() + label[1:]


def _literal(text: str) -> str:
    """Text already filled, used where a template is expected."""
    return text.replace("{", "{{").replace("}", "}}")


def decisive_concepts(a: Assessment) -> tuple[str, ...]:
    """The finding concepts the step's condition names, "|", those the pathway's entry names: the card's finding
    line shows the first group present (the red marrow variant beside synovitis is not what the card is about)."""
    def concepts(cond: Any) -> list[str]:
        return [n.finding or n.possible for n in cond.walk() if n.finding or n.possible] if cond is not None else []

    return (*dict.fromkeys(concepts(a.step.when)), "|", *dict.fromkeys(concepts(a.pathway.entry)))

def _fact_line(a: Assessment, k: ClinicalKnowledge, cards: CardsFile) -> str | None:
    parts = []
    for r in a.reasons:
        if r.value in ("unknown", "no"):
            continue
        template = cards.facts.get(r.fact)
        parts.append(template.format(value=r.value) if template else cards.layout.fact.format(label=r.label, value=r.value))
    text = "; ".join(dict.fromkeys(parts))
    return text[:1].upper() + text[1:] if text else None


def _safety_reasons(options: Iterable[MedicationOption], k: ClinicalKnowledge) -> tuple[list[str], list[str]]:
    """(decisive lines: warnings and unknowns, then the rest: substitutions and added tests), each flag once."""
    first: list[str] = []
    rest: list[str] = []
    for option in options:
        for flag in option.safety.flags:
            (first if flag.effect in ("block", "withhold", "warn", "unknown") else rest).append(flag.text)
    return first, rest


def plan_pathway_card(a: Assessment, findings: FindingSet, facts: PatientFacts, hook_instance: str,
                      octx: OrderContext, k: ClinicalKnowledge, cards: CardsFile) -> CardPlan:
    step, pathway, rule = a.step, a.pathway, a.rule
    values = dict(a.text_values)
    wording = wording_for(rule, pathway, step.summary, step.next, [], cards)
    reason = reason_reference(pathway, a.findings, facts)
    octx = OrderContext(octx.patient_id, octx.user, octx.now, octx.intent, reason)
    build = _Builder(k, cards, octx, hook_instance, rule, k.pathway_file.card_text.reassess_note)
    suggestions: list[Suggestion] = []
    held_seen: set[tuple[str, ...]] = set()
    for option in a.options:
        if option.safety.hold:
            # the same tests come first for every alternative: one suggestion orders them
            if option.safety.add_services in held_seen:
                continue
            held_seen.add(option.safety.add_services)
        suggestions.append(build.medication(option, step.service_priority))
    # already on the drug, or every drug withheld by a safety check: the step's other orders still stand
    services = list(a.companions) if a.options else (
        list(step.services) + ([s for s in a.companions if s not in step.services]
                               if a.already_on or a.blocked else []))
    suggestions += [build.service(s, step.service_priority) for s in dict.fromkeys(services)]
    # drug alternatives are exclusive; companion orders stand beside them (each its own click)
    behavior = "at-most-one" if a.options and not (services and a.options) else "any"

    lay = cards.layout
    # each blocking flag once, whichever drugs it withholds (its wording says what is not offered and why)
    withheld = [f.text for o in (*a.blocked, *a.withheld) for f in o.safety.flags if f.effect in ("block", "withhold")]
    decisive, other = _safety_reasons(a.options, k)
    already = [lay.already_on.format(drug=k.drugs[d].name) for d in a.already_on]
    facts_line = _fact_line(a, k, cards)
    # the data we could not get (medication history, allergies...) in one line; the facts that depend on it are in
    # the provenance, and the safety flags they raise say what is withheld
    fact_labels = set(k.pathway_file.fact_labels.values())
    missing = [u for u in a.unknown if u in facts.unknown and u not in fact_labels] or [_lower(u) for u in a.unknown]
    unknown = [lay.unknown.format(items=", ".join(missing))] if missing else []
    warnings = [t for o in a.options for f in o.safety.flags if f.effect in ("block", "withhold", "warn") for t in [f.text]]
    unknown_flags = [t for t in decisive if t not in warnings]
    data_missing = [line for line in unknown if any(u in facts.unknown and u not in fact_labels for u in a.unknown)]
    reasons = tuple(dict.fromkeys([*data_missing, *withheld, *warnings, *unknown, *already,
                                   *([facts_line] if facts_line else []), *unknown_flags, *other]))

    summary = step_text = None
    indicator = step.indicator
    if a.summary and a.options and step.medications is not None:
        # the step's first choice is contraindicated and the next class is offered (a fallback of the data)
        first = _class_name(step.medications.drugs[0], k, cards)
        alternative = _class_name(a.options[0].drug, k, cards)
        summary = lay.alternative.replace("{first}", first).replace("{alternative}", alternative)
        step_text = lay.alternative_step.replace("{first}", first).replace("{alternative}", alternative)
    if a.options and all(o.safety.hold for o in a.options):
        # only the tests are offered (screening first): the card says so, not "start the drug"
        flag = next((f for o in a.options for f in o.safety.flags if f.effect == "require_orders"), None)
        first_class = _class_name(a.options[0].drug, k, cards)
        summary = lay.tests_first_summary.replace("{first}", first_class)
        if flag is not None and flag.rule in cards.rules:
            step_text = _literal(cards.rules[flag.rule].step)
    if a.blocked and not a.options:
        # every medicine of the step is withheld: the card leads with what the blocking check asks for first
        flag = next(f for o in a.blocked for f in o.safety.flags if f.effect in ("block", "withhold"))
        first_step = cards.rules[flag.rule].step if flag.rule in cards.rules else flag.text
        first_class = _class_name(a.blocked[0].drug, k, cards)
        summary = lay.all_blocked.replace("{first}", first_class).replace("{action}", _literal(_lower(first_step)))
        step_text = _literal(first_step)
        indicator = "warning" if indicator == "info" else indicator
    if any(o.safety.warns for o in a.options) or a.blocked:
        # a risk to weigh, or a drug of this step withheld by a safety check: not just information
        indicator = "warning" if indicator == "info" else indicator
    caution = None
    if pathway.t1_required:
        for report in findings.reports:
            if report.fluid_sensitive_sequence and not report.t1_sequence:
                caution = k.pathway_file.t1_missing_note.format(report=study_name(report, cards))
                break
    citations = tuple(c for o in (*a.options, *a.blocked) for f in o.safety.flags for c in f.citations
                      if f.effect in ("block", "withhold", "warn"))
    provenance = {
        "findings": findings_provenance(a.findings, findings.reports),
        "facts": [{"name": r.fact, "value": r.value, "sources": list(r.sources)} for r in a.reasons],
        "unknown": list(a.unknown),
        "flags": [{"rule": f.rule, "effect": f.effect, "drug": o.drug, "sources": list(f.sources)}
                  for o in (*a.options, *a.blocked, *a.withheld) for f in o.safety.flags],
        "notes": [n.format(report="") if "{report}" in n else n for n in a.notes],
    }
    return CardPlan(
        decisive=decisive_concepts(a),
        rule=rule, pathway=pathway.id, step=step.id, indicator=indicator, wording=wording, values=values,
        findings=a.findings, reports=findings.reports, fallback_finding=pathway.topic.display,
        reasons=reasons, suggestions=tuple(suggestions), selection_behavior=behavior,
        dedupe_key=f"{rule}|Patient/{octx.patient_id}", topic=pathway.topic.fhir(), caution=caution,
        summary=summary, step_text=step_text, extra_citations=citations, provenance=provenance,
        override_reasons=override_reasons(k))


# ------------------------------------------------------------------------------------------------ draft orders
def _fix_suggestions(issue: OrderIssue, build: _Builder, k: ClinicalKnowledge, cards: CardsFile,
                     draft_name: str) -> tuple[list[Suggestion], str]:
    labels = cards.labels
    ref = issue.draft.reference
    removal = Action("delete", labels.remove_draft.format(drug=draft_name), resource_id=ref)
    out: list[Suggestion] = []
    if issue.add_services or issue.add_drugs:
        actions = [build.drug_action(d, dosing) for d, dosing in issue.add_drugs]
        actions += [build.service_action(s) for s in issue.add_services]
        names = [" ".join(drug_label(d, dosing, k, cards)) for d, dosing in issue.add_drugs]
        names += [_service_short(s, k, cards) for s in issue.add_services]
        if getattr(issue, "hold", False):
            # screening first: the tests now; the drafted drug is removed and ordered once the results are known
            out.append(build.plain(labels.tests_first.format(tests=", ".join(names), drug=draft_name),
                                   (removal, *actions)))
        else:
            out.append(build.plain(labels.add_to_draft.format(items=", ".join(names)), tuple(actions)))
    for option in issue.replacements:
        out.append(build.medication(option, pre=(removal,), template=labels.replace_draft))
    companions = [s for s in issue.replacement_companions] if issue.replacements else []
    if issue.replacement_service:
        out.append(build.service(issue.replacement_service, pre=(removal,), text=labels.replace_draft_service.format(
            service=_service_short(issue.replacement_service, k, cards))))
    if issue.delete or not out:
        out.append(build.plain(labels.remove_draft.format(drug=draft_name), (removal,)))
    out += [build.service(s) for s in companions]
    behavior = "any" if companions else "at-most-one"
    return out, behavior


def _draft_name(issue: OrderIssue, k: ClinicalKnowledge) -> str:
    if issue.draft.drug:
        return k.drugs[issue.draft.drug].name
    if issue.draft.display:
        return issue.draft.display
    return "order"


def plan_order_card(issue: OrderIssue, a: Assessment | None, findings: FindingSet, facts: PatientFacts,
                    hook_instance: str, octx: OrderContext, k: ClinicalKnowledge, cards: CardsFile) -> CardPlan:
    ref = issue.draft.reference
    key = f"{issue.rule}|{ref}"
    reason = reason_reference(a.pathway, a.findings, facts) if a is not None else None
    octx = OrderContext(octx.patient_id, octx.user, octx.now, octx.intent, reason)
    build = _Builder(k, cards, octx, hook_instance, key, k.pathway_file.card_text.reassess_note)
    pathway = k.pathways.get(issue.pathway)
    name = _draft_name(issue, k)
    draft_text = name + (f", {issue.draft.duration_days:g} days" if issue.draft.duration_days is not None else "")
    values: dict[str, Any] = dict(a.text_values) if a is not None else {}
    values["drug"] = name[:1].upper() + name[1:]
    reasons: list[str] = []
    suggestions: list[Suggestion] = []
    behavior = "at-most-one"
    summary = None
    citations: list[str] = []
    if issue.kind == "guidance":
        drug_id, dosing_key = issue.guidance
        dosing = k.drugs[drug_id].dosing[dosing_key]
        days = dosing.reassess_days or dosing.duration_days
        citations = list(dict.fromkeys([*dosing.citations, *(pathway.evidence if pathway else [])]))
        dose = dose_text(dosing, cards)
        summary = _literal(k.pathway_file.order_guidance.summary.format(drug=k.drugs[drug_id].name.capitalize(),
                                                                        dose_text=dose))
        wording = RuleWording(step=short(dosing.text, 200), sources=citations)
        if days:
            reasons.append(k.pathway_file.card_text.guidance_reassess.format(
                date=(octx.now + dt.timedelta(days=days)).date().isoformat()))
        reasons += [f.text for f in issue.flags]
        indicator = "info"
    elif issue.kind == "order_check":
        check = issue.check
        wording = wording_for(issue.rule, pathway, check.summary, [check.detail], list(check.citations), cards)
        summary = None if wording.summary else _literal(check.summary)
        if a is not None:
            now = wording_for(a.rule, a.pathway, a.step.summary, a.step.next, [], cards)
            reasons.append(k.pathway_file.card_text.current_step.format(
                step=fill(now.summary or a.step.summary, {**a.text_values, "finding": _finding_name(a, cards)}, k)))
        indicator = "warning"
        suggestions, behavior = _fix_suggestions(issue, build, k, cards, name)
    else:
        citations = list(dict.fromkeys(c for f in issue.flags for c in f.citations))
        wording = wording_for(issue.rule, pathway, issue.flags[0].text, [issue.flags[0].text], citations, cards)
        summary = None if wording.summary else _literal(f"{name.capitalize()} draft: {issue.flags[0].text}")
        reasons = [f.text for f in issue.flags[1:]]
        indicator = "warning"
        suggestions, behavior = _fix_suggestions(issue, build, k, cards, name)
        citations = [c for c in citations if c not in wording.sources]
    provenance = {
        "draft": {"reference": ref, "resourceType": issue.draft.resource_type},
        "findings": findings_provenance(a.findings, findings.reports) if a is not None else [],
        "flags": [{"rule": f.rule, "effect": f.effect, "sources": list(f.sources)} for f in issue.flags],
    }
    if a is not None:
        provenance["step"] = a.step.id
    return CardPlan(
        decisive=decisive_concepts(a) if a is not None else (),
        rule=issue.rule, pathway=issue.pathway, step=a.step.id if a is not None else None, indicator=indicator,
        wording=wording, values=values, findings=a.findings if a is not None else (), reports=findings.reports,
        fallback_finding=pathway.topic.display if pathway else None, reasons=tuple(reasons),
        suggestions=tuple(suggestions), selection_behavior=behavior, dedupe_key=key,
        topic=pathway.topic.fhir() if pathway else None, draft=draft_text, draft_reference=ref, summary=summary,
        step_text=_literal(issue.flags[0].text) if issue.kind == "safety" else None,
        extra_citations=tuple(citations) if issue.kind == "safety" else (), provenance=provenance,
        override_reasons=override_reasons(k))
