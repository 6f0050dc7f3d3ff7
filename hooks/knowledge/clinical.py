"""Typed models of the clinical knowledge files (pathways, medications, safety, evidence, conditions, services).

Loaded once and cross-checked (every drug, step, service, value set, fact and citation a file names must exist),
so a bad file stops start-up with a `KnowledgeError` naming the file, the place and the reason.
"""
from __future__ import annotations

import string
from functools import cached_property, lru_cache
from typing import Any, Literal, Mapping

from pydantic import Field, PrivateAttr, model_validator

from hooks.knowledge import Coding, KnowledgeError, StrictModel, load_model, load_yaml

def _declared_facts() -> dict[str, Mapping[str, Any]]:
    """The fact vocabulary of facts.yaml (hooks/pathways/facts.py computes exactly these)."""
    data = load_yaml("facts.yaml")
    facts = data.get("facts") if isinstance(data, Mapping) else None
    if not isinstance(facts, Mapping) or not facts:
        raise KnowledgeError("facts.yaml", "facts", "a mapping of fact names is required")
    for name, spec in facts.items():
        if not isinstance(spec, Mapping) or spec.get("kind") not in ("boolean", "number", "category"):
            raise KnowledgeError("facts.yaml", f"facts.{name}", "kind must be boolean, number or category")
        value_sets = spec.get("value_sets")
        if value_sets is not None and (spec["kind"] != "boolean" or not isinstance(value_sets, list) or not value_sets):
            raise KnowledgeError("facts.yaml", f"facts.{name}", "value_sets is a non-empty list on a boolean fact")
    return dict(facts)


# Dates a text template may name besides the facts.
DATE_NAMES = frozenset({"nsaid_trial_due", "response_check_due", "reassess_date"})
DRUG_CLASSES = frozenset({
    "nsaid", "cox2_inhibitor", "ppi", "tnf_inhibitor", "il17_inhibitor", "jak_inhibitor", "biologic",
    "systemic_glucocorticoid", "csdmard", "opioid", "anticoagulant", "antiplatelet", "bone_antiresorptive",
    "prostacyclin", "non_nsaid_analgesic", "vitamin_k_antagonist",
})
Indicator = Literal["info", "warning", "critical"]
# What a cell of the ACG GI x cardiovascular risk grid may ask for (safety.yaml gi_risk.params.grid).
GI_ACTIONS = frozenset({"none", "nsaid_ppi_or_cox2", "drug_ppi", "cox2_ppi", "avoid"})


# --------------------------------------------------------------------------------------------------- evidence
class Source(StrictModel):
    id: str
    label: str
    citation: str
    url: str | None = None
    doi: str | None = None
    status: Literal["verified", "unverified"]
    match: Literal["inferred", "source", "labelling", "standard"]


class EvidenceFile(StrictModel):
    sources: list[Source]

    def by_id(self) -> dict[str, Source]:
        return {s.id: s for s in self.sources}


# ------------------------------------------------------------------------------------------------ medications
class Quantity(StrictModel):
    value: float
    unit: str


class DoseRange(StrictModel):
    low: float
    high: float
    unit: str


class LoadingDose(StrictModel):
    """The first doses of a regimen (e.g. ixekizumab 160 mg once in ankylosing spondylitis): its own Dosage
    (sequence 1) in the order, before the maintenance dose."""

    dose: Quantity
    frequency: int
    period: float
    period_unit: Literal["h", "d", "wk", "mo"]
    count: int


# What a dosing text may name; every amount it shows comes from these fields (no literal copy of the dose).
DOSING_TEXT_FIELDS = frozenset({"dose", "loading_dose", "max_per_day", "step_up_dose"})
_LITERAL_AMOUNT = r"(?<![\w.{{])\d+(?:\.\d+)?\s*{unit}(?![\w/])"


def amount_text(q: "Quantity") -> str:
    value = int(q.value) if float(q.value).is_integer() else q.value
    return f"{value} {q.unit}"


class Dosing(StrictModel):
    product: str | None = None             # SCD code among the drug's products; else the ingredient is used
    dose: Quantity
    loading: LoadingDose | None = None
    route: str
    frequency: int
    period: float
    period_unit: Literal["h", "d", "wk", "mo"]
    as_needed: bool = False
    max_per_day: Quantity | None = None
    step_up_dose: Quantity | None = None   # a later dose the label allows (said in the text; a new order)
    count: int | None = None               # total administrations (single-dose drugs)
    # days, or the name of a pathways.yaml parameter (the NSAID trial lasts `nsaid_failure_days`): resolved at load
    duration_days: int | str | None = None
    reassess_days: int | str | None = None
    text: str                              # a template: {dose}, {loading_dose}, {max_per_day} (rendered at load)
    citations: list[str]
    _text_template: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _text_from_the_fields(self) -> "Dosing":
        """The text names the dose through its fields, never as a literal copy, so a changed dose changes the text
        with the order. Rendered once here; `text_template` keeps the data's own wording."""
        import re

        fields = _template_fields(self.text)
        if "dose" not in fields:
            raise ValueError("the dosing text must show the dose as {dose}")
        if fields - DOSING_TEXT_FIELDS:
            raise ValueError(f"unknown dosing text fields {sorted(fields - DOSING_TEXT_FIELDS)}")
        if ("loading_dose" in fields) != (self.loading is not None):
            raise ValueError("{loading_dose} goes with a `loading` dose, and a loading dose must be in the text")
        if ("max_per_day" in fields) != (self.max_per_day is not None):
            raise ValueError("{max_per_day} goes with `max_per_day`, and a daily maximum must be in the text")
        if ("step_up_dose" in fields) != (self.step_up_dose is not None):
            raise ValueError("{step_up_dose} goes with `step_up_dose`, and a step-up dose must be in the text")
        units = {self.dose.unit} | ({self.loading.dose.unit} if self.loading else set()) | (
            {self.step_up_dose.unit} if self.step_up_dose else set())
        for unit in units:
            literal = re.search(_LITERAL_AMOUNT.format(unit=re.escape(unit)), self.text)
            if literal:
                raise ValueError(f"the dosing text copies an amount ({literal.group(0)!r}): use {{dose}}/{{loading_dose}}")
        values = {"dose": amount_text(self.dose), "max_per_day": amount_text(self.max_per_day) if self.max_per_day else "",
                  "loading_dose": amount_text(self.loading.dose) if self.loading else "",
                  "step_up_dose": amount_text(self.step_up_dose) if self.step_up_dose else ""}
        self._text_template = self.text
        object.__setattr__(self, "text", self.text.format_map(values))
        return self


class Drug(StrictModel):
    id: str
    name: str
    classes: list[str]
    ingredient: Coding
    products: list[Coding] = Field(default_factory=list)
    related_ingredients: list[Coding] = Field(default_factory=list)   # biosimilars: same family
    biosimilar_family: str | None = None
    aliases: list[str] = Field(default_factory=list)     # brand / over-the-counter names that identify it in text
    dosing: dict[str, Dosing] = Field(default_factory=dict)

    def product(self, code: str | None) -> Coding | None:
        return next((p for p in self.products if p.code == code), None)

    def all_codes(self) -> list[Coding]:
        return [self.ingredient, *self.products, *self.related_ingredients]


class ResponseKind(StrictModel):
    codes: list[str]
    phrases: list[str]


class ResponseReasons(StrictModel):
    system: str
    kinds: dict[Literal["primary_nonresponse", "secondary_nonresponse", "intolerance"], ResponseKind]


class MedicationsFile(StrictModel):
    units_system: str
    routes: dict[str, Coding]
    response_reasons: ResponseReasons
    drugs: list[Drug]

    def by_id(self) -> dict[str, Drug]:
        return {d.id: d for d in self.drugs}


# ------------------------------------------------------------------------------------------------- conditions
class ValueSet(StrictModel):
    codings: list[Coding]
    phrases: list[str] = Field(default_factory=list)
    all_words: list[str] = Field(default_factory=list)     # matches when every word appears in the text

    @cached_property
    def code_pairs(self) -> frozenset[tuple[str, str]]:
        """(system, code) of every coding, built once: rules match every condition against every value set."""
        return frozenset((c.system, c.code) for c in self.codings)


class ConditionsFile(StrictModel):
    value_sets: dict[str, ValueSet]


# ---------------------------------------------------------------------------------------------------- services
class ServiceCode(StrictModel):
    text: str
    category: Literal["therapy", "procedure", "imaging", "referral", "laboratory"]
    coding: Coding
    note: str | None = None


class ServicesFile(StrictModel):
    local_system: str
    services: dict[str, ServiceCode]
    order_kinds: dict[str, ValueSet]

    @model_validator(mode="before")
    @classmethod
    def _local_codes(cls, data: Any) -> Any:
        # "system: local" is shorthand for the file's own local code system.
        if isinstance(data, dict) and isinstance(data.get("services"), dict):
            local = data.get("local_system")
            for service in data["services"].values():
                coding = service.get("coding") if isinstance(service, dict) else None
                if isinstance(coding, dict) and coding.get("system") == "local" and isinstance(local, str):
                    coding["system"] = local
        return data


# ------------------------------------------------------------------------------------------------------ safety
class SafetyCheck(StrictModel):
    id: str
    applies_to: list[str]
    effect: Literal["block", "warn", "substitute", "require_orders", "caution"]
    params: dict[str, Any]
    wording: str
    unknown_wording: str | None = None     # said when the data the check needs is not recorded
    # Facts that decide this check. When one of them could not be read or obtained (PatientFacts.unreadable), the
    # drug is withheld from one-click ordering with `unreadable_wording` (safety fails closed).
    needs: list[str] = Field(default_factory=list)
    unreadable_wording: str | None = None
    citations: list[str]

    @model_validator(mode="after")
    def _unreadable_said(self) -> "SafetyCheck":
        if self.needs and not self.unreadable_wording:
            raise ValueError("a check with `needs` must say what it withholds (`unreadable_wording`)")
        return self

    @property
    def rule(self) -> str:
        return f"safety.{self.id}"


class ScreeningResults(StrictModel):
    positive_codes: list[Coding]
    negative_codes: list[Coding]
    positive_phrases: list[str]
    negative_phrases: list[str]
    max_age_days: int


class AllergyClass(StrictModel):
    drug_classes: list[str]
    drugs: list[str]
    codings: list[Coding]
    phrases: list[str]

    @cached_property
    def value_set(self) -> "ValueSet":
        """Its codings and phrases as a value set, for matching an AllergyIntolerance code like a condition."""
        return ValueSet(codings=self.codings, phrases=self.phrases)


class FailClosed(StrictModel):
    """The data a safety fact depends on: prefetch keys, and per resource type the elements that decide it."""

    prefetch: list[str]
    resources: dict[str, list[str]]


class OverrideReason(StrictModel):
    code: str
    display: str


class SafetyFile(StrictModel):
    checks: list[SafetyCheck]
    screening_results: ScreeningResults
    allergy_classes: dict[str, AllergyClass]
    fail_closed: dict[str, FailClosed]
    override_reasons: list[OverrideReason]
    override_system: str

    def by_id(self) -> dict[str, SafetyCheck]:
        return {c.id: c for c in self.checks}


# ---------------------------------------------------------------------------------------------------- pathways
class SiteGroup(StrictModel):
    """Where a finding must be for a condition with `at`: its site is one of `sites`, or it names no site and comes
    from a report of one of `regions` (a finding with neither does not count)."""

    sites: list[str]
    regions: list[str]


class Cond(StrictModel):
    """One condition of the pathway language (exactly one kind per node)."""

    finding: str | None = None
    possible: str | None = None            # a finding affirmed or reported as uncertain ("concerning for")
    at: str | None = None                  # with finding/possible: only findings in this site group count
    condition: str | None = None
    pathway: str | None = None
    step_offers: str | None = None         # the current step of an active pathway offers a drug of this class
    fact: str | None = None
    gt: str | None = None                  # comparisons name a parameter of pathways.yaml `parameters`
    ge: str | None = None
    lt: str | None = None
    le: str | None = None
    all: list["Cond"] | None = None
    any: list["Cond"] | None = None
    not_: "Cond | None" = Field(default=None, alias="not")

    @model_validator(mode="after")
    def _one_kind(self) -> "Cond":
        kinds = [k for k in ("finding", "possible", "condition", "pathway", "step_offers", "fact", "all", "any", "not_") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a condition has exactly one of finding/condition/pathway/fact/all/any/not, got {kinds}")
        comparisons = [k for k in ("gt", "ge", "lt", "le") if getattr(self, k) is not None]
        if comparisons and self.fact is None:
            raise ValueError("gt/ge/lt/le only go with fact")
        if len(comparisons) > 1:
            raise ValueError("one comparison per fact condition")
        if self.at is not None and self.finding is None and self.possible is None:
            raise ValueError("at only goes with finding or possible")
        return self

    def walk(self):
        yield self
        for child in (self.all or []) + (self.any or []) + ([self.not_] if self.not_ else []):
            yield from child.walk()


class MedicationAction(StrictModel):
    drugs: list[str]
    dosing: str
    # the dosing by the coded indication: value set id -> dosing key, used for each drug that has that dosing
    # (ixekizumab: ankylosing spondylitis has a loading dose, nr-axSpA none; secukinumab's step-up is AS only)
    dosing_by_condition: dict[str, str] = Field(default_factory=dict)
    companions: list[str] = Field(default_factory=list)       # services added to each alternative's suggestion
    skip_if_current: list[str] = Field(default_factory=list)  # already on a drug of these classes: do not re-suggest
    recommended_classes: list[str] = Field(default_factory=list)
    prefer_in_pregnancy: list[str] = Field(default_factory=list)
    exclude_failed_family: bool = False
    no_recommendation: bool = False                        # the guideline prefers none: no isRecommended
    fallback: "MedicationAction | None" = None             # offered when every drug above is blocked
    summary: str | None = Field(default=None, max_length=139)   # the card summary when this fallback is used


class Step(StrictModel):
    id: str
    title: str
    indicator: Indicator
    when: Cond | None = None
    defer_to: list[str] = Field(default_factory=list)
    summary: str = Field(max_length=139)
    where: str
    next: list[str]
    medications: MedicationAction | None = None
    services: list[str] = Field(default_factory=list)
    service_priority: Literal["routine", "urgent"] = "routine"
    also_check: list[str] = Field(default_factory=list)    # drugs the next steps mention: say when one is withheld


class Pathway(StrictModel):
    id: str
    title: str
    seed: str
    evidence: list[str]
    topic: Coding
    entry: Cond
    defer_to: list[str] = Field(default_factory=list)
    reason_conditions: list[str]
    findings_shown: list[str]
    notes: list[str]
    t1_required: bool = False
    steps: list[Step]

    def rule(self, step_id: str) -> str:
        return f"{self.id}.{step_id}"


class OrderMatch(StrictModel):
    drug_classes: list[str] = Field(default_factory=list)
    order_kinds: list[str] = Field(default_factory=list)
    min_days: int | None = None


class OrderCheck(StrictModel):
    id: str
    summary: str = Field(max_length=139)
    detail: str
    match: OrderMatch
    when: Cond
    fix: Literal["delete", "replace_with_pathway_step", "replace_with_service"]
    replacement_service: str | None = None
    citations: list[str]

    @property
    def rule(self) -> str:
        return f"order_check.{self.id}"


class OrderGuidance(StrictModel):
    summary: str
    detail: str


class CardText(StrictModel):
    findings: str
    where: str
    next: str
    safety: str
    orders: str
    notes: str
    evidence: str
    absent: str
    uncertain: str
    unknown: str
    already_on: str
    withheld: str
    unverified: str
    reassess_note: str
    recommended: str
    source_label: str
    evidence_line: str
    suggestion_extra: str
    delete_draft: str
    keep_draft_add: str
    replace_draft: str
    guidance_where: str
    guidance_dose: str
    guidance_reassess: str
    order_check_where: str
    current_step: str
    draft_duration: str
    held: str
    all_blocked: str


class PathwaysFile(StrictModel):
    version_note: str
    advice_footer: str
    card_text: CardText
    parameters: dict[str, float]
    t1_missing_note: str
    fact_labels: dict[str, str]
    site_groups: dict[str, SiteGroup] = Field(default_factory=dict)
    pathways: list[Pathway]
    order_checks: list[OrderCheck]
    order_guidance: OrderGuidance

    def by_id(self) -> dict[str, Pathway]:
        return {p.id: p for p in self.pathways}

    def param(self, name: str) -> float | int:
        value = self.parameters[name]
        return int(value) if float(value).is_integer() else value

    # the parameters the facts read (named once in `parameters`)
    @property
    def nsaid_failure_days(self) -> int:
        return int(self.param("nsaid_failure_days"))

    @property
    def nsaid_gap_days(self) -> int:
        return int(self.param("nsaid_gap_days"))

    @property
    def response_check_days(self) -> int:
        return int(self.param("response_check_days"))

    @property
    def stable_pain_nrs_max(self) -> float:
        return self.param("stable_pain_nrs_max")


# ------------------------------------------------------------------------------------------------ the whole base
class ClinicalKnowledge:
    """All clinical files, loaded and cross-checked together."""

    def __init__(self, evidence: EvidenceFile, medications: MedicationsFile, conditions: ConditionsFile,
                 services: ServicesFile, safety: SafetyFile, pathways: PathwaysFile) -> None:
        self.evidence = evidence.by_id()
        self.medications = medications
        self.drugs = medications.by_id()
        self.value_sets = conditions.value_sets
        self.services = services
        self.safety = safety
        self.checks = safety.by_id()
        self.pathway_file = pathways
        self.pathways = pathways.by_id()
        self.fact_names: frozenset[str] = frozenset()       # facts.yaml, set by the cross-check
        self.fact_value_sets: dict[str, tuple[str, ...]] = {}   # problem-list facts: fact -> value sets
        #: Lookups derived from this knowledge and memoised by the rules (they die with it, never go stale).
        self.derived: dict[str, dict[Any, Any]] = {}


def _template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


_PER_DAY = {"h": 24.0, "d": 1.0, "wk": 1 / 7, "mo": 1 / 30}


def product_strength(display: str) -> tuple[float, str] | None:
    """Amount of drug per unit of an RxNorm SCD from its name: "0.4 ML adalimumab 100 MG/ML Prefilled Syringe" is
    40 mg, "naproxen 500 MG Oral Tablet" 500 mg (None when the name gives no strength)."""
    import re

    per_ml = re.search(r"^([\d.]+) ML .*?([\d.]+) MG/ML\b", display)
    if per_ml:
        return round(float(per_ml.group(1)) * float(per_ml.group(2)), 6), "mg"
    amount = re.search(r"([\d.]+) MG(?!/)\b", display)
    return (float(amount.group(1)), "mg") if amount else None


def check_dosing(drug: "Drug", key: str, dosing: "Dosing") -> str | None:
    """Why an order built from this dosing would contradict itself (dose vs product strength and unit, daily
    maximum vs the regimen), or None. Every dose is a whole number of the product's units."""
    product = drug.product(dosing.product) if dosing.product else None
    if dosing.product and product is None:
        return f"product {dosing.product!r} is not among the drug's products"
    if product is not None and ((" Oral " in f" {product.display} ") != (dosing.route == "oral")):
        return f"route {dosing.route!r} does not fit product {product.code} ({product.display})"
    doses = [("dose", dosing.dose)] + ([("loading dose", dosing.loading.dose)] if dosing.loading else []) + (
        [("step-up dose", dosing.step_up_dose)] if dosing.step_up_dose else [])
    if product is not None:
        strength = product_strength(product.display)
        for name, q in doses:
            if q.unit.endswith("/kg"):
                continue                     # weight-based: the dispensed amount follows the patient's weight
            if strength is None:
                return f"product {product.code} ({product.display}) gives no strength to check the {name} against"
            per_unit, unit = strength
            if q.unit.lower() != unit:
                return f"{name} unit {q.unit!r} does not match product {product.code} ({product.display}, {unit})"
            units = q.value / per_unit
            if units < 1 or abs(units - round(units)) > 1e-6:
                return (f"{name} {amount_text(q)} is not a whole number of product {product.code} "
                        f"({product.display}: {per_unit:g} {unit} a unit)")
    if dosing.max_per_day is not None:
        if dosing.max_per_day.unit != dosing.dose.unit:
            return "max_per_day must be in the dose's unit"
        daily = dosing.dose.value * dosing.frequency * _PER_DAY[dosing.period_unit] / dosing.period
        if daily > dosing.max_per_day.value + 1e-6:
            return f"the regimen gives {daily:g} {dosing.dose.unit} a day, above max_per_day {amount_text(dosing.max_per_day)}"
    return None


def _resolve_dosing_parameters(k: ClinicalKnowledge) -> None:
    """A dosing's duration or reassessment named by a parameter takes the parameter's value (one number, one place)."""
    for drug in k.medications.drugs:
        for key, dosing in drug.dosing.items():
            for field_name in ("duration_days", "reassess_days"):
                value = getattr(dosing, field_name)
                if isinstance(value, str):
                    if value not in k.pathway_file.parameters:
                        raise KnowledgeError("medications.yaml", f"drugs.{drug.id}.dosing.{key}.{field_name}",
                                             f"{value!r} is not a parameter of pathways.yaml")
                    object.__setattr__(dosing, field_name, int(k.pathway_file.param(value)))


def _cross_check(k: ClinicalKnowledge, concepts: frozenset[str] | None) -> None:
    # the facts the pathway conditions, checks and text templates may name (declared in facts.yaml)
    declared = _declared_facts()
    FACT_NAMES = k.fact_names = frozenset(declared)  # noqa: N806
    k.fact_value_sets = {name: tuple(spec["value_sets"]) for name, spec in declared.items() if "value_sets" in spec}
    for name, value_sets in k.fact_value_sets.items():
        for vs in value_sets:
            if vs not in k.value_sets:
                raise KnowledgeError("facts.yaml", f"facts.{name}.value_sets", f"unknown value set {vs!r}")
    _resolve_dosing_parameters(k)

    def need(ok: bool, file: str, place: str, reason: str) -> None:
        if not ok:
            raise KnowledgeError(file, place, reason)

    for drug in k.medications.drugs:
        for cls in drug.classes:
            need(cls in DRUG_CLASSES, "medications.yaml", f"drugs.{drug.id}.classes", f"unknown class {cls!r}")
        for key, dosing in drug.dosing.items():
            place = f"drugs.{drug.id}.dosing.{key}"
            need(dosing.route in k.medications.routes, "medications.yaml", place, f"unknown route {dosing.route!r}")
            problem = check_dosing(drug, key, dosing)
            need(problem is None, "medications.yaml", place, problem or "")
            for c in dosing.citations:
                need(c in k.evidence, "medications.yaml", place, f"unknown citation {c!r}")
    for check in k.safety.checks:
        place = f"checks.{check.id}"
        for cls in check.applies_to:
            need(cls in DRUG_CLASSES, "safety.yaml", place, f"unknown drug class {cls!r}")
        for c in check.citations:
            need(c in k.evidence, "safety.yaml", place, f"unknown citation {c!r}")
        for fact in check.needs:
            need(fact in FACT_NAMES, "safety.yaml", place, f"unknown fact {fact!r}")
            need(fact in k.safety.fail_closed, "safety.yaml", place, f"fact {fact!r} has no fail_closed entry")
        for services in (check.params.get("orders") or {}).values():
            for s in services:
                need(s in k.services.services, "safety.yaml", place, f"unknown service {s!r}")
    need({"nsaid", "sulfonamide"} <= set(k.safety.allergy_classes), "safety.yaml", "allergy_classes",
         "the checks read the nsaid and sulfonamide allergy classes")
    for name, allergy in k.safety.allergy_classes.items():
        for d in allergy.drugs:
            need(d in k.drugs, "safety.yaml", f"allergy_classes.{name}", f"unknown drug {d!r}")
    need("gi_risk" in k.checks and "biologic_screening" in k.checks, "safety.yaml", "checks",
         "the engine needs the gi_risk and biologic_screening checks")

    pathway_ids = set(k.pathways)
    for value_set in ("pregnancy", "diabetes", "charcot", "active_serious_infection", "liver_disease_or_alcohol",
                      "ibd", "demyelinating_disease", "athlete", "postpartum", "hip_pain", "low_back_pain"):
        need(value_set in k.value_sets, "conditions.yaml", "value_sets", f"the facts read value set {value_set!r}")

    def check_cond(cond: Cond, file: str, place: str) -> None:
        for node in cond.walk():
            if node.fact is not None:
                need(node.fact in FACT_NAMES, file, place, f"unknown fact {node.fact!r}")
            for op in ("gt", "ge", "lt", "le"):
                limit = getattr(node, op)
                need(limit is None or limit in k.pathway_file.parameters, file, place,
                     f"{op}: {limit!r} is not a parameter (thresholds are named once in `parameters`)")
            if node.condition is not None:
                need(node.condition in k.value_sets, file, place, f"unknown value set {node.condition!r}")
            if node.step_offers is not None:
                need(node.step_offers in DRUG_CLASSES, file, place, f"unknown drug class {node.step_offers!r}")
            if node.pathway is not None:
                need(node.pathway in pathway_ids, file, place, f"unknown pathway {node.pathway!r}")
            for concept in (node.finding, node.possible):
                if concept is not None and concepts is not None:
                    need(concept in concepts, file, place, f"unknown finding concept {concept!r}")
            if node.at is not None:
                need(node.at in k.pathway_file.site_groups, file, place, f"unknown site group {node.at!r}")

    nlp = load_yaml("findings_nlp.yaml")
    site_ids = {site["value"] for site in nlp["sites"]}
    regions = {c["region"] for c in nlp["report_codes"] if "region" in c} | {t["region"] for t in nlp["region_terms"]}
    for name, group in k.pathway_file.site_groups.items():
        for site in group.sites:
            need(site in site_ids, "pathways.yaml", f"site_groups.{name}.sites", f"unknown site {site!r}")
        for region in group.regions:
            need(region in regions, "pathways.yaml", f"site_groups.{name}.regions", f"unknown region {region!r}")

    labels = set(k.pathway_file.fact_labels)
    need(labels == FACT_NAMES, "pathways.yaml", "fact_labels",
         f"labels must cover exactly the facts: missing {sorted(FACT_NAMES - labels)}, unknown {sorted(labels - FACT_NAMES)}")
    need(not set(k.pathway_file.parameters) & (FACT_NAMES | DATE_NAMES), "pathways.yaml", "parameters",
         "a parameter has the name of a fact or date")
    for name in ("nsaid_failure_days", "nsaid_gap_days", "response_check_days", "stable_pain_nrs_max"):
        need(name in k.pathway_file.parameters, "pathways.yaml", "parameters", f"the facts read parameter {name!r}")
    known_text = FACT_NAMES | DATE_NAMES | set(k.pathway_file.parameters)
    for pathway in k.pathway_file.pathways:
        base = f"pathways.{pathway.id}"
        need(pathway.seed in k.evidence, "pathways.yaml", base, f"unknown seed source {pathway.seed!r}")
        for c in pathway.evidence:
            need(c in k.evidence, "pathways.yaml", base + ".evidence", f"unknown citation {c!r}")
        for p in pathway.defer_to:
            need(p in pathway_ids, "pathways.yaml", base + ".defer_to", f"unknown pathway {p!r}")
        for v in pathway.reason_conditions:
            need(v in k.value_sets, "pathways.yaml", base + ".reason_conditions", f"unknown value set {v!r}")
        check_cond(pathway.entry, "pathways.yaml", base + ".entry")
        need(bool(pathway.steps), "pathways.yaml", base + ".steps", "a pathway needs at least one step")
        seen: set[str] = set()
        for step in pathway.steps:
            place = f"{base}.steps.{step.id}"
            need(step.id not in seen, "pathways.yaml", place, "duplicate step id")
            seen.add(step.id)
            if step.when is not None:
                check_cond(step.when, "pathways.yaml", place + ".when")
            for p in step.defer_to:
                need(p in pathway_ids, "pathways.yaml", place, f"unknown pathway {p!r}")
            for text in (step.summary, step.where, *step.next):
                unknown = _template_fields(text) - known_text
                need(not unknown, "pathways.yaml", place, f"unknown template fields {sorted(unknown)}")
            for d in step.also_check:
                need(d in k.drugs, "pathways.yaml", place, f"unknown drug {d!r}")
            for s in step.services:
                need(s in k.services.services, "pathways.yaml", place, f"unknown service {s!r}")
            med = step.medications
            while med is not None:
                for s in med.companions:
                    need(s in k.services.services, "pathways.yaml", place, f"unknown service {s!r}")
                for cls in (*med.skip_if_current, *med.recommended_classes):
                    need(cls in DRUG_CLASSES, "pathways.yaml", place, f"unknown drug class {cls!r}")
                for d in med.drugs:
                    need(d in k.drugs, "pathways.yaml", place, f"unknown drug {d!r}")
                    need(med.dosing in k.drugs[d].dosing, "pathways.yaml", place,
                         f"drug {d!r} has no dosing {med.dosing!r}")
                for vs in med.dosing_by_condition:
                    need(vs in k.value_sets, "pathways.yaml", place, f"unknown value set {vs!r}")
                for d in med.prefer_in_pregnancy:
                    need(d in med.drugs, "pathways.yaml", place, f"prefer_in_pregnancy {d!r} is not among the drugs")
                med = med.fallback
    for check in k.pathway_file.order_checks:
        place = f"order_checks.{check.id}"
        check_cond(check.when, "pathways.yaml", place + ".when")
        for cls in check.match.drug_classes:
            need(cls in DRUG_CLASSES, "pathways.yaml", place, f"unknown drug class {cls!r}")
        for kind in check.match.order_kinds:
            need(kind in k.services.order_kinds, "pathways.yaml", place, f"unknown order kind {kind!r}")
        for c in check.citations:
            need(c in k.evidence, "pathways.yaml", place, f"unknown citation {c!r}")
        need(check.fix != "replace_with_service" or check.replacement_service in k.services.services,
             "pathways.yaml", place, "replace_with_service needs a known replacement_service")
    gi = k.checks["gi_risk"].params
    need(gi.get("high_if_condition") in k.value_sets, "safety.yaml", "checks.gi_risk.params",
         "high_if_condition must name a value set")
    for factor in gi.get("factors") or ():
        need(factor.get("condition", next(iter(k.value_sets))) in k.value_sets
             and factor.get("drug_class", "nsaid") in DRUG_CLASSES, "safety.yaml", "checks.gi_risk.params.factors",
             f"unknown value set or drug class in {factor}")
    for tier in ("low", "moderate", "high"):
        for cv in ("low_cv", "high_cv"):
            cell = (gi.get("grid") or {}).get(tier, {}).get(cv) or {}
            need(cell.get("action") in GI_ACTIONS, "safety.yaml", f"checks.gi_risk.params.grid.{tier}.{cv}",
                 f"action must be one of {sorted(GI_ACTIONS)}")
            need(cell.get("action") != "drug_ppi" or cell.get("drug") in k.drugs, "safety.yaml",
                 f"checks.gi_risk.params.grid.{tier}.{cv}", "drug_ppi needs a known drug")
    need(gi.get("prefer_drug") in k.drugs, "safety.yaml", "checks.gi_risk.params", "prefer_drug is not a drug")
    need(gi.get("ppi_drug") in k.drugs and gi.get("ppi_dosing") in k.drugs[gi["ppi_drug"]].dosing, "safety.yaml",
         "checks.gi_risk.params", "ppi_drug/ppi_dosing must name a drug and one of its dosings")


def _concept_ids() -> frozenset[str] | None:
    """Finding concept ids from B's concepts.yaml, when it exists (else findings are not cross-checked)."""
    from hooks.knowledge import KNOWLEDGE_DIR, load_yaml

    if not (KNOWLEDGE_DIR / "concepts.yaml").exists():
        return None
    data = load_yaml("concepts.yaml")
    concepts = data.get("concepts") if isinstance(data, Mapping) else None
    if isinstance(concepts, list):
        return frozenset(c["id"] for c in concepts if isinstance(c, Mapping) and isinstance(c.get("id"), str))
    if isinstance(concepts, Mapping):
        return frozenset(str(key) for key in concepts)
    return None


@lru_cache(maxsize=1)
def clinical_knowledge() -> ClinicalKnowledge:
    """The clinical knowledge base, loaded once per process and cross-checked."""
    k = ClinicalKnowledge(
        evidence=load_model("evidence.yaml", EvidenceFile),
        medications=load_model("medications.yaml", MedicationsFile),
        conditions=load_model("conditions.yaml", ConditionsFile),
        services=load_model("service_codes.yaml", ServicesFile),
        safety=load_model("safety.yaml", SafetyFile),
        pathways=load_model("pathways.yaml", PathwaysFile),
    )
    _cross_check(k, _concept_ids())
    return k
