"""The requests the benchmark sends: a typical patient (about 30 resources, 2 imaging reports), first-time variants
of it, the fixture scenarios' requests, and records of growing size. Built with fixtures.build from the scenarios'
compact notation, so they are the same shape of FHIR R4 the fixture tests use."""
from __future__ import annotations

import copy
import itertools
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
        out[hook].append((name, request))
    return out


# -- records of growing size ----------------------------------------------------------------------------------------

def _report_specs() -> list[dict[str, Any]]:
    """Every imaging report of the fixture scenarios (their variety is what the NLP sees in practice)."""
    specs = []
    for scenario in build.load_scenarios():
        for report in scenario.get("reports") or ():
            specs.append(report)
    return specs


_OBS_CYCLE = ("pain", "crp", "egfr", "pain", "vitd", "calcium", "crp", "pain")
_COND_CYCLE = (
    "icd10cm|I10|Essential (primary) hypertension",
    "icd10cm|J45.909|Unspecified asthma, uncomplicated",
    "icd10cm|E03.9|Hypothyroidism, unspecified",
    "icd10cm|M54.50|Low back pain, unspecified",
    "icd10cm|E55.9|Vitamin D deficiency, unspecified",
)
_DRUG_CYCLE = ("omeprazole_20", "salbutamol_inh", "ibuprofen_400", "naproxen_500", "metformin_500")
# Of every 10 filler resources: 6 observations, 2 conditions, 2 medications (labs dominate a real chart).
_FILL_PATTERN = ("obs", "obs", "cond", "obs", "med", "obs", "obs", "cond", "med", "obs")


def sized_scenario(resources: int, reports: int) -> dict[str, Any]:
    """A chart of exactly `resources` prefetch resources, `reports` of them imaging reports (cycled from the fixture
    reports), the rest observations, conditions and medications; the Patient counts as one."""
    if resources < reports + 1:
        raise ValueError("need room for the Patient and the reports")
    base = typical_scenario()
    report_pool = _report_specs()
    scenario: dict[str, Any] = {
        "name": f"scale_{resources}r_{reports}dr",
        "now": base["now"],
        "patient": base["patient"],
        "reports": [],
        "conditions": [],
        "medications": [],
        "observations": [],
        "allergies": [],
        "hooks": {"patient-view": {}},
    }
    for i in range(reports):
        spec = copy.deepcopy(report_pool[i % len(report_pool)])
        spec["id"] = f"rep-scale-{i}"
        spec["days_ago"] = 5 + i * 7
        scenario["reports"].append(spec)
    pattern = itertools.cycle(_FILL_PATTERN)
    for i in range(resources - reports - 1):
        kind = next(pattern)
        if kind == "obs":
            code = _OBS_CYCLE[i % len(_OBS_CYCLE)]
            value = {"pain": 6, "crp": 11, "egfr": 95, "vitd": 28, "calcium": 9.3}[code]
            scenario["observations"].append({"id": f"obs-scale-{i}", "code": code, "value": value,
                                             "days_ago": 3 + i})
        elif kind == "cond":
            scenario["conditions"].append({"id": f"cond-scale-{i}", "code": [_COND_CYCLE[i % len(_COND_CYCLE)]],
                                           "onset_days_ago": 100 + i})
        else:
            scenario["medications"].append({"id": f"med-scale-{i}", "drug": _DRUG_CYCLE[i % len(_DRUG_CYCLE)],
                                            "status": "stopped", "start_days_ago": 400 + i,
                                            "end_days_ago": 380 + i, "dose": "as directed"})
    return scenario


def sized_request(resources: int, reports: int) -> dict[str, Any]:
    scenario = sized_scenario(resources, reports)
    return build.build_request(scenario, "patient-view")


def typical_request(hook: str) -> dict[str, Any]:
    scenario = typical_scenario()
    scenario["name"] = "typical"
    return build.build_request(scenario, hook)


def now_of_typical() -> str:
    return str(typical_scenario()["now"])
