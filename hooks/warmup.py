"""Start-up warm-up: load the knowledge and build the FHIR model validators once, so the
first request does not pay for imports and schema construction."""
from __future__ import annotations

from fhir.resources.R4B import get_fhir_model_class

from hooks import fhirread
from hooks.cards.warmup import warm_up as clinical_warm_up
from hooks.findings import warm_up as findings_warm_up
from hooks.knowledge import knowledge_version

# One tiny valid instance of each resource type the record reads.
SAMPLES: tuple[dict, ...] = (
    {"resourceType": "Patient", "id": "warmup"},
    {"resourceType": "Condition", "id": "warmup", "subject": {"reference": "Patient/warmup"}},
    {"resourceType": "DiagnosticReport", "id": "warmup", "status": "final", "code": {"text": "warm-up"}},
    {"resourceType": "MedicationRequest", "id": "warmup", "status": "draft", "intent": "proposal",
     "medicationCodeableConcept": {"text": "warm-up"}, "subject": {"reference": "Patient/warmup"}},
    {"resourceType": "MedicationStatement", "id": "warmup", "status": "active",
     "medicationCodeableConcept": {"text": "warm-up"}, "subject": {"reference": "Patient/warmup"}},
    {"resourceType": "Observation", "id": "warmup", "status": "final", "code": {"text": "warm-up"}},
    {"resourceType": "AllergyIntolerance", "id": "warmup", "patient": {"reference": "Patient/warmup"}},
    {"resourceType": "ServiceRequest", "id": "warmup", "status": "draft", "intent": "proposal",
     "subject": {"reference": "Patient/warmup"}},
    {"resourceType": "Bundle", "id": "warmup", "type": "searchset"},
)


def warm_up() -> None:
    """Import and validate everything a request will need. Raises if the knowledge or a model is broken."""
    knowledge_version()
    for sample in SAMPLES:
        get_fhir_model_class(sample["resourceType"]).model_validate(sample)
        fhirread.read_resource(sample)
    fhirread.warm_up(fhirread.READ_ELEMENTS)
    findings_warm_up()
    clinical_warm_up()
