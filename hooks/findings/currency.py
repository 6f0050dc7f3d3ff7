"""Time: which imaging reports speak for the patient today. For each body region (and modality: a radiograph does
not decide what an MRI showed), the newest report in a deciding status (knowledge/report_structure.yaml
`currency`) is current; older reports of the region, and reports older than the window, are history."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable

from hooks.findings.sections import report_structure


@dataclass(frozen=True)
class ReportTime:
    reference: str
    region: str | None
    modality: str | None
    status: str | None
    date: str | None          # ISO date or date-time of the study (effective, else issued)
    readable: bool = True     # a report whose text could not be read (a PDF only, a Binary not fetched) decides nothing


def parse_when(value: str | None) -> dt.datetime | None:
    """An ISO date or date-time (FHIR allows a year or a year-month too) as an aware datetime, or None."""
    if not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    for candidate in (text, text + "-01", text + "-01-01"):
        try:
            when = dt.datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
    return None


def current_references(reports: Iterable[ReportTime], now: dt.datetime | None) -> frozenset[str]:
    """The references of the reports whose findings are current; every other report's findings are history."""
    currency = report_structure().currency
    deciding = frozenset(currency.deciding_statuses)
    oldest = now - dt.timedelta(days=currency.max_report_age_days) if now is not None else None
    groups: dict[tuple, list[tuple[dt.datetime | None, ReportTime]]] = {}
    for report in reports:
        # A report of unknown region cannot be compared with another: it is its own group.
        key = (report.region, report.modality) if report.region else ("reference", report.reference)
        groups.setdefault(key, []).append((parse_when(report.date), report))
    current: set[str] = set()
    for members in groups.values():
        # What could not be read is unknown: a newer unreadable report does not turn the older one into history.
        readable = [m for m in members if m[1].readable] or members
        candidates = [m for m in readable if m[1].status in deciding] or readable
        dated = [when for when, _ in candidates if when is not None]
        newest = max(dated) if dated else None
        for when, report in candidates:
            if newest is not None and (when is None or when < newest.replace(hour=0, minute=0, second=0,
                                                                            microsecond=0)):
                continue    # an older study of the region (an undated one loses to any dated one)
            if oldest is not None and when is not None and when < oldest:
                continue    # too old to start a pathway
            current.add(report.reference)
    return frozenset(current)
