"""CDS Hooks cards from assessments: summary, GFM detail (findings with source, where the patient is, next steps,
safety, suggested orders, evidence), source, links, suggestions and the org.msk-cds extension."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping

from hooks.cards import markdown as md
from hooks.cards.suggestions import OrderContext, create, medication_request, service_request, unverified_codes
from hooks.knowledge import KnowledgeError, knowledge_version, load_yaml
from hooks.knowledge.clinical import ClinicalKnowledge, Pathway
from hooks.model import Finding
from hooks.pathways.engine import Assessment, MedicationOption
from hooks.pathways.facts import PatientFacts


@dataclass(frozen=True)
class CardContext:
    """What rendering needs from the request."""

    hook_instance: str
    orders: OrderContext


def card_uuid(hook_instance: str, rule: str, index: int | str) -> str:
    """Deterministic per request: the same request gives the same uuids (goldens normalise them anyway)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"msk-cds:{hook_instance}:{rule}:{index}"))


@lru_cache(maxsize=1)
def _concept_labels() -> dict[str, str]:
    try:
        data = load_yaml("concepts.yaml")
    except KnowledgeError:          # without the concept file, labels come from the concept ids
        return {}
    concepts = data.get("concepts") if isinstance(data, Mapping) else None
    items = concepts.items() if isinstance(concepts, Mapping) else (
        ((c.get("id"), c) for c in concepts if isinstance(c, Mapping)) if isinstance(concepts, list) else ())
    out = {}
    for key, value in items:
        if isinstance(value, Mapping):
            label = value.get("label") or value.get("display") or value.get("name")
            if isinstance(key, str) and isinstance(label, str):
                out[key] = label
    return out


def finding_label(concept: str) -> str:
    return _concept_labels().get(concept) or concept.replace("_", " ").capitalize()


def finding_line(f: Finding, k: ClinicalKnowledge) -> str:
    text = k.pathway_file.card_text
    qualifiers = [q for q in (f.laterality, f.severity, f.site and f.site.replace("_", " ")) if q]
    if f.depth_mm is not None:
        qualifiers.append(f"{f.depth_mm:g} mm deep")
    label = finding_label(f.concept)
    if f.certainty == "negated":
        label += f": {text.absent}"
    elif f.certainty == "uncertain":
        label += f" ({text.uncertain})"
    line = md.escape(label + (", " + ", ".join(qualifiers) if qualifiers else ""))
    line += f" ({md.escape(f.source.reference)})"
    if f.source.text:
        line += f": \u201c{md.escape(f.source.text, 240)}\u201d"
    return line


def evidence_extension(findings: Iterable[Finding], facts: Iterable[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in findings:
        item: dict[str, Any] = {"reference": f.source.reference, "finding": f.concept, "certainty": f.certainty,
                                "kind": f.source.kind}
        for key in ("site", "laterality", "severity"):
            if getattr(f, key):
                item[key] = getattr(f, key)
        out.append(item)
    for name, ref in facts:
        out.append({"reference": ref, "fact": name})
    return out


def extension(rule: str, pathway: str, evidence: list[dict[str, Any]], dedupe_key: str) -> dict[str, Any]:
    ext: dict[str, Any] = {
        "org.msk-cds.rule": rule,
        "org.msk-cds.pathway": pathway,
        "org.msk-cds.knowledge-version": knowledge_version(),
        "org.msk-cds.dedupe-key": dedupe_key,
    }
    if evidence:
        ext["org.msk-cds.evidence"] = evidence
    return ext


def evidence_section(citations: Iterable[str], k: ClinicalKnowledge) -> list[str]:
    text = k.pathway_file.card_text
    lines = []
    for cid in dict.fromkeys(citations):
        source = k.evidence[cid]
        label = md.link(source.label, source.url) if source.url else md.escape(source.label)
        lines.append(text.evidence_line.format(link=label, citation=md.escape(source.citation),
                                               status=source.status, match=source.match))
    return lines


def links(citations: Iterable[str], k: ClinicalKnowledge) -> list[dict[str, str]]:
    out = []
    for cid in dict.fromkeys(citations):
        source = k.evidence[cid]
        if source.url:
            out.append({"label": source.label, "url": source.url, "type": "absolute"})
    return out


def source(pathway: Pathway, k: ClinicalKnowledge) -> dict[str, Any]:
    primary = next((k.evidence[c] for c in pathway.evidence if k.evidence[c].url), k.evidence[pathway.evidence[0]])
    out: dict[str, Any] = {"label": k.pathway_file.card_text.source_label.format(label=primary.label),
                           "topic": pathway.topic.fhir()}
    if primary.url:
        out["url"] = primary.url
    return out


def override_reasons(k: ClinicalKnowledge) -> list[dict[str, str]]:
    system = k.safety.override_system
    return [{"system": system, "code": r.code, "display": r.display} for r in k.safety.override_reasons]


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


def _drug_label(option: MedicationOption, k: ClinicalKnowledge) -> str:
    return k.drugs[option.drug].dosing[option.dosing].text


def medication_suggestion(option: MedicationOption, ctx: OrderContext, k: ClinicalKnowledge, hook_instance: str,
                          rule: str, index: int, companions: Iterable[str] = (), priority: str = "routine",
                          pre_actions: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """One suggestion: the drug plus its companions (physiotherapy, PPI, screening tests): actions are AND-ed."""
    text = k.pathway_file.card_text
    actions = list(pre_actions)
    extras: list[str] = []
    if option.safety.hold:
        # the tests come first; the drug is ordered once their results are known
        for service_id in option.safety.add_services:
            service = k.services.services[service_id]
            actions.append(create(service_request(service_id, ctx, k, priority), service.text))
            extras.append(service.text)
        label = text.held.format(items="; ".join(extras), drug=k.drugs[option.drug].name)
        suggestion = {"label": label[:300], "uuid": card_uuid(hook_instance, rule, f"s{index}"), "actions": actions}
        if option.recommended:
            suggestion["isRecommended"] = True
        return suggestion
    mr = medication_request(option.drug, option.dosing, ctx, k, text.reassess_note)
    actions.append(create(mr, _drug_label(option, k)))
    for drug_id, dosing_key in option.safety.add_drugs:
        extra = medication_request(drug_id, dosing_key, ctx, k, text.reassess_note)
        actions.append(create(extra, k.drugs[drug_id].dosing[dosing_key].text))
        extras.append(k.drugs[drug_id].name)
    for service_id in (*option.safety.add_services, *companions):
        service = k.services.services[service_id]
        actions.append(create(service_request(service_id, ctx, k, priority), service.text))
        extras.append(service.text)
    label = k.drugs[option.drug].name.capitalize() + (text.suggestion_extra.format(items="; ".join(extras)) if extras else "")
    suggestion: dict[str, Any] = {"label": label[:300], "uuid": card_uuid(hook_instance, rule, f"s{index}"),
                                  "actions": actions}
    if option.recommended:
        suggestion["isRecommended"] = True
    return suggestion


def service_suggestion(service_id: str, ctx: OrderContext, k: ClinicalKnowledge, hook_instance: str, rule: str,
                       index: int, priority: str = "routine") -> dict[str, Any]:
    service = k.services.services[service_id]
    return {"label": service.text, "uuid": card_uuid(hook_instance, rule, f"s{index}"),
            "actions": [create(service_request(service_id, ctx, k, priority), service.text)]}


def _safety_lines(a: Assessment, k: ClinicalKnowledge, facts: PatientFacts) -> list[str]:
    text = k.pathway_file.card_text
    lines: list[str] = []
    seen: set[str] = set()
    for option in a.options:
        for flag in option.safety.flags:
            key = flag.text
            if key in seen:
                continue
            seen.add(key)
            refs = f" ({md.escape(', '.join(flag.sources))})" if flag.sources else ""
            lines.append(flag.text + refs)
    for option in (*a.blocked, *a.withheld):
        reasons = "; ".join(f.text for f in option.safety.flags if f.effect in ("block", "withhold"))
        lines.append(text.withheld.format(drug=k.drugs[option.drug].name.capitalize(), reasons=reasons))
    for drug_id in a.already_on:
        refs = [e.reference for e in facts.exposures if e.drug == drug_id and e.current]
        lines.append(text.already_on.format(drug=k.drugs[drug_id].name, reference=md.escape(", ".join(refs))))
    return lines


def pathway_card(a: Assessment, facts: PatientFacts, cctx: CardContext, k: ClinicalKnowledge) -> dict[str, Any]:
    """The patient-view card of one assessment."""
    text = k.pathway_file.card_text
    step, pathway, rule = a.step, a.pathway, a.rule
    values = a.text_values

    reason = reason_reference(pathway, a.findings, facts)
    octx = OrderContext(cctx.orders.patient_id, cctx.orders.user, cctx.orders.now, cctx.orders.intent, reason)
    suggestions: list[dict[str, Any]] = []
    companions = list(a.companions)
    held_seen: set[tuple[str, ...]] = set()
    for i, option in enumerate(a.options):
        if option.safety.hold:
            # the same tests come first for every alternative: one suggestion orders them
            if option.safety.add_services in held_seen:
                continue
            held_seen.add(option.safety.add_services)
        suggestions.append(medication_suggestion(option, octx, k, cctx.hook_instance, rule, i, companions,
                                                 step.service_priority))
    if not a.options:
        # already on the drug, or every drug withheld by a safety check: the step's other orders still stand
        services = list(step.services) + ([s for s in companions if s not in step.services]
                                          if a.already_on or a.blocked else [])
        for i, service_id in enumerate(services):
            suggestions.append(service_suggestion(service_id, octx, k, cctx.hook_instance, rule, i,
                                                  step.service_priority))

    where_lines = [f"{md.escape(r.label)}: {md.escape(r.value)}"
                   + (f" ({md.escape(', '.join(r.sources))})" if r.sources else "") for r in a.reasons]
    if a.unknown:
        where_lines.append(text.unknown.format(items=", ".join(a.unknown)))
    order_lines = []
    for s in suggestions:
        recommended = text.recommended if s.get("isRecommended") else ""
        order_lines.append(md.escape(s["label"]) + recommended)
    unverified = sorted({c for s in suggestions for act in s["actions"] for c in unverified_codes(act["resource"])})
    if unverified:
        order_lines.append(text.unverified.format(codes=md.escape("; ".join(unverified))))
    detail = "\n".join(part for part in (
        md.section(text.findings, [finding_line(f, k) for f in a.findings]),
        f"**{text.where}**: {step.title}\n\n{step.where.format_map(values)}\n",
        md.section(text.where + " (facts)", where_lines) if where_lines else "",
        md.section(text.next, list(step.next)),
        md.section(text.safety, _safety_lines(a, k, facts)),
        md.section(text.orders, order_lines),
        md.section(text.notes, list(a.notes)),
        md.section(text.evidence, evidence_section(a.citations, k)),
        f"_{k.pathway_file.advice_footer}_",
    ) if part)

    fact_refs = [(r.fact, ref) for r in a.reasons for ref in r.sources[:3]]
    summary, indicator = (a.summary or step.summary).format_map(values), step.indicator
    if a.blocked and not a.options:
        summary = text.all_blocked.format(title=pathway.title)
        indicator = "warning" if indicator == "info" else indicator
    if any(o.safety.warns for o in a.options):
        indicator = "warning" if indicator == "info" else indicator
    card: dict[str, Any] = {
        "uuid": card_uuid(cctx.hook_instance, rule, "card"),
        "summary": summary[:139],
        "indicator": indicator,
        "detail": detail,
        "source": source(pathway, k),
        "extension": extension(rule, pathway.id, evidence_extension(a.findings, fact_refs),
                               f"{rule}|Patient/{cctx.orders.patient_id}"),
    }
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "at-most-one" if a.options else "any"
    if indicator != "info":
        card["overrideReasons"] = override_reasons(k)
    card_links = links(a.citations, k)
    if card_links:
        card["links"] = card_links
    return card
