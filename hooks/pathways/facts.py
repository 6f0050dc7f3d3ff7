"""PatientFacts: what the pathways and safety checks need to know about the patient, read from the record.

Every fact keeps the references of the resources it came from. A fact whose data could not be obtained
(`record.unavailable`) is None ("unknown"), never False: the cards say so.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from hooks.fhirutil import codings, concept_text, reference_of, to_datetime
from hooks.knowledge import observation_catalogue
from hooks.knowledge.clinical import ClinicalKnowledge, ValueSet, clinical_knowledge
from hooks.record import PatientRecord

MEDICATION_KEYS = ("medicationRequests", "medicationStatements")
INACTIVE_CONDITION = {"inactive", "remission", "resolved"}
REFUTED = {"refuted", "entered-in-error"}
NOT_TAKEN = {"entered-in-error", "cancelled", "draft", "not-taken", "unknown", "intended"}
STOPPED = {"stopped"}
MAX_ITEMS = 2000        # bound on resources read per type


@dataclass(frozen=True)
class Exposure:
    """One medication course from a MedicationRequest or MedicationStatement."""

    drug: str
    classes: frozenset[str]
    start: dt.datetime
    end: dt.datetime
    current: bool
    status: str
    stop_kind: str | None          # primary_nonresponse / secondary_nonresponse / intolerance / None
    reference: str
    family: str | None


@dataclass(frozen=True)
class ScreeningResult:
    test: str                      # tb_igra, hbsag, anti_hbc, vitamin_d, calcium
    result: str                    # positive / negative / indeterminate / value
    reference: str
    when: dt.datetime | None


@dataclass(frozen=True)
class PatientFacts:
    """Named facts (None = unknown) with the resources each came from, plus what the checks read directly."""

    values: Mapping[str, Any]
    sources: Mapping[str, tuple[str, ...]]
    now: dt.datetime
    exposures: tuple[Exposure, ...] = ()
    screening: Mapping[str, ScreeningResult] = field(default_factory=dict)
    gi_risk_factors: tuple[tuple[str, str | None], ...] = ()
    dates: Mapping[str, str] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()              # human-readable list of data that could not be obtained
    conditions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)   # value set id -> Condition refs
    failed_families: frozenset[str] = frozenset()
    current_drugs: frozenset[str] = frozenset()
    # Safety facts whose data could not be read or obtained (an unreadable AllergyIntolerance, eGFR, pregnancy or
    # medication record, or a prefetch key that could not be fetched): unknown, never "absent". A drug a check on
    # one of these facts would block is never a one-click order (hooks/safety/checks.py, `needs`).
    unreadable: frozenset[str] = frozenset()

    def get(self, name: str) -> Any:
        return self.values.get(name)

    def current_classes(self) -> frozenset[str]:
        return frozenset(c for e in self.exposures if e.current for c in e.classes)


# ------------------------------------------------------------------------------------------------ small readers
def _lower(text: str | None) -> str:
    return (text or "").lower()


def _matches(concept: Any, value_set: ValueSet) -> bool:
    codes = value_set.code_pairs
    if any(pair in codes for pair in codings(concept)):
        return True
    text = _lower(concept_text(concept)) + " " + _lower(getattr(concept, "text", None))
    return text_matches(text, value_set)


_VALUE_SET_MEMO_MAX = 4096


def _value_sets_of(concept: Any, k: ClinicalKnowledge) -> tuple[str, ...]:
    """Ids of the knowledge value sets a CodeableConcept matches, in data order. Memoised per knowledge base on
    the concept's content (codings and text): the same problem list comes back at every hook of a session, and
    each condition is otherwise matched against every value set."""
    key = (tuple(codings(concept)), concept_text(concept), getattr(concept, "text", None))
    memo = k.derived.setdefault("condition_value_sets", {})
    found = memo.get(key)
    if found is None:
        found = tuple(vs_id for vs_id, value_set in k.value_sets.items() if _matches(concept, value_set))
        if len(memo) >= _VALUE_SET_MEMO_MAX:
            memo.clear()
        memo[key] = found
    return found


def text_matches(text: str, value_set: ValueSet) -> bool:
    """A lower-case text against a value set's phrases (any) and all_words (every one)."""
    if any(phrase in text for phrase in value_set.phrases):
        return True
    return bool(value_set.all_words) and all(word in text for word in value_set.all_words)


def _status_code(concept: Any) -> str | None:
    for _, code in codings(concept):
        if code:
            return code
    return None


def condition_is_active(condition: Any) -> bool:
    if _status_code(getattr(condition, "verificationStatus", None)) in REFUTED:
        return False
    return _status_code(getattr(condition, "clinicalStatus", None)) not in INACTIVE_CONDITION


def data_unreadable(record: PatientRecord, resource_type: str, elements: Iterable[str]) -> bool:
    """Whether a resource of this type, or one of its deciding `elements`, could not be read. Uses the intake's
    element-level report (`record.unreadable`) when the reader has one, else the resources it dropped whole."""
    api = getattr(record, "unreadable", None)
    if callable(api):
        return bool(api(resource_type, *elements))
    return any(s.resource_type == resource_type for s in record.skipped)


def _days(delta: dt.timedelta) -> int:
    return max(0, int(delta.total_seconds() // 86400))


class DrugIndex:
    """RxNorm code (and drug name) -> drug id, from medications.yaml."""

    def __init__(self, k: ClinicalKnowledge) -> None:
        self.by_code: dict[tuple[str, str], str] = {}
        for drug in k.medications.drugs:
            for coding in drug.all_codes():
                self.by_code.setdefault((coding.system, coding.code), drug.id)
        names = [(name.lower(), d.id) for d in k.medications.drugs for name in (d.name, *d.aliases)]
        self.names = sorted(names, key=lambda x: -len(x[0]))

    def drug_of(self, concept: Any) -> str | None:
        for pair in codings(concept):
            if pair in self.by_code:
                return self.by_code[pair]
        text = _lower(concept_text(concept)) + " " + _lower(getattr(concept, "text", None))
        for name, drug_id in self.names:
            if name in text:
                return drug_id
        return None


_INDEX: DrugIndex | None = None


def drug_index() -> DrugIndex:
    global _INDEX
    if _INDEX is None:
        _INDEX = DrugIndex(clinical_knowledge())
    return _INDEX


def medication_concept(resource: Any, record: PatientRecord | None = None) -> Any:
    """The medication's CodeableConcept: medicationCodeableConcept, else the code of the referenced Medication
    (contained or in the record)."""
    concept = getattr(resource, "medicationCodeableConcept", None)
    if concept is not None:
        return concept
    reference = getattr(getattr(resource, "medicationReference", None), "reference", None)
    if not reference:
        return None
    if reference.startswith("#"):
        for contained in getattr(resource, "contained", None) or ():
            if getattr(contained, "id", None) == reference[1:]:
                return getattr(contained, "code", None)
        return None
    medication = record.resolve(reference) if record is not None else None
    return getattr(medication, "code", None) if medication is not None else None


def _stop_kind(k: ClinicalKnowledge, reasons: Iterable[Any]) -> str | None:
    kinds = k.medications.response_reasons
    for reason in reasons:
        for system, code in codings(reason):
            for kind, spec in kinds.kinds.items():
                if system == kinds.system and code in spec.codes:
                    return kind
        text = " ".join(_lower(t) for t in (getattr(reason, "text", None), *(
            getattr(c, "display", None) for c in getattr(reason, "coding", None) or ())))
        for kind in ("secondary_nonresponse", "primary_nonresponse", "intolerance"):
            if any(p in text for p in kinds.kinds[kind].phrases):
                return kind
    return None


def _period_bounds(period: Any) -> tuple[dt.datetime | None, dt.datetime | None]:
    if period is None:
        return None, None
    return to_datetime(getattr(period, "start", None)), to_datetime(getattr(period, "end", None))


def _duration_days(duration: Any) -> float | None:
    if duration is None or getattr(duration, "value", None) is None:
        return None
    unit = (getattr(duration, "code", None) or getattr(duration, "unit", None) or "d").lower()
    factor = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "weeks": 7, "mo": 30, "month": 30, "months": 30,
              "h": 1 / 24, "a": 365}.get(unit, 1)
    return float(duration.value) * factor


def order_duration_days(order: Any) -> float | None:
    """How long a MedicationRequest runs, from its bounds or expected supply (None when it does not say)."""
    for dosage in getattr(order, "dosageInstruction", None) or ():
        repeat = getattr(getattr(dosage, "timing", None), "repeat", None)
        if repeat is None:
            continue
        days = _duration_days(getattr(repeat, "boundsDuration", None))
        if days is not None:
            return days
        start, end = _period_bounds(getattr(repeat, "boundsPeriod", None))
        if start and end:
            return (end - start).total_seconds() / 86400
    supply = getattr(getattr(order, "dispenseRequest", None), "expectedSupplyDuration", None)
    days = _duration_days(supply)
    if days is not None:
        repeats = getattr(getattr(order, "dispenseRequest", None), "numberOfRepeatsAllowed", None) or 0
        return days * (1 + int(repeats))
    return None


def _exposure(k: ClinicalKnowledge, resource: Any, now: dt.datetime, record: PatientRecord | None = None
              ) -> Exposure | None:
    kind = resource.get_resource_type()
    status = getattr(resource, "status", None) or "unknown"
    if status in NOT_TAKEN:
        return None
    drug_id = drug_index().drug_of(medication_concept(resource, record))
    if drug_id is None:
        return None
    drug = k.drugs[drug_id]
    if kind == "MedicationRequest":
        if getattr(resource, "intent", None) in ("proposal",):
            return None
        start = end = None
        for dosage in getattr(resource, "dosageInstruction", None) or ():
            repeat = getattr(getattr(dosage, "timing", None), "repeat", None)
            start, end = _period_bounds(getattr(repeat, "boundsPeriod", None)) if repeat else (None, None)
            if start:
                break
        start = start or to_datetime(getattr(resource, "authoredOn", None))
        if start and not end:
            days = order_duration_days(resource)
            if days is not None:
                end = start + dt.timedelta(days=days)
        reasons = [getattr(resource, "statusReason", None)]
    else:
        start, end = _period_bounds(getattr(resource, "effectivePeriod", None))
        start = start or to_datetime(getattr(resource, "effectiveDateTime", None))
        reasons = list(getattr(resource, "statusReason", None) or ())
    if start is None or start > now:
        return None
    current = status in ("active", "on-hold") and (end is None or end >= now)
    if end is None or end > now:
        end = now if status in ("active", "on-hold", "intended") or end is not None else start
    stop_kind = _stop_kind(k, [r for r in reasons if r is not None]) if status in STOPPED else None
    return Exposure(drug_id, frozenset(drug.classes), start, max(end, start), current, status, stop_kind,
                    reference_of(resource), drug.biosimilar_family)


def _longest_run(exposures: list[Exposure], gap_days: int) -> tuple[int, dt.datetime | None, tuple[str, ...]]:
    """Longest continuous exposure (courses merged across gaps up to `gap_days`), its start and sources."""
    best = (0, None, ())
    runs: list[tuple[dt.datetime, dt.datetime, list[str]]] = []
    for e in sorted(exposures, key=lambda x: x.start):
        if runs and e.start <= runs[-1][1] + dt.timedelta(days=gap_days):
            start, end, refs = runs[-1]
            runs[-1] = (start, max(end, e.end), refs + [e.reference])
        else:
            runs.append((e.start, e.end, [e.reference]))
    for start, end, refs in runs:
        days = _days(end - start)
        if days >= best[0]:
            best = (days, start, tuple(refs))
    return best


def _numeric(obs: Any) -> float | None:
    quantity = getattr(obs, "valueQuantity", None)
    if quantity is not None and getattr(quantity, "value", None) is not None:
        return float(quantity.value)
    value = getattr(obs, "valueInteger", None)
    return float(value) if value is not None else None


def _obs_time(obs: Any) -> dt.datetime | None:
    return (to_datetime(getattr(obs, "effectiveDateTime", None))
            or _period_bounds(getattr(obs, "effectivePeriod", None))[0]
            or to_datetime(getattr(obs, "issued", None)))


def _observations_by_id(record: PatientRecord, now: dt.datetime) -> dict[str, list[tuple[dt.datetime, Any]]]:
    catalogue = observation_catalogue()
    code_to_id = {(c.system, c.code): o.id for o in catalogue.observations for c in o.codings}
    out: dict[str, list[tuple[dt.datetime, Any]]] = {}
    for obs in record.of_type_coded("Observation", frozenset(code_to_id))[:MAX_ITEMS]:
        if getattr(obs, "status", None) in ("entered-in-error", "cancelled", "registered"):
            continue
        obs_id = next((code_to_id[p] for p in codings(getattr(obs, "code", None)) if p in code_to_id), None)
        when = _obs_time(obs)
        if obs_id is None or when is None or when > now:
            continue
        out.setdefault(obs_id, []).append((when, obs))
    for series in out.values():
        series.sort(key=lambda x: x[0])
    return out


def _screening_result(k: ClinicalKnowledge, obs: Any) -> str:
    rules = k.safety.screening_results
    positive = {(c.system, c.code) for c in rules.positive_codes}
    negative = {(c.system, c.code) for c in rules.negative_codes}
    concepts = [getattr(obs, "valueCodeableConcept", None), *(getattr(obs, "interpretation", None) or ())]
    for concept in concepts:
        pairs = set(codings(concept))
        if pairs & positive:
            return "positive"
        if pairs & negative:
            return "negative"
    text = " ".join(_lower(concept_text(c)) for c in concepts if c is not None) + " " + _lower(
        getattr(obs, "valueString", None))
    if any(p in text for p in rules.negative_phrases):
        return "negative"
    if any(p in text for p in rules.positive_phrases):
        return "positive"
    if getattr(obs, "valueBoolean", None) is not None:
        return "positive" if obs.valueBoolean else "negative"
    return "value" if _numeric(obs) is not None else "indeterminate"


def _age(patient: Any, now: dt.datetime) -> int | None:
    birth = to_datetime(getattr(patient, "birthDate", None)) if patient is not None else None
    if birth is None:
        return None
    years = now.year - birth.year - ((now.month, now.day) < (birth.month, birth.day))
    return max(0, years)


def _allergy_classes(k: ClinicalKnowledge, record: PatientRecord) -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = {}
    for allergy in record.allergies[:MAX_ITEMS]:
        if _status_code(getattr(allergy, "verificationStatus", None)) in REFUTED:
            continue
        if _status_code(getattr(allergy, "clinicalStatus", None)) in ("inactive", "resolved"):
            continue
        code = getattr(allergy, "code", None)
        drug_id = drug_index().drug_of(code)
        for name, spec in k.safety.allergy_classes.items():
            by_drug = drug_id is not None and (
                drug_id in spec.drugs or bool(set(k.drugs[drug_id].classes) & set(spec.drug_classes)))
            if by_drug or _matches(code, spec.value_set):
                found.setdefault(name, []).append(reference_of(allergy))
    return {name: tuple(refs) for name, refs in found.items()}


# ---------------------------------------------------------------------------------------------- the facts
def patient_facts(record: PatientRecord, now: dt.datetime, k: ClinicalKnowledge | None = None) -> PatientFacts:
    """Read the facts the pathways need from the record, evaluated at `now`."""
    k = k or clinical_knowledge()
    params = k.pathway_file
    values: dict[str, Any] = {}
    sources: dict[str, tuple[str, ...]] = {}
    unknown: list[str] = []
    dates: dict[str, str] = {}

    patient = record.patient
    values["age"] = _age(patient, now)
    if patient is not None:
        sources["age"] = (reference_of(patient),)
    if values["age"] is None:
        unknown.append("age")

    # problem list by value set
    conditions: dict[str, list[str]] = {}
    onsets: dict[str, list[dt.datetime]] = {}
    gi = k.checks["gi_risk"].params
    history_sets = {f["condition"] for f in gi["factors"] if "condition" in f} | {gi["high_if_condition"]}
    for condition in record.conditions[:MAX_ITEMS]:
        active = condition_is_active(condition)
        for vs_id in _value_sets_of(getattr(condition, "code", None), k):
            # a past ulcer or bleed is a GI risk factor even when resolved (the GI risk value sets are history)
            if active or vs_id in history_sets and _status_code(
                    getattr(condition, "verificationStatus", None)) not in REFUTED:
                conditions.setdefault(vs_id, []).append(reference_of(condition))
                onset = to_datetime(getattr(condition, "onsetDateTime", None)) or to_datetime(
                    getattr(condition, "recordedDate", None))
                if onset is not None and onset <= now:
                    onsets.setdefault(vs_id, []).append(onset)
    cond = {key: tuple(refs) for key, refs in conditions.items()}

    def flag(name: str, *value_sets: str) -> None:
        refs = tuple(dict.fromkeys(r for v in value_sets for r in cond.get(v, ())))
        values[name] = bool(refs)
        if refs:
            sources[name] = refs

    # problem-list facts declared in facts.yaml (`value_sets`): true when an active Condition is in one of them
    for name, value_sets in k.fact_value_sets.items():
        flag(name, *value_sets)

    gender = getattr(patient, "gender", None) if patient is not None else None
    flag("pregnant", "pregnancy")
    if not values["pregnant"] and gender == "male":
        values["pregnant"] = False

    observations_known = "observations" not in record.unavailable
    obs = _observations_by_id(record, now) if observations_known else {}
    if not observations_known:
        unknown.append("observations (pain score, eGFR, TB/HBV screening)")

    # pregnancy weeks: gestational age observation, carried forward to now
    values["pregnancy_weeks"] = None
    if values["pregnant"] and obs.get("gestational_age"):
        when, latest = obs["gestational_age"][-1]
        weeks = _numeric(latest)
        if weeks is not None:
            values["pregnancy_weeks"] = int(weeks + _days(now - when) / 7)
            sources["pregnancy_weeks"] = (reference_of(latest),)

    # pain: NRS series and how long pain has been recorded (score > 0, or a pain condition's onset)
    pain = [(w, o, _numeric(o)) for w, o in obs.get("pain_nrs", ()) if _numeric(o) is not None]
    if pain:
        when, latest, score = pain[-1]
        values["pain_nrs"] = score
        sources["pain_nrs"] = (reference_of(latest),)
    else:
        values["pain_nrs"] = None
    starts = [w for w, _, s in pain if s and s > 0]
    starts += onsets.get("hip_pain", []) + onsets.get("low_back_pain", [])
    values["pain_days"] = _days(now - min(starts)) if starts else None
    if starts:
        sources["pain_days"] = tuple([reference_of(o) for w, o, s in pain if s and s > 0][:1]) + cond.get(
            "hip_pain", ()) + cond.get("low_back_pain", ())
    symptom_refs = cond.get("hip_pain", ()) + cond.get("low_back_pain", ())
    if symptom_refs or (values["pain_nrs"] or 0) > 0:
        values["symptom_support"] = True
        sources["symptom_support"] = symptom_refs + sources.get("pain_nrs", ())
    else:
        values["symptom_support"] = False if observations_known else None
    values["disease_stable"] = (None if values["pain_nrs"] is None
                                else values["pain_nrs"] <= params.stable_pain_nrs_max)
    if values["disease_stable"]:
        sources["disease_stable"] = sources.get("pain_nrs", ())

    # kidney function
    if obs.get("egfr"):
        _, latest = obs["egfr"][-1]
        values["egfr"] = _numeric(latest)
        sources["egfr"] = (reference_of(latest),)
    else:
        values["egfr"] = None

    # screening results (latest within the allowed age)
    screening: dict[str, ScreeningResult] = {}
    max_age = dt.timedelta(days=k.safety.screening_results.max_age_days)
    for test in ("tb_igra", "hbsag", "anti_hbc", "vitamin_d", "calcium"):
        series = [(w, o) for w, o in obs.get(test, ()) if now - w <= max_age]
        if series:
            when, latest = series[-1]
            screening[test] = ScreeningResult(test, _screening_result(k, latest), reference_of(latest), when)

    # medications
    meds_known = any(key not in record.unavailable for key in MEDICATION_KEYS)
    exposures = tuple(e for e in (
        _exposure(k, r, now, record)
        for r in (*record.medication_requests[:MAX_ITEMS], *record.medication_statements[:MAX_ITEMS])
    ) if e is not None)
    if not meds_known:
        unknown.append("medication history")
    nsaids = [e for e in exposures if "nsaid" in e.classes]
    trial_days, trial_start, trial_refs = _longest_run(nsaids, params.nsaid_gap_days)
    values["nsaid_trial_days"] = trial_days if meds_known else None
    values["nsaid_current"] = any(e.current for e in nsaids) if meds_known else None
    if trial_refs:
        sources["nsaid_trial_days"] = trial_refs
    current_nsaid = [e for e in nsaids if e.current]
    if current_nsaid:
        sources["nsaid_current"] = tuple(e.reference for e in current_nsaid)
        run_days, run_start, _ = _longest_run([e for e in nsaids if e.end >= min(c.start for c in current_nsaid)],
                                              params.nsaid_gap_days)
        due = (run_start or now) + dt.timedelta(days=params.nsaid_failure_days)
    else:
        due = now + dt.timedelta(days=params.nsaid_failure_days)
    dates["nsaid_trial_due"] = due.date().isoformat()

    biologics = [e for e in exposures if e.classes & {"tnf_inhibitor", "il17_inhibitor", "jak_inhibitor"}]
    tnf = [e for e in biologics if "tnf_inhibitor" in e.classes]
    current_bio = [e for e in biologics if e.current]
    failed_tnf = [e for e in tnf if e.status in STOPPED and not e.current]
    values["biologic_current"] = bool(current_bio) if meds_known else None
    values["tnf_current"] = any(e.current for e in tnf) if meds_known else None
    values["tnf_failed"] = bool(failed_tnf) if meds_known else None
    # the latest failure decides the kind of non-response
    latest_failure = max(failed_tnf, key=lambda e: e.end, default=None)
    values["tnf_failed_secondary"] = bool(latest_failure and latest_failure.stop_kind == "secondary_nonresponse")
    values["tnf_failed_primary"] = bool(latest_failure and latest_failure.stop_kind == "primary_nonresponse")
    # stopped with no recognisable reason: the response check (ASDAS/BASDAI) decides primary vs secondary
    values["tnf_failed_reason_unknown"] = bool(latest_failure and latest_failure.stop_kind is None)
    if failed_tnf:
        refs = tuple(e.reference for e in failed_tnf)
        for name in ("tnf_failed", "tnf_failed_secondary", "tnf_failed_primary", "tnf_failed_reason_unknown"):
            if values[name]:
                sources[name] = refs
    if current_bio:
        start = min(e.start for e in current_bio)
        values["tnf_exposure_days"] = _days(now - start)
        sources["biologic_current"] = sources["tnf_exposure_days"] = tuple(e.reference for e in current_bio)
        dates["response_check_due"] = (start + dt.timedelta(days=params.response_check_days)).date().isoformat()
    else:
        values["tnf_exposure_days"] = None
    if values["tnf_current"]:
        sources["tnf_current"] = tuple(e.reference for e in tnf if e.current)

    current_classes = frozenset(c for e in exposures if e.current for c in e.classes)
    values["anticoagulant_current"] = ("anticoagulant" in current_classes) if meds_known else None
    if values["anticoagulant_current"]:
        sources["anticoagulant_current"] = tuple(
            e.reference for e in exposures if e.current and "anticoagulant" in e.classes)

    # GI risk factors as data (safety.yaml gi_risk.params.factors, ACG 2009): each is a problem-list value set, the
    # age above a threshold, or a current drug of a class; Python only evaluates these building blocks.
    gi_params = k.checks["gi_risk"].params
    factors: list[tuple[str, str | None]] = []
    for factor in gi_params["factors"]:
        if "condition" in factor:
            factors += [(factor["label"], ref) for ref in cond.get(factor["condition"], ())[:1]]
        elif "age_over" in factor:
            if values["age"] is not None and values["age"] > factor["age_over"]:
                factors.append((factor["label"].format(age=values["age"]), sources["age"][0]))
        elif "drug_class" in factor:
            current = next((e for e in exposures if e.current and factor["drug_class"] in e.classes), None)
            if current is not None:
                factors.append((factor["label"], current.reference))
    values["gi_risk"] = bool(factors)
    if factors:
        sources["gi_risk"] = tuple(ref for _, ref in factors if ref)
    # ACG 2009 tiers: high = a complicated ulcer history or more than `high_if_factors_over` factors; moderate = 1-2
    complicated = cond.get(gi_params["high_if_condition"], ())
    values["gi_risk_tier"] = ("high" if complicated or len(factors) > gi_params["high_if_factors_over"]
                              else "moderate" if factors else "low")
    # ACG 2009: high cardiovascular risk = needs low-dose aspirin (an antiplatelet) for prevention
    cv = [e for e in exposures if e.current and set(gi_params["cv_high_if_current"]) & e.classes]
    values["cv_risk_high"] = bool(cv)
    if cv:
        sources["cv_risk_high"] = tuple(e.reference for e in cv)
    if complicated or factors:
        sources["gi_risk_tier"] = tuple(complicated) + sources["gi_risk"]

    # allergies
    if "allergies" in record.unavailable:
        values["nsaid_allergy"] = values["sulfonamide_allergy"] = None
        unknown.append("allergies")
    else:
        allergy = _allergy_classes(k, record)
        values["nsaid_allergy"] = "nsaid" in allergy
        values["sulfonamide_allergy"] = "sulfonamide" in allergy
        if "nsaid" in allergy:
            sources["nsaid_allergy"] = allergy["nsaid"]
        if "sulfonamide" in allergy:
            sources["sulfonamide_allergy"] = allergy["sulfonamide"]

    # a past image-guided SI-joint injection (procedure or its imaging report)
    injection = k.services.order_kinds.get("si_injection")
    done: list[str] = []
    if injection is not None:
        for resource in (*record.diagnostic_reports[:MAX_ITEMS], *record.of_type("Procedure")[:MAX_ITEMS]):
            if getattr(resource, "status", None) in ("entered-in-error", "cancelled", "not-done", "preparation"):
                continue
            text = " ".join(_lower(x) for x in (concept_text(getattr(resource, "code", None)),
                                                  getattr(resource, "conclusion", None)))
            if _matches(getattr(resource, "code", None), injection) or text_matches(text, injection):
                done.append(reference_of(resource))
    values["si_injection_done"] = bool(done)
    if done:
        sources["si_injection_done"] = tuple(done)

    failed_families = frozenset(e.family or e.drug for e in failed_tnf)
    unreadable = _unreadable_safety_facts(record, values, k)
    for name in sorted(unreadable):
        label = k.pathway_file.fact_labels.get(name, name)
        if label not in unknown:
            unknown.append(label)
    return PatientFacts(
        values=values, sources=sources, now=now, exposures=exposures, screening=screening,
        gi_risk_factors=tuple(factors), dates=dates, unknown=tuple(unknown), conditions=cond,
        failed_families=failed_families, current_drugs=frozenset(e.drug for e in exposures if e.current),
        unreadable=frozenset(unreadable),
    )


def _unreadable_safety_facts(record: PatientRecord, values: Mapping[str, Any], k: ClinicalKnowledge) -> set[str]:
    """Safety facts that stay unknown because data that could decide them was not obtained or not read
    (safety.yaml `fail_closed`): one unreadable AllergyIntolerance may be the NSAID allergy, one unreadable
    Observation the latest eGFR, one unreadable Condition the pregnancy, one unreadable medication record the
    anticoagulant. A fact already true from readable data keeps its value (it blocks anyway); a man is not
    held for pregnancy unless his gender could not be read."""
    out: set[str] = set()
    for fact, spec in k.safety.fail_closed.items():
        if values.get(fact):
            continue
        if fact == "pregnant" and getattr(record.patient, "gender", None) == "male" and not data_unreadable(
                record, "Patient", spec.resources.get("Patient", ())):
            continue
        if any(key in record.unavailable for key in spec.prefetch) or any(
                data_unreadable(record, rtype, elements) for rtype, elements in spec.resources.items()):
            out.add(fact)
    return out
