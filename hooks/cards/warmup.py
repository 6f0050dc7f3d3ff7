"""Warm-up for the clinical engine: load and cross-check the knowledge, then build one sample card end to end
(facts, assessment, safety checks, R4B suggestion models), so the first request pays for nothing of this."""
from __future__ import annotations

import datetime as dt

from hooks.cards.plans import plan_pathway_card
from hooks.cards.render import render
from hooks.cards.suggestions import OrderContext
from hooks.knowledge.cards import card_wording
from hooks.knowledge.clinical import clinical_knowledge
from hooks.model import Evidence, Finding, FindingSet
from hooks.pathways.engine import assess
from hooks.pathways.facts import patient_facts
from hooks.record import PatientRecord
from hooks.safety.checks import verify_checks

_SAMPLE = {
    "patient": {"resourceType": "Patient", "id": "warmup", "birthDate": "1980-01-01", "gender": "female"},
    "conditions": {"resourceType": "Condition", "id": "warmup", "subject": {"reference": "Patient/warmup"},
                   "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M46.1"}]}},
}


def warm_up() -> None:
    """Raises KnowledgeError when a clinical knowledge file is broken."""
    k = clinical_knowledge()
    verify_checks(k)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    record = PatientRecord.from_prefetch(_SAMPLE)
    facts = patient_facts(record, now, k)
    findings = FindingSet((Finding("active_sacroiliitis", "affirmed", Evidence("DiagnosticReport/warmup", "text")),))
    octx = OrderContext("warmup", "Practitioner/warmup", now, "proposal", None)
    cards = card_wording()
    for assessment in assess(findings, facts, k):
        render(plan_pathway_card(assessment, findings, facts, "warmup", octx, k, cards), k, cards, "warmup")
