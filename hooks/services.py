"""The three CDS services of the product, one per hook, each declared on its handler.

The prefetch templates ask for what the rules read: the patient, the problem list, imaging reports, medication
history, the observations named in knowledge/observations.yaml, and allergies.
"""
from __future__ import annotations

from hooks.knowledge import observation_catalogue
from hooks.model import HookResult
from hooks.pipeline import order_cards, patient_view_cards
from hooks.registry import HookRequest, ServiceRegistry, cds_service

PATIENT = "{{context.patientId}}"


def _observation_query() -> str:
    codes = ",".join(f"{c.system}|{c.code}" for c in observation_catalogue().codes())
    return f"Observation?patient={PATIENT}&code={codes}"


PREFETCH = {
    "patient": f"Patient/{PATIENT}",
    "conditions": f"Condition?patient={PATIENT}",
    "reports": f"DiagnosticReport?patient={PATIENT}",
    # Radiology narratives some EHRs send as documents (US Core clinical notes, "Diagnostic imaging study").
    "imagingNotes": f"DocumentReference?patient={PATIENT}&type=http://loinc.org|18748-4",
    "medicationRequests": f"MedicationRequest?patient={PATIENT}",
    "medicationStatements": f"MedicationStatement?patient={PATIENT}",
    "observations": _observation_query(),
    "allergies": f"AllergyIntolerance?patient={PATIENT}",
}

# Without the patient, the problem list and the imaging reports there is nothing to reason about: 412.
# Medications, observations and allergies are optional: when unobtainable, safety checks report "unknown".
REQUIRED = ("patient", "conditions", "reports")


@cds_service(
    id="msk-imaging-patient-view",
    hook="patient-view",
    title="MSK imaging findings: guideline next step",
    description=(
        "Reads the patient's imaging reports (MRI sacroiliac joints, pelvis, hip, spine; hip X-ray) and problem "
        "list, maps them to findings (SI-joint synovitis, bone marrow edema, labral calcification, refractory "
        "sacroiliitis...) and shows the recommended next step of the guideline pathway with one-click orders."
    ),
    prefetch=PREFETCH,
    required_prefetch=REQUIRED,
)
def patient_view(request: HookRequest) -> HookResult:
    return patient_view_cards(request)


@cds_service(
    id="msk-imaging-order-select",
    hook="order-select",
    title="MSK imaging findings: order guidance",
    description=(
        "Checks the orders being selected against the patient's MSK imaging pathway and safety checks: warns on "
        "orders the guidelines advise against and gives dose, duration and reassessment guidance for those that fit."
    ),
    prefetch=PREFETCH,
    required_prefetch=REQUIRED,
)
def order_select(request: HookRequest) -> HookResult:
    return order_cards(request, selected_only=True)


@cds_service(
    id="msk-imaging-order-sign",
    hook="order-sign",
    title="MSK imaging findings: order check at signing",
    description=(
        "Last check of the draft orders before signing against the MSK imaging pathway and safety checks; does "
        "not repeat advice already shown for the same draft order at order-select."
    ),
    prefetch=PREFETCH,
    required_prefetch=REQUIRED,
)
def order_sign(request: HookRequest) -> HookResult:
    return order_cards(request, selected_only=False)


def default_registry() -> ServiceRegistry:
    """The product's three services, one per hook, in discovery order."""
    return ServiceRegistry(handler.cds_service for handler in (patient_view, order_select, order_sign))
