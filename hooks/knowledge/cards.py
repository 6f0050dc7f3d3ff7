"""The typed model of cards.yaml (card wording, layout and label templates) and its start-up checks: every rule it
words exists, every source it cites is in evidence.yaml, every {field} a template names can be filled."""
from __future__ import annotations

import string
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, Mapping

from pydantic import Field

from hooks.knowledge import KnowledgeError, StrictModel, load_model
from hooks.knowledge.clinical import DATE_NAMES, ClinicalKnowledge, clinical_knowledge

SUMMARY_MAX = 140
STEP_MAX = 200
CAUTION_MAX = 160
# Fields the renderer fills besides facts and dates.
CARD_FIELDS = frozenset({"finding", "drug", "reports_read", "reports_total", "reports_skipped"})


class RuleWording(StrictModel):
    summary: str | None = Field(default=None, max_length=SUMMARY_MAX - 1)
    step: str = Field(max_length=STEP_MAX)
    caution: str | None = Field(default=None, max_length=CAUTION_MAX)
    sources: list[str] = Field(default_factory=list)      # empty only for notices (NOTICE_RULES)


class Layout(StrictModel):
    finding: str
    finding_coded: str
    draft: str
    step: str
    caution: str
    study: str
    study_unknown: str
    study_undated: str
    date: str
    possible: str
    absent: str
    reason_facts: str
    fact: str
    unknown: str
    already_on: str
    withheld: str
    source_label: str
    notice_source: str
    not_checked: str
    all_blocked: str
    alternative: str
    alternative_step: str
    tests_first_summary: str


class Labels(StrictModel):
    start: str
    start_with: str
    tests_first: str
    order: str
    remove_draft: str
    replace_draft: str
    replace_draft_service: str
    add_to_draft: str


class CardsFile(StrictModel):
    layout: Layout
    labels: Labels
    frequency: dict[str, str]
    frequency_other: str
    single_dose: str
    as_needed: str
    loading: str
    period_units: dict[str, str]
    facts: dict[str, str]
    classes: dict[str, str]
    short_names: dict[str, str]
    service_labels: dict[str, str]
    modalities: dict[str, str]
    regions: dict[str, str]
    findings: dict[str, str]
    sites: dict[str, str]
    rules: dict[str, RuleWording]


def parameters(k: ClinicalKnowledge) -> SimpleNamespace:
    """Named knowledge parameters a template may name as {param.NAME}: every top-level number of pathways.yaml and
    its `parameters:` mapping when present; a whole number of days also reads in weeks as NAME_in_weeks."""
    found: dict[str, Any] = {}
    data = k.pathway_file.model_dump()
    extra = data.get("parameters")
    for source in (data, extra if isinstance(extra, Mapping) else {}):
        for name, value in source.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found[name] = int(value) if float(value).is_integer() else value
    for name, value in list(found.items()):
        if name.endswith("_days") and isinstance(value, int) and value % 7 == 0:
            found[f"{name}_in_weeks"] = value // 7
    return SimpleNamespace(**found)


def template_fields(text: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(text) if name]


# Cards that are not a guideline recommendation (no evidence to cite): they say what the service could not do.
NOTICE_RULES = frozenset({"intake.unreadable_draft", "record.incomplete"})


def rule_ids(k: ClinicalKnowledge) -> set[str]:
    """Every rule id a card can carry."""
    out = {p.rule(s.id) for p in k.pathway_file.pathways for s in p.steps} | set(NOTICE_RULES)
    out |= {c.rule for c in k.pathway_file.order_checks}
    out |= {c.rule for c in k.safety.checks}
    out |= {f"{p.id}.order_guidance" for p in k.pathway_file.pathways}
    return out


def _check(cards: CardsFile, k: ClinicalKnowledge) -> None:
    def need(ok: bool, place: str, reason: str) -> None:
        if not ok:
            raise KnowledgeError("cards.yaml", place, reason)

    params = vars(parameters(k))
    fact_names = k.fact_names
    known_rules = rule_ids(k)
    for rule, wording in cards.rules.items():
        need(rule in known_rules, f"rules.{rule}", "no pathway step, order check or safety check has this rule id")
        need(bool(wording.sources) or rule in NOTICE_RULES, f"rules.{rule}.sources", "a card cites its evidence")
        for source in wording.sources:
            need(source in k.evidence, f"rules.{rule}.sources", f"unknown evidence source {source!r}")
        for key in ("summary", "step", "caution"):
            text = getattr(wording, key)
            for name in template_fields(text or ""):
                if name.startswith("param."):
                    need(name[6:] in params, f"rules.{rule}.{key}", f"unknown parameter {name[6:]!r}")
                else:
                    need(name in fact_names or name in DATE_NAMES or name in CARD_FIELDS, f"rules.{rule}.{key}",
                         f"unknown field {name!r}")
    for fact in cards.facts:
        need(fact in fact_names, f"facts.{fact}", "unknown fact")
    for service in (*cards.service_labels, *cards.short_names):
        need(service in k.services.services, f"service_labels.{service}", "unknown service")


def rule_review(rule: str) -> str | None:
    """Governance: "verified" when every source the rule cites is verified, else "unverified"; None for a rule the
    knowledge does not know (analytics of old cards)."""
    k, cards = clinical_knowledge(), card_wording()
    wording = cards.rules.get(rule)
    if wording is None or not wording.sources:
        return None
    return "verified" if all(k.evidence[s].status == "verified" for s in wording.sources) else "unverified"


@lru_cache(maxsize=1)
def card_wording() -> CardsFile:
    """cards.yaml, loaded once and checked against the clinical knowledge."""
    cards = load_model("cards.yaml", CardsFile)
    _check(cards, clinical_knowledge())
    return cards
