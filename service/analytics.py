"""Feedback analytics: per card rule (pathway step), how often cards were shown, accepted (with which suggestion)
and overridden (for which reason), from the card ledger joined with stored feedback by card uuid.

    msk-cds analytics [--database-url URL] [--since 2026-11-01] [--service ID] [--format table|json]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

from sqlalchemy import Engine, create_engine, func, select

from service import ledger, storage
from service.config import as_instant, load_settings

NO_RULE = "(no rule)"
NO_REASON = "(no reason given)"
UNKNOWN_SUGGESTION = "(unknown suggestion)"


@dataclass
class RuleStats:
    rule: str
    pathway: str | None = None
    shown: int = 0
    accepted: int = 0                      # cards with at least one "accepted" feedback item
    overridden: int = 0                    # cards with at least one "overridden" feedback item
    accepted_suggestions: Counter = field(default_factory=Counter)   # suggestion label -> cards
    override_reasons: Counter = field(default_factory=Counter)       # "code (display)" -> cards
    knowledge_review: str | None = None    # review status of the sources the rule cites (governance)

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.shown if self.shown else None

    def as_dict(self) -> dict[str, Any]:
        rate = self.acceptance_rate
        result: dict[str, Any] = {
            "rule": self.rule,
            "shown": self.shown,
            "accepted": self.accepted,
            "overridden": self.overridden,
            "acceptanceRate": round(rate, 4) if rate is not None else None,
            "acceptedSuggestions": dict(sorted(self.accepted_suggestions.items(), key=lambda kv: (-kv[1], kv[0]))),
            "overrideReasons": dict(sorted(self.override_reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        }
        if self.pathway:
            result["pathway"] = self.pathway
        if self.knowledge_review:
            result["knowledgeReview"] = self.knowledge_review
        return result


def _reason_label(code: str | None, display: str | None) -> str:
    if code and display:
        return f"{code} ({display})"
    return code or display or NO_REASON


def build_report(engine: Engine, since: dt.datetime | None = None, service_id: str | None = None) -> list[RuleStats]:
    """Per-rule statistics, most shown first. Feedback counts only for cards shown in the period."""
    ledger_t = ledger.card_ledger
    feedback_t = storage.feedback_table
    conditions = []
    if since is not None:
        conditions.append(ledger_t.c.shown_at >= since.astimezone(dt.timezone.utc))
    if service_id is not None:
        conditions.append(ledger_t.c.service_id == service_id)

    stats: dict[str, RuleStats] = {}
    shown_query = (
        # a retried call (same hookInstance) records the same card uuids again: still one showing
        select(ledger_t.c.rule_id, func.max(ledger_t.c.pathway), func.count(func.distinct(ledger_t.c.card_uuid)))
        .where(*conditions)
        .group_by(ledger_t.c.rule_id)
    )
    feedback_query = (
        select(
            feedback_t.c.id, feedback_t.c.card_uuid, feedback_t.c.outcome, feedback_t.c.accepted_suggestions,
            feedback_t.c.override_reason_code, feedback_t.c.override_reason_display,
            ledger_t.c.rule_id, ledger_t.c.suggestions,
        )
        .join(ledger_t, ledger_t.c.card_uuid == feedback_t.c.card_uuid)
        .where(*conditions)
        .order_by(feedback_t.c.id)
    )
    with engine.connect() as conn:
        for rule_id, pathway, count in conn.execute(shown_query):
            stats[rule_id or NO_RULE] = RuleStats(rule=rule_id or NO_RULE, pathway=pathway, shown=count)
        feedback_rows = conn.execute(feedback_query).all()

    # A card may be in the ledger twice (a replayed hookInstance) and get repeated feedback: count each card once
    # per outcome, each accepted suggestion and override reason once per card.
    seen_feedback: set[int] = set()
    outcomes: set[tuple[str, str]] = set()
    suggestion_hits: set[tuple[str, str]] = set()
    reason_hits: set[tuple[str, str]] = set()
    for fid, card_uuid, outcome, accepted_json, reason_code, reason_display, rule_id, suggestions_json in feedback_rows:
        if fid in seen_feedback:
            continue
        seen_feedback.add(fid)
        rule = stats.setdefault(rule_id or NO_RULE, RuleStats(rule=rule_id or NO_RULE))
        if (card_uuid, outcome) not in outcomes:
            outcomes.add((card_uuid, outcome))
            if outcome == "accepted":
                rule.accepted += 1
            elif outcome == "overridden":
                rule.overridden += 1
        if outcome == "accepted":
            labels = dict(_json_list(suggestions_json))
            for suggestion_id in _json_list(accepted_json):
                if not isinstance(suggestion_id, str) or (card_uuid, suggestion_id) in suggestion_hits:
                    continue
                suggestion_hits.add((card_uuid, suggestion_id))
                rule.accepted_suggestions[labels.get(suggestion_id) or UNKNOWN_SUGGESTION] += 1
        elif outcome == "overridden":
            label = _reason_label(reason_code, reason_display)
            if (card_uuid, label) not in reason_hits:
                reason_hits.add((card_uuid, label))
                rule.override_reasons[label] += 1
    from hooks.knowledge.cards import rule_review

    for rule_stats in stats.values():
        rule_stats.knowledge_review = rule_review(rule_stats.rule)
    return sorted(stats.values(), key=lambda s: (-s.shown, s.rule))


def _json_list(text: str | None) -> list:
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def render_table(report: list[RuleStats]) -> str:
    if not report:
        return "No cards recorded in this period.\n"
    width = max(len("rule"), *(len(s.rule) for s in report))
    lines = [f"{'rule':<{width}}  {'shown':>6}  {'accepted':>8}  {'overridden':>10}  {'acceptance':>10}"]
    lines.append("-" * len(lines[0]))
    for s in report:
        lines.append(
            f"{s.rule:<{width}}  {s.shown:>6}  {s.accepted:>8}  {s.overridden:>10}  {_percent(s.acceptance_rate):>10}"
        )
        if s.knowledge_review:
            lines.append(f"    knowledge review: {s.knowledge_review}")
        for label, count in sorted(s.accepted_suggestions.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    accepted: {label}: {count}")
        for label, count in sorted(s.override_reasons.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    overridden: {label}: {count}")
    return "\n".join(lines) + "\n"


def render_json(report: list[RuleStats]) -> str:
    return json.dumps({"rules": [s.as_dict() for s in report]}, indent=2, sort_keys=True) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: the DATABASE_URL setting)")
    parser.add_argument("--since", help="only cards shown at or after this ISO date/time (UTC when no zone)")
    parser.add_argument("--service", dest="service_id", help="only cards of this CDS service id")
    parser.add_argument("--format", choices=("table", "json"), default="table")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        since = as_instant(args.since) if args.since else None
    except ValueError:
        print("msk-cds analytics: error: --since must be an ISO date or date-time", file=sys.stderr)
        return 2
    url = args.database_url or load_settings()["DATABASE_URL"]
    engine = create_engine(storage.normalise_url(url))
    try:
        # A database the service has not run on yet still answers (with no rows).
        storage.metadata.create_all(engine, tables=[storage.feedback_table, ledger.card_ledger], checkfirst=True)
        report = build_report(engine, since, args.service_id)
    finally:
        engine.dispose()
    out.write(render_json(report) if args.format == "json" else render_table(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="msk-cds analytics", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
