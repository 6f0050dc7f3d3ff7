"""The tolerant FHIR intake (hooks/fhirread.py, hooks/record.py): one test per repair class, the drops and the
fail-closed record API, the unreadable-draft card, the diagnostics (log, metrics, opt-in extension), and property
tests that mutate valid fixture resources the way EHRs and test clients get FHIR slightly wrong."""
from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import re
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fixtures import build
from hooks.fhirread import ElementNotRead, local_zone, read_resource
from hooks.record import PatientRecord

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
MR_CATEGORY = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"


def kinds(issues) -> set[tuple[str, str, str]]:
    return {(i.path, i.kind, i.action) for i in issues}


def observation(**elements: Any) -> dict[str, Any]:
    base = {"resourceType": "Observation", "id": "egfr-1", "status": "final", "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "33914-3"}]},
            "effectiveDateTime": "2026-10-01T08:00:00Z", "valueQuantity": {"value": 25, "unit": "mL/min"}}
    base.update(elements)
    return base


# -- one test per repair class ---------------------------------------------------------------------------------------

def test_object_where_fhir_has_a_list_is_wrapped() -> None:
    node, issues = read_resource(observation(category={"coding": [{"system": "x", "code": "laboratory"}]}))
    assert node.category[0].coding[0].code == "laboratory"
    assert ("Observation.category", "wrapped-in-list", "repaired") in kinds(issues)


def test_one_element_list_where_fhir_has_one_value_is_unwrapped() -> None:
    node, issues = read_resource(observation(code=[{"text": "eGFR"}], status=["final"]))
    assert node.code.text == "eGFR" and node.status == "final"
    assert {("Observation.code", "unwrapped-list", "repaired"),
            ("Observation.status", "unwrapped-list", "repaired")} <= kinds(issues)


def test_a_list_of_several_where_fhir_has_one_value_is_dropped_not_guessed() -> None:
    node, issues = read_resource(observation(code=[{"text": "eGFR"}, {"text": "creatinine"}]))
    assert node.code is None
    assert ("Observation.code", "invalid", "dropped") in kinds(issues)


def test_numeric_strings_are_read_as_numbers() -> None:
    node, issues = read_resource(observation(valueQuantity={"value": "25.5", "unit": "mL/min"}))
    assert node.valueQuantity.value == Decimal("25.5")
    assert ("Observation.valueQuantity.value", "numeric-string", "repaired") in kinds(issues)
    node, issues = read_resource({"resourceType": "MedicationRequest", "id": "m", "status": "active",
                                  "intent": "order", "subject": {"reference": "Patient/p"},
                                  "medicationCodeableConcept": {"text": "x"},
                                  "dosageInstruction": [{"timing": {"repeat": {"frequency": "3"}}}]})
    assert node.dosageInstruction[0].timing.repeat.frequency == 3
    assert ("MedicationRequest.dosageInstruction.timing.repeat.frequency", "numeric-string", "repaired") \
        in kinds(issues)


def test_a_non_numeric_string_for_a_number_is_dropped() -> None:
    node, issues = read_resource(observation(valueQuantity={"value": "twenty", "unit": "mL/min"}))
    assert node.valueQuantity.value is None and node.valueQuantity.unit == "mL/min"
    assert ("Observation.valueQuantity.value", "invalid", "dropped") in kinds(issues)


def test_zone_less_date_times_are_read_in_the_ehr_local_zone() -> None:
    raw = observation(effectiveDateTime="2026-10-01T08:00:00")
    node, issues = read_resource(raw, local_zone("America/Chicago"))
    assert node.effectiveDateTime == dt.datetime(2026, 10, 1, 13, 0, tzinfo=dt.timezone.utc)
    assert ("Observation.effectiveDateTime", "zone-assumed", "repaired") in kinds(issues)
    node, _ = read_resource(raw)            # default: UTC
    assert node.effectiveDateTime == dt.datetime(2026, 10, 1, 8, 0, tzinfo=dt.timezone.utc)


def test_impossible_dates_are_dropped() -> None:
    node, issues = read_resource(observation(effectiveDateTime="2024-02-30"))
    assert node.effectiveDateTime is None
    assert ("Observation.effectiveDateTime", "invalid", "dropped") in kinds(issues)


def test_whitespace_in_codes_is_trimmed() -> None:
    node, issues = read_resource(observation(status=" final ", code={"coding": [
        {"system": " http://loinc.org", "code": "33914-3 "}]}))
    assert node.status == "final"
    assert (node.code.coding[0].system, node.code.coding[0].code) == ("http://loinc.org", "33914-3")
    assert {("Observation.status", "code-whitespace", "repaired"),
            ("Observation.code.coding.code", "code-whitespace", "repaired"),
            ("Observation.code.coding.system", "code-whitespace", "repaired")} <= kinds(issues)


def test_case_in_codes_is_fixed_only_where_the_binding_or_code_system_fixes_it() -> None:
    raw = {"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
           "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                          "code": "Active"}]},
           "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "m46.1"},
                               {"system": "http://snomed.info/sct", "code": "Abc"}]}}
    node, issues = read_resource(raw)
    assert node.clinicalStatus.coding[0].code == "active"
    assert [c.code for c in node.code.coding] == ["M46.1", "Abc"]        # SNOMED (unknown case rule) untouched
    assert ("Condition.code.coding.code", "code-case", "repaired") in kinds(issues)
    node, issues = read_resource(observation(status="Final"))           # required binding: final
    assert node.status == "final"
    assert ("Observation.status", "code-case", "repaired") in kinds(issues)


def test_unknown_elements_are_dropped_alone_and_never_named() -> None:
    node, issues = read_resource(observation(patientSecretName="Jane Doe", code={"text": "eGFR", "bogus": 1}))
    assert node.code.text == "eGFR" and node.valueQuantity.value == 25
    assert {("Observation.(unknown)", "unknown-element", "dropped"),
            ("Observation.code.(unknown)", "unknown-element", "dropped")} <= kinds(issues)
    assert "Jane" not in repr(issues) and "patientSecretName" not in repr(issues)


def test_conflicting_choice_values_are_both_dropped() -> None:
    node, issues = read_resource(observation(valueString="25"))
    assert node.valueQuantity is None and node.valueString is None
    assert ("Observation.valueQuantity", "conflicting-choice", "dropped") in kinds(issues)


def test_lone_surrogates_are_replaced_and_the_text_kept() -> None:
    raw = {"resourceType": "DiagnosticReport", "id": "r", "status": "final", "code": {"text": "MRI"},
           "conclusion": "synovitis \ud800 of the SI joint"}
    node, issues = read_resource(raw)
    assert node.conclusion == "synovitis \ufffd of the SI joint"
    assert ("DiagnosticReport.conclusion", "invalid-unicode", "repaired") in kinds(issues)


def test_a_modifier_extension_makes_its_element_unreadable() -> None:
    raw = {"resourceType": "AllergyIntolerance", "id": "a", "patient": {"reference": "Patient/p"},
           "code": {"text": "ibuprofen"}, "modifierExtension": [{"url": "http://x", "valueBoolean": True}]}
    record = PatientRecord.from_prefetch({"allergies": raw})
    assert record.allergies and record.unreadable("AllergyIntolerance")
    assert record.unreadable("AllergyIntolerance")[0].kind == "modifier-extension"


def test_an_element_the_reader_does_not_read_is_never_silently_none() -> None:
    node, _ = read_resource(observation())
    with pytest.raises(ElementNotRead):
        node.performer                      # noqa: B018 (not in READ_ELEMENTS: asking is an error, not None)
    assert getattr(node, "performer", "absent") == "absent"    # getattr with a default still works


def test_repr_never_shows_values() -> None:
    node, _ = read_resource(observation(code={"text": "Jane Doe's eGFR"}))
    assert "Jane" not in repr(node) and "Jane" not in repr(node.code)


# -- the fail-closed record API ----------------------------------------------------------------------------------------

def allergy(**elements: Any) -> dict[str, Any]:
    base = {"resourceType": "AllergyIntolerance", "id": "alg-1", "patient": {"reference": "Patient/p"},
            "code": {"coding": [{"system": RXNORM, "code": "7258", "display": "naproxen"}]},
            "criticality": "high"}
    base.update(elements)
    return base


def test_unreadable_names_dropped_elements_and_whole_skips_per_type() -> None:
    record = PatientRecord.from_prefetch({
        "allergies": {"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": allergy(code={"coding": "naproxen"})},
            {"resource": allergy(id="alg-2", criticality=7)}]},
        "observations": observation()})
    assert len(record.allergies) == 2                       # both kept, each without the element it lost
    assert [i.path for i in record.unreadable("AllergyIntolerance", "code")] == \
        ["AllergyIntolerance.code.coding"]
    assert [i.path for i in record.unreadable("AllergyIntolerance", "criticality")] == \
        ["AllergyIntolerance.criticality"]
    assert not record.unreadable("AllergyIntolerance", "verificationStatus")
    assert not record.unreadable("Observation")
    first, second = record.allergies
    assert record.dropped_in(first) == {"AllergyIntolerance.code.coding"}
    assert record.dropped_in(second) == {"AllergyIntolerance.criticality"}


def test_an_entry_that_is_no_resource_counts_against_the_type_its_key_asks_for() -> None:
    record = PatientRecord.from_prefetch(
        {"allergies": {"resourceType": "Bundle", "type": "searchset",
                       "entry": [{"resource": {"resourceType": "AllergyIntolerence", "id": "typo"}},
                                 {"resource": allergy()}]}},
        expected_types={"allergies": "AllergyIntolerance"})
    assert len(record.allergies) == 1
    skipped = record.unreadable("AllergyIntolerance", "code")
    assert [(i.action, i.kind) for i in skipped] == [("skipped", "resource-unreadable")]
    assert [s.resource_type for s in record.skipped_of("AllergyIntolerance")] == ["AllergyIntolerance"]
    assert record.skipped and record.skipped[0].source == "allergies"


def test_repairs_are_not_unreadable() -> None:
    record = PatientRecord.from_prefetch({"observations": observation(valueQuantity={"value": "25"})})
    assert record.observations[0].valueQuantity.value == 25
    assert not record.unreadable("Observation", "valueQuantity")
    assert record.intake_counts() == {("Observation", "Observation.valueQuantity.value", "numeric-string",
                                       "repaired"): 1}


# -- draft orders: the Sandbox's shape, and never silent ----------------------------------------------------------------

def _run(name: str, mutate=None, **config: Any) -> tuple[int, Any]:
    scenario, hook, request = build.all_requests()[name]
    request = copy.deepcopy(request)
    if mutate:
        mutate(request)
    with tempfile.TemporaryDirectory() as tmp:
        app = build.make_app(scenario, Path(tmp) / "cds.sqlite3")
        app.config.update(config)
        try:
            return build.post(app.test_client(), hook, request)
        finally:
            build._dispose(app)


def _draft(request: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return request["context"]["draftOrders"]["entry"][index]["resource"]


def summaries(body: Any) -> list[tuple[str, str]]:
    return sorted((c["summary"], c["indicator"]) for c in body["cards"])


@pytest.mark.parametrize("name", ["40_ord_methotrexate_axial__order-select", "40_ord_methotrexate_axial__order-sign",
                                  "41_ord_long_term_prednisone__order-sign",
                                  "53_ord_nsaid_draft_gi_risk__order-select"])
def test_the_sandbox_draft_shape_category_as_one_object_gives_the_same_warning(name: str) -> None:
    status, expected = _run(name)
    assert status == 200 and any(c["indicator"] == "warning" for c in expected["cards"])

    def sandbox_shape(request: dict[str, Any]) -> None:
        _draft(request)["category"] = {"coding": [{"system": MR_CATEGORY, "code": "outpatient"}]}

    status, body = _run(name, sandbox_shape, INTAKE_DIAGNOSTICS_EXTENSION=True)
    assert status == 200
    assert summaries(body) == summaries(expected)
    assert body["extension"]["org.msk-cds.intake"]["issues"] == [
        {"resourceType": "MedicationRequest", "path": "MedicationRequest.category", "kind": "wrapped-in-list",
         "action": "repaired", "count": 1}]


@pytest.mark.parametrize("name", ["40_ord_methotrexate_axial__order-select", "41_ord_long_term_prednisone__order-sign",
                                  "38_neg_unrelated_asthma__order-select"])
def test_an_unreadable_draft_gets_an_info_card_naming_it(name: str) -> None:
    def unreadable(request: dict[str, Any]) -> None:
        draft = _draft(request)
        concept = draft["medicationCodeableConcept"]
        draft["medicationCodeableConcept"] = [concept, concept]        # two values where FHIR has one: dropped

    status, body = _run(name, unreadable)
    assert status == 200
    text = _draft(build.all_requests()[name][2])["medicationCodeableConcept"]["text"]
    info = [c for c in body["cards"] if c["extension"]["org.msk-cds.rule"] == "intake.unreadable_draft"]
    assert len(info) == 1 and info[0]["indicator"] == "info"
    assert text in info[0]["summary"] and "could not" in info[0]["summary"]
    assert len(info[0]["summary"]) < 140


def test_a_draft_that_is_no_resource_at_all_is_still_named() -> None:
    def broken(request: dict[str, Any]) -> None:
        draft = _draft(request)
        draft["resourceType"] = "MedicationOrder"      # the DSTU2 name of a MedicationRequest
    status, body = _run("41_ord_long_term_prednisone__order-sign", broken)
    assert status == 200
    assert [c["summary"] for c in body["cards"]] == [
        f"Not checked: {_draft(build.all_requests()['41_ord_long_term_prednisone__order-sign'][2])['medicationCodeableConcept']['text']}. Its order data could not be read."]


# -- diagnostics --------------------------------------------------------------------------------------------------------

def _mangled(request: dict[str, Any]) -> None:
    draft = _draft(request)
    draft["category"] = {"coding": [{"system": MR_CATEGORY, "code": "outpatient"}]}
    draft["authoredOn"] = "2026-11-02T09:00:00"
    draft["secretJunk"] = "Jane Doe"


def test_the_extension_is_off_by_default() -> None:
    status, body = _run("40_ord_methotrexate_axial__order-select", _mangled)
    assert status == 200 and "extension" not in body


def test_the_extension_lists_counts_by_path_without_values() -> None:
    status, body = _run("40_ord_methotrexate_axial__order-select", _mangled, INTAKE_DIAGNOSTICS_EXTENSION=True)
    intake = body["extension"]["org.msk-cds.intake"]
    assert (intake["repaired"], intake["dropped"]) == (2, 1)
    assert {(i["path"], i["kind"]) for i in intake["issues"]} == {
        ("MedicationRequest.category", "wrapped-in-list"), ("MedicationRequest.authoredOn", "zone-assumed"),
        ("MedicationRequest.(unknown)", "unknown-element")}
    assert "Jane" not in json.dumps(body["extension"]) and "secretJunk" not in json.dumps(body["extension"])


def test_log_line_and_metrics_carry_the_counts(caplog) -> None:
    scenario, hook, request = build.all_requests()["40_ord_methotrexate_axial__order-select"]
    request = copy.deepcopy(request)
    _mangled(request)
    with tempfile.TemporaryDirectory() as tmp:
        app = build.make_app(scenario, Path(tmp) / "cds.sqlite3")
        client = app.test_client()
        with caplog.at_level(logging.INFO, logger="service.request"):
            assert build.post(client, hook, request)[0] == 200
        metrics = client.get("/metrics").get_data(as_text=True)
        build._dispose(app)
    line = next(r for r in caplog.records if r.getMessage() == "request")
    assert (line.intake_repaired, line.intake_dropped, line.intake_skipped) == (2, 1, 0)
    assert "MedicationRequest.category:wrapped-in-list=1" in line.intake
    assert "Jane" not in line.intake
    assert re.search(r'msk_cds_intake_issues_total\{action="repaired",kind="wrapped-in-list",'
                     r'path="MedicationRequest.category",resource="MedicationRequest",'
                     r'service="msk-imaging-order-select"\} 1\.0', metrics)


# -- property tests: mutate valid fixture resources ----------------------------------------------------------------------
# Shape slips (wrap/unwrap lists, numbers as strings, zone-less date-times, junk elements) must give the same cards.
# Garbage in any element may change the cards only with a recorded drop, never a 500, never a silently missing draft.

PROPERTY_REQUESTS = ("40_ord_methotrexate_axial__order-select", "41_ord_long_term_prednisone__order-sign",
                     "53_ord_nsaid_draft_gi_risk__order-sign", "44_ord_nsaid_draft_egfr_under_30__order-select",
                     "06_a_persistent_tnf_screening_present__patient-view",
                     "12_b_labral_calcification_nsaid_allergy__patient-view",
                     "28_a_egfr_45_nsaid_warning__patient-view")
_DATETIME_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")
_APPS: dict[str, Any] = {}
_BASELINES: dict[str, Any] = {}
_TMP = tempfile.TemporaryDirectory()


def _app(name: str) -> Any:
    if name not in _APPS:
        scenario = build.all_requests()[name][0]
        app = build.make_app(scenario, Path(_TMP.name) / f"{name}.sqlite3")
        app.config["INTAKE_DIAGNOSTICS_EXTENSION"] = True
        _APPS[name] = app
    return _APPS[name]


def _post(name: str, request: dict[str, Any]) -> tuple[int, Any]:
    hook = build.all_requests()[name][1]
    return build.post(_app(name).test_client(), hook, request)


def _baseline(name: str) -> Any:
    if name not in _BASELINES:
        status, body = _post(name, copy.deepcopy(build.all_requests()[name][2]))
        assert status == 200
        _BASELINES[name] = body
    return _BASELINES[name]


def _resources(request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for value in (request.get("prefetch") or {}).values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            yield from (e["resource"] for e in value.get("entry") or ())
        elif isinstance(value, dict):
            yield value
    for entry in ((request.get("context") or {}).get("draftOrders") or {}).get("entry") or ():
        yield entry["resource"]


def _slots(node: Any, top: bool = True) -> Iterator[tuple[Any, Any, Any]]:
    """(container, key or index, value) of every element below a resource (the narrative left out)."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in list(items):
        if top and key in ("resourceType", "text"):
            continue
        yield node, key, value
        if isinstance(value, (dict, list)):
            yield from _slots(value, top=False)


def _candidates(request: dict[str, Any], kind: str) -> list[tuple[Any, Any, Any]]:
    out = []
    for resource in _resources(request):
        for container, key, value in _slots(resource):
            in_object = isinstance(container, dict)
            if kind == "wrap" and in_object and not isinstance(value, list):
                out.append((container, key, value))
            elif kind == "unwrap" and isinstance(value, list) and len(value) == 1:
                out.append((container, key, value))
            elif kind == "stringify" and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append((container, key, value))
            elif kind == "drop-zone" and isinstance(value, str) and _DATETIME_Z.fullmatch(value):
                out.append((container, key, value))
            elif kind == "junk" and isinstance(value, dict):
                out.append((container, key, value))
            elif kind == "garbage" and not isinstance(value, (dict, list)):
                out.append((container, key, value))
        if kind == "junk":
            out.append((None, None, resource))
    return out


def _mutate(kind: str, container: Any, key: Any, value: Any, garbage: Any) -> None:
    if kind == "wrap":
        container[key] = [value]
    elif kind == "unwrap":
        container[key] = value[0]
    elif kind == "stringify":
        container[key] = str(value)
    elif kind == "drop-zone":
        container[key] = value[:-1]
    elif kind == "junk":
        value["zzUnknownElement"] = {"anything": ["at", 1, None]}
    elif kind == "garbage":
        container[key] = garbage


def _draft_texts(request: dict[str, Any]) -> list[str]:
    out = []
    for entry in ((request.get("context") or {}).get("draftOrders") or {}).get("entry") or ():
        concept = entry["resource"].get("medicationCodeableConcept") or entry["resource"].get("code") or {}
        out.append(concept.get("text") or "")
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(PROPERTY_REQUESTS),
       kind=st.sampled_from(["wrap", "unwrap", "stringify", "drop-zone", "junk"]), data=st.data())
def test_shape_slips_give_the_same_cards(name: str, kind: str, data: Any) -> None:
    request = copy.deepcopy(build.all_requests()[name][2])
    candidates = _candidates(request, kind)
    if not candidates:
        return
    count = data.draw(st.integers(1, 3))
    for _ in range(count):
        container, key, value = data.draw(st.sampled_from(candidates))
        if kind == "wrap" and isinstance(container.get(key) if isinstance(container, dict) else None, list):
            continue            # already wrapped by an earlier draw
        try:
            _mutate(kind, container, key, value, None)
        except (TypeError, KeyError, IndexError):
            continue
    status, body = _post(name, request)
    assert status == 200
    intake = (body.get("extension") or {}).get("org.msk-cds.intake") or {"dropped": 0, "skipped": 0}
    if kind == "junk":
        # an unknown element is dropped and recorded; inside a deciding element (a Condition's code) it may make a
        # safety fact unknown (fail closed), so the cards stay the same or degrade with the drop on record
        assert summaries(body) == summaries(_baseline(name)) or intake["dropped"] > 0
    else:
        assert summaries(body) == summaries(_baseline(name))
        assert intake["dropped"] == 0 and intake["skipped"] == 0, intake


# Values that are wrong for any primitive element (an object, an empty list, an empty string, null): the intake
# cannot read them. (A different valid value is different clinical data, not a malformation: not tested here.)
GARBAGE = st.sampled_from([{"unexpected": "object"}, [], "", None, [{"a": 1}, {"b": 2}]])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(PROPERTY_REQUESTS), garbage=GARBAGE, data=st.data())
def test_garbage_in_an_element_degrades_with_a_recorded_drop_never_silently(name: str, garbage: Any,
                                                                           data: Any) -> None:
    request = copy.deepcopy(build.all_requests()[name][2])
    container, key, value = data.draw(st.sampled_from(_candidates(request, "garbage")))
    _mutate("garbage", container, key, value, garbage)
    status, body = _post(name, request)
    if status == 400:
        # the request layer refused it with the reason (e.g. a draft order whose id is not an id): not silent
        assert body["resourceType"] == "OperationOutcome" and body["issue"], body
        return
    assert status == 200
    if summaries(body) != summaries(_baseline(name)):
        intake = (body.get("extension") or {}).get("org.msk-cds.intake") or {}
        recorded = intake.get("dropped", 0) + intake.get("skipped", 0) + intake.get("repaired", 0)
        assert recorded > 0, "the cards changed but no repair or drop was recorded"
    # never a silently missing draft: a draft whose warning went away is named by an info card
    baseline_warned = any(c["indicator"] != "info" for c in _baseline(name)["cards"])
    if "draftOrders" in request["context"] and baseline_warned and not any(
            c["indicator"] != "info" for c in body["cards"]):
        texts = [t for t in _draft_texts(request) if t]
        notes = [c["summary"] for c in body["cards"]
                 if c.get("extension", {}).get("org.msk-cds.rule") == "intake.unreadable_draft"]
        intake = (body.get("extension") or {}).get("org.msk-cds.intake") or {}
        assert notes or intake.get("dropped", 0) + intake.get("skipped", 0) > 0, \
            "the draft's warning went away with nothing recorded"
        if notes and texts:
            assert any(t[:40] in n for t in texts for n in notes) or any("draft" in n for n in notes)
