"""Findings extraction: a patient's DiagnosticReports and Conditions -> normalized findings (hooks.model.Finding)
plus the facts of each imaging report. Codes first, report text second; every finding carries its evidence."""
from __future__ import annotations

import datetime as dt
from dataclasses import replace

from hooks.budget import current as current_budget, newest_first
from hooks.findings.catalogue import Concept, ConceptCatalogue, concept_catalogue
from hooks.findings.coded import findings_from_condition
from hooks.findings.currency import ReportTime, current_references
from hooks.findings.nlp import findings_from_text
from hooks.findings.report import findings_from_report
from hooks.model import Finding, FindingSet, ReportFacts
from hooks.record import PatientRecord

__all__ = [
    "Concept",
    "ConceptCatalogue",
    "concept_catalogue",
    "extract_findings",
    "findings_from_condition",
    "findings_from_report",
    "findings_from_text",
    "warm_up",
]

WARM_UP_REPORT = (
    "MRI of the sacroiliac joints with T1 and STIR sequences. Mild synovitis of the left SI joint with "
    "subchondral bone marrow oedema extending 12 mm into the ilium. No erosions, sclerosis or ankylosis. "
    "Cannot exclude early fat metaplasia. Red marrow reconversion in the pelvis."
)


def extract_findings(record: PatientRecord, now: dt.datetime | None = None) -> FindingSet:
    """All findings of a record: each DiagnosticReport (coded, then text) and each Condition. For each body region
    the newest final report is current; the findings of older reports (and of reports older than the knowledge's
    window before `now`) are history."""
    all_reports = record.diagnostic_reports
    # issue 12: the call's work budget (hooks.budget) admits reports newest first; the rest is named on an info card
    budget = current_budget()
    order = newest_first(all_reports) if budget is not None else range(len(all_reports))
    read = {i: findings_from_report(all_reports[i]) for i in order
            if budget is None or budget.admit_report(all_reports[i])}
    per_report = [read[index] for index in sorted(read)]
    times = [ReportTime(facts.reference, facts.region, facts.modality, getattr(all_reports[index], "status", None),
                        facts.issued) for index in sorted(read) for facts in (read[index][1],)]
    current = current_references(times, now)
    findings: list[Finding] = []
    reports: list[ReportFacts] = []
    for report_findings, facts in per_report:
        if facts.reference in current:
            findings.extend(report_findings)
        else:
            findings.extend(f if f.historical else replace(f, historical=True) for f in report_findings)
        reports.append(facts)
    for condition in record.conditions:
        findings.extend(findings_from_condition(condition))
    return FindingSet(findings=tuple(findings), reports=tuple(reports))


def warm_up() -> None:
    """Load and compile the catalogue, build the NLP pipeline and run it once (raises if the knowledge is bad)."""
    from hooks.findings.nlp import TEXT_CACHE, pipeline

    concept_catalogue()
    pipeline()
    findings_from_text(WARM_UP_REPORT, "DiagnosticReport/warm-up")
    TEXT_CACHE.clear()
