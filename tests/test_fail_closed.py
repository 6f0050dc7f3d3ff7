"""Safety fails closed (issue 12 item 1): one safety-relevant resource (NSAID allergy, eGFR, pregnancy,
anticoagulant) mutated in every way the intake cannot read (impossible date, unknown element, lone UTF-16
surrogate, wrong JSON type) never makes the drug it would block a one-click order. Whatever the reader does with
the mutated resource (drops it, or reads it), the NSAID is never created by a suggestion."""
from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hooks.pipeline import pathway_cards
from hooks.cards.suggestions import OrderContext
from hooks.knowledge.clinical import clinical_knowledge
from hooks.pathways.engine import assess
from clinical_builders import (LOINC, NOW, PATIENT, RXNORM, SNOMED, allergy, day, facts_of, findings, med_request,
                               observation, record)

WARFARIN = "11289"


def _allergy() -> dict[str, Any]:
    res = allergy("alg1", rxnorm="5640", text="Ibuprofen")
    res.update({"recordedDate": day(400), "note": [{"text": "hives after ibuprofen"}],
                "reaction": [{"manifestation": [{"text": "urticaria"}], "onset": day(400)}]})
    return res


def _egfr() -> dict[str, Any]:
    res = observation("egfr1", "98979-8", 22, days_ago=3)
    res["valueQuantity"].update({"unit": "mL/min/{1.73_m2}", "system": "http://unitsofmeasure.org",
                                 "code": "mL/min/{1.73_m2}"})
    res["note"] = [{"text": "CKD stage 4"}]
    res["issued"] = day(3)
    return res


def _pregnancy() -> dict[str, Any]:
    return {"resourceType": "Condition", "id": "preg1", "subject": {"reference": f"Patient/{PATIENT}"},
            "code": {"coding": [{"system": SNOMED, "code": "77386006"}], "text": "Pregnancy"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]},
            "onsetDateTime": day(150), "recordedDate": day(140), "note": [{"text": "first pregnancy"}]}


def _warfarin() -> dict[str, Any]:
    res = med_request("warf1", WARFARIN, start_days=200)
    res["note"] = [{"text": "INR target 2-3"}]
    return res


# (what the resource is, builder, where it goes in the record)
SAFETY_RESOURCES = {
    "nsaid_allergy": (_allergy, "allergies"),
    "egfr_22": (_egfr, "observations"),
    "pregnancy": (_pregnancy, "conditions"),
    "anticoagulant": (_warfarin, "meds"),
}


def _record(kind: str, resource: dict[str, Any] | None):
    resources = {"allergies": [], "observations": [], "conditions": [], "meds": []}
    if resource is not None:
        resources[SAFETY_RESOURCES[kind][1]].append(resource)
    return record(age=45, sex="female", **resources)


def _nsaid_codes() -> set[str]:
    k = clinical_knowledge()
    return {c.code for d in k.medications.drugs if "nsaid" in d.classes for c in d.all_codes()}


def one_click_nsaids(rec) -> list[str]:
    """RxNorm codes of NSAIDs any suggestion would create for this record (pathway A, NSAID-naive)."""
    k = clinical_knowledge()
    facts = facts_of(rec)
    octx = OrderContext("p1", "Practitioner/dr1", NOW, "proposal", None)
    nsaids = _nsaid_codes()
    out = []
    for card in (c.to_json() for c in pathway_cards(findings("si_joint_synovitis"), facts, "hook-1", octx, k)):
        for s in card.get("suggestions", ()):
            for act in s["actions"]:
                res = act.get("resource") or {}
                if res.get("resourceType") == "MedicationRequest":
                    codes = {c["code"] for c in res["medicationCodeableConcept"]["coding"]}
                    out += sorted(codes & nsaids)
    return out


# --------------------------------------------------------------------------------------------- the mutations
SURROGATE = "\ud800"
IMPOSSIBLE = {"date": "2024-02-30", "dateTime": "2024-02-30T10:00:00Z"}


def _paths(node: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            if key != "resourceType":
                out += _paths(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, path + (i,))
    return out


def _get(node: Any, path: tuple) -> Any:
    for p in path:
        node = node[p]
    return node


def _set(node: Any, path: tuple, value: Any) -> None:
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def _looks_like_date(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        dt.date.fromisoformat(value[:10])
        return True
    except ValueError:
        return False


def mutate(resource: dict[str, Any], path: tuple, kind: str) -> dict[str, Any] | None:
    """The resource with one unreadable element at `path`, or None when that kind does not apply there."""
    out = copy.deepcopy(resource)
    target = _get(out, path)
    if kind == "unknown_element":
        if not isinstance(target, dict):
            return None
        target["unknownElement"] = {"value": 1}
    elif kind == "impossible_date":
        if not _looks_like_date(target) or not path:
            return None
        _set(out, path, IMPOSSIBLE["dateTime" if "T" in target else "date"])
    elif kind == "lone_surrogate":
        if not isinstance(target, str) or not path:
            return None
        _set(out, path, target + SURROGATE)
    elif kind == "wrong_type":
        if not path:
            return None
        _set(out, path, {"unexpected": [1]} if not isinstance(target, dict) else 42)
    return out


KINDS = ("unknown_element", "impossible_date", "lone_surrogate", "wrong_type")


@st.composite
def unreadable_variants(draw):
    kind = draw(st.sampled_from(sorted(SAFETY_RESOURCES)))
    base = SAFETY_RESOURCES[kind][0]()
    candidates = [(p, m) for p in _paths(base) for m in KINDS if mutate(base, p, m) is not None]
    path, how = draw(st.sampled_from(candidates))
    return kind, path, how, mutate(base, path, how)


# ------------------------------------------------------------------------------------------------- the tests
def test_the_property_is_not_vacuous():
    # no safety resource: NSAIDs are offered; each readable safety resource: none is
    assert one_click_nsaids(_record("nsaid_allergy", None))
    for kind, (build, _) in SAFETY_RESOURCES.items():
        assert one_click_nsaids(_record(kind, build())) == [], kind


@pytest.mark.parametrize("kind", sorted(SAFETY_RESOURCES))
@pytest.mark.parametrize("how", KINDS)
def test_every_kind_of_unreadable_element_on_every_safety_resource(kind, how):
    base = SAFETY_RESOURCES[kind][0]()
    paths = [p for p in _paths(base) if mutate(base, p, how) is not None]
    assert paths
    for path in paths:
        assert one_click_nsaids(_record(kind, mutate(base, path, how))) == [], (kind, path, how)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unreadable_variants())
def test_an_unreadable_safety_resource_never_yields_a_one_click_nsaid(variant):
    kind, path, how, resource = variant
    assert one_click_nsaids(_record(kind, resource)) == [], (kind, path, how)


def test_the_card_says_why_the_nsaid_is_withheld():
    # the tolerant reader keeps the allergy and drops only its unreadable code: what it is an allergy to is unknown
    rec = _record("nsaid_allergy", mutate(_allergy(), ("code",), "wrong_type"))
    k = clinical_knowledge()
    facts = facts_of(rec)
    assert "nsaid_allergy" in facts.unreadable
    octx = OrderContext("p1", "Practitioner/dr1", NOW, "proposal", None)
    card = pathway_cards(findings("si_joint_synovitis"), facts, "hook-1", octx, k)[0].to_json()
    assert "could not be read" in card["detail"] and "allerg" in card["detail"].lower()


def test_a_male_patient_is_not_held_for_pregnancy_but_still_for_the_rest():
    bad = mutate(_pregnancy(), ("onsetDateTime",), "impossible_date")
    rec = record(age=45, sex="male", conditions=[bad])
    assert "pregnant" not in facts_of(rec).unreadable


# ------------------------------------------------------------------------------------ a clinician's own draft
def test_a_drafted_nsaid_with_unreadable_safety_data_gets_a_warning_and_no_nsaid_order():
    from hooks.pipeline import order_cards
    from hooks.registry import HookRequest
    from clinical_builders import NAPROXEN

    report = {"resourceType": "DiagnosticReport", "id": "r1", "status": "final", "subject": {"reference": "Patient/p1"},
              "code": {"coding": [{"system": "http://loinc.org", "code": "36031-3"}], "text": "MR Sacroiliac joint"},
              "effectiveDateTime": "2026-10-30T09:00:00Z",
              "conclusion": "Mild synovitis of the left sacroiliac joint. No erosions. STIR and T1 obtained."}
    draft = {"resourceType": "MedicationRequest", "id": "d1", "status": "draft", "intent": "order",
             "subject": {"reference": "Patient/p1"},
             "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": NAPROXEN}], "text": "naproxen"}}
    nsaids = _nsaid_codes()
    for kind, (build, where) in SAFETY_RESOURCES.items():
        base = build()
        for path in [p for p in _paths(base) if mutate(base, p, "wrong_type") is not None]:
            resources = {"allergies": [], "observations": [], "conditions": [], "meds": [], "reports": [report],
                         "drafts": [draft]}
            resources[where].append(mutate(base, path, "wrong_type"))
            rec = record(age=45, sex="female", **resources)
            cards = [c if isinstance(c, dict) else c.to_json() for c in order_cards(HookRequest(
                "msk-imaging-order-sign", "order-sign", "hook-1", {"patientId": "p1", "userId": "Practitioner/dr1"},
                rec, NOW), selected_only=False).cards]
            about_draft = [c for c in cards if "MedicationRequest/d1" in c["extension"]["org.msk-cds.dedupe-key"]]
            assert about_draft and about_draft[0]["indicator"] == "warning", (kind, path)
            created = {c["code"] for card in cards for s in card.get("suggestions", ()) for a in s["actions"]
                       if a["type"] == "create" and a["resource"]["resourceType"] == "MedicationRequest"
                       for c in a["resource"]["medicationCodeableConcept"]["coding"]}
            assert not created & nsaids, (kind, path)
