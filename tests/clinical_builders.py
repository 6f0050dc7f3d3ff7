"""Small builders of FHIR R4 records and findings for the clinical engine tests (pathways, safety, cards)."""
from __future__ import annotations

import datetime as dt
from typing import Any, Iterable

from hooks.model import Evidence, Finding, FindingSet, ReportFacts
from hooks.pathways.facts import PatientFacts, patient_facts
from hooks.record import PatientRecord

NOW = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.timezone.utc)
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
PATIENT = "p1"


def day(days_ago: float) -> str:
    return (NOW - dt.timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def patient(age: int = 40, sex: str = "female") -> dict[str, Any]:
    birth = NOW.date().replace(year=NOW.year - age) - dt.timedelta(days=100)
    return {"resourceType": "Patient", "id": PATIENT, "birthDate": birth.isoformat(), "gender": sex}


def condition(cid: str, system: str, code: str, onset_days: float | None = None, status: str = "active",
              verification: str | None = None, text: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Condition", "id": cid, "subject": {"reference": f"Patient/{PATIENT}"},
        "code": {"coding": [{"system": system, "code": code}]},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": status}]},
    }
    if text:
        res["code"]["text"] = text
    if onset_days is not None:
        res["onsetDateTime"] = day(onset_days)
    if verification:
        res["verificationStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]}
    return res


def med_request(mid: str, rxnorm: str, start_days: float, end_days: float | None = None, status: str = "active",
                reason: str | None = None) -> dict[str, Any]:
    period: dict[str, str] = {"start": day(start_days)}
    if end_days is not None:
        period["end"] = day(end_days)
    res: dict[str, Any] = {
        "resourceType": "MedicationRequest", "id": mid, "status": status, "intent": "order",
        "subject": {"reference": f"Patient/{PATIENT}"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": rxnorm}]},
        "authoredOn": day(start_days),
        "dosageInstruction": [{"text": "as directed", "timing": {"repeat": {"boundsPeriod": period}}}],
    }
    if reason:
        res["statusReason"] = {"text": reason}
    return res


def observation(oid: str, loinc: str, value: float | None = None, days_ago: float = 1,
                result: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": f"Patient/{PATIENT}"},
        "code": {"coding": [{"system": LOINC, "code": loinc}]}, "effectiveDateTime": day(days_ago),
    }
    if value is not None:
        res["valueQuantity"] = {"value": value}
    if result is not None:
        code = {"negative": "260385009", "positive": "10828004"}[result]
        res["valueCodeableConcept"] = {"coding": [{"system": SNOMED, "code": code}]}
    return res


def pain(oid: str, score: float, days_ago: float) -> dict[str, Any]:
    return observation(oid, "72514-3", score, days_ago)


def allergy(aid: str, rxnorm: str | None = None, text: str | None = None) -> dict[str, Any]:
    code: dict[str, Any] = {}
    if rxnorm:
        code["coding"] = [{"system": RXNORM, "code": rxnorm}]
    if text:
        code["text"] = text
    return {"resourceType": "AllergyIntolerance", "id": aid, "patient": {"reference": f"Patient/{PATIENT}"},
            "code": code}


def bundle(resources: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def record(*, age: int = 40, sex: str = "female", conditions: Iterable[dict] = (), meds: Iterable[dict] = (),
           observations: Iterable[dict] = (), allergies: Iterable[dict] = (), drafts: Iterable[dict] = (),
           reports: Iterable[dict] = (), unavailable: Iterable[str] = ()) -> PatientRecord:
    prefetch = {
        "patient": patient(age, sex),
        "conditions": bundle(conditions),
        "reports": bundle(reports),
        "medicationRequests": bundle(meds),
        "medicationStatements": bundle(()),
        "observations": bundle(observations),
        "allergies": bundle(allergies),
    }
    for key in unavailable:
        prefetch[key] = None
    draft_bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": d} for d in drafts]}
    return PatientRecord.from_prefetch(prefetch, draft_bundle if drafts else None, unavailable)


def facts_of(rec: PatientRecord) -> PatientFacts:
    return patient_facts(rec, NOW)


def finding(concept: str, certainty: str = "affirmed", reference: str = "DiagnosticReport/r1",
            text: str | None = "report sentence", **kw: Any) -> Finding:
    return Finding(concept, certainty, Evidence(reference, "text", text), **kw)


def findings(*items: Finding | str, reports: Iterable[ReportFacts] = ()) -> FindingSet:
    return FindingSet(tuple(finding(i) if isinstance(i, str) else i for i in items), tuple(reports))


# Well-known codes used by the tests (from hooks/knowledge/medications.yaml).
NAPROXEN = "198014"
IBUPROFEN = "197806"
CELECOXIB = "205323"
ADALIMUMAB = "1726844"
ETANERCEPT = "727757"
APIXABAN = "1364430"
PREDNISONE = "198145"
METHOTREXATE = "105585"
OXYCODONE = "7804"
