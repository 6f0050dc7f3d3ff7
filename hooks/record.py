"""The patient record a hook works on: the resolved prefetch data, read by the tolerant reader (hooks/fhirread.py).

Resources are grouped by type and read lazily, the first time a rule asks for a type, so a request pays only for
what its rules read. The reader repairs the well-known shape slips of real EHR data and drops what it cannot read
element by element; every repair and drop is recorded here as an IntakeIssue (resource type, element path, kind:
never a value, they may be PHI). Rules ask `unreadable(...)` / `dropped_in(...)` so a fact that could not be read is
*unknown*, never absent. Read resources are cached by content hash across requests (patient-view, then
order-select, then order-sign read the same chart): a changed resource has a different hash, so nothing stale is
ever served.
"""
from __future__ import annotations

import datetime as dt
import gc
import hashlib
import threading
from collections import Counter, OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

import orjson

from hooks.fhirread import FhirNode, Issue, is_known_type, read_resource

# Resource types a draft order may carry (order-select / order-sign context.draftOrders).
ORDER_TYPES = ("MedicationRequest", "ServiceRequest", "DeviceRequest", "NutritionOrder", "VisionPrescription")
# The element(s) that say what a draft orders: without one of them a draft cannot be checked.
ORDER_CONCEPT = {
    "MedicationRequest": ("medicationCodeableConcept", "medicationReference"),
    "ServiceRequest": ("code",),
    "DeviceRequest": ("codeCodeableConcept", "codeReference"),
}

MAX_ISSUES_PER_RESOURCE = 5
MAX_RESOURCES = 20_000          # bound on the work one request can ask of us
MAX_INTAKE_ISSUES = 5_000       # issues kept per record (counts stay exact)


@dataclass(frozen=True)
class IntakeIssue:
    """One repair, drop or skip of the intake. `path` is an element path without indices or values
    (``AllergyIntolerance.code.coding.code``); for a resource skipped whole it is the resource type."""

    source: str                 # prefetch key (or "draftOrders") the resource came from
    resource_type: str
    path: str
    kind: str                   # e.g. wrapped-in-list, numeric-string, zone-assumed, invalid, resource-unreadable
    action: str                 # "repaired" | "dropped" | "skipped"

    @property
    def unreadable(self) -> bool:
        return self.action != "repaired"


@dataclass(frozen=True)
class SkippedResource:
    """A resource the record could not use at all. `issues` are ``path: kind`` strings, never values."""

    source: str                 # prefetch key (or "draftOrders") it came from
    resource_type: str
    issues: tuple[str, ...]


@dataclass(frozen=True)
class UnreadableDraft:
    """A draft order that could not be checked: read whole or not, what it orders could not be read."""

    resource_type: str
    reference: str | None       # ``Type/id`` when the id could be read
    label: str | None           # the draft's own text (the clinician's words; escape before display)


class _NodeCache:
    """Bounded LRU of read resources keyed by (time zone, content hash). Thread-safe."""

    def __init__(self, max_entries: int = 8192) -> None:
        self._entries: OrderedDict[tuple[str, bytes], tuple[Any, tuple[Issue, ...]]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, bytes]) -> tuple[Any, tuple[Issue, ...]] | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return found

    def put(self, key: tuple[str, bytes], value: tuple[Any, tuple[Issue, ...]]) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


MODEL_CACHE = _NodeCache()


def content_key(resource: Mapping[str, Any]) -> bytes:
    """A stable digest of a resource's JSON content (key order does not matter)."""
    return hashlib.blake2b(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def read_cached(data: Mapping[str, Any], tz: dt.tzinfo | None = None) -> tuple[Any | None, tuple[Issue, ...]]:
    """Read one resource dict (hooks/fhirread.py), through the content cache."""
    try:
        key = (str(tz), content_key(data))
    except (TypeError, orjson.JSONEncodeError):
        return read_resource(data, tz)
    cached = MODEL_CACHE.get(key)
    if cached is not None:
        return cached
    result = read_resource(data, tz)
    MODEL_CACHE.put(key, result)
    return result


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Cyclic GC off while a batch of resources is read. The reader builds only acyclic objects (nodes, dicts,
    lists), so a collection during the read frees nothing, but a large chart would trigger dozens of them, each
    walking every live object (the read then grows worse than linearly). Reference counting still frees everything;
    the collector runs again as soon as the last concurrent read ends."""
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def validate_resource(data: Mapping[str, Any]) -> tuple[Any | None, tuple[str, ...]]:
    """Read one resource dict. Returns (resource, ()) or (None, ``path: kind`` issues) when it cannot be read."""
    node, issues = read_cached(data)
    if node is None:
        return None, tuple(f"{i.path}: {i.kind}" for i in issues[:MAX_ISSUES_PER_RESOURCE])
    return node, ()


def _iter_raw(source: str, value: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Yield (source, resource dict) from a prefetch value: a resource, a Bundle of them, or None."""
    if not isinstance(value, Mapping):
        return
    if value.get("resourceType") == "Bundle":
        entries = value.get("entry")
        if isinstance(entries, Mapping):        # a single entry object where FHIR has a list
            entries = [entries]
        if isinstance(entries, list):
            for entry in entries:
                resource = entry.get("resource") if isinstance(entry, Mapping) else None
                if isinstance(resource, Mapping):
                    yield source, resource
        return
    yield source, value


def _draft_label(raw: Mapping[str, Any], node: Any | None) -> str | None:
    """The draft's own words: the ordered concept's text or a coding display, read from whatever is readable."""
    for key in ("medicationCodeableConcept", "code", "codeCodeableConcept", "medicationReference",
                "codeReference"):
        concept = raw.get(key)
        if isinstance(concept, list) and concept:
            concept = concept[0]
        if not isinstance(concept, Mapping):
            continue
        for text in (concept.get("text"), concept.get("display")):
            if isinstance(text, str) and text.strip():
                return " ".join(text.split())[:120]
        coding = concept.get("coding")
        for item in (coding if isinstance(coding, list) else [coding]):
            if isinstance(item, Mapping) and isinstance(item.get("display"), str) and item["display"].strip():
                return " ".join(item["display"].split())[:120]
    return None


class PatientRecord:
    """Typed view of the data one request resolved. Build it with `PatientRecord.from_prefetch`."""

    def __init__(
        self,
        raw_by_type: Mapping[str, list[tuple[str, Mapping[str, Any]]]],
        draft_orders_raw: list[tuple[str, Any]] | None = None,
        unavailable: Iterable[str] = (),
        local_timezone: dt.tzinfo | None = None,
    ) -> None:
        self._raw_by_type = raw_by_type
        self._draft_raw = draft_orders_raw or []
        self._typed: dict[str, tuple[Any, ...]] = {}
        self._draft_typed: tuple[Any, ...] | None = None
        self._unreadable_drafts: tuple[UnreadableDraft, ...] = ()
        self._skipped: list[SkippedResource] = []
        self._issues: list[IntakeIssue] = []
        self._counts: Counter[tuple[str, str, str, str]] = Counter()
        self._dropped: dict[int, frozenset[str]] = {}
        self._by_reference: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()
        self._tz = local_timezone
        #: Prefetch keys whose data could not be obtained (rules must treat these facts as unknown, not absent).
        self.unavailable: frozenset[str] = frozenset(unavailable)

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_prefetch(
        cls,
        prefetch: Mapping[str, Any],
        draft_orders: Any = None,
        unavailable: Iterable[str] = (),
        local_timezone: dt.tzinfo | None = None,
        expected_types: Mapping[str, str] | None = None,
    ) -> "PatientRecord":
        """Group the resolved prefetch (key -> resource, searchset Bundle or None) by resource type.

        Duplicates (the same Type/id under two keys) are kept once. OperationOutcome entries are search
        warnings, not patient data, and are dropped. An entry that is not a readable resource is kept under the
        type its prefetch key asks for (`expected_types`, e.g. {"allergies": "AllergyIntolerance"}), else under
        "Resource", so it is reported as skipped and makes that type's facts unknown, never lost silently.
        """
        expected_types = expected_types or {}
        by_type: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
        seen: set[tuple[str, str]] = set()
        count = 0
        for key, value in prefetch.items():
            for source, resource in _iter_raw(key, value):
                count += 1
                if count > MAX_RESOURCES:
                    break
                resource_type = resource.get("resourceType")
                if resource_type == "OperationOutcome":
                    continue
                if not is_known_type(resource_type):
                    resource_type = expected_types.get(key) or "Resource"
                rid = resource.get("id")
                if isinstance(rid, str):
                    if (resource_type, rid) in seen:
                        continue
                    seen.add((resource_type, rid))
                by_type.setdefault(resource_type, []).append((source, resource))
        drafts: list[tuple[str, Any]] = []
        if isinstance(draft_orders, Mapping) and draft_orders.get("resourceType") == "Bundle":
            entries = draft_orders.get("entry")
            if isinstance(entries, Mapping):
                entries = [entries]
            for entry in entries if isinstance(entries, list) else ():
                drafts.append(("draftOrders", entry.get("resource") if isinstance(entry, Mapping) else entry))
        elif draft_orders:
            drafts = [("draftOrders", r) for _, r in _iter_raw("draftOrders", draft_orders)]
        return cls(by_type, drafts[:MAX_RESOURCES], unavailable, local_timezone)

    # -- reading ------------------------------------------------------------------------------------------------
    def _read(self, source: str, raw: Any, resource_type: str) -> Any | None:
        """Read one resource, recording its issues under `resource_type`; None when it cannot be read at all."""
        node, issues = read_cached(raw, self._tz) if isinstance(raw, dict) else read_resource(raw, self._tz)
        if node is not None:
            resource_type = node.get_resource_type()
        dropped = []
        for issue in issues:
            self._counts[(resource_type, issue.path, issue.kind, issue.action)] += 1
            if len(self._issues) < MAX_INTAKE_ISSUES:
                self._issues.append(IntakeIssue(source, resource_type, issue.path, issue.kind, issue.action))
            if issue.action != "repaired":
                dropped.append(issue.path)
        if node is None:
            self._skipped.append(SkippedResource(source, resource_type, tuple(
                f"{i.path}: {i.kind}" for i in issues[-MAX_ISSUES_PER_RESOURCE:])))
        elif dropped:
            self._dropped[id(node)] = frozenset(dropped)
        return node

    def of_type(self, resource_type: str) -> tuple[Any, ...]:
        """All readable resources of one type (read on first access)."""
        typed = self._typed.get(resource_type)
        if typed is None:
            with self._lock:
                typed = self._typed.get(resource_type)
                if typed is None:
                    with gc_paused():
                        nodes = [self._read(s, r, resource_type) for s, r in self._raw_by_type.get(resource_type, ())]
                    typed = self._typed[resource_type] = tuple(n for n in nodes if n is not None)
        return typed

    def of_type_coded(self, resource_type: str, codes: frozenset[tuple[str, str]]) -> tuple[Any, ...]:
        """Readable resources of one type whose `code` carries one of `codes` ((system, code) pairs, exact match).
        Resources whose code could not be read are in `unreadable(resource_type, "code")`."""
        return tuple(m for m in self.of_type(resource_type)
                     if any((c.system, c.code) in codes for c in getattr(getattr(m, "code", None), "coding", None) or ()))

    @property
    def resource_types(self) -> frozenset[str]:
        return frozenset(self._raw_by_type)

    def raw_count(self) -> int:
        return sum(len(v) for v in self._raw_by_type.values())

    @property
    def patient(self) -> Any | None:
        patients = self.of_type("Patient")
        return patients[0] if patients else None

    @property
    def conditions(self) -> tuple[Any, ...]:
        return self.of_type("Condition")

    @property
    def diagnostic_reports(self) -> tuple[Any, ...]:
        return self.of_type("DiagnosticReport")

    @property
    def medication_requests(self) -> tuple[Any, ...]:
        return self.of_type("MedicationRequest")

    @property
    def medication_statements(self) -> tuple[Any, ...]:
        return self.of_type("MedicationStatement")

    @property
    def observations(self) -> tuple[Any, ...]:
        return self.of_type("Observation")

    @property
    def allergies(self) -> tuple[Any, ...]:
        return self.of_type("AllergyIntolerance")

    # -- draft orders -------------------------------------------------------------------------------------------
    @property
    def draft_orders(self) -> tuple[Any, ...]:
        """The draft orders of order-select / order-sign (context.draftOrders) that could be read; empty for
        patient-view. The ones that could not be checked are in `unreadable_drafts`."""
        if self._draft_typed is None:
            with self._lock:
                if self._draft_typed is None:
                    with gc_paused():
                        self._read_drafts()
        return self._draft_typed or ()

    @property
    def unreadable_drafts(self) -> tuple[UnreadableDraft, ...]:
        """Draft orders the service cannot check: not a readable resource, or what they order is unreadable."""
        self.draft_orders
        return self._unreadable_drafts

    def _read_drafts(self) -> None:
        readable: list[Any] = []
        unreadable: list[UnreadableDraft] = []
        for source, raw in self._draft_raw:
            resource_type = raw.get("resourceType") if isinstance(raw, Mapping) else None
            if is_known_type(resource_type) and resource_type not in ORDER_TYPES:
                continue            # not an order (e.g. an Appointment): nothing of ours to check
            name = resource_type if is_known_type(resource_type) else "Resource"
            node = self._read(source, raw, name)
            label = _draft_label(raw, node) if isinstance(raw, Mapping) else None
            if node is None:
                rid = raw.get("id") if isinstance(raw, Mapping) else None
                unreadable.append(UnreadableDraft(name, f"{name}/{rid}" if isinstance(rid, str) else None, label))
                continue
            if not self._draft_checkable(node):
                rid = getattr(node, "id", None)
                unreadable.append(UnreadableDraft(node.get_resource_type(),
                                                  f"{node.get_resource_type()}/{rid}" if rid else None, label))
                continue
            readable.append(node)
        self._unreadable_drafts = tuple(unreadable)
        self._draft_typed = tuple(readable)

    def _draft_checkable(self, node: Any) -> bool:
        """Whether the checks can know what a draft orders and which draft it is (selections name it by id)."""
        resource_type = node.get_resource_type()
        if getattr(node, "id", None) is None and f"{resource_type}.id" in self._dropped.get(id(node), ()):
            return False
        concept_elements = ORDER_CONCEPT.get(resource_type, ())
        if not concept_elements:
            return True
        if any(getattr(node, e, None) is not None and not e.endswith("Reference") for e in concept_elements):
            return True
        reference = getattr(getattr(node, "medicationReference", None), "reference", None)
        if resource_type == "MedicationRequest" and isinstance(reference, str):
            if reference.startswith("#"):
                return any(getattr(c, "id", None) == reference[1:] and getattr(c, "code", None) is not None
                           for c in getattr(node, "contained", None) or ())
            medication = self.resolve(reference)
            return medication is not None and getattr(medication, "code", None) is not None
        return any(getattr(node, e, None) is not None for e in concept_elements)

    # -- references ---------------------------------------------------------------------------------------------
    def resolve(self, reference: str | None) -> Any | None:
        """Find a resource by relative (``Type/id``) or absolute reference among the read resources."""
        if not reference or not isinstance(reference, str):
            return None
        parts = reference.rstrip("/").split("/")
        if len(parts) < 2:
            return None
        resource_type, rid = parts[-2], parts[-1]
        if len(parts) >= 4 and parts[-2] == "_history":
            resource_type, rid = parts[-4], parts[-3]
        index = self._by_reference.get(resource_type)
        if index is None:
            index = {}
            for model in self.of_type(resource_type) if resource_type in self._raw_by_type else ():
                if getattr(model, "id", None):
                    index[model.id] = model
            if resource_type in ORDER_TYPES:
                for model in self.draft_orders:
                    if model.get_resource_type() == resource_type and getattr(model, "id", None):
                        index.setdefault(model.id, model)
            self._by_reference[resource_type] = index
        return index.get(rid)

    # -- what could not be read (fail closed) ---------------------------------------------------------------------
    @property
    def skipped(self) -> tuple[SkippedResource, ...]:
        """Resources skipped whole as unreadable, among the types read so far."""
        return tuple(self._skipped)

    def skipped_of(self, resource_type: str) -> tuple[SkippedResource, ...]:
        """The resources of one type skipped whole (reads that type first)."""
        self._touch(resource_type)
        return tuple(s for s in self._skipped if s.resource_type == resource_type)

    def unreadable(self, resource_type: str, *elements: str) -> tuple[IntakeIssue, ...]:
        """What of `resource_type` could not be read (empty = everything needed was read).

        Non-empty when a resource of that type was skipped whole, or when one of `elements` (paths relative to
        the resource, e.g. "code", "verificationStatus", "reaction.substance"), or anything under it, was dropped.
        With no `elements`, any drop counts. Repairs do not count: the value was recovered. Draft orders are not
        included (see `unreadable_drafts`)."""
        self._touch(resource_type)
        prefixes = tuple(f"{resource_type}.{e}" for e in elements)
        out = []
        for issue in self._issues:
            if issue.resource_type != resource_type or not issue.unreadable or issue.source == "draftOrders":
                continue
            if issue.action == "skipped" or not prefixes or any(
                    issue.path == p or issue.path.startswith(p + ".") or issue.path.startswith(p + "[")
                    for p in prefixes):
                out.append(issue)
        return tuple(out)

    def dropped_in(self, resource: Any) -> frozenset[str]:
        """The element paths dropped from one read resource (``Observation.valueQuantity.value``); empty when
        everything in it was read."""
        return self._dropped.get(id(resource), frozenset())

    def _touch(self, resource_type: str) -> None:
        if resource_type in self._raw_by_type:
            self.of_type(resource_type)

    # -- diagnostics --------------------------------------------------------------------------------------------
    @property
    def intake_issues(self) -> tuple[IntakeIssue, ...]:
        """Every repair, drop and skip recorded so far (bounded; `intake_counts` stays exact)."""
        return tuple(self._issues)

    def intake_counts(self) -> dict[tuple[str, str, str, str], int]:
        """(resource type, element path, kind, action) -> count, over everything read so far. PHI-free."""
        return dict(self._counts)

    def read_everything(self) -> None:
        """Read every resource of the record (for diagnostics that report on the whole request)."""
        for resource_type in list(self._raw_by_type):
            self.of_type(resource_type)
        self.draft_orders
