"""Small readers over fhir.resources.R4B models shared by findings, pathways and safety checks."""
from __future__ import annotations

import datetime as dt
from typing import Any, Iterable, Iterator

from hooks.knowledge import Coding


def codings(concept: Any) -> Iterator[tuple[str | None, str | None]]:
    """(system, code) pairs of a CodeableConcept (or a list of them); tolerant of None."""
    if concept is None:
        return
    if isinstance(concept, (list, tuple)):
        for item in concept:
            yield from codings(item)
        return
    for coding in getattr(concept, "coding", None) or ():
        yield getattr(coding, "system", None), getattr(coding, "code", None)


def code_set(value_set: Iterable[Coding]) -> frozenset[tuple[str, str]]:
    """A knowledge value set as a frozenset of (system, code) for fast matching."""
    return frozenset((c.system, c.code) for c in value_set)


def has_code(concept: Any, codes: frozenset[tuple[str, str]]) -> bool:
    """True when any coding of `concept` is in `codes`."""
    return any((system, code) in codes for system, code in codings(concept))


def concept_text(concept: Any) -> str | None:
    """CodeableConcept.text, else the first coding display."""
    if concept is None:
        return None
    text = getattr(concept, "text", None)
    if text:
        return text
    for coding in getattr(concept, "coding", None) or ():
        if getattr(coding, "display", None):
            return coding.display
    return None


def reference_of(resource: Any) -> str:
    """The relative reference ``Type/id`` of a model (``Type/`` when it has no id)."""
    return f"{resource.get_resource_type()}/{getattr(resource, 'id', None) or ''}"


def to_datetime(value: Any) -> dt.datetime | None:
    """A FHIR date/dateTime/instant (model value or string, partial dates allowed) as an aware datetime (UTC when
    no zone). Partial dates take their first day. None when absent or unreadable."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    text = str(value)
    try:
        if len(text) == 4:
            return dt.datetime(int(text), 1, 1, tzinfo=dt.timezone.utc)
        if len(text) == 7:
            return dt.datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=dt.timezone.utc)
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
