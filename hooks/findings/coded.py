"""Findings from coded data: Condition.code (with clinical and verification status) and
DiagnosticReport.conclusionCode, mapped to concepts through the catalogue's codes."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from hooks.findings.catalogue import compiled
from hooks.fhirutil import reference_of
from hooks.model import Evidence, Finding

# Condition.verificationStatus -> certainty; None = drop the condition (entered in error).
VERIFICATION = {
    "confirmed": "affirmed",
    "unconfirmed": "uncertain",
    "provisional": "uncertain",
    "differential": "uncertain",
    "refuted": "negated",
    "entered-in-error": None,
}
# Condition.clinicalStatus values that make a finding historical (not current).
PAST_STATUSES = frozenset({"inactive", "remission", "resolved"})


def _status_code(concept: Any) -> str | None:
    for coding in getattr(concept, "coding", None) or ():
        if getattr(coding, "code", None):
            return str(coding.code)
    return None


def coded_findings(concept: Any, reference: str, element: str, certainty: str = "affirmed",
                   historical: bool = False) -> list[Finding]:
    """Findings named by one CodeableConcept: one per concept, qualifiers (laterality, site) from its codes.
    A concept's `implies` (deep edema -> edema) hold for codes as for text, unless the finding is negated."""
    rules = compiled()
    catalogue = rules.catalogue.by_id()
    found: dict[str, Finding] = {}
    for coding in getattr(concept, "coding", None) or ():
        system, code = getattr(coding, "system", None), getattr(coding, "code", None)
        concept_id = rules.code_index.get((system, code)) if system and code else None
        if concept_id is None:
            continue
        entry = catalogue[concept_id]
        qualifier = entry.code_qualifiers.get(code)
        laterality = qualifier.laterality if qualifier else None
        site = qualifier.site if qualifier else None
        previous = found.get(concept_id)
        if previous is not None:       # two codings of one concept: keep the first, fill what it lacks
            found[concept_id] = replace(previous, laterality=previous.laterality or laterality,
                                        site=previous.site or site)
            continue
        display = getattr(coding, "display", None) or getattr(concept, "text", None) or entry.display
        evidence = Evidence(reference=reference, kind="coded", text=display, code=f"{system}|{code}",
                            element=element)
        implied = entry.implies if certainty != "negated" else ()
        for concept_id_ in (concept_id, *implied):
            if concept_id_ not in found:
                found[concept_id_] = Finding(concept=concept_id_, certainty=certainty, historical=historical,
                                             laterality=laterality, site=site, source=evidence)
    return [replace(f, site=f.site or catalogue[f.concept].default_site) for f in found.values()]


def findings_from_condition(condition: Any) -> tuple[Finding, ...]:
    """A Condition as findings: refuted -> negated, unconfirmed/provisional/differential -> uncertain,
    resolved/inactive/remission -> historical, entered-in-error -> nothing."""
    verification = _status_code(getattr(condition, "verificationStatus", None))
    if verification is None:
        certainty = "affirmed"
    elif verification in VERIFICATION:
        certainty = VERIFICATION[verification]
        if certainty is None:
            return ()
    else:
        certainty = "affirmed"
    clinical = _status_code(getattr(condition, "clinicalStatus", None))
    historical = clinical in PAST_STATUSES and certainty != "negated"
    return tuple(coded_findings(getattr(condition, "code", None), reference_of(condition), "Condition.code",
                                certainty, historical))
