"""Validation of CDS Hooks 2.0 feedback bodies (`{"feedback": [...]}`) into rows ready for storage."""
from __future__ import annotations

import datetime as dt
import re
from typing import Any, Mapping

from service.errors import CdsError, Issue

MAX_ITEMS = 1000
MAX_ID = 256
MAX_URI = 1024
MAX_COMMENT = 10_000
OUTCOMES = ("accepted", "overridden")
# RFC 3339 date-time: full date, time, optional fraction, mandatory offset (Z or +hh:mm).
RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


#: outcome times outside these years are typing errors or probes, and some databases cannot store them
EARLIEST_YEAR, LATEST_YEAR = 1970, 2999


def parse_rfc3339(value: str) -> dt.datetime | None:
    if not RFC3339.match(value):
        return None
    if not EARLIEST_YEAR <= int(value[:4]) <= LATEST_YEAR:
        return None
    text = value.upper().replace("Z", "+00:00")
    if "." in text:  # Python accepts at most 6 fraction digits
        head, rest = text.split(".", 1)
        digits = re.match(r"\d+", rest).group(0)
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits):]}"
    try:
        return dt.datetime.fromisoformat(text).astimezone(dt.timezone.utc)
    except (ValueError, OverflowError):      # 9999-12-31T23:59:59-23:59 is past datetime's last UTC instant
        return None


def _string(value: Any, path: str, limit: int, issues: list[Issue], required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        issues.append(Issue("required non-empty string" if required else "must be a non-empty string", path))
        return None
    if len(value) > limit:
        issues.append(Issue(f"longer than {limit} characters", path))
        return None
    problem = _unstorable(value)
    if problem:
        issues.append(Issue(problem, path))
        return None
    return value


def _unstorable(value: str) -> str | None:
    """Text no database stores faithfully: a lone UTF-16 surrogate (valid JSON escape, invalid Unicode) or NUL
    (PostgreSQL text refuses it)."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (a lone UTF-16 surrogate escape is not)"
    return None


def _item(item: Any, base: str, issues: list[Issue]) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        issues.append(Issue("must be an object", base))
        return None
    before = len(issues)
    card = _string(item.get("card"), f"{base}.card", MAX_ID, issues)
    outcome = item.get("outcome")
    if outcome not in OUTCOMES:
        issues.append(Issue("must be accepted or overridden", f"{base}.outcome"))
    accepted: list[str] = []
    suggestions = item.get("acceptedSuggestions")
    if outcome == "accepted" and suggestions is None:
        issues.append(Issue("required when outcome is accepted", f"{base}.acceptedSuggestions"))
    elif suggestions is not None:
        if not isinstance(suggestions, list) or not suggestions:
            issues.append(Issue("must be a non-empty array", f"{base}.acceptedSuggestions"))
        else:
            for index, suggestion in enumerate(suggestions):
                path = f"{base}.acceptedSuggestions[{index}]"
                if not isinstance(suggestion, dict):
                    issues.append(Issue("must be an object with id", path))
                    continue
                value = _string(suggestion.get("id"), f"{path}.id", MAX_ID, issues)
                if value is not None:
                    accepted.append(value)
    reason_code = reason_system = reason_display = comment = None
    override = item.get("overrideReason")
    if override is not None:
        path = f"{base}.overrideReason"
        if not isinstance(override, dict):
            issues.append(Issue("must be an object", path))
        else:
            reason = override.get("reason")
            if reason is not None:
                if not isinstance(reason, dict):
                    issues.append(Issue("must be a Coding", f"{path}.reason"))
                else:
                    reason_code = _string(reason.get("code"), f"{path}.reason.code", MAX_ID, issues)
                    reason_system = _string(reason.get("system"), f"{path}.reason.system", MAX_URI, issues)
                    reason_display = _string(reason.get("display"), f"{path}.reason.display", MAX_URI, issues,
                                             required=False)
            comment = _string(override.get("userComment"), f"{path}.userComment", MAX_COMMENT, issues,
                              required=False)
            if reason is None and override.get("userComment") is None:
                # CDS Hooks 2.0: an overrideReason carries a reason, a userComment or both; {} says nothing
                issues.append(Issue("must have a reason or a userComment", path))
    timestamp = None
    raw_time = item.get("outcomeTimestamp")
    if not isinstance(raw_time, str):
        issues.append(Issue("required RFC 3339 date-time", f"{base}.outcomeTimestamp"))
    else:
        timestamp = parse_rfc3339(raw_time)
        if timestamp is None:
            issues.append(Issue("must be an RFC 3339 date-time with a zone", f"{base}.outcomeTimestamp"))
    if len(issues) > before:
        return None
    return {
        "card": card,
        "outcome": outcome,
        "accepted_suggestions": accepted,
        "override_reason_code": reason_code,
        "override_reason_system": reason_system,
        "override_reason_display": reason_display,
        "user_comment": comment,
        "outcome_timestamp": timestamp,
    }


def validate_feedback(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every item checked; one CdsError(400) naming every problem, else the rows to store."""
    items = body.get("feedback")
    if not isinstance(items, list) or not items:
        raise CdsError.one(400, "feedback", "required non-empty array")
    if len(items) > MAX_ITEMS:
        raise CdsError.one(400, "feedback", f"more than {MAX_ITEMS} items")
    issues: list[Issue] = []
    rows = [_item(item, f"feedback[{index}]", issues) for index, item in enumerate(items)]
    if issues:
        raise CdsError.invalid(issues)
    return [row for row in rows if row is not None]
