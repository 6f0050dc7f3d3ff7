"""The requests the benchmark sends: a typical patient (about 30 resources, 2 imaging reports), first-time variants
of it, the fixture scenarios' requests, and records of growing size. Built with fixtures.build from the scenarios'
compact notation, so they are the same shape of FHIR R4 the fixture tests use."""
from __future__ import annotations

import copy
import json
import uuid
from typing import Any, Iterator

import orjson

from fixtures import build

HOOKS = ("patient-view", "order-select", "order-sign")
SERVICE_IDS = build.SERVICE_IDS
BASE_SCENARIO = "06_a_persistent_tnf_screening_present"

# Padding that turns scenario 06 (12 resources) into a typical chart of 30: an older problem list, a lab series and
# the usual medication history. Nothing here is MSK-relevant except the pain scores, so the clinical picture (pathway
# A, persistent synovitis after two NSAIDs, screening present) stays that of scenario 06.
TYPICAL_EXTRA: dict[str, list[dict[str, Any]]] = {
    "conditions": [
        {"id": "cond-typ-htn", "code": ["icd10cm|I10|Essential (primary) hypertension"], "onset_days_ago": 2200},
        {"id": "cond-typ-asthma", "code": ["icd10cm|J45.909|Unspecified asthma, uncomplicated"],
         "onset_days_ago": 5000},
        {"id": "cond-typ-thyroid", "code": ["icd10cm|E03.9|Hypothyroidism, unspecified"], "onset_days_ago": 1500},
        {"id": "cond-typ-vitd", "code": ["icd10cm|E55.9|Vitamin D deficiency, unspecified"], "onset_days_ago": 400},
        {"id": "cond-typ-ankle", "code": ["icd10cm|S93.401A|Sprain of unspecified ligament of right ankle"],
         "onset_days_ago": 3000, "clinical": "resolved", "abatement_days_ago": 2900},
    ],
    "observations": [
        {"id": "obs-typ-pain-a", "code": "pain", "value": 5, "days_ago": 200},
        {"id": "obs-typ-pain-b", "code": "pain", "value": 6, "days_ago": 100},
        {"id": "obs-typ-pain-c", "code": "pain", "value": 7, "days_ago": 30},
        {"id": "obs-typ-crp-a", "code": "crp", "value": 14, "days_ago": 150},
        {"id": "obs-typ-crp-b", "code": "crp", "value": 11, "days_ago": 60},
        {"id": "obs-typ-crp-c", "code": "crp", "value": 12, "days_ago": 30},
        {"id": "obs-typ-egfr-b", "code": "egfr", "value": 98, "days_ago": 300},
        {"id": "obs-typ-vitd", "code": "vitd", "value": 24, "days_ago": 400},
        {"id": "obs-typ-calcium", "code": "calcium", "value": 9.4, "days_ago": 400},
    ],
    "medications": [
        {"id": "med-typ-omeprazole", "drug": "omeprazole_20", "kind": "statement", "start_days_ago": 900,
         "dose": "20 mg once daily", "per_day": 1},
        {"id": "med-typ-salbutamol", "drug": "salbutamol_inh", "start_days_ago": 700, "dose": "2 puffs as needed",
         "as_needed": True},
        {"id": "med-typ-ibuprofen", "drug": "ibuprofen_400", "status": "stopped", "start_days_ago": 1200,
         "end_days_ago": 1180, "dose": "400 mg three times daily", "per_day": 3},
    ],
    "allergies": [
        {"id": "alg-typ-penicillin", "code": ["snomed|91936005|Allergy to penicillin"], "reaction": "Urticaria"},
    ],
}

TYPICAL_DRAFTS = [
    {"id": "draft-typ-adalimumab", "type": "MedicationRequest", "drug": "adalimumab_40",
     "dose": "40 mg subcutaneously every 2 weeks"},
]


def typical_scenario() -> dict[str, Any]:
    """Scenario 06 padded to 30 resources with 2 reports, answering all three hooks (drafts: adalimumab)."""
    scenario = build.load_scenario(build.SCENARIOS / f"{BASE_SCENARIO}.yaml")
    for key, extra in TYPICAL_EXTRA.items():
        scenario[key] = list(scenario.get(key) or ()) + copy.deepcopy(extra)
    scenario["hooks"] = {
        "patient-view": {},
        "order-select": {"drafts": copy.deepcopy(TYPICAL_DRAFTS)},
        "order-sign": {"drafts": copy.deepcopy(TYPICAL_DRAFTS)},
    }
    return scenario


def resource_count(request: dict[str, Any]) -> tuple[int, int]:
    """(resources in prefetch, DiagnosticReports among them)."""
    total = reports = 0
    for resource in prefetch_resources(request):
        total += 1
        reports += resource.get("resourceType") == "DiagnosticReport"
    return total, reports


def prefetch_resources(request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for value in (request.get("prefetch") or {}).values():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Bundle":
            for entry in value.get("entry") or ():
                yield entry["resource"]
        else:
            yield value


def new_hook_instance(request: dict[str, Any]) -> dict[str, Any]:
    """The same request under a new hookInstance (an EHR sends a new one with every call)."""
    out = dict(request)
    out["hookInstance"] = str(uuid.uuid4())
    return out


def first_time_variant(request: dict[str, Any], n: int) -> dict[str, Any]:
    """The same chart as data the service has never seen, of a patient it has never seen: every resource gets a new
    id and version (meta.versionId), the patient a new id everywhere it is named (context, references), each report
    a new accession sentence, so no cache keyed on content, id, patient or report text can answer it. Clinically
    the chart is unchanged."""
    tag = f"v{n:07d}"
    patient_id = request["context"]["patientId"]
    text = json.dumps(request)
    text = text.replace(f'"{patient_id}"', f'"{patient_id}-{tag}"').replace(f'Patient/{patient_id}"',
                                                                           f'Patient/{patient_id}-{tag}"')
    out = json.loads(text)
    out["hookInstance"] = str(uuid.uuid4())
    for key, value in out.get("prefetch", {}).items():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") != "Bundle":
            value["meta"] = {"versionId": tag}       # the Patient: its id changed with the patient id above
            continue
        for entry in value.get("entry") or ():
            resource = entry["resource"]
            resource["id"] = f"{resource['id']}-{tag}"[:64]
            resource["meta"] = {"versionId": tag}
            entry["fullUrl"] = f"{build.FHIR_SERVER}/{resource['resourceType']}/{resource['id']}"
            if resource["resourceType"] == "DiagnosticReport" and resource.get("conclusion"):
                resource["conclusion"] += f" Accession number BX{n:07d}."
    for entry in (out["context"].get("draftOrders") or {}).get("entry") or ():
        entry["resource"]["meta"] = {"versionId": tag}
    return out


def encode(request: dict[str, Any]) -> bytes:
    return orjson.dumps(request)


_SENTINEL = 9_999_999
_SENTINEL_INSTANCE = "00000000-0000-4000-8000-00000000beef"


class Variants:
    """Encoded first-time variants of one request, made by substitution in an encoded template (microseconds
    each), so a load generator can hand out thousands of never-seen charts without a deep copy per request."""

    def __init__(self, request: dict[str, Any]) -> None:
        variant = first_time_variant(request, _SENTINEL)
        variant["hookInstance"] = _SENTINEL_INSTANCE
        self.template = encode(variant)
        self.marker = str(_SENTINEL).encode()
        if encode(request).count(self.marker):
            raise ValueError("the request already contains the variant marker")

    def make(self, n: int) -> bytes:
        if not 0 <= n < _SENTINEL:
            raise ValueError("variant number out of range")
        body = self.template.replace(self.marker, b"%07d" % n)
        return body.replace(_SENTINEL_INSTANCE.encode(), str(uuid.uuid4()).encode())

    def repeat(self, n: int) -> bytes:
        """Variant `n` again under a new hookInstance: the same data arriving a second time."""
        return self.make(n)


def fixture_requests() -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """hook -> [(request name, request)] for every fixture scenario (fixtures/scenarios, built as fixtures.build does)."""
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {hook: [] for hook in HOOKS}
    for name, (_, hook, request) in build.all_requests().items():
        out[hook].append((name, with_every_prefetch_key(request)))
    return out


# -- records of growing size ----------------------------------------------------------------------------------------
# Every size tells the same clinical story as the typical chart (so the same cards come back and only the amount of
# data changes): its core resources, then clinically neutral history: older unrelated imaging reports (chest X-ray,
# abdominal ultrasound...), old lab values that no rule reads, inactive unrelated problems, stopped inhalers.

# The resources of scenario 06 that carry its clinical story, in the order they are kept when a chart is small.
CORE_IDS = ("rep-06-mri-si", "rep-06-si-injection", "cond-06-lbp", "med-06-naproxen", "med-06-diclofenac",
            "obs-06-egfr", "obs-06-igra", "obs-06-hbsag", "obs-06-pain-3")
NEUTRAL_REPORTS = (
    ("Chest X-ray, two views", "The lungs are clear. Heart size is normal. No pleural effusion or pneumothorax."),
    ("Ultrasound of the abdomen", "Normal liver, gallbladder, pancreas, spleen and kidneys. No free fluid."),
    ("CT of the head without contrast", "No intracranial haemorrhage, mass or acute infarct. Ventricles normal."),
    ("Echocardiogram", "Normal left ventricular size and systolic function. No significant valve disease."),
    ("X-ray of the right wrist", "No fracture or dislocation. Joint spaces preserved."),
)
NEUTRAL_CONDITIONS = (
    "icd10cm|J06.9|Acute upper respiratory infection, unspecified",
    "icd10cm|H52.13|Myopia, bilateral",
    "icd10cm|L30.9|Dermatitis, unspecified",
)


def _neutral_report(i: int) -> dict[str, Any]:
    title, text = NEUTRAL_REPORTS[i % len(NEUTRAL_REPORTS)]
    return {"id": f"rep-scale-{i}", "loinc": "18748-4|Diagnostic imaging study", "title": title,
            "days_ago": 400 + 30 * i, "conclusion": f"{text} Accession number SC{i:06d}."}


def _neutral_filler(i: int) -> tuple[str, dict[str, Any]]:
    """(scenario key, spec) of the i-th neutral resource: 6 in 10 old lab values, 2 resolved problems, 2 stopped
    inhalers (labs dominate a real chart)."""
    kind = ("obs", "obs", "cond", "obs", "med", "obs", "obs", "cond", "med", "obs")[i % 10]
    if kind == "obs":
        code, value = (("calcium", 9.3), ("vitd", 31))[i % 2]
        return "observations", {"id": f"obs-scale-{i}", "code": code, "value": value, "days_ago": 500 + i}
    if kind == "cond":
        return "conditions", {"id": f"cond-scale-{i}", "code": [NEUTRAL_CONDITIONS[i % len(NEUTRAL_CONDITIONS)]],
                              "onset_days_ago": 900 + i, "clinical": "resolved", "abatement_days_ago": 880 + i}
    return "medications", {"id": f"med-scale-{i}", "drug": "salbutamol_inh", "status": "stopped",
                           "start_days_ago": 1400 + i, "end_days_ago": 1300 + i, "dose": "2 puffs as needed"}


def sized_scenario(resources: int, reports: int) -> dict[str, Any]:
    """A chart of exactly `resources` prefetch resources (the Patient counts as one), `reports` of them imaging
    reports: the typical chart's story, cut down or padded with neutral history."""
    typical = typical_scenario()
    if reports < 1 or resources < reports + 1 + len(CORE_IDS) - 2:
        raise ValueError("too small for the typical chart's core")
    by_id = {spec["id"]: (key, spec) for key in ("reports", "conditions", "medications", "observations",
                                                  "allergies") for spec in typical.get(key) or ()}
    scenario: dict[str, Any] = {"name": f"scale_{resources}r_{reports}dr", "now": typical["now"],
                                "patient": typical["patient"], "reports": [], "conditions": [], "medications": [],
                                "observations": [], "allergies": [], "hooks": {"patient-view": {}}}
    typical_reports = [spec for spec in typical["reports"]][:reports]
    scenario["reports"] = copy.deepcopy(typical_reports)
    scenario["reports"] += [_neutral_report(i) for i in range(reports - len(typical_reports))]
    # the core first, then the rest of the typical chart, then neutral filler
    others = [i for i in CORE_IDS if by_id[i][0] != "reports"] + [
        spec_id for spec_id, (key, _) in by_id.items() if key != "reports" and spec_id not in CORE_IDS]
    room = resources - 1 - reports
    for spec_id in others[:room]:
        key, spec = by_id[spec_id]
        scenario[key].append(copy.deepcopy(spec))
    for i in range(max(room - len(others), 0)):
        key, spec = _neutral_filler(i)
        scenario[key].append(spec)
    return scenario


def with_every_prefetch_key(request: dict[str, Any]) -> dict[str, Any]:
    """Every declared prefetch key present (an empty searchset where the chart has nothing), as an EHR that prefetches
    sends it: a missing key would be read from fhirServer, and the example server's name resolution (up to the 4 s
    fetch deadline) would be measured instead of the service."""
    from hooks.services import PREFETCH

    prefetch = request.setdefault("prefetch", {})
    for key in PREFETCH:
        prefetch.setdefault(key, {"resourceType": "Bundle", "type": "searchset", "total": 0})
    return request


def sized_request(resources: int, reports: int) -> dict[str, Any]:
    return with_every_prefetch_key(build.build_request(sized_scenario(resources, reports), "patient-view"))


def typical_request(hook: str) -> dict[str, Any]:
    scenario = typical_scenario()
    scenario["name"] = "typical"
    return with_every_prefetch_key(build.build_request(scenario, hook))


def now_of_typical() -> str:
    return str(typical_scenario()["now"])
