"""Typed finding catalogue: concepts.yaml, findings_nlp.yaml and context_rules.yaml, validated and compiled once."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import field_validator, model_validator

from hooks.findings.dispatch import Dispatcher
from hooks.knowledge import Coding, KnowledgeError, StrictModel, load_model

CONCEPTS_FILE = "concepts.yaml"
NLP_FILE = "findings_nlp.yaml"
CONTEXT_FILE = "context_rules.yaml"

LATERALITIES = ("left", "right", "bilateral", "unilateral")
SEVERITIES = ("mild", "moderate", "severe")


class CodeQualifier(StrictModel):
    laterality: Literal["left", "right", "bilateral", "unilateral"] | None = None
    site: str | None = None            # a site id of findings_nlp.yaml `sites` (checked in `check_sites`)


class Phrasing(StrictModel):
    pattern: str
    certainty: Literal["affirmed", "negated", "uncertain"] | None = None   # the phrase itself decides
    also: tuple[str, ...] = ()                                             # further concepts the phrase names
    affirm_only: bool = False         # a sign: its absence does not exclude the finding (negated -> dropped)
    needs_site: bool = False          # generic phrase: counts only where the sentence places it at the concept's sites


class Concept(StrictModel):
    id: str
    display: str
    source: str
    physiological: bool = False
    default_site: str | None = None
    sites: tuple[str, ...] = ()              # when set, a mention at another site is not this finding
    # when set, a mention whose sentence names no site is this finding only in a report of one of these regions
    # (ReportFacts.region: report code, title, then text); elsewhere, or when the region is not known, it is not
    default_site_regions: tuple[str, ...] = ()
    # words that, said in the sentence, place such a mention at the default site whatever the report ("sacroiliitis
    # with capsulitis": the capsulitis is the SI joint's); a regex like a phrasing
    default_site_words: str | None = None
    # the phrasings name the site themselves ("sacroiliitis"): a site word elsewhere in the sentence ("... and a hip
    # effusion") does not move or drop the mention; only a site word it owns ("sacroiliitis of the left ilium") can
    site_in_name: bool = False
    implies: tuple[str, ...] = ()            # an affirmed/uncertain mention also asserts these (deep BME -> BME)
    # in a report that affirms one of these (same side and site, or unstated), a mention of this concept is part of
    # that finding, not a finding of its own (a subchondral fracture in osteonecrosis is its collapse)
    subsumed_by: tuple[str, ...] = ()
    codes: tuple[Coding, ...] = ()
    related_codes: tuple[Coding, ...] = ()
    code_qualifiers: dict[str, CodeQualifier] = {}
    phrasings: tuple[Phrasing | str, ...]

    @field_validator("id")
    @classmethod
    def _snake_case(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", value):
            raise ValueError("concept id must be snake_case")
        return value

    @property
    def phrasing_rules(self) -> tuple[Phrasing, ...]:
        return tuple(p if isinstance(p, Phrasing) else Phrasing(pattern=p) for p in self.phrasings)


class ConceptCatalogue(StrictModel):
    """Concept id -> codes, display, phrasings and flags. Codes identify one concept only."""

    local_system: str
    concepts: tuple[Concept, ...]

    @model_validator(mode="after")
    def _consistent(self) -> "ConceptCatalogue":
        ids = [c.id for c in self.concepts]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate concept id")
        known = set(ids)
        owner: dict[tuple[str, str], str] = {}
        for concept in self.concepts:
            for ref in (*concept.implies, *concept.subsumed_by, *(a for p in concept.phrasing_rules for a in p.also)):
                if ref not in known:
                    raise ValueError(f"{concept.id}: refers to unknown concept {ref!r}")
            for coding in concept.codes:
                key = (coding.system, coding.code)
                if key in owner:
                    raise ValueError(f"{concept.id}: code {coding.code} already identifies {owner[key]}")
                owner[key] = concept.id
            codes = {c.code for c in concept.codes}
            for code in concept.code_qualifiers:
                if code not in codes:
                    raise ValueError(f"{concept.id}: code_qualifiers names {code} which is not in its codes")
        return self

    def __getitem__(self, concept_id: str) -> Concept:
        return self.by_id()[concept_id]

    def __contains__(self, concept_id: object) -> bool:
        return concept_id in self.by_id()

    def by_id(self) -> dict[str, Concept]:
        return {c.id: c for c in self.concepts}

    def ids(self) -> frozenset[str]:
        return frozenset(c.id for c in self.concepts)

    def physiological(self) -> frozenset[str]:
        """Concepts the pathways must suppress (normal variants)."""
        return frozenset(c.id for c in self.concepts if c.physiological)


class ValuedPattern(StrictModel):
    value: str
    pattern: str


class MeasurementRule(StrictModel):
    name: str
    pattern: str
    applies_to: tuple[str, ...]
    units: dict[str, float] = {}


class DeepBme(StrictModel):
    threshold_mm: float
    inclusive: bool
    source: str
    applies_to: tuple[str, ...]
    adds: str
    phrasings: str


class ReportCode(StrictModel):
    loinc: str
    display: str
    modality: str | None = None
    region: str | None = None
    laterality: str | None = None


class ModalityTerm(StrictModel):
    modality: str
    pattern: str


class RegionTerm(StrictModel):
    region: str
    pattern: str


class Sequences(StrictModel):
    t1: str
    fluid_sensitive: str


class Limits(StrictModel):
    max_chars: int
    max_sentences: int
    max_evidence_chars: int


class NlpRules(StrictModel):
    macros: dict[str, str]
    decoys: tuple[str, ...]
    laterality: tuple[ValuedPattern, ...]
    severity: tuple[ValuedPattern, ...]
    sites: tuple[ValuedPattern, ...]
    line_breaks: str
    severity_comparatives: str
    # a side word right after one of these compares the sides of a bilateral finding ("more marked on the right")
    laterality_comparatives: str | None = None
    clause_breaks: str
    measurements: tuple[MeasurementRule, ...]
    deep_bme: DeepBme
    report_codes: tuple[ReportCode, ...]
    category_codes: dict[str, str]
    modality_terms: tuple[ModalityTerm, ...]
    region_terms: tuple[RegionTerm, ...]
    sequences: Sequences
    limits: Limits

    @model_validator(mode="after")
    def _values(self) -> "NlpRules":
        for item in self.laterality:
            if item.value not in LATERALITIES:
                raise ValueError(f"laterality value {item.value!r} is not one of {LATERALITIES}")
        for item in self.severity:
            if item.value not in SEVERITIES:
                raise ValueError(f"severity value {item.value!r} is not one of {SEVERITIES}")
        for item in self.sites:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", item.value):
                raise ValueError(f"site id {item.value!r} must be snake_case")
        return self

    def site_ids(self) -> frozenset[str]:
        """The site vocabulary: every site id that has words in `sites`."""
        return frozenset(item.value for item in self.sites)

    def region_ids(self) -> frozenset[str]:
        """The report regions: those of `report_codes` and `region_terms`."""
        return frozenset({*(r.region for r in self.report_codes if r.region), *(r.region for r in self.region_terms)})


class ContextRuleGroup(StrictModel):
    category: Literal["NEGATED_EXISTENCE", "RESOLVED", "POSSIBLE_EXISTENCE", "HISTORICAL", "ONGOING", "HYPOTHETICAL",
                      "PSEUDO", "TERMINATE"]
    direction: Literal["FORWARD", "BACKWARD", "BIDIRECTIONAL", "PSEUDO", "TERMINATE"]
    max_scope: int | None = None
    literals: tuple[str, ...]


class ContextRules(StrictModel):
    source: str
    rules: tuple[ContextRuleGroup, ...]
    # A concessive clause, up to its comma: a modifier inside it does not reach past it (regex, case-insensitive)
    concessive_clause: str | None = None

    @model_validator(mode="after")
    def _unique(self) -> "ContextRules":
        seen: set[str] = set()
        for group in self.rules:
            for literal in group.literals:
                key = literal.lower()
                if key in seen:
                    raise ValueError(f"ConText literal {literal!r} appears twice")
                seen.add(key)
        return self


def expand_text(pattern: str, macros: dict[str, str], file: str, place: str) -> str:
    """A data pattern with its {macro}s expanded, checked to compile."""
    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in macros:
            raise KnowledgeError(file, place, f"unknown macro {{{name}}}")
        return macros[name]

    text = re.sub(r"\{([a-z_]+)\}", sub, pattern)
    try:
        re.compile(text)
    except re.error as exc:
        raise KnowledgeError(file, place, f"invalid pattern: {exc}") from None
    return text


def expand(pattern: str, macros: dict[str, str], file: str, place: str) -> re.Pattern[str]:
    """Compile a data pattern: expand {macro}s, match case-insensitively on word boundaries."""
    text = expand_text(pattern, macros, file, place)
    return re.compile(rf"(?<![\w])(?:{text})(?![\w])", re.IGNORECASE)


@dataclass(frozen=True)
class CompiledPhrasing:
    concept: str | None          # None for a decoy
    regex: re.Pattern[str]       # anchored form: matched at a position where the group found a hit
    certainty: str | None
    also: tuple[str, ...]
    affirm_only: bool = False
    needs_site: bool = False


@dataclass(frozen=True)
class PhrasingGroup:
    """All phrasings of one concept (or all decoys); the longest phrasing at a position wins, whatever the order
    in the file."""

    members: tuple[CompiledPhrasing, ...]


def _group(concept: str | None, items: list[tuple[str, str | None, tuple[str, ...], bool, bool]]) -> PhrasingGroup:
    members = tuple(
        CompiledPhrasing(concept, re.compile(rf"(?:{text})(?![\w])", re.IGNORECASE), certainty, also, affirm_only,
                         needs_site)
        for text, certainty, also, affirm_only, needs_site in items
    )
    return PhrasingGroup(members=members)


@dataclass(frozen=True)
class Compiled:
    """Everything the extractor needs, compiled once per process."""

    catalogue: ConceptCatalogue
    nlp: NlpRules
    context: ContextRules
    groups: tuple[PhrasingGroup, ...]       # decoys first, then one per concept
    targets: Dispatcher                     # every phrasing and decoy; payload (group order, member)
    modifiers: Dispatcher           # laterality, severity and site words; payload (kind, value)
    line_breaks: re.Pattern[str]
    severity_comparatives: re.Pattern[str]
    laterality_comparatives: re.Pattern[str] | None
    clause_breaks: re.Pattern[str]
    measurements: tuple[tuple[MeasurementRule, re.Pattern[str]], ...]
    deep_phrase: re.Pattern[str]
    modality_terms: tuple[tuple[str, re.Pattern[str]], ...]
    region_terms: tuple[tuple[str, re.Pattern[str]], ...]
    t1: re.Pattern[str]
    fluid_sensitive: re.Pattern[str]
    code_index: dict[tuple[str, str], str]        # (system, code) -> concept id
    by_id: dict[str, Concept]
    report_codes: dict[str, ReportCode]
    default_site_words: dict[str, re.Pattern[str]]      # concept id -> its compiled default_site_words
    concessive_clause: re.Pattern[str] | None = None    # context_rules.yaml concessive_clause


def check_sites(catalogue: ConceptCatalogue, nlp: NlpRules) -> None:
    """Every site a concept names is a site of findings_nlp.yaml `sites`, every region one the report facts know."""
    sites, regions = nlp.site_ids(), nlp.region_ids()
    for i, concept in enumerate(catalogue.concepts):
        named = [("default_site", concept.default_site), *(("sites", s) for s in concept.sites),
                 *((f"code_qualifiers.{code}.site", q.site) for code, q in concept.code_qualifiers.items())]
        for place, site in named:
            if site is not None and site not in sites:
                raise KnowledgeError(CONCEPTS_FILE, f"concepts.{i}.{place}", f"unknown site {site!r}")
        for region in concept.default_site_regions:
            if region not in regions:
                raise KnowledgeError(CONCEPTS_FILE, f"concepts.{i}.default_site_regions", f"unknown region {region!r}")


def _compile(pattern: str, flags: int, place: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise KnowledgeError(NLP_FILE, place, f"invalid pattern: {exc}") from None


def concept_catalogue() -> ConceptCatalogue:
    """The typed concept catalogue (concept id -> codes, display, phrasings, physiological flag)."""
    return compiled().catalogue


@lru_cache(maxsize=1)
def compiled() -> Compiled:
    catalogue = load_model(CONCEPTS_FILE, ConceptCatalogue)
    nlp = load_model(NLP_FILE, NlpRules)
    context = load_model(CONTEXT_FILE, ContextRules)
    check_sites(catalogue, nlp)
    macros = nlp.macros
    decoys = [(expand_text(p, macros, NLP_FILE, f"decoys.{n}"), None, (), False, False) for n, p in enumerate(nlp.decoys)]
    groups = [_group(None, decoys)]
    group_texts = [[item[0] for item in decoys]]
    for i, concept in enumerate(catalogue.concepts):
        items = [
            (expand_text(rule.pattern, macros, CONCEPTS_FILE, f"concepts.{i}.phrasings.{j}"), rule.certainty,
             rule.also, rule.affirm_only, rule.needs_site)
            for j, rule in enumerate(concept.phrasing_rules)
        ]
        groups.append(_group(concept.id, items))
        group_texts.append([item[0] for item in items])
    known = catalogue.ids()
    for k, rule in enumerate(nlp.measurements):
        for concept_id in rule.applies_to:
            if concept_id not in known:
                raise KnowledgeError(NLP_FILE, f"measurements.{k}.applies_to", f"unknown concept {concept_id!r}")
    for concept_id in (*nlp.deep_bme.applies_to, nlp.deep_bme.adds):
        if concept_id not in known:
            raise KnowledgeError(NLP_FILE, "deep_bme", f"unknown concept {concept_id!r}")

    def valued(items: tuple, section: str) -> tuple[tuple[str, re.Pattern[str]], ...]:
        return tuple(
            (getattr(item, "value", None) or getattr(item, "modality", None) or item.region,
             expand(item.pattern, macros, NLP_FILE, f"{section}.{n}"))
            for n, item in enumerate(items)
        )

    def lexicon(kind: str, items: tuple[ValuedPattern, ...], section: str) -> list[tuple[str, re.Pattern[str], Any]]:
        out = []
        for n, item in enumerate(items):
            text = expand_text(item.pattern, macros, NLP_FILE, f"{section}.{n}")
            out.append((text, re.compile(rf"(?:{text})(?![\w])", re.IGNORECASE), (kind, item.value)))
        return out

    code_index = {(c.system, c.code): concept.id for concept in catalogue.concepts for c in concept.codes}
    return Compiled(
        catalogue=catalogue,
        nlp=nlp,
        context=context,
        concessive_clause=(_compile(context.concessive_clause, re.IGNORECASE, f"{CONTEXT_FILE}: concessive_clause")
                           if context.concessive_clause else None),
        groups=tuple(groups),
        targets=Dispatcher([(text, member.regex, (order, member))
                            for order, (group, texts) in enumerate(zip(groups, group_texts))
                            for text, member in zip(texts, group.members)]),
        modifiers=Dispatcher([*lexicon("laterality", nlp.laterality, "laterality"),
                              *lexicon("severity", nlp.severity, "severity"),
                              *lexicon("site", nlp.sites, "sites")]),
        line_breaks=_compile(nlp.line_breaks, re.MULTILINE, "line_breaks"),
        severity_comparatives=_compile(nlp.severity_comparatives, re.IGNORECASE, "severity_comparatives"),
        laterality_comparatives=(_compile(nlp.laterality_comparatives, re.IGNORECASE, "laterality_comparatives")
                                 if nlp.laterality_comparatives else None),
        clause_breaks=_compile(nlp.clause_breaks, re.IGNORECASE, "clause_breaks"),
        measurements=tuple(
            (rule, expand(rule.pattern, macros, NLP_FILE, f"measurements.{n}"))
            for n, rule in enumerate(nlp.measurements)
        ),
        deep_phrase=expand(nlp.deep_bme.phrasings, macros, NLP_FILE, "deep_bme.phrasings"),
        modality_terms=valued(nlp.modality_terms, "modality_terms"),
        region_terms=valued(nlp.region_terms, "region_terms"),
        t1=expand(nlp.sequences.t1, macros, NLP_FILE, "sequences.t1"),
        fluid_sensitive=expand(nlp.sequences.fluid_sensitive, macros, NLP_FILE, "sequences.fluid_sensitive"),
        code_index=code_index,
        by_id=catalogue.by_id(),
        report_codes={r.loinc: r for r in nlp.report_codes},
        default_site_words={
            concept.id: expand(concept.default_site_words, macros, CONCEPTS_FILE, f"concepts.{i}.default_site_words")
            for i, concept in enumerate(catalogue.concepts) if concept.default_site_words
        },
    )
