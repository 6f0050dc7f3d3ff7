"""Safety checks run before a drug is suggested and on every drafted drug: GI risk, kidney function, allergy,
pregnancy, biologic screening and infection, IL-17/IBD and JAK warnings, denosumab prerequisites.

The thresholds, wording and citations live in knowledge/safety.yaml; this module holds what each check means.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from hooks.knowledge import KnowledgeError
from hooks.knowledge.clinical import ClinicalKnowledge, SafetyCheck, clinical_knowledge
from hooks.pathways.facts import PatientFacts


BLOCKING = frozenset({"block", "withhold"})


@dataclass(frozen=True)
class SafetyFlag:
    """One check that fired for one drug."""

    check: str
    rule: str
    effect: str                  # block / withhold / warn / substitute / require_orders / unknown
    text: str                    # wording from the data, filled with the patient's values
    citations: tuple[str, ...]
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class DrugSafety:
    """The outcome of all checks for one drug and one patient."""

    drug: str
    flags: tuple[SafetyFlag, ...] = ()
    add_services: tuple[str, ...] = ()                  # tests to order in the same suggestion
    add_drugs: tuple[tuple[str, str], ...] = ()         # (drug id, dosing key), e.g. a PPI
    hold: bool = False                                  # order the added tests now, the drug after their results
    dosing: str | None = None                           # a check's safer dosing of this drug (e.g. a lower ceiling)

    @property
    def blocked(self) -> bool:
        """Never a one-click order: a check blocks it, or a fact a check needs could not be read (withhold)."""
        return any(f.effect in BLOCKING for f in self.flags)

    @property
    def warns(self) -> bool:
        """A flag that should make the card a warning (a risk to weigh, not only information)."""
        return any(f.effect == "warn" for f in self.flags)

    @property
    def warnings(self) -> tuple[SafetyFlag, ...]:
        return tuple(f for f in self.flags if f.effect in ("block", "withhold", "warn", "unknown"))


@dataclass(frozen=True)
class _Outcome:
    effect: str
    values: Mapping[str, object]
    sources: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    drugs: tuple[tuple[str, str], ...] = ()
    dosing: str | None = None


Check = Callable[[SafetyCheck, PatientFacts, ClinicalKnowledge, str], "_Outcome | None"]


def _fmt(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _gi_risk(check: SafetyCheck, facts: PatientFacts, k: ClinicalKnowledge, drug: str) -> _Outcome | None:
    """The cell of the GI x cardiovascular risk grid (safety.yaml) for this patient, applied to one NSAID."""
    tier = facts.get("gi_risk_tier") or "low"
    cell = check.params["grid"][tier]["high_cv" if facts.get("cv_risk_high") else "low_cv"]
    action = cell["action"]
    if action == "none":
        return None
    factors = ", ".join(label for label, _ in facts.gi_risk_factors) or "cardiovascular risk"
    sources = tuple(ref for _, ref in facts.gi_risk_factors if ref) + tuple(facts.sources.get("cv_risk_high", ()))
    values = {"factors": factors, "tier": tier, "advice": cell["advice"]}
    classes = set(k.drugs[drug].classes)
    ppi = ((check.params["ppi_drug"], check.params["ppi_dosing"]),)
    if action == "avoid":
        return _Outcome("block", values, sources)
    if action == "drug_ppi":
        return _Outcome("substitute", values, sources, drugs=ppi) if drug == cell["drug"] else _Outcome(
            "block", values, sources)
    if action == "cox2_ppi":
        return _Outcome("substitute", values, sources, drugs=ppi) if "cox2_inhibitor" in classes else _Outcome(
            "block", values, sources)
    # nsaid_ppi_or_cox2
    if "cox2_inhibitor" in classes:
        return _Outcome("substitute", values, sources)
    return _Outcome("substitute", values, sources, drugs=ppi)


def _anticoagulant(check, facts, k, drug):
    if facts.get("anticoagulant_current"):
        return _Outcome(check.effect, {}, facts.sources.get("anticoagulant_current", ()))
    return None


def _renal_below(check, facts, k, drug):
    egfr = facts.get("egfr")
    if egfr is None:
        return _Outcome("unknown", {}) if check.unknown_wording else None
    if egfr < check.params["egfr_below"]:
        # a block at a lower threshold already says it all
        stricter = [c for c in k.safety.checks if c.id != check.id and c.params.get("egfr_below", 0)
                    < check.params["egfr_below"] and c.params.get("egfr_below") and egfr < c.params["egfr_below"]]
        if stricter:
            return None
        return _Outcome(check.effect, {"egfr": _fmt(egfr)}, facts.sources.get("egfr", ()))
    return None


def _fact_block(fact: str) -> Check:
    def run(check, facts, k, drug):
        value = facts.get(fact)
        if value is None:
            return _Outcome("unknown", {}) if check.unknown_wording else None
        return _Outcome(check.effect, {}, facts.sources.get(fact, ())) if value else None
    return run


def _pregnancy_nsaid(check, facts, k, drug):
    if not facts.get("pregnant"):
        return None
    weeks = facts.get("pregnancy_weeks")
    if weeks is not None and weeks < check.params["weeks_from"]:
        return None
    label = f"{weeks} weeks" if weeks is not None else "gestation unknown"
    return _Outcome("block", {"weeks": label}, facts.sources.get("pregnant", ()) + facts.sources.get(
        "pregnancy_weeks", ()))


def _required_orders(check, facts, k, drug):
    missing_groups, services = [], []
    for group, tests in check.params["orders"].items():
        # a group is satisfied by any of its tests on record (e.g. HBsAg for HBV); otherwise all are ordered
        if not any(t in facts.screening for t in tests):
            missing_groups.append(group)
            services.extend(tests)
    if not services:
        return None
    return _Outcome("require_orders", {"missing": " and ".join(missing_groups)}, services=tuple(services))


def _screening_positive(check, facts, k, drug):
    screening = {t for group in k.checks["biologic_screening"].params["orders"].values() for t in group}
    positive = [r for r in facts.screening.values()
                if r.result in ("positive", "indeterminate") and r.test in screening]
    if not positive:
        return None
    names = ", ".join(f"{k.services.services[r.test].text}: {r.result}" for r in positive)
    return _Outcome(check.effect, {"positive": names}, tuple(r.reference for r in positive))


def _jak_age(check, facts, k, drug):
    age = facts.get("age")
    if age is not None and age >= check.params["age_from"]:
        return _Outcome("warn", {"age": age}, facts.sources.get("age", ()))
    return None


def _duplicate(check, facts, k, drug):
    classes = set(k.drugs[drug].classes)
    for group in check.params["groups"]:
        if not classes & set(group):
            continue
        current = [e for e in facts.exposures if e.current and e.drug != drug and e.classes & set(group)]
        if current:
            names = ", ".join(dict.fromkeys(k.drugs[e.drug].name for e in current))
            refs = tuple(e.reference for e in current)
            return _Outcome(check.effect, {"current": names, "references": ", ".join(refs),
                                           "drug": k.drugs[drug].name}, refs)
    return None


def _acetaminophen_liver(check, facts, k, drug):
    if facts.get("liver_disease_or_alcohol"):
        return _Outcome("substitute", {}, facts.sources.get("liver_disease_or_alcohol", ()),
                        dosing=check.params["dosing"])
    return None


def _age_caution(check, facts, k, drug):
    age = facts.get("age")
    if age is not None and age >= check.params["age_from"]:
        return _Outcome("caution", {"age": age}, facts.sources.get("age", ()))
    return None


CHECKS: dict[str, Check] = {
    "gi_risk": _gi_risk,
    "acetaminophen_liver": _acetaminophen_liver,
    "duplicate_therapy": _duplicate,
    "acetaminophen_older_adult": _age_caution,
    "anticoagulant_nsaid": _anticoagulant,
    "renal_block": _renal_below,
    "renal_warn": _renal_below,
    "nsaid_allergy": _fact_block("nsaid_allergy"),
    "sulfonamide_allergy": _fact_block("sulfonamide_allergy"),
    "pregnancy_nsaid": _pregnancy_nsaid,
    "pregnancy_contraindicated": _fact_block("pregnant"),
    "active_infection": _fact_block("active_serious_infection"),
    "biologic_screening": _required_orders,
    "screening_positive": _screening_positive,
    "il17_ibd": _fact_block("ibd"),
    "tnf_demyelinating": _fact_block("demyelinating_disease"),
    "jak_boxed_warning": _jak_age,
    "denosumab_prerequisites": _required_orders,
}


def verify_checks(k: ClinicalKnowledge | None = None) -> None:
    """Every check in safety.yaml has a meaning here, and every meaning has its check (start-up guard)."""
    k = k or clinical_knowledge()
    ids = {c.id for c in k.safety.checks}
    for check_id in ids - set(CHECKS):
        raise KnowledgeError("safety.yaml", f"checks.{check_id}", "no check of this id is implemented")
    for check_id in set(CHECKS) - ids:
        raise KnowledgeError("safety.yaml", "checks", f"check {check_id!r} is missing")


def evaluate_drug(drug: str, facts: PatientFacts, k: ClinicalKnowledge | None = None) -> DrugSafety:
    """Run every check that applies to the drug's classes, in file order."""
    k = k or clinical_knowledge()
    classes = set(k.drugs[drug].classes)
    flags: list[SafetyFlag] = []
    services: list[str] = []
    drugs: list[tuple[str, str]] = []
    hold = False
    dosing = None
    for check in k.safety.checks:
        if not classes & set(check.applies_to):
            continue
        outcome = CHECKS[check.id](check, facts, k, drug)
        unreadable = [f for f in check.needs if f in facts.unreadable]
        if unreadable and (outcome is None or outcome.effect != "block"):
            # fail closed: what could not be read may be exactly what this check blocks on
            outcome = _Outcome("withhold", {})
        if outcome is None:
            continue
        template = {"unknown": check.unknown_wording, "withhold": check.unreadable_wording}.get(
            outcome.effect) or check.wording
        text = template.format_map({key: _fmt(v) for key, v in outcome.values.items()})
        flags.append(SafetyFlag(check.id, check.rule, outcome.effect, text, tuple(check.citations), outcome.sources))
        services.extend(s for s in outcome.services if s not in services)
        drugs.extend(d for d in outcome.drugs if d not in drugs)
        hold = hold or bool(outcome.services and check.params.get("hold_drug"))
        dosing = dosing or outcome.dosing
    return DrugSafety(drug, tuple(flags), tuple(services), tuple(drugs), hold, dosing)
