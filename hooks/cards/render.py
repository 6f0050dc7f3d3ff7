"""The one card renderer: a `CardPlan` (what one card says, as data) -> a frozen `Card` within the card budget.

The card face is our own wording from the knowledge files filled with values we computed (numbers, dates, names
from the knowledge); the one piece of text taken from a request, a draft order's own name, is Markdown-escaped.

Pathway cards (patient-view) and draft-order cards (order-select, order-sign) are planned in hooks/cards/plans.py
and rendered here. The wording comes from knowledge/cards.yaml; provenance (findings with their sources and
sentences, facts, flags, rule, step, knowledge version and review status) goes to the `org.msk-cds.provenance`
extension, never on the card face.
"""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from hooks.cards import markdown as md
from hooks.knowledge import knowledge_version
from hooks.knowledge.cards import CardsFile, RuleWording, parameters
from hooks.knowledge.clinical import ClinicalKnowledge, Source
from hooks.model import Card, CardSource, Finding, FindingSet, Link, ReportFacts, Suggestion

SUMMARY_MAX = 139            # CDS Hooks: "<140 characters"
DETAIL_MAX = 600
LABEL_MAX = 80
MAX_REASONS = 3
MAX_LINKS = 3
# Extension keys (reverse-domain, CDS Hooks 2.0 extensions): written once here.
RULE_KEY = "org.msk-cds.rule"
PATHWAY_KEY = "org.msk-cds.pathway"
VERSION_KEY = "org.msk-cds.knowledge-version"
DEDUPE_KEY = "org.msk-cds.dedupe-key"
PROVENANCE_KEY = "org.msk-cds.provenance"


def card_uuid(hook_instance: str, rule: str, index: int | str) -> str:
    """Deterministic per request: the same request gives the same uuids (goldens normalise them anyway)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"msk-cds:{hook_instance}:{rule}:{index}"))


@dataclass(frozen=True)
class CardPlan:
    """Everything one card says, as data; `render` turns it into a Card. Reasons are plain clinical sentences,
    most decisive first (the renderer keeps what fits the budget; all of them stay in the provenance)."""

    rule: str
    pathway: str
    step: str | None
    indicator: str
    wording: RuleWording
    values: Mapping[str, str]
    findings: tuple[Finding, ...]
    reports: tuple[ReportFacts, ...]
    fallback_finding: str | None                 # what the card is about when no finding is shown (a diagnosis)
    reasons: tuple[str, ...]
    suggestions: tuple[Suggestion, ...]
    selection_behavior: str | None
    dedupe_key: str
    topic: Mapping[str, str] | None
    draft: str | None = None                     # the draft order's name (escaped when rendered)
    draft_reference: str | None = None
    caution: str | None = None                   # overrides the wording's caution (e.g. STIR without T1)
    summary: str | None = None                   # a template overriding the wording's summary (alternatives, blocked)
    step_text: str | None = None                 # a template overriding the wording's step (the offered alternative)
    extra_citations: tuple[str, ...] = ()        # citations of the safety flags shown
    provenance: Mapping[str, Any] = field(default_factory=dict)
    override_reasons: tuple[Mapping[str, str], ...] = ()
    decisive: tuple[str, ...] = ()               # concepts the step or pathway entry names: shown first


    @property
    def uuid_key(self) -> str:
        """The rule for a pathway card, the rule and draft for a draft-order card: stable within a request."""
        return f"{self.rule}|{self.draft_reference}" if self.draft_reference else self.rule

    def decisive_groups(self) -> tuple[frozenset[str], ...]:
        return (frozenset(self.decisive[:self.decisive.index("|")]) if "|" in self.decisive else frozenset(),
                frozenset(c for c in self.decisive if c != "|"))


# ------------------------------------------------------------------------------------------------ plain words
def fill(template: str, values: Mapping[str, Any], k: ClinicalKnowledge) -> str:
    """A cards.yaml template with facts, dates and {param.NAME} filled ("unknown" for a missing fact)."""
    class _Values(dict):
        def __missing__(self, key: str) -> str:
            return "unknown"

    return template.format_map(_Values(values, param=parameters(k)))


def plain_date(iso: str | None) -> str | None:
    if not iso:
        return None
    try:
        day = dt.date.fromisoformat(iso[:10])
    except ValueError:
        return None
    return f"{day.day} {day:%B} {day.year}"


def finding_name(concept: str, cards: CardsFile) -> str:
    return cards.findings.get(concept) or concept.replace("_", " ")


def study_name(report: ReportFacts | None, cards: CardsFile) -> str:
    lay = cards.layout
    date = plain_date(report.issued if report else None)
    if report is None or date is None:
        return lay.study_undated
    modality = cards.modalities.get(report.modality or "")
    region = cards.regions.get(report.region or "")
    if not modality or not region:
        return lay.study_unknown.format(date=date)
    return lay.study.format(modality=modality, region=region, date=date)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def main_findings(plan: CardPlan, cards: CardsFile) -> tuple[list[str], Finding | None]:
    """The names of the findings the card is about (from the newest study that shows them) and that finding."""
    lay = cards.layout
    shown = [f for f in plan.findings if f.certainty != "negated" and not f.historical]
    for group in plan.decisive_groups():
        named = [f for f in shown if f.concept in group]
        if named:
            shown = named
            break
    if not shown:
        return [], None
    reports = {r.reference: r for r in plan.reports}
    newest = max(shown, key=lambda f: (reports[f.source.reference].issued or "") if f.source.reference in reports else "")
    same = [f for f in shown if f.source.reference == newest.source.reference]
    names: list[str] = []
    for f in same:
        name = finding_name(f.concept, cards)
        name = lay.possible.format(finding=name) if f.certainty == "uncertain" else name
        if name not in names:
            names.append(name)
    return names, newest


def finding_line(plan: CardPlan, cards: CardsFile) -> str | None:
    """The finding the card is about, in plain words, with its study and date."""
    lay = cards.layout
    names, newest = main_findings(plan, cards)
    if newest is None:
        return lay.finding_coded.format(finding=_capital(plan.fallback_finding)) if plan.fallback_finding else None
    reports = {r.reference: r for r in plan.reports}
    where = [q for q in (newest.laterality, cards.sites.get(newest.site or "")) if q]
    text = ", ".join(names[:3]) + (f" ({' '.join(where)})" if where else "")
    if newest.source.reference.startswith("Condition/"):
        return lay.finding_coded.format(finding=_capital(text))
    return lay.finding.format(finding=_capital(text), study=study_name(reports.get(newest.source.reference), cards))


def short(text: str, limit: int) -> str:
    """Cut at a word boundary, with an ellipsis, only when over the limit."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:")
    return cut + "…"


# ------------------------------------------------------------------------------------------------ sources
def card_sources(plan: CardPlan, k: ClinicalKnowledge) -> list[Source]:
    """The evidence for this card's recommendation: its rule's sources, then the shown safety flags' citations."""
    ids = list(dict.fromkeys([*plan.wording.sources, *plan.extra_citations]))
    return [k.evidence[i] for i in ids if i in k.evidence]


def source_of(plan: CardPlan, k: ClinicalKnowledge, cards: CardsFile) -> CardSource:
    sources = card_sources(plan, k)
    if not sources:                          # a notice (nothing was recommended, so there is no evidence to cite)
        return CardSource(label=cards.layout.notice_source)
    primary = sources[0]
    return CardSource(label=cards.layout.source_label.format(label=primary.label), url=primary.url, topic=plan.topic)


def links_of(plan: CardPlan, k: ClinicalKnowledge) -> tuple[Link, ...]:
    out: list[Link] = []
    for s in card_sources(plan, k):
        if s.url and len(out) < MAX_LINKS and all(link.url != s.url for link in out):
            out.append(Link(label=s.label, url=s.url))
    return tuple(out)


def review_status(sources: Iterable[Source]) -> dict[str, Any]:
    """Governance view of the knowledge behind a card: unverified if any cited source is."""
    items = [{"source": s.id, "status": s.status, "match": s.match} for s in sources]
    if not items:
        return {"status": "not-applicable"}
    return {"status": "verified" if all(i["status"] == "verified" for i in items) else "unverified",
            "sources": items}


# ------------------------------------------------------------------------------------------------ the renderer
def render(plan: CardPlan, k: ClinicalKnowledge, cards: CardsFile, hook_instance: str) -> Card:
    lay = cards.layout
    values = dict(plan.values)
    names, _ = main_findings(plan, cards)
    values["finding"] = _capital(names[0] if names else (plan.fallback_finding or ""))
    summary = short(fill(plan.summary or plan.wording.summary or "", values, k), SUMMARY_MAX)
    head = [line for line in (finding_line(plan, cards),
                              lay.draft.format(draft=md.escape(plan.draft, 120)) if plan.draft else None,
                              lay.step.format(step=short(fill(plan.step_text or plan.wording.step, values, k), 220))) if line]
    caution_text = plan.caution or (fill(plan.wording.caution, values, k) if plan.wording.caution else None)
    tail = lay.caution.format(caution=short(caution_text, 160)) if caution_text else ""
    reasons: list[str] = []
    for reason in dict.fromkeys(plan.reasons):
        if len(reasons) == MAX_REASONS:
            break
        candidate = "- " + short(reason, 160)
        if len(_detail(head, [*reasons, candidate], tail)) <= DETAIL_MAX:
            reasons.append(candidate)
    detail = _detail(head, reasons, tail)
    sources = card_sources(plan, k)
    provenance = dict(plan.provenance)
    provenance.update({
        "rule": plan.rule, "pathway": plan.pathway, "knowledge": {
            "version": knowledge_version(), "review": review_status(sources)},
        "citations": [s.id for s in sources],
        "reasons": list(dict.fromkeys(plan.reasons)),
    })
    if plan.step:
        provenance["step"] = plan.step
    extension: dict[str, Any] = {
        RULE_KEY: plan.rule, PATHWAY_KEY: plan.pathway, VERSION_KEY: knowledge_version(),
        DEDUPE_KEY: plan.dedupe_key, PROVENANCE_KEY: compact(provenance),
    }
    return Card(
        uuid=card_uuid(hook_instance, plan.uuid_key, "card"),
        summary=summary,
        indicator=plan.indicator,  # type: ignore[arg-type]
        detail=detail,
        source=source_of(plan, k, cards),
        extension=extension,
        suggestions=plan.suggestions,
        selection_behavior=plan.selection_behavior if plan.suggestions else None,  # type: ignore[arg-type]
        override_reasons=plan.override_reasons if plan.indicator != "info" else (),
        links=links_of(plan, k),
    )


def compact(value: Any) -> Any:
    """Without null or empty values at any depth (CDS Hooks 2.0 forbids them in the response)."""
    if isinstance(value, Mapping):
        out = {k: compact(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, (list, tuple)):
        items = [compact(v) for v in value]
        return [v for v in items if v not in (None, "", [], {})]
    return value


def _detail(head: list[str], reasons: list[str], tail: str) -> str:
    parts = ["\n\n".join(head)]
    if reasons:
        parts.append("\n".join(reasons))
    if tail:
        parts.append(tail)
    return "\n\n".join(parts)


def findings_provenance(findings: Iterable[Finding], reports: FindingSet | tuple[ReportFacts, ...]) -> list[dict]:
    """Each finding with its source resource, element and sentence (the EHR's own text, for integrators)."""
    out = []
    for f in findings:
        item: dict[str, Any] = {"concept": f.concept, "certainty": f.certainty, "reference": f.source.reference,
                                "kind": f.source.kind}
        for key in ("site", "laterality", "severity"):
            if getattr(f, key):
                item[key] = getattr(f, key)
        if f.historical:
            item["historical"] = True
        if f.source.element:
            item["element"] = f.source.element
        if f.source.code:
            item["code"] = f.source.code
        if f.source.text:
            # the report's sentence, Markdown- and HTML-escaped like any report text we pass on (an integrator may
            # display it)
            item["text"] = md.escape(f.source.text, 500)
        out.append(item)
    return out
