"""The three CDS services of the product, one per hook, each declared on its handler.

The prefetch templates ask for what the rules read and no more (PREFETCH_QUERIES, each documented in discovery): the
patient, the problem list, imaging reports only, medication history, the observations named in
knowledge/observations.yaml, and allergies.
"""
from __future__ import annotations

from hooks.knowledge import observation_catalogue
from hooks.model import HookResult
from hooks.pipeline import order_cards, patient_view_cards
from hooks.registry import HookRequest, ServiceRegistry, cds_service

PATIENT = "{{context.patientId}}"

# Imaging reports only: US Core's DiagnosticReport category for radiology/imaging (LOINC LP29684-5 "Radiology") and
# the HL7 v2-0074 diagnostic service section RAD. A real chart has thousands of lab reports; none is asked for.
IMAGING_CATEGORIES = ("http://loinc.org|LP29684-5", "http://terminology.hl7.org/CodeSystem/v2-0074|RAD")
# Every status but the ones that never happened or are not orders yet ("unknown" stays: it may be current).
MEDICATION_REQUEST_STATUSES = ("active", "on-hold", "completed", "stopped", "unknown")
MEDICATION_STATEMENT_STATUSES = ("active", "completed", "intended", "stopped", "on-hold", "unknown", "not-taken")
PAGE_SIZE = 100     # entries per page; FHIR_MAX_PAGES and the fetch deadline bound the pages read per key


def _observation_query() -> str:
    codes = ",".join(f"{c.system}|{c.code}" for c in observation_catalogue().codes())
    return f"Observation?patient={PATIENT}&code={codes}&_sort=-date&_count={PAGE_SIZE}"


# key -> (FHIR query, what it is for): the descriptions are published in discovery (usageRequirements).
PREFETCH_QUERIES: dict[str, tuple[str, str]] = {
    "patient": (f"Patient/{PATIENT}", "the patient (age and sex for the safety checks)"),
    "conditions": (f"Condition?patient={PATIENT}",
                   "the problem list in every status (a resolved GI bleed still counts; pregnancy; infections)"),
    "reports": (f"DiagnosticReport?patient={PATIENT}&category={','.join(IMAGING_CATEGORIES)}"
                f"&_sort=-date&_count={PAGE_SIZE}",
                "imaging reports only (US Core category LOINC LP29684-5 Radiology or HL7 v2-0074 RAD), newest "
                "first; laboratory reports are not asked for"),
    # Radiology narratives some EHRs send as documents (US Core clinical notes, "Diagnostic imaging study").
    "imagingNotes": (f"DocumentReference?patient={PATIENT}&type=http://loinc.org|18748-4",
                     "imaging report narratives sent as documents (LOINC 18748-4 Diagnostic imaging study)"),
    "medicationRequests": (f"MedicationRequest?patient={PATIENT}&status={','.join(MEDICATION_REQUEST_STATUSES)}"
                           f"&_sort=-authoredon&_count={PAGE_SIZE}",
                           "medication orders except drafts, cancelled and entered-in-error ones, newest first "
                           "(NSAID trials, biologics, anticoagulants, antiplatelets, glucocorticoids)"),
    "medicationStatements": (f"MedicationStatement?patient={PATIENT}"
                             f"&status={','.join(MEDICATION_STATEMENT_STATUSES)}&_count={PAGE_SIZE}",
                             "medications the patient reports taking, except entered-in-error ones"),
    "observations": (_observation_query(),
                     "only the observations the rules read (knowledge/observations.yaml: pain score, CRP, eGFR, "
                     "TB and hepatitis B screening, gestational age, vitamin D...), newest first"),
    "allergies": (f"AllergyIntolerance?patient={PATIENT}", "every allergy and intolerance (safety checks)"),
}
PREFETCH = {key: query for key, (query, _) in PREFETCH_QUERIES.items()}
USAGE_REQUIREMENTS = (
    "Prefetch (each key may be sent by the EHR or is read from fhirServer with the access token; pages and time "
    "are bounded): " + "; ".join(f"{key}: {text}" for key, (_, text) in PREFETCH_QUERIES.items()) + ".")

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
    usage_requirements=USAGE_REQUIREMENTS,
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
    usage_requirements=USAGE_REQUIREMENTS,
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
    usage_requirements=USAGE_REQUIREMENTS,
)
def order_sign(request: HookRequest) -> HookResult:
    return order_cards(request, selected_only=False)


def default_registry() -> ServiceRegistry:
    """The product's three services, one per hook, in discovery order."""
    return ServiceRegistry(handler.cds_service for handler in (patient_view, order_select, order_sign))
