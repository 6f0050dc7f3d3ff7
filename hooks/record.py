"""The patient record a hook works on: resolved prefetch data as typed FHIR R4 (fhir.resources.R4B) resources.

Resources are grouped by type and validated lazily, the first time a rule asks for a type, so a request pays
only for what its rules read. Validated models are cached by content hash across requests: the same resource
arriving again (patient-view, then order-select, then order-sign) is not validated twice, and a changed
resource has a different hash, so nothing stale is ever served. A resource that fails validation is skipped
and recorded in `skipped` with the element paths and error codes only (never its values: they may be PHI).
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

# Resource types a draft order may carry (order-select / order-sign context.draftOrders).
ORDER_TYPES = ("MedicationRequest", "ServiceRequest", "DeviceRequest", "NutritionOrder", "VisionPrescription")

MAX_ISSUES_PER_RESOURCE = 5
MAX_RESOURCES = 20_000          # bound on the work one request can ask of us


@dataclass(frozen=True)
class SkippedResource:
    """A resource the record could not use. `issues` are ``path: error-code`` strings, never values."""

    source: str                 # prefetch key (or "draftOrders") it came from
    resource_type: str
    issues: tuple[str, ...]


class _ModelCache:
    """Bounded LRU of validated models keyed by (resourceType, content hash). Thread-safe."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: OrderedDict[tuple[str, bytes], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, bytes]) -> Any:
        with self._lock:
            model = self._entries.get(key)
            if model is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return model

    def put(self, key: tuple[str, bytes], model: Any) -> None:
        with self._lock:
            self._entries[key] = model
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


MODEL_CACHE = _ModelCache()


def content_key(resource: Mapping[str, Any]) -> bytes:
    """A stable digest of a resource's JSON content (key order does not matter)."""
    return hashlib.blake2b(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def _issue_path(resource_type: str, loc: Iterable[Any]) -> str:
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("", "root"):
            continue
        elif part == "resource_type":
            out += ".resourceType"
        else:
            out += f".{part}"
    return out


def validate_resource(data: Mapping[str, Any]) -> tuple[Any | None, tuple[str, ...]]:
    """Validate one resource dict as an R4 model. Returns (model, ()) or (None, issues)."""
    resource_type = data.get("resourceType")
    if not isinstance(resource_type, str):
        return None, ("resourceType: missing or not a string",)
    try:
        key = (resource_type, content_key(data))
    except (TypeError, orjson.JSONEncodeError):
        return None, (f"{resource_type}: not serialisable JSON",)
    cached = MODEL_CACHE.get(key)
    if cached is not None:
        return cached, ()
    try:
        model_class = get_fhir_model_class(resource_type)
    except (ValueError, KeyError, AttributeError, ImportError):
        return None, (f"{resource_type}: unsupported resource type",)
    try:
        model = model_class.model_validate(data)
    except ValidationError as exc:
        issues = tuple(
            f"{_issue_path(resource_type, err.get('loc', ()))}: {err.get('type', 'invalid')}"
            for err in exc.errors(include_url=False, include_input=False, include_context=False)[
                :MAX_ISSUES_PER_RESOURCE
            ]
        )
        return None, issues or (f"{resource_type}: invalid",)
    except (ValueError, KeyError, TypeError, RecursionError, AttributeError):
        # fhir.resources raises these for unknown nested resource types and pathological nesting.
        return None, (f"{resource_type}: malformed resource structure",)
    MODEL_CACHE.put(key, model)
    return model, ()


def _iter_raw(source: str, value: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Yield (source, resource dict) from a prefetch value: a resource, a Bundle of them, or None."""
    if not isinstance(value, Mapping):
        return
    if value.get("resourceType") == "Bundle":
        entries = value.get("entry")
        if isinstance(entries, list):
            for entry in entries:
                resource = entry.get("resource") if isinstance(entry, Mapping) else None
                if isinstance(resource, Mapping):
                    yield source, resource
        return
    yield source, value


def _raw_has_code(resource: Mapping[str, Any], codes: frozenset[tuple[str, str]]) -> bool:
    """Whether a raw resource dict's `code.coding` has one of `codes`; anything malformed is kept (validation
    then reports it) rather than silently dropped."""
    concept = resource.get("code")
    if not isinstance(concept, Mapping):
        return concept is not None
    coding = concept.get("coding")
    if not isinstance(coding, list):
        return coding is not None
    for item in coding:
        if not isinstance(item, Mapping):
            return True
        system, code = item.get("system"), item.get("code")
        if not (isinstance(system, (str, type(None))) and isinstance(code, (str, type(None)))):
            return True
        if (system, code) in codes:
            return True
        if not (_encodable(system) and _encodable(code)):
            return True         # a code that cannot be read (lone surrogate) may be one of ours: report it
    return False


def _encodable(text: str | None) -> bool:
    try:
        return text is None or bool(text.encode("utf-8")) or True
    except UnicodeEncodeError:
        return False


class PatientRecord:
    """Typed view of the data one request resolved. Build it with `PatientRecord.from_prefetch`."""

    def __init__(
        self,
        raw_by_type: Mapping[str, list[tuple[str, Mapping[str, Any]]]],
        draft_orders_raw: list[tuple[str, Mapping[str, Any]]] | None = None,
        unavailable: Iterable[str] = (),
    ) -> None:
        self._raw_by_type = raw_by_type
        self._draft_raw = draft_orders_raw or []
        self._typed: dict[str, tuple[Any, ...]] = {}
        self._coded: dict[tuple[str, frozenset[tuple[str, str]]], tuple[Any, ...]] = {}
        self._draft_typed: tuple[Any, ...] | None = None
        self._skipped: list[SkippedResource] = []
        self._by_reference: dict[str, Any] | None = None
        self._lock = threading.Lock()
        #: Prefetch keys whose data could not be obtained (rules must treat these facts as unknown, not absent).
        self.unavailable: frozenset[str] = frozenset(unavailable)

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_prefetch(
        cls,
        prefetch: Mapping[str, Any],
        draft_orders: Mapping[str, Any] | None = None,
        unavailable: Iterable[str] = (),
    ) -> "PatientRecord":
        """Group the resolved prefetch (key -> resource, searchset Bundle or None) by resource type.

        Duplicates (the same Type/id under two keys) are kept once. OperationOutcome entries are search
        warnings, not patient data, and are dropped.
        """
        by_type: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
        seen: set[tuple[str, str]] = set()
        count = 0
        for key, value in prefetch.items():
            for source, resource in _iter_raw(key, value):
                count += 1
                if count > MAX_RESOURCES:
                    break
                resource_type = resource.get("resourceType")
                if not isinstance(resource_type, str) or resource_type == "OperationOutcome":
                    continue
                rid = resource.get("id")
                if isinstance(rid, str):
                    if (resource_type, rid) in seen:
                        continue
                    seen.add((resource_type, rid))
                by_type.setdefault(resource_type, []).append((source, resource))
        drafts = [
            ("draftOrders", r) for _, r in _iter_raw("draftOrders", draft_orders)
        ] if draft_orders else []
        return cls(by_type, drafts[:MAX_RESOURCES], unavailable)

    # -- typed access -------------------------------------------------------------------------------------------
    def of_type(self, resource_type: str) -> tuple[Any, ...]:
        """All valid resources of one type, as fhir.resources.R4B models (validated on first access)."""
        return self._validated_once(self._typed, resource_type, lambda: self._raw_by_type.get(resource_type, ()))

    def of_type_coded(self, resource_type: str, codes: frozenset[tuple[str, str]]) -> tuple[Any, ...]:
        """Valid resources of one type whose `code` carries one of `codes` ((system, code) pairs, exact match),
        validating only those: a long lab history costs nothing for the codes no rule reads. Resources with
        other codes are neither validated nor reported as skipped."""
        if resource_type in self._typed:
            return tuple(m for m in self._typed[resource_type]
                         if any((c.system, c.code) in codes for c in getattr(getattr(m, "code", None), "coding", None) or ()))
        return self._validated_once(self._coded, (resource_type, codes), lambda: [
            (s, r) for s, r in self._raw_by_type.get(resource_type, ()) if _raw_has_code(r, codes)])

    def _validated_once(self, store: dict[Any, tuple[Any, ...]], key: Any,
                        raws: Callable[[], Iterable[tuple[str, Mapping[str, Any]]]]) -> tuple[Any, ...]:
        """The valid models of `raws()`, validated once per key (checked again under the lock: threads share it)."""
        typed = store.get(key)
        if typed is None:
            with self._lock:
                typed = store.get(key)
                if typed is None:
                    typed = store[key] = self._validate_all(raws())
        return typed

    def _validate_all(self, raws: Iterable[tuple[str, Mapping[str, Any]]]) -> tuple[Any, ...]:
        models = []
        for source, raw in raws:
            model, issues = validate_resource(raw)
            if model is None:
                self._skipped.append(SkippedResource(source, str(raw.get("resourceType")), issues))
            else:
                models.append(model)
        return tuple(models)

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

    @property
    def draft_orders(self) -> tuple[Any, ...]:
        """The draft orders of order-select / order-sign (context.draftOrders), typed; empty for patient-view."""
        if self._draft_typed is None:
            with self._lock:
                if self._draft_typed is None:
                    self._draft_typed = self._validate_all(
                        (s, r) for s, r in self._draft_raw if r.get("resourceType") in ORDER_TYPES
                    )
        return self._draft_typed

    def resolve(self, reference: str | None) -> Any | None:
        """Find a resource by relative (``Type/id``) or absolute reference among the parsed resources."""
        if not reference:
            return None
        if self._by_reference is None:
            index: dict[str, Any] = {}
            for resource_type in self._raw_by_type:
                for model in self.of_type(resource_type):
                    if getattr(model, "id", None):
                        index[f"{resource_type}/{model.id}"] = model
            for model in self.draft_orders:
                if getattr(model, "id", None):
                    index.setdefault(f"{model.get_resource_type()}/{model.id}", model)
            self._by_reference = index
        parts = reference.rstrip("/").split("/")
        if len(parts) >= 2:
            key = f"{parts[-2]}/{parts[-1]}"
            if len(parts) >= 4 and parts[-2] == "_history":
                key = f"{parts[-4]}/{parts[-3]}"
            return self._by_reference.get(key)
        return None

    @property
    def skipped(self) -> tuple[SkippedResource, ...]:
        """Resources skipped as invalid, among the types validated so far."""
        return tuple(self._skipped)
