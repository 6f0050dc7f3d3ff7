"""Suggested orders as R4 resources built with fhir.resources.R4B: draft MedicationRequests with RxNorm codes and
structured dosing, draft ServiceRequests for referrals, procedures and tests. Codes the references do not verify
carry the code-verification extension."""
from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import orjson
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest

from hooks.knowledge import Coding
from hooks.knowledge.clinical import ClinicalKnowledge, Dosing
from hooks.model import Action

VERIFICATION_URL = "https://msk-cds.org/fhir/StructureDefinition/code-verification"
REQUESTER_TYPES = ("Practitioner/", "PractitionerRole/")
PERIOD_UNITS = {"h": "h", "d": "d", "wk": "wk", "mo": "mo"}


@dataclass(frozen=True)
class OrderContext:
    """What every suggested order needs from the request."""

    patient_id: str
    user: str | None
    now: dt.datetime
    intent: str                      # "proposal" (patient-view) or "order" (order-select / order-sign)
    reason: str | None               # Condition/x or DiagnosticReport/y


# Validated-and-dumped resources by content. Building one costs milliseconds (R4B validation and fhir_core's
# dump). The per-patient fields (subject, requester, reasonReference) are left out of the key and put back after:
# they are plain references that validate the same whatever id they name, so one validation of a (drug, dosing,
# intent, day) serves every patient, and the same draft coming back at every hook of a session costs no validation.
_BUILT: OrderedDict[bytes, bytes] = OrderedDict()
_BUILT_LOCK = threading.Lock()
_BUILT_MAX = 2048
_PER_PATIENT = {
    "subject": {"reference": "Patient/template"},
    "requester": {"reference": "Practitioner/template"},
    "reasonReference": [{"reference": "Condition/template"}],
}


def _validated(model: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    """`model.model_validate(data).model_dump(mode="json")`, validated once per distinct content apart from the
    per-patient references; a new dict each call so callers may change it."""
    template = {name: (_PER_PATIENT[name] if name in _PER_PATIENT else value) for name, value in data.items()}
    key = model.__name__.encode() + b"\0" + orjson.dumps(template, option=orjson.OPT_SORT_KEYS)
    with _BUILT_LOCK:
        built = _BUILT.get(key)
        if built is not None:
            _BUILT.move_to_end(key)
    if built is None:
        built = orjson.dumps(model.model_validate(template).model_dump(mode="json"))
        with _BUILT_LOCK:
            _BUILT[key] = built
            while len(_BUILT) > _BUILT_MAX:
                _BUILT.popitem(last=False)
    out = orjson.loads(built)
    for name in _PER_PATIENT:
        if name in data:
            out[name] = orjson.loads(orjson.dumps(data[name]))
    return out


def coding_json(coding: Coding) -> dict[str, Any]:
    out: dict[str, Any] = coding.fhir()
    if not coding.verified:
        out["extension"] = [{"url": VERIFICATION_URL, "valueCode": "unverified"}]
    return out


def _common(ctx: OrderContext) -> dict[str, Any]:
    out: dict[str, Any] = {
        "status": "draft",
        "intent": ctx.intent,
        "subject": {"reference": f"Patient/{ctx.patient_id}"},
        "authoredOn": ctx.now.date().isoformat(),
    }
    if ctx.user and ctx.user.startswith(REQUESTER_TYPES):
        out["requester"] = {"reference": ctx.user}
    if ctx.reason:
        out["reasonReference"] = [{"reference": ctx.reason}]
    return out


def _quantity(value: float, unit: str, k: ClinicalKnowledge) -> dict[str, Any]:
    number: float | int = int(value) if float(value).is_integer() else value
    return {"value": number, "unit": unit, "system": k.medications.units_system, "code": unit}


def reassess_date(dosing: Dosing, now: dt.datetime) -> str | None:
    days = dosing.reassess_days or dosing.duration_days
    return (now + dt.timedelta(days=days)).date().isoformat() if days else None


def medication_request(drug_id: str, dosing_key: str, ctx: OrderContext, k: ClinicalKnowledge,
                       reassess_note: str) -> dict[str, Any]:
    """A draft MedicationRequest (validated R4B model, dumped as JSON) for one drug and dosing."""
    drug = k.drugs[drug_id]
    dosing = drug.dosing[dosing_key]
    product = drug.product(dosing.product) if dosing.product else None
    # the product (SCD) the dose is written for; an unverified code carries the code-verification extension
    coding = product if product is not None else drug.ingredient
    route = {"coding": [coding_json(k.medications.routes[dosing.route])], "text": k.medications.routes[dosing.route].display}
    repeat: dict[str, Any] = {"frequency": dosing.frequency, "period": dosing.period,
                              "periodUnit": PERIOD_UNITS[dosing.period_unit]}
    if dosing.count:
        repeat["count"] = dosing.count
    if dosing.duration_days:
        repeat["boundsDuration"] = {"value": dosing.duration_days, "unit": "days",
                                    "system": k.medications.units_system, "code": "d"}
    maintenance: dict[str, Any] = {
        "text": dosing.text,
        "timing": {"repeat": repeat},
        "route": route,
        "doseAndRate": [{"doseQuantity": _quantity(dosing.dose.value, dosing.dose.unit, k)}],
    }
    if dosing.as_needed:
        maintenance["asNeededBoolean"] = True
    if dosing.max_per_day is not None:
        maintenance["maxDosePerPeriod"] = {
            "numerator": _quantity(dosing.max_per_day.value, dosing.max_per_day.unit, k),
            "denominator": {"value": 1, "unit": "day", "system": k.medications.units_system, "code": "d"}}
    instructions = [maintenance]
    if dosing.loading is not None:
        # the loading doses come first (sequence 1), then the maintenance dose (sequence 2): one dose per Dosage
        load = dosing.loading
        instructions = [{
            "sequence": 1,
            "text": dosing.text,
            "timing": {"repeat": {"frequency": load.frequency, "period": load.period,
                                  "periodUnit": PERIOD_UNITS[load.period_unit], "count": load.count}},
            "route": route,
            "doseAndRate": [{"doseQuantity": _quantity(load.dose.value, load.dose.unit, k)}],
        }, {"sequence": 2, **maintenance}]
    data = _common(ctx)
    data.update({
        "medicationCodeableConcept": {"coding": [coding_json(coding)], "text": coding.display},
        "dosageInstruction": instructions,
    })
    if dosing.duration_days:
        data["dispenseRequest"] = {"expectedSupplyDuration": {"value": dosing.duration_days, "unit": "days",
                                                              "system": k.medications.units_system, "code": "d"}}
    when = reassess_date(dosing, ctx.now)
    if when:
        data["note"] = [{"text": reassess_note.format(date=when)}]
    return _validated(MedicationRequest, data)


def service_request(service_id: str, ctx: OrderContext, k: ClinicalKnowledge, priority: str = "routine") -> dict[str, Any]:
    """A draft ServiceRequest (validated R4B model, dumped as JSON) for a referral, procedure or test."""
    service = k.services.services[service_id]
    data = _common(ctx)
    data["code"] = {"coding": [coding_json(service.coding)], "text": service.text}
    data["priority"] = priority
    if service.note:
        data["note"] = [{"text": service.note}]
    return _validated(ServiceRequest, data)


def create(resource: Mapping[str, Any], description: str) -> Action:
    """A create action for a built resource."""
    return Action("create", description, dict(resource))
