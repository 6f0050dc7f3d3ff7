"""The tolerant FHIR R4 reader: reads the elements the rules use from a resource dict, repairs the well-known shape
slips of real EHR data, drops what it cannot read element by element, and records each repair and drop.

The structure (which elements exist, which are lists, which type each has, choice groups, required elements, code
bindings) comes from the fhir.resources.R4B models, so nothing here is a hand-typed copy of FHIR; only what is read
is ours (READ_ELEMENTS). Reading a resource costs microseconds: no pydantic validation runs on input. Suggestions
and anything built for the EHR are still validated with the R4B models (hooks/cards).

Repairs (the value is recovered exactly, nothing clinical is guessed):
  wrapped-in-list     a single object or value where FHIR has a list
  unwrapped-list      a one-element list where FHIR has a single value
  numeric-string      "5" / "5.1" for an integer or decimal (and a number for a string)
  zone-assumed        a date-time without a zone, read in the EHR's local time zone (a setting)
  code-whitespace     leading/trailing whitespace in a code, id or uri
  code-case           a code in the wrong case, where the binding or the code system fixes the case
Drops (the element is left out and the fact it carries becomes unknown): invalid, null, empty, unknown-element,
conflicting-choice, missing-required, too-many, too-deep, modifier-extension. A resource that is not an object, has no
or an unknown resourceType is skipped whole ("resource-unreadable").
"""
from __future__ import annotations

import base64
import datetime as dt
import re
import threading
import typing
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from fhir.resources.R4B import get_fhir_model_class

# --------------------------------------------------------------------------------------------- what the rules read
# Top-level elements read per resource type (everything below a read element is read). An element not listed is
# neither read nor checked; asking a resource for it raises ElementNotRead, so a rule can never mistake "not read"
# for "absent". To read a new element, add it here.
_COMMON = ("id", "meta", "status", "subject", "patient", "contained")
READ_ELEMENTS: dict[str, tuple[str, ...]] = {
    "Patient": ("id", "meta", "birthDate", "gender", "deceasedBoolean", "deceasedDateTime", "active"),
    "Condition": (*_COMMON, "clinicalStatus", "verificationStatus", "category", "severity", "code", "bodySite",
                  "onsetDateTime", "onsetPeriod", "onsetString", "onsetAge", "onsetRange",
                  "abatementDateTime", "abatementPeriod", "abatementString", "abatementAge", "abatementRange",
                  "abatementBoolean", "recordedDate", "stage", "evidence"),
    "DiagnosticReport": (*_COMMON, "identifier", "basedOn", "category", "code", "effectiveDateTime",
                         "effectivePeriod", "issued", "result", "imagingStudy", "conclusion", "conclusionCode",
                         "presentedForm"),
    "DocumentReference": (*_COMMON, "identifier", "docStatus", "type", "category", "date", "description",
                          "securityLabel", "content", "context", "relatesTo"),
    "Binary": ("id", "meta", "contentType", "data"),
    "MedicationRequest": (*_COMMON, "identifier", "statusReason", "intent", "category", "priority", "doNotPerform",
                          "reportedBoolean", "reportedReference", "medicationCodeableConcept",
                          "medicationReference", "authoredOn", "reasonCode", "reasonReference",
                          "courseOfTherapyType", "dosageInstruction", "dispenseRequest", "note"),
    "MedicationStatement": (*_COMMON, "statusReason", "category", "medicationCodeableConcept",
                            "medicationReference", "effectiveDateTime", "effectivePeriod", "dateAsserted",
                            "reasonCode", "reasonReference", "dosage", "note"),
    "MedicationAdministration": (*_COMMON, "statusReason", "category", "medicationCodeableConcept",
                                 "medicationReference", "effectiveDateTime", "effectivePeriod", "dosage"),
    "MedicationDispense": (*_COMMON, "category", "medicationCodeableConcept", "medicationReference",
                           "whenPrepared", "whenHandedOver", "quantity", "daysSupply", "dosageInstruction"),
    "Medication": ("id", "meta", "code", "status", "form", "ingredient", "amount"),
    "Observation": (*_COMMON, "category", "code", "effectiveDateTime", "effectivePeriod", "effectiveInstant",
                    "issued", "valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean",
                    "valueInteger", "valueRange", "valueRatio", "valueDateTime", "valuePeriod",
                    "dataAbsentReason", "interpretation", "component", "hasMember"),
    "AllergyIntolerance": ("id", "meta", "patient", "clinicalStatus", "verificationStatus", "type", "category",
                           "criticality", "code", "onsetDateTime", "onsetPeriod", "onsetString", "recordedDate",
                           "lastOccurrence", "reaction", "contained"),
    "ServiceRequest": (*_COMMON, "identifier", "basedOn", "intent", "category", "priority", "doNotPerform", "code",
                       "orderDetail", "quantityQuantity", "occurrenceDateTime", "occurrencePeriod",
                       "occurrenceTiming", "asNeededBoolean", "authoredOn", "reasonCode", "reasonReference",
                       "bodySite", "note", "patientInstruction"),
    "Procedure": (*_COMMON, "category", "code", "performedDateTime", "performedPeriod", "performedString",
                  "bodySite", "reasonCode", "outcome"),
    "ImagingStudy": (*_COMMON, "started", "modality", "procedureCode", "reasonCode", "description", "series"),
    "DeviceRequest": (*_COMMON, "intent", "codeCodeableConcept", "codeReference", "authoredOn",
                      "occurrenceDateTime", "reasonCode"),
    "NutritionOrder": (*_COMMON, "intent", "dateTime", "oralDiet", "supplement", "enteralFormula"),
    "VisionPrescription": (*_COMMON, "created", "dateWritten", "lensSpecification"),
    "Encounter": (*_COMMON, "class", "type", "period", "serviceType"),
}
DEFAULT_READ = ("id", "meta", "status", "code", "category", "subject", "patient")

# Elements never read anywhere: plain extensions carry nothing the rules use (the narrative `text` of a resource is
# not in READ_ELEMENTS either). A modifierExtension can change the meaning of what holds it, so it is recorded as a
# drop (the facts of the element that holds it become unknown).
_NEVER_READ = frozenset({"extension", "modifierExtension"})

# Code systems whose codes have one fixed case (terminology syntax, not clinical content): a code arriving in another
# case is the same code. Systems with mixed-case codes are left alone.
UPPER_CASE_SYSTEMS = frozenset({
    "http://hl7.org/fhir/sid/icd-10-cm", "http://hl7.org/fhir/sid/icd-10", "http://loinc.org",
    "http://terminology.hl7.org/CodeSystem/v2-0074",
})
LOWER_CASE_SYSTEMS = frozenset({
    "http://terminology.hl7.org/CodeSystem/condition-clinical",
    "http://terminology.hl7.org/CodeSystem/condition-ver-status",
    "http://terminology.hl7.org/CodeSystem/condition-category",
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
    "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
    "http://terminology.hl7.org/CodeSystem/medication-statement-category",
    "http://terminology.hl7.org/CodeSystem/observation-category",
})

MAX_LIST = 1_000          # items read from one list element
MAX_DEPTH = 24            # nesting read below a resource (contained resources included)


class ElementNotRead(AttributeError):
    """A rule asked for an element the reader does not read (add it to READ_ELEMENTS)."""


# --------------------------------------------------------------------------------------------- the schema
_TEXT_KINDS = frozenset({"String", "Markdown", "Xhtml", "Time"})
_CODE_KINDS = frozenset({"Code", "Id"})
_URI_KINDS = frozenset({"Uri", "Url", "Canonical", "Oid", "UuidVersion"})


class _Field:
    __slots__ = ("json", "attr", "is_list", "prim", "child", "choice", "required", "enum", "read", "fast", "schema")

    def __init__(self, json: str, attr: str, is_list: bool, prim: str | None, child: str | None,
                 choice: str | None, required: bool, enum: frozenset[str] | None) -> None:
        self.json, self.attr, self.is_list, self.prim, self.child = json, attr, is_list, prim, child
        self.choice, self.required, self.enum = choice, required, enum
        self.read = True
        # an ASCII string already in canonical shape skips the primitive reader (most values in real data)
        self.fast = 1 if prim in _TEXT_KINDS else 2 if prim in _CODE_KINDS else 3 if prim in _URI_KINDS else 0
        self.schema: "_Schema | None" = None


class _Schema:
    """The elements of one R4B model class, and the light class its instances are read into."""

    def __init__(self, name: str, read: Iterable[str] | None) -> None:
        model = get_fhir_model_class(name)
        self.name = name
        self.is_resource = read is not None
        self.fields: dict[str, _Field] = {}
        self.choices: dict[str, list[str]] = {}
        self.required_choices: set[str] = set()
        self.required: tuple[str, ...] = ()
        self.is_coding = name == "Coding"
        for attr, info in model.model_fields.items():
            alias = info.alias or attr
            if alias.startswith("_") or attr in ("resource_type", "fhir_comments") or attr.endswith("__ext"):
                continue
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            is_list, prim, child = _kind(info.annotation)
            enum = extra.get("enum_values")
            field = _Field(alias, attr, is_list, prim, child, extra.get("one_of_many"),
                           bool(extra.get("element_required")),
                           frozenset(v for v in enum if v != "+") if isinstance(enum, list) else None)
            self.fields[alias] = field
            if field.choice:
                self.choices.setdefault(field.choice, []).append(alias)
                if extra.get("one_of_many_required"):
                    self.required_choices.add(field.choice)
        wanted = set(read) if read is not None else None
        for alias, field in self.fields.items():
            if alias in _NEVER_READ or (wanted is not None and alias not in wanted):
                field.read = False
        self.required = tuple(a for a, f in self.fields.items() if f.required and f.read)
        self.required_choices = {g for g in self.required_choices if self.fields[self.choices[g][0]].read}
        self.node_class = _make_node_class(self)


def _kind(annotation: Any) -> tuple[bool, str | None, str | None]:
    """(is a list, primitive kind such as "DateTime", complex type name such as "CodeableConcept")."""
    is_list = False
    while True:
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is typing.Union or (origin is not None and type(None) in args and origin is not list):
            annotation = next(a for a in args if a is not type(None))
        elif origin in (list, typing.List):
            is_list = True
            annotation = args[0]
        elif origin is typing.Annotated:
            meta = args[1] if len(args) > 1 else None
            return is_list, type(meta).__name__, None
        else:
            break
    if hasattr(annotation, "__metadata__"):
        return is_list, type(annotation.__metadata__[0]).__name__, None
    name = getattr(annotation, "__name__", "")
    if name.endswith("Type"):
        return is_list, None, name[:-4]
    if annotation is bool:
        return is_list, "Boolean", None
    if annotation is str:
        return is_list, "String", None
    return is_list, "String", None


_SCHEMAS: dict[tuple[str, bool], _Schema] = {}
_SCHEMA_LOCK = threading.Lock()


def _schema(name: str, resource: bool) -> _Schema | None:
    key = (name, resource)
    schema = _SCHEMAS.get(key)
    if schema is None:
        with _SCHEMA_LOCK:
            schema = _SCHEMAS.get(key)
            if schema is None:
                try:
                    schema = _Schema(name, READ_ELEMENTS.get(name, DEFAULT_READ) if resource else None)
                except (ValueError, KeyError, AttributeError, ImportError, StopIteration):
                    return None
                _SCHEMAS[key] = schema
    return schema


# --------------------------------------------------------------------------------------------- the read objects
class FhirNode:
    """A read FHIR element or resource: attribute access like an R4B model (absent elements are None)."""

    _python_names: frozenset[str] = frozenset()     # attribute names that repeat a JSON name (class_fhir...)

    def model_dump(self, mode: str = "json", include: Iterable[str] | None = None, exclude_none: bool = True,
                   by_alias: bool = True) -> dict[str, Any]:
        """The JSON of what was read (repairs applied, drops left out), built on demand."""
        return _to_json(self, frozenset(include) if include is not None else None)

    def model_dump_json(self, include: Iterable[str] | None = None, exclude_none: bool = True,
                        by_alias: bool = True) -> str:
        return orjson.dumps(self.model_dump(include=include), option=orjson.OPT_SORT_KEYS).decode()

    def __repr__(self) -> str:          # never the values: they may be PHI
        return f"<{type(self).__name__} (read)>"


def _to_json(value: Any, include: frozenset[str] | None = None) -> Any:
    if isinstance(value, FhirNode):
        skip = value._python_names
        out = {k: _to_json(v) for k, v in value.__dict__.items()
               if k not in skip and (include is None or k in include)}
        resource_type = getattr(type(value), "resource_type", None)
        if isinstance(resource_type, str):
            out["resourceType"] = resource_type
        return out
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and "." not in str(value) else float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


class _NotRead:
    def __init__(self, name: str, owner: str) -> None:
        self.name, self.owner = name, owner

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        raise ElementNotRead(f"{self.owner}.{self.name} is not read (hooks/fhirread.py READ_ELEMENTS)")


def _make_node_class(schema: _Schema) -> type:
    namespace: dict[str, Any] = {"__module__": __name__}
    for alias, field in schema.fields.items():
        value: Any = None if field.read else _NotRead(alias, schema.name)
        namespace[alias] = value
        if field.attr != alias:
            namespace[field.attr] = value
    namespace["_python_names"] = frozenset(f.attr for a, f in schema.fields.items() if f.attr != a)
    if schema.is_resource:
        namespace["resource_type"] = schema.name
        namespace["get_resource_type"] = classmethod(lambda cls, _n=schema.name: _n)
    return type(schema.name, (FhirNode,), namespace)


# --------------------------------------------------------------------------------------------- issues
class Issue(typing.NamedTuple):
    """One repair or drop: where (element path without indices or values) and what kind."""

    path: str
    kind: str
    action: str         # "repaired" | "dropped" | "skipped"


class _Reader:
    __slots__ = ("issues", "tz")

    def __init__(self, tz: dt.tzinfo | None) -> None:
        self.issues: list[Issue] = []
        self.tz = tz

    def repaired(self, path: str, kind: str) -> None:
        self.issues.append(Issue(path, kind, "repaired"))

    def dropped(self, path: str, kind: str) -> None:
        self.issues.append(Issue(path, kind, "dropped"))

    # -- complex elements ---------------------------------------------------------------------------------------
    def obj(self, value: Any, schema: _Schema, path: str, depth: int) -> FhirNode | None:
        if depth > MAX_DEPTH:
            self.dropped(path, "too-deep")
            return None
        attrs: dict[str, Any] = {}       # JSON name -> value (and the python name, where it differs)
        chosen: dict[str, list[str]] = {}
        fields = schema.fields
        for key, item in value.items():
            field = fields.get(key)
            if field is None:
                if key[:1] != "_" and key not in ("resourceType", "fhir_comments"):
                    self.dropped(f"{path}.(unknown)", "unknown-element")
                continue
            if not field.read:
                if key == "modifierExtension":
                    self.dropped(f"{path}.modifierExtension", "modifier-extension")
                continue
            fpath = f"{path}.{key}"
            if field.choice:
                chosen.setdefault(field.choice, []).append(key)
            if item is None:
                self.dropped(fpath, "null")
                continue
            if field.is_list:
                if not isinstance(item, list):
                    self.repaired(fpath, "wrapped-in-list")
                    item = [item]
                elif len(item) > MAX_LIST:
                    self.dropped(fpath, "too-many")
                    item = item[:MAX_LIST]
                values = []
                for element in item:
                    got = self.value(element, field, fpath, depth)
                    if got is not None:
                        values.append(got)
                if values:
                    attrs[key] = values
                    if field.attr != key:
                        attrs[field.attr] = values
                elif item:
                    pass            # every item dropped, each recorded
                else:
                    self.dropped(fpath, "empty")
            else:
                if isinstance(item, list):
                    if len(item) == 1:
                        self.repaired(fpath, "unwrapped-list")
                        item = item[0]
                    else:
                        self.dropped(fpath, "invalid" if item else "empty")
                        continue
                got = self.value(item, field, fpath, depth)
                if got is not None:
                    attrs[key] = got
                    if field.attr != key:
                        attrs[field.attr] = got
        if chosen:
            for group, names in chosen.items():
                if len(names) > 1:
                    for name in names:
                        self.dropped(f"{path}.{name}", "conflicting-choice")
                        attrs.pop(name, None)
        for alias in schema.required:
            if alias not in value:
                self.dropped(f"{path}.{alias}", "missing-required")
        for group in schema.required_choices:
            if group not in chosen and not any(n in value for n in schema.choices[group]):
                self.dropped(f"{path}.{group}[x]", "missing-required")
        if schema.is_coding:
            self.coding_case(attrs, path)
        if not attrs:
            return None
        node = schema.node_class.__new__(schema.node_class)
        node.__dict__ = attrs
        return node

    def coding_case(self, attrs: dict[str, Any], path: str) -> None:
        code, system = attrs.get("code"), attrs.get("system")
        if not isinstance(code, str) or not isinstance(system, str):
            return
        fixed = code.upper() if system in UPPER_CASE_SYSTEMS else code.lower() if system in LOWER_CASE_SYSTEMS \
            else code
        if fixed != code:
            self.repaired(f"{path}.code", "code-case")
            attrs["code"] = fixed

    def value(self, item: Any, field: _Field, path: str, depth: int) -> Any:
        """The value of one element value, or None when dropped (recorded)."""
        if field.prim is not None:
            return self.primitive(item, field, path)
        if item is None:
            self.dropped(path, "null")
            return None
        if field.child == "Resource":
            return self.resource(item, path, depth + 1)
        if not isinstance(item, dict):
            self.dropped(path, "invalid")
            return None
        schema = field.schema
        if schema is None:
            schema = field.schema = _schema(field.child or "", False)
            if schema is None:
                return None
        if not item:
            self.dropped(path, "empty")
            return None
        return self.obj(item, schema, path, depth + 1)

    def resource(self, item: Any, path: str, depth: int) -> FhirNode | None:
        resource_type = item.get("resourceType") if isinstance(item, dict) else None
        schema = _schema(resource_type, True) if isinstance(resource_type, str) else None
        if schema is None:
            self.issues.append(Issue(path, "resource-unreadable", "dropped"))
            return None
        return self.obj(item, schema, path, depth)

    # -- primitives ---------------------------------------------------------------------------------------------
    def primitive(self, item: Any, field: _Field, path: str) -> Any:
        fast = field.fast
        if fast and type(item) is str and item.isascii() and item:
            if fast == 1:
                if not item.isspace():
                    return item
            elif item[0] != " " and item[-1] != " " and item == item.strip():
                if fast == 3:
                    if " " not in item:
                        return item
                elif field.enum is None or item in field.enum or item.lower() not in field.enum:
                    return item
        kind = field.prim
        reader = _PRIMITIVES.get(kind or "", _string)
        try:
            got = reader(self, item, field, path)
        except (ValueError, TypeError, ArithmeticError, OverflowError):
            got = None
        if got is None:
            self.dropped(path, "empty" if item == "" else "null" if item is None else "invalid")
            return None
        return got[0]


# each returns (python value, JSON value) or None (invalid); repairs are recorded on the reader
_SURROGATE = re.compile("[\ud800-\udfff]")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _string(r: _Reader, v: Any, f: _Field, path: str) -> tuple[Any, Any] | None:
    if isinstance(v, str):
        if not v.isascii() and _SURROGATE.search(v):
            # a lone surrogate cannot be encoded; the rest of the text stays readable
            r.repaired(path, "invalid-unicode")
            v = _SURROGATE.sub("\ufffd", v)
        return (v, v) if v.strip() else None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        r.repaired(path, "numeric-string")
        text = str(v)
        return text, text
    return None


def _base64(r: _Reader, v: Any, f: _Field, path: str) -> tuple[Any, Any] | None:
    if not isinstance(v, str):
        return None
    compact = "".join(v.split()) if not v.isalnum() else v
    if len(compact) % 4 or not _BASE64.fullmatch(compact):
        return None
    return base64.b64decode(compact), compact       # bytes, as the R4B models hold them


def _code(r: _Reader, v: Any, f: _Field, path: str) -> tuple[Any, Any] | None:
    if not isinstance(v, str) and f.prim == "Code":
        return None             # a number is no code (an id may arrive as one: read as its digits)
    if isinstance(v, str) and not v.isascii() and _SURROGATE.search(v):
        return None             # a damaged code is not the code: unreadable, never repaired into another
    got = _string(r, v, f, path)
    if got is None:
        return None
    text = got[0]
    stripped = text.strip()
    if stripped != text:
        r.repaired(path, "code-whitespace")
        text = stripped
    if f.enum and text not in f.enum and text.lower() in f.enum:
        r.repaired(path, "code-case")
        text = text.lower()
    return text, text


def _uri(r: _Reader, v: Any, f: _Field, path: str) -> tuple[Any, Any] | None:
    if isinstance(v, str) and not v.isascii() and _SURROGATE.search(v):
        return None
    got = _string(r, v, f, path)
    if got is None:
        return None
    text = got[0]
    stripped = text.strip()
    if stripped != text:
        r.repaired(path, "code-whitespace")
    if not stripped or _WHITESPACE(stripped):
        return None
    return stripped, stripped


def _boolean(r: _Reader, v: Any, f: _Field, path: str) -> tuple[Any, Any] | None:
    if isinstance(v, bool):
        return v, v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        r.repaired(path, "boolean-string")
        value = v.strip().lower() == "true"
        return value, value
    return None


_WHITESPACE = re.compile(r"\s").search
_NUMBER = re.compile(r"\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*")


def _numeric_string(r: _Reader, v: str, path: str) -> Decimal | None:
    """A number sent as a string (a known EHR slip): its value, recorded as a repair; None when it is no number."""
    if not _NUMBER.fullmatch(v):
        return None
    r.repaired(path, "numeric-string")
    return Decimal(v.strip())


def _integer(r: _Reader, v: Any, f: _Field, path: str) -> tuple[Any, Any] | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        number = _numeric_string(r, v, path)
        if number is None or number != number.to_integral_value():
            return None
        v = int(number)
    elif isinstance(v, float):
        if not v.is_integer():
            return None
        v = int(v)
    if not isinstance(v, int):
        return None
    if f.prim == "PositiveInt" and v < 1 or f.prim == "UnsignedInt" and v < 0:
        return None
    return v, v


def _decimal(r: _Reader, v: Any, f: _Field, path: str) -> tuple[Any, Any] | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        number = _numeric_string(r, v, path)
        if number is None:
            return None
        as_json: Any = float(number) if ("." in v or "e" in v.lower()) else int(number)
        return number, as_json
    if isinstance(v, int):
        return Decimal(v), v
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return None
        return Decimal(repr(v)), v
    return None


_DATE = re.compile(r"(\d{4})(-(\d{2})(-(\d{2}))?)?")
_DATETIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(:(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?")


def _date_parts(text: str) -> tuple[Any, str] | None:
    m = _DATE.fullmatch(text)
    if m is None:
        return None
    year = int(m.group(1))
    if m.group(5):
        return dt.date(year, int(m.group(3)), int(m.group(5))), text
    if m.group(3):
        if not 1 <= int(m.group(3)) <= 12:
            return None
        return text, text
    if year < 1:
        return None
    return text, text


def _date(r: _Reader, v: Any, f: _Field, path: str) -> tuple[Any, Any] | None:
    if not isinstance(v, str):
        return None
    return _date_parts(v)


def _datetime(r: _Reader, v: Any, f: _Field, path: str) -> tuple[Any, Any] | None:
    if not isinstance(v, str):
        return None
    if f.prim != "Instant" and "T" not in v:
        return _date_parts(v)
    m = _DATETIME.fullmatch(v)
    if m is None or m.group(6) is None:
        return None
    value = dt.datetime.fromisoformat(v[:-1] + "+00:00" if v.endswith("Z") else v)
    if value.tzinfo is None:
        value = value.replace(tzinfo=r.tz or dt.timezone.utc)
        r.repaired(path, "zone-assumed")
        offset = value.strftime("%z")
        text = f"{v}{offset[:3]}:{offset[3:]}"
        return value, text
    return value, v


_PRIMITIVES = {
    "String": _string, "Markdown": _string, "Xhtml": _string, "EncodedBytes": _base64, "Time": _string,
    "Code": _code, "Id": _code,
    "Uri": _uri, "Url": _uri, "Canonical": _uri, "Oid": _uri, "UuidVersion": _uri,
    "Boolean": _boolean,
    "Integer": _integer, "PositiveInt": _integer, "UnsignedInt": _integer, "Integer64": _integer,
    "Decimal": _decimal,
    "Date": _date, "DateTime": _datetime, "Instant": _datetime,
}


# --------------------------------------------------------------------------------------------- entry point
def local_zone(name: str | None) -> dt.tzinfo | None:
    """The EHR's local time zone from a setting (an IANA name such as "America/Chicago", or "UTC")."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone: {name!r}") from None


def read_resource(data: Any, tz: dt.tzinfo | None = None) -> tuple[FhirNode | None, tuple[Issue, ...]]:
    """Read one resource dict. Returns (node, issues); node is None when the resource cannot be read at all
    (then issues holds one "resource-unreadable" at the resource's type or "Resource")."""
    resource_type = data.get("resourceType") if isinstance(data, dict) else None
    name = resource_type if isinstance(resource_type, str) and resource_type.isalnum() else "Resource"
    if not isinstance(data, dict):
        return None, (Issue(name, "resource-unreadable", "skipped"),)
    schema = _schema(resource_type, True) if isinstance(resource_type, str) and resource_type.isalnum() else None
    if schema is None:
        return None, (Issue(name if schema else "Resource", "resource-unreadable", "skipped"),)
    reader = _Reader(tz)
    try:
        node = reader.obj(data, schema, resource_type, 0)
    except RecursionError:
        return None, (Issue(resource_type, "resource-unreadable", "skipped"),)
    if node is None:
        return None, (*reader.issues, Issue(resource_type, "resource-unreadable", "skipped"))
    return node, tuple(reader.issues)


def is_known_type(resource_type: Any) -> bool:
    return isinstance(resource_type, str) and resource_type.isalnum() and _schema(resource_type, True) is not None


def warm_up(resource_types: Iterable[str]) -> None:
    """Build the schemas of the types a request reads (imports the R4B model modules once, at start-up)."""
    for name in resource_types:
        _schema(name, True)
