"""The work budget of one CDS Hooks call: a deadline over the whole evaluation and a bound on the report text
analysed. A chart larger than the budget is read newest report first (the newest study of a region decides what is
current); whatever was not read is said on an info card, never silently treated as if the record were complete.

The service opens a budget around each handler call (`with budget.scope(WorkBudget(...))`); the findings loop asks
`current()` whether the next report may be read. Without a scope (tests, tools) nothing is bounded."""
from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from hooks.fhirutil import to_datetime

_CURRENT: ContextVar["WorkBudget | None"] = ContextVar("msk_cds_work_budget", default=None)


@dataclass
class WorkBudget:
    """Seconds for the evaluation and characters of report text; counts what was read and what was left."""

    seconds: float
    max_report_chars: int
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=-1.0)
    chars_read: int = 0
    reports_read: int = 0
    reports_skipped: int = 0

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def deadline_passed(self) -> bool:
        return self.elapsed() >= self.seconds

    def admit_report(self, report: Any) -> bool:
        """May this report's text be analysed? The first report always is (newest first: something to act on);
        after it, only while both the deadline and the character budget hold."""
        size = report_text_chars(report)
        if self.reports_read and (self.chars_read + size > self.max_report_chars or self.deadline_passed()):
            self.reports_skipped += 1
            return False
        self.chars_read += size
        self.reports_read += 1
        return True

    @property
    def incomplete(self) -> bool:
        return self.reports_skipped > 0


def current() -> WorkBudget | None:
    """The budget of the call being evaluated, if the caller opened one."""
    return _CURRENT.get()


@contextmanager
def scope(budget: WorkBudget) -> Iterator[WorkBudget]:
    token = _CURRENT.set(budget)
    try:
        yield budget
    finally:
        _CURRENT.reset(token)


def report_text_chars(report: Any) -> int:
    """The size of an imaging report's text without decoding it: a DiagnosticReport's conclusion and presentedForm
    data, or a DocumentReference's content attachments (bytes)."""
    size = 0
    conclusion = getattr(report, "conclusion", None)
    if isinstance(conclusion, str):
        size += len(conclusion)
    attachments = list(getattr(report, "presentedForm", None) or ())
    attachments += [getattr(content, "attachment", None) for content in getattr(report, "content", None) or ()]
    for attachment in attachments:
        data = getattr(attachment, "data", None)
        if isinstance(data, (bytes, bytearray, str)):
            size += len(data)
    return size


def report_time(report: Any) -> float:
    """When the study was done, as a sort key (unknown dates sort oldest): DiagnosticReport effectiveDateTime,
    effectivePeriod.start or issued; DocumentReference context.period.start or date."""
    context = getattr(report, "context", None)
    for value in (getattr(report, "effectiveDateTime", None),
                  getattr(getattr(report, "effectivePeriod", None), "start", None),
                  getattr(getattr(context, "period", None), "start", None),
                  getattr(report, "issued", None),
                  getattr(report, "date", None)):
        when = to_datetime(value)
        if when is not None:
            return when.timestamp()
    return float("-inf")


def newest_first(reports: Sequence[Any]) -> list[int]:
    """Indexes of `reports`, newest first (stable for equal dates)."""
    return sorted(range(len(reports)), key=lambda i: report_time(reports[i]), reverse=True)


def incomplete_record_card(budget: WorkBudget, source_label: str) -> dict[str, Any]:
    """The info card that says the record was too large to read completely (no patient data in it), rendered by
    the one card renderer from its wording in knowledge/cards.yaml (rule record.incomplete)."""
    from hooks.cards.render import CardPlan, render
    from hooks.knowledge.cards import card_wording
    from hooks.knowledge.clinical import clinical_knowledge

    k, cards = clinical_knowledge(), card_wording()
    total = budget.reports_read + budget.reports_skipped
    values = {"reports_read": str(budget.reports_read), "reports_total": str(total),
              "reports_skipped": str(budget.reports_skipped)}
    key = f"{budget.reports_read}-{total}"
    plan = CardPlan(rule="record.incomplete", pathway="record", step=None, indicator="info",
                    wording=cards.rules["record.incomplete"], values=values, findings=(), reports=(),
                    fallback_finding=None, reasons=(), suggestions=(), selection_behavior=None,
                    dedupe_key=f"record.incomplete|{key}", topic=None, draft_reference=key,
                    provenance={"reportsRead": budget.reports_read, "reportsNotRead": budget.reports_skipped})
    card = render(plan, k, cards, str(uuid.uuid4())).to_json()
    card["extension"]["org.msk-cds.record-incomplete"] = {"reportsRead": budget.reports_read,
                                                          "reportsNotRead": budget.reports_skipped}
    return card
