"""Findings extraction: a patient's DiagnosticReports and Conditions -> normalized findings (hooks.model.Finding)
plus the facts of each imaging report. Codes first, report text second; every finding carries its evidence."""
from __future__ import annotations

import datetime as dt
import logging
import re
from collections import Counter
from dataclasses import replace
from typing import Any, Iterator

from hooks.budget import current as current_budget, newest_first
from hooks.findings.catalogue import Concept, ConceptCatalogue, concept_catalogue
from hooks.findings.catalogue import compiled
from hooks.findings.coded import findings_from_condition
from hooks.findings.currency import ReportTime, current_references
from hooks.findings.nlp import findings_from_text
from hooks.findings.report import findings_from_report
from hooks.findings.sections import report_structure
from hooks.fhirutil import codings
from hooks.model import Finding, FindingSet, ReportFacts
from hooks.record import PatientRecord

logger = logging.getLogger(__name__)
LOINC = "http://loinc.org"
# what may be named in the log: a media type's shape or our own labels ("url-only", "no-data"); anything else "other"
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,40}(?:/[a-z0-9][a-z0-9.+-]{0,60})?")

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


def radiology_documents(record: PatientRecord) -> Iterator[Any]:
    """The record's DocumentReferences that are imaging report narratives (type or category of the knowledge's
    `document_references`, or an imaging report code)."""
    kinds = report_structure().document_references.codes()
    report_codes = compiled().report_codes
    for document in record.of_type("DocumentReference"):
        type_codes = set(codings(getattr(document, "type", None)))
        categories = set(codings(list(getattr(document, "category", None) or ())))
        if (type_codes | categories) & kinds or any(system == LOINC and code in report_codes
                                                   for system, code in type_codes):
            yield document


def extract_findings(record: PatientRecord, now: dt.datetime | None = None) -> FindingSet:
    """All findings of a record: each imaging report (DiagnosticReport, or a DocumentReference radiology narrative;
    coded, then text) and each Condition. For each body region the newest final report is current; the findings of
    older reports (and of reports older than the knowledge's window before `now`) are history."""
    all_reports = (*record.diagnostic_reports, *radiology_documents(record))
    # issue 12: the call's work budget (hooks.budget) admits reports newest first; the rest is named on an info card
    budget = current_budget()
    order = newest_first(all_reports) if budget is not None else range(len(all_reports))
    read = {i: findings_from_report(all_reports[i]) for i in order
            if budget is None or budget.admit_report(all_reports[i])}
    per_report = [read[index] for index in sorted(read)]
    times = [ReportTime(facts.reference, facts.region, facts.modality, facts.status, facts.issued, facts.readable)
             for _, facts in per_report]
    unread: Counter[str] = Counter(what if _MEDIA_TYPE.fullmatch(what) else "other"
                                   for _, facts in per_report for what in facts.unread_attachments)
    if unread:
        # Media types and counts only (no content), in the log's whitelisted scalar fields: an integrator sees which
        # report forms were not read ("application/pdf=2 image/jpeg=1").
        logger.info("report_attachments_not_read", extra={
            "count": sum(unread.values()),
            "reason": " ".join(f"{what}={n}" for what, n in sorted(unread.items()))})
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

    from hooks.findings.formats import html_to_text, rtf_to_text
    from hooks.findings.sections import split_sections

    concept_catalogue()
    pipeline()
    findings_from_text(WARM_UP_REPORT, "DiagnosticReport/warm-up")
    # the Sectionizer and the HTML/RTF readers are built on first use: build them now, not in the first request
    split_sections(html_to_text(f"<p><b>INDICATION:</b> ?sacroiliitis</p><p><b>FINDINGS:</b> {WARM_UP_REPORT}</p>"))
    rtf_to_text(r"{\rtf1\ansi IMPRESSION: normal.\par}")
    TEXT_CACHE.clear()
