"""Intake diagnostics for integrators: what the tolerant reader repaired and dropped in one call, as PHI-free counts
by resource type, element path and kind (never values), for the log line, the metrics and the opt-in response
extension (INTAKE_DIAGNOSTICS_EXTENSION)."""
from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any, Mapping

from hooks.fhirread import local_zone as _zone
from hooks.record import PatientRecord

MAX_LOG_CHARS = 200             # the log formatter's cap on one value
MAX_EXTENSION_ROWS = 100


@functools.lru_cache(maxsize=16)
def local_zone(name: str | None) -> dt.tzinfo | None:
    """The EHR_LOCAL_TIMEZONE setting as a tzinfo (validated at start-up by service.config)."""
    return _zone(name)


@functools.lru_cache(maxsize=64)
def _types(items: tuple[tuple[str, str], ...]) -> Mapping[str, str]:
    return {key: template.split("?", 1)[0].split("/", 1)[0].strip() for key, template in items}


def prefetch_types(prefetch: Mapping[str, str]) -> Mapping[str, str]:
    """The resource type each prefetch key asks for ("allergies" -> "AllergyIntolerance"), so an unreadable entry
    under that key counts against that type's facts."""
    return _types(tuple(sorted(prefetch.items())))


@dataclass(frozen=True)
class IntakeReport:
    counts: Mapping[tuple[str, str, str, str], int]     # (resource type, path, kind, action) -> count

    def total(self, action: str) -> int:
        return sum(n for (_, _, _, a), n in self.counts.items() if a == action)

    def rows(self) -> list[tuple[tuple[str, str, str, str], int]]:
        """Most frequent first, then by path (stable output)."""
        return sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))

    def log_fields(self) -> dict[str, Any]:
        """Counts for the request's log line; `intake` lists the most frequent paths within the value cap."""
        if not self.counts:
            return {}
        parts: list[str] = []
        size = 0
        for (_, path, kind, _action), count in self.rows():
            part = f"{path}:{kind}={count}"
            if size + len(part) + 1 > MAX_LOG_CHARS:
                break
            parts.append(part)
            size += len(part) + 1
        return {"intake_repaired": self.total("repaired"), "intake_dropped": self.total("dropped"),
                "intake_skipped": self.total("skipped"), "intake": ";".join(parts)}

    def extension(self) -> dict[str, Any]:
        """The opt-in response extension: totals and one row per (type, path, kind, action)."""
        rows = [{"resourceType": rt, "path": path, "kind": kind, "action": action, "count": count}
                for (rt, path, kind, action), count in self.rows()[:MAX_EXTENSION_ROWS]]
        return {"repaired": self.total("repaired"), "dropped": self.total("dropped"),
                "skipped": self.total("skipped"), "issues": rows}


def report(record: PatientRecord) -> IntakeReport:
    """What the call's intake repaired and dropped. Only what the rules read is read, so only that is reported;
    draft orders are always read."""
    record.draft_orders
    return IntakeReport(record.intake_counts())
