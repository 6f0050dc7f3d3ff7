"""One imaging report (DiagnosticReport, or a DocumentReference radiology narrative) -> its findings (coded conclusion first, then text) and its facts (modality, region,
MRI sequences), cached by report content so the same report arriving again costs a dictionary lookup."""
from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Iterator


from hooks.findings.catalogue import compiled
from hooks.findings.coded import coded_findings
from hooks.findings.formats import attachment_text
from hooks.findings.nlp import findings_from_text
from hooks.findings.sections import rank, reading, split_sections
from hooks.fhirutil import codings, concept_text, reference_of
from hooks.model import Finding, ReportFacts

LOINC = "http://loinc.org"
# Reports in these states say nothing about the patient.
VOID_STATUSES = frozenset({"entered-in-error", "cancelled"})


def _attachment_text(attachment: Any, max_chars: int) -> str | None:
    """The text of a readable attachment (plain, HTML, RTF), or None."""
    return attachment_text(attachment, max_chars)[0]


def _attachments(resource: Any) -> list[tuple[str, Any]]:
    """(element, attachment) of a DiagnosticReport's presentedForm or a DocumentReference's content."""
    if resource.get_resource_type() == "DocumentReference":
        return [(f"content[{i}]", getattr(c, "attachment", None)) for i, c in enumerate(getattr(resource, "content",
                                                                                                   None) or ())]
    return [(f"presentedForm[{i}]", a) for i, a in enumerate(getattr(resource, "presentedForm", None) or ())]


def report_texts(report: Any, unread: list[str] | None = None) -> Iterator[tuple[str, str]]:
    """(element, text) of the report's readable text: conclusion, then its text/plain, HTML and RTF attachments
    (presentedForm; content of a DocumentReference). What cannot be read is named in `unread`."""
    max_chars = compiled().nlp.limits.max_chars
    conclusion = getattr(report, "conclusion", None) if report.get_resource_type() == "DiagnosticReport" else None
    if isinstance(conclusion, str) and conclusion.strip():
        yield "conclusion", conclusion[:max_chars]
    for element, attachment in _attachments(report):
        if attachment is None:
            continue
        text, what = attachment_text(attachment, max_chars)
        if text and text.strip():
            yield element, text
        elif what is not None and unread is not None:
            unread.append(what)


def report_code(report: Any) -> Any:
    return getattr(report, "type" if report.get_resource_type() == "DocumentReference" else "code", None)


def report_status(report: Any) -> str | None:
    """The report's status as a DiagnosticReport status (a DocumentReference's docStatus, entered-in-error kept)."""
    if report.get_resource_type() == "DocumentReference":
        status = getattr(report, "status", None)
        if status == "entered-in-error":
            return status
        return getattr(report, "docStatus", None) or ("final" if status == "current" else status)
    return getattr(report, "status", None)


def report_date(report: Any) -> Any:
    """When the study was done: effective (DiagnosticReport) or the context period (DocumentReference), else the
    issue/creation date."""
    if report.get_resource_type() == "DocumentReference":
        period = getattr(getattr(report, "context", None), "period", None)
        return getattr(period, "start", None) or getattr(period, "end", None) or getattr(report, "date", None)
    return (getattr(report, "effectiveDateTime", None) or getattr(getattr(report, "effectivePeriod", None),
                                                                    "start", None)
            or getattr(report, "issued", None))


def _first_match(patterns: Any, text: str) -> str | None:
    for value, regex in patterns:
        if regex.search(text):
            return value
    return None


def report_facts(report: Any, texts: list[str], unread: tuple[str, ...] = ()) -> ReportFacts:
    """Modality and region (LOINC code, else category codes, else words) and which MRI sequences are mentioned."""
    rules = compiled()
    code = report_code(report)
    loinc = next((c for system, c in codings(code) if system == LOINC and c), None)
    known = rules.report_codes.get(loinc) if loinc else None
    modality = known.modality if known else None
    region = known.region if known else None
    if modality is None:
        for _, category in codings([*(getattr(report, "category", None) or ()), code]):
            if category and category.upper() in rules.nlp.category_codes:
                modality = rules.nlp.category_codes[category.upper()]
                break
    title = " ".join(filter(None, (concept_text(code), getattr(report, "description", None)
                                   if report.get_resource_type() == "DocumentReference" else None,
                                   *(getattr(c, "display", None) for c in getattr(code, "coding", None) or ()))))
    body = "\n".join(texts)
    if modality is None:
        modality = _first_match(rules.modality_terms, title) or _first_match(rules.modality_terms, body)
    if region is None:
        region = _first_match(rules.region_terms, title) or _first_match(rules.region_terms, body)
    effective = report_date(report)
    return ReportFacts(
        reference=reference_of(report),
        modality=modality,
        region=region,
        loinc=loinc,
        t1_sequence=bool(rules.t1.search(body)),
        fluid_sensitive_sequence=bool(rules.fluid_sensitive.search(body)),
        issued=effective.isoformat() if hasattr(effective, "isoformat") else (str(effective) if effective else None),
        status=report_status(report),
        unread_attachments=unread,
        readable=bool(body.strip()) or bool(report.get_resource_type() == "DiagnosticReport"
                                            and getattr(report, "conclusionCode", None)),
    )


def _extract(report: Any) -> tuple[tuple[Finding, ...], ReportFacts]:
    reference = reference_of(report)
    unread: list[str] = []
    texts = list(report_texts(report, unread))
    facts = report_facts(report, [text for _, text in texts], tuple(unread))
    if facts.status in VOID_STATUSES:
        return (), facts
    findings: list[Finding] = []
    coded = getattr(report, "conclusionCode", None) if report.get_resource_type() == "DiagnosticReport" else None
    for index, concept in enumerate(coded or ()):
        findings.extend(coded_findings(concept, reference, f"conclusionCode[{index}]"))
    study_date = facts.issued[:10] if facts.issued else None
    findings = [replace(f, study_date=study_date) for f in findings]
    seen: set[tuple] = set()
    for element, text in texts:
        default_role = "headingless_conclusion" if element == "conclusion" else "headingless"
        for section in split_sections(text, default_role):
            chunk = text[section.start:section.end]
            for finding in findings_from_text(chunk, reference, element, facts.region):
                read = reading(section.role, finding.certainty)
                if read == "drop":
                    continue        # a question in the indication, a sequence name in the technique
                finding = replace(finding, section=section.role, study_date=study_date,
                                  historical=finding.historical or read == "historical")
                # The conclusion usually repeats the impression of the attached report: one finding per sentence.
                key = (finding.concept, finding.certainty, finding.historical, finding.laterality, finding.severity,
                       finding.site, finding.depth_mm, tuple(sorted(finding.measurements.items())),
                       finding.source.text)
                if key not in seen:
                    seen.add(key)
                    findings.append(finding)
    return tuple(reconcile_sections(findings)), facts


def _compatible(a: Finding, b: Finding) -> bool:
    """Two mentions may speak of the same lesion: same concept, side and site agree or one is not given."""
    if a.concept != b.concept:
        return False
    if a.laterality and b.laterality and a.laterality != b.laterality and "bilateral" not in (a.laterality,
                                                                                              b.laterality):
        return False
    return not (a.site and b.site and a.site != b.site)


def reconcile_sections(findings: list[Finding]) -> list[Finding]:
    """Where current mentions of one finding disagree (affirmed / uncertain / negated), the section of the highest
    rank decides: the impression over the findings, an addendum over what it amends; at equal rank an affirmed
    mention outweighs a hedged one; a mention another affirmed finding subsumes (concepts.yaml `subsumed_by`) goes.
    History is left alone."""
    current = [f for f in findings if not f.historical]
    by_id = compiled().by_id
    out = []
    for finding in findings:
        if not finding.historical:
            subsumed_by = by_id[finding.concept].subsumed_by if finding.concept in by_id else ()
            if finding.certainty != "negated" and subsumed_by and any(
                    other.concept in subsumed_by and other.certainty == "affirmed"
                    and _compatible(replace(other, concept=finding.concept), finding) for other in current):
                continue
            own = rank(finding.section)
            if any(other.certainty != finding.certainty and rank(other.section) > own and _compatible(other, finding)
                   for other in current):
                continue
            # A report that states a finding and elsewhere hedges about it states it (the affirmed description
            # outweighs a hedged interpretation of the same lesion, as within one sentence).
            if finding.certainty == "uncertain" and any(
                    other.certainty == "affirmed" and rank(other.section) >= own and _compatible(other, finding)
                    for other in current):
                continue
        out.append(finding)
    return out


class _ReportCache:
    """Bounded LRU of (findings, facts) by report content digest. Thread-safe."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: OrderedDict[bytes, tuple[tuple[Finding, ...], ReportFacts]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes) -> tuple[tuple[Finding, ...], ReportFacts] | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
            else:
                self._entries.move_to_end(key)
                self.hits += 1
            return value

    def put(self, key: bytes, value: tuple[tuple[Finding, ...], ReportFacts]) -> None:
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


REPORT_CACHE = _ReportCache()


_REPORT_ELEMENTS = {"id", "meta", "status", "code", "category", "conclusion", "conclusionCode", "presentedForm",
                    "effectiveDateTime", "effectivePeriod", "issued"}
_DOCUMENT_ELEMENTS = {"id", "meta", "status", "docStatus", "type", "category", "content", "context", "date",
                      "description"}


def _content_key(report: Any) -> bytes | None:
    """A digest of everything extraction reads (a changed report gets a new key, so nothing stale is served)."""
    try:
        payload = report.get_resource_type() + report.model_dump_json(
            include=_DOCUMENT_ELEMENTS if report.get_resource_type() == "DocumentReference" else _REPORT_ELEMENTS,
            exclude_none=True,
        )
    except (AttributeError, TypeError, ValueError):
        return None
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=16).digest()


# Validated models are shared across requests (hooks.record caches them by content), so the same model object
# arriving again is found by identity without serialising it. Entries go when the model is collected. Models are
# treated as immutable here, as everywhere in hooks/.
_BY_MODEL: dict[int, tuple[tuple[Finding, ...], ReportFacts]] = {}
_BY_MODEL_LOCK = threading.Lock()
MAX_BY_MODEL = 8192


def _forget(model_id: int) -> None:
    with _BY_MODEL_LOCK:
        _BY_MODEL.pop(model_id, None)


def findings_from_report(report: Any) -> tuple[tuple[Finding, ...], ReportFacts]:
    """The findings of one DiagnosticReport (coded conclusion, then text) and its ReportFacts."""
    model_id = id(report)
    known = _BY_MODEL.get(model_id)
    if known is not None:
        return known
    key = _content_key(report)
    result = REPORT_CACHE.get(key) if key is not None else None
    if result is None:
        result = _extract(report)
        if key is not None:
            REPORT_CACHE.put(key, result)
    with _BY_MODEL_LOCK:
        if len(_BY_MODEL) >= MAX_BY_MODEL:
            return result       # full: the content cache still serves it
        try:
            weakref.finalize(report, _forget, model_id)
        except TypeError:
            return result       # not weak-referenceable
        _BY_MODEL[model_id] = result
    return result


def clear_caches() -> None:
    """Forget every cached extraction (benchmarks and tests measure the cold path with it)."""
    from hooks.findings.nlp import TEXT_CACHE

    with _BY_MODEL_LOCK:
        _BY_MODEL.clear()
    REPORT_CACHE.clear()
    TEXT_CACHE.clear()
