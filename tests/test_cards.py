"""Cards: CDS Hooks 2.0 shape, R4-valid suggestions, escaping of report text, draft-order checks and guidance."""
from __future__ import annotations

import copy
import datetime as dt

import pytest
from fhir.resources.R4B import get_fhir_model_class

from hooks.cards.markdown import escape
from hooks.cards.plans import plan_pathway_card
from hooks.cards.render import render
from hooks.cards.suggestions import OrderContext, VERIFICATION_URL
from hooks.knowledge.cards import card_wording
from hooks.pipeline import order_cards as order_hook_cards, patient_view_cards
from hooks.knowledge import KnowledgeError
from hooks.knowledge.clinical import _cross_check, clinical_knowledge
from hooks.pathways.engine import assess
from hooks.registry import HookRequest
from service.conformance import check_response
from clinical_builders import (ADALIMUMAB, ICD, METHOTREXATE, NAPROXEN, NOW, OXYCODONE, RXNORM, condition,
                               facts_of, finding, findings, med_request, observation, pain, record)

ATTACKS = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "[click](javascript:alert(1))",
    "![x](http://evil.example/x.png)",
    "# heading\n- list\n> quote",
    "see http://evil.example and www.evil.example",
]


def cards_for(rec, fs, user="Practitioner/dr1"):
    k = clinical_knowledge()
    facts = facts_of(rec)
    octx = OrderContext("p1", user, NOW, "proposal", None)
    cards = card_wording()
    return [render(plan_pathway_card(a, fs, facts, "hook-1", octx, k, cards), k, cards, "hook-1").to_json()
            for a in assess(fs, facts, k)]


def created(card):
    return [a["resource"] for s in card.get("suggestions", []) for a in s["actions"] if a["type"] == "create"]


def med_codes(card):
    return [r["medicationCodeableConcept"]["coding"][0]["code"] for r in created(card)
            if r["resourceType"] == "MedicationRequest"]


# ------------------------------------------------------------------------------------------------- escaping
@pytest.mark.parametrize("attack", ATTACKS)
def test_escape_neutralises_html_links_and_line_markers(attack):
    out = escape(attack)
    assert "<" not in out and ">" not in out and "\n" not in out
    assert "](" not in out and "![" not in out
    assert "http://" not in out and "www." not in out
    assert not out.startswith(("#", "-", ">"))


@pytest.mark.parametrize("attack", ATTACKS)
def test_report_text_in_a_card_cannot_inject(attack):
    fs = findings(finding("si_joint_synovitis", text=f"Mild synovitis. {attack}", reference="DiagnosticReport/r1"))
    card = cards_for(record(), fs)[0]
    detail = card["detail"]
    assert "<script" not in detail and "<img" not in detail and "javascript:" not in detail
    assert "http://evil" not in detail and "](http://evil" not in detail


# ------------------------------------------------------------------------------------------------- card shape
SCENARIOS = {
    "naive": (dict(), ("si_joint_synovitis",)),
    "gi_risk": (dict(age=72), ("si_joint_synovitis",)),
    "refractory": (dict(conditions=[condition("c", ICD, "M46.1")], meds=[med_request("m", NAPROXEN, 70, 5, "stopped")],
                        observations=[pain("o", 7, 100)]), ("active_sacroiliitis",)),
    "osteomyelitis": (dict(conditions=[condition("dm", ICD, "E11.610")]), ("bone_marrow_edema", "osteomyelitis")),
    "labral": (dict(conditions=[condition("h", ICD, "M25.552", onset_days=3)]), ("labral_calcification",)),
    "tbmes_refractory": (dict(conditions=[condition("h", ICD, "M25.552", onset_days=120)]), ("transient_bme_syndrome",)),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_cards_are_conformant_and_every_suggestion_is_valid_r4(name):
    kwargs, concepts = SCENARIOS[name]
    cards = cards_for(record(**kwargs), findings(*concepts))
    assert cards
    assert check_response({"cards": cards}) == []
    for card in cards:
        assert len(card["summary"]) < 140
        assert card["extension"]["org.msk-cds.rule"].startswith(card["extension"]["org.msk-cds.pathway"] + ".")
        assert card["extension"]["org.msk-cds.knowledge-version"]
        assert len(card["detail"]) <= 600
        if card["indicator"] != "info":
            assert card["overrideReasons"]
        for resource in created(card):
            model = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
            assert model.status == "draft" and model.intent == "proposal"
            assert resource["subject"] == {"reference": "Patient/p1"}
            assert resource["requester"] == {"reference": "Practitioner/dr1"}


def test_medication_request_shape():
    card = cards_for(record(), findings("si_joint_synovitis"))[0]
    naproxen = next(r for r in created(card) if r["resourceType"] == "MedicationRequest")
    concept = naproxen["medicationCodeableConcept"]
    assert concept["coding"][0] == {"system": RXNORM, "code": "198014", "display": "naproxen 500 MG Oral Tablet"}
    assert concept["text"]
    dosage = naproxen["dosageInstruction"][0]
    assert dosage["timing"]["repeat"]["frequency"] == 2 and dosage["timing"]["repeat"]["periodUnit"] == "d"
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 500
    assert naproxen["dispenseRequest"]["expectedSupplyDuration"]["value"] == 28
    assert naproxen["reasonReference"] == [{"reference": "DiagnosticReport/r1"}]
    assert naproxen["authoredOn"] == NOW.date().isoformat()
    assert "2026-11-30" in naproxen["note"][0]["text"]


def test_gi_risk_recommends_the_cox2_inhibitor_and_physiotherapy_is_its_own_order():
    card = cards_for(record(age=72), findings("si_joint_synovitis"))[0]
    recommended = [s for s in card["suggestions"] if s.get("isRecommended")]
    assert len(recommended) == 1 and recommended[0]["label"].startswith("Start celecoxib")
    physio = [s for s in card["suggestions"] if "physiotherapy" in s["label"]]
    assert len(physio) == 1 and len(physio[0]["actions"]) == 1
    assert card["selectionBehavior"] == "any"       # the physiotherapy order stands beside whichever NSAID


def test_no_recommended_alternative_where_the_guideline_prefers_none():
    kwargs, concepts = SCENARIOS["refractory"]
    card = cards_for(record(**kwargs), findings(*concepts))[0]
    assert card["extension"]["org.msk-cds.rule"] == "refractory_sacroiliitis.tnf_inhibitor"
    assert not [s for s in card["suggestions"] if s.get("isRecommended")]
    # the SI-joint injection is its own suggestion, never ordered with every TNF inhibitor
    for s in card["suggestions"]:
        kinds = {a["resource"]["resourceType"] for a in s["actions"]}
        text = str(s["actions"])
        assert not ("MedicationRequest" in kinds and "sacroiliac" in text.lower())


def test_unverified_codes_carry_the_extension_and_the_card_says_so():
    card = cards_for(record(), findings("si_joint_synovitis"))[0]
    physio = next(r for r in created(card) if r["resourceType"] == "ServiceRequest")
    assert physio["code"]["coding"][0]["extension"] == [{"url": VERIFICATION_URL, "valueCode": "unverified"}]
    assert "verified" not in card["detail"]       # review status is for governance, not the card face


def test_requester_only_for_a_practitioner():
    card = cards_for(record(), findings("si_joint_synovitis"), user="Patient/p1")[0]
    assert all("requester" not in r for r in created(card))


def test_condition_is_the_reason_when_the_pathway_names_one():
    kwargs, concepts = SCENARIOS["refractory"]
    card = cards_for(record(**kwargs), findings(*concepts))[0]
    assert {r["reasonReference"][0]["reference"] for r in created(card)} == {"Condition/c"}


def test_critical_only_for_urgent_osteomyelitis_in_diabetes():
    kwargs, concepts = SCENARIOS["osteomyelitis"]
    indicators = {c["extension"]["org.msk-cds.rule"]: c["indicator"] for c in cards_for(record(**kwargs), findings(*concepts))}
    assert indicators["bme_differential.osteomyelitis_diabetic"] == "critical"
    indicators = {c["indicator"] for c in cards_for(record(), findings("bone_marrow_edema", "osteomyelitis"))}
    assert indicators == {"warning"}


def test_card_uuids_are_deterministic_per_request():
    first = cards_for(record(), findings("si_joint_synovitis"))
    assert first == cards_for(record(), findings("si_joint_synovitis"))


def test_unknown_data_is_said_in_the_card():
    rec = record(unavailable=["medicationRequests", "medicationStatements", "observations", "allergies"])
    card = cards_for(rec, findings("si_joint_synovitis"))[0]
    assert "treated as unknown" in card["detail"] and "medication history" in card["detail"]
    assert "could not be read" in card["detail"]         # and why the NSAID is not a one-click order


# ------------------------------------------------------------------------------------------------- handlers
def report(text: str, rid: str = "r1") -> dict:
    return {"resourceType": "DiagnosticReport", "id": rid, "status": "final",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "36031-3"}], "text": "MR Sacroiliac joint"},
            "effectiveDateTime": "2026-10-30T09:00:00Z", "conclusion": text}


def draft_med(did: str, rxnorm: str, days: int | None = 28) -> dict:
    res = {"resourceType": "MedicationRequest", "id": did, "status": "draft", "intent": "order",
           "subject": {"reference": "Patient/p1"},
           "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": rxnorm}], "text": "drafted drug"}}
    if days:
        res["dispenseRequest"] = {"expectedSupplyDuration": {"value": days, "unit": "days",
                                                             "system": "http://unitsofmeasure.org", "code": "d"}}
    return res


def hook_request(hook, rec, selections=None):
    context = {"patientId": "p1", "userId": "Practitioner/dr1"}
    if selections is not None:
        context["selections"] = selections
    return HookRequest(f"msk-imaging-{hook}", hook, "hook-1", context, rec, NOW)


SYNOVITIS = "Mild synovitis of the left sacroiliac joint. No erosions. STIR and T1-weighted sequences obtained."


def test_patient_view_end_to_end_from_report_text():
    result = patient_view_cards(hook_request("patient-view", record(reports=[report(SYNOVITIS)])))
    assert [c["extension"]["org.msk-cds.rule"] for c in result.cards] == ["axspa_si_synovitis.nsaid_trial"]
    assert check_response({"cards": list(result.cards)}) == []


def test_unrelated_patient_gets_no_cards_at_any_hook():
    rec = record(conditions=[condition("a", ICD, "J45.909")], drafts=[draft_med("d1", METHOTREXATE)])
    assert patient_view_cards(hook_request("patient-view", rec)).cards == ()
    assert order_hook_cards(hook_request("order-sign", rec), selected_only=False).cards == ()


def test_methotrexate_for_axial_disease_warns_with_delete_and_the_pathway_alternative():
    rec = record(conditions=[condition("c", ICD, "M46.1")], reports=[report(SYNOVITIS)],
                 meds=[med_request("m", NAPROXEN, 70, 5, "stopped")], observations=[pain("o", 7, 100)],
                 drafts=[draft_med("d1", METHOTREXATE)])
    cards = order_hook_cards(hook_request("order-select", rec, ["MedicationRequest/d1"]), selected_only=True).cards
    card = next(c for c in cards if c["extension"]["org.msk-cds.rule"] == "order_check.methotrexate_axial")
    assert card["indicator"] == "warning" and card["overrideReasons"]
    assert card["extension"]["org.msk-cds.dedupe-key"] == "order_check.methotrexate_axial|MedicationRequest/d1"
    first = card["suggestions"][0]["actions"]
    assert first[0] == {"type": "delete", "description": first[0]["description"], "resourceId": "MedicationRequest/d1"}
    assert first[1]["resource"]["intent"] == "order"
    # screening first: the replacement orders the TB/HBV tests; the TNF inhibitor is not created before the results
    assert {a["resource"]["resourceType"] for a in first[1:]} == {"ServiceRequest"}
    assert "327361" not in str(first) and "1726844" not in str(first)
    assert check_response({"cards": list(cards)}) == []


def test_order_select_checks_only_the_selected_drafts():
    rec = record(conditions=[condition("c", ICD, "M46.1")], reports=[report(SYNOVITIS)],
                 drafts=[draft_med("d1", METHOTREXATE), draft_med("d2", NAPROXEN)])
    cards = order_hook_cards(hook_request("order-select", rec, ["MedicationRequest/d2"]), selected_only=True).cards
    assert all("d1" not in c["extension"]["org.msk-cds.dedupe-key"] for c in cards)
    cards = order_hook_cards(hook_request("order-sign", rec), selected_only=False).cards
    assert any("MedicationRequest/d1" in c["extension"]["org.msk-cds.dedupe-key"] for c in cards)


def test_nsaid_draft_failing_the_kidney_check_warns_and_offers_no_nsaid():
    rec = record(reports=[report(SYNOVITIS)], observations=[observation("e", "98979-8", 22)],
                 drafts=[draft_med("d1", NAPROXEN)])
    card = order_hook_cards(hook_request("order-sign", rec), selected_only=False).cards[0]
    assert card["extension"]["org.msk-cds.rule"] == "safety.renal_block" and card["indicator"] == "warning"
    actions = [a for s in card["suggestions"] for a in s["actions"]]
    assert {"type": "delete", "description": actions[0]["description"], "resourceId": "MedicationRequest/d1"} in actions
    created = [a["resource"] for a in actions if a["type"] == "create" and a["resource"]["resourceType"] == "MedicationRequest"]
    # no NSAID: the non-NSAID alternative of the step (acetaminophen) replaces it
    assert [r["medicationCodeableConcept"]["coding"][0]["code"] for r in created] == ["198440"]


def test_a_fitting_draft_gets_guidance_with_a_reassessment_date():
    rec = record(reports=[report(SYNOVITIS)], observations=[observation("e", "98979-8", 100)],
                 drafts=[draft_med("d1", NAPROXEN)])
    card = order_hook_cards(hook_request("order-select", rec, ["MedicationRequest/d1"]), selected_only=True).cards[0]
    assert card["indicator"] == "info" and card["extension"]["org.msk-cds.rule"] == "axspa_si_synovitis.order_guidance"
    assert "2-4 weeks" in card["summary"] + card["detail"]
    assert (NOW + dt.timedelta(days=28)).date().isoformat() in card["detail"]
    assert "suggestions" not in card


def test_gi_risk_draft_offers_keep_and_add_ppi_or_switch_to_cox2():
    rec = record(age=75, reports=[report(SYNOVITIS)], observations=[observation("e", "98979-8", 90)],
                 drafts=[draft_med("d1", NAPROXEN)])
    card = order_hook_cards(hook_request("order-sign", rec), selected_only=False).cards[0]
    assert card["extension"]["org.msk-cds.rule"] == "safety.gi_risk"
    labels = [s["label"] for s in card["suggestions"]]
    assert "omeprazole" in labels[0] and any("celecoxib" in label for label in labels[1:])


def test_prolonged_opioid_in_vertebral_fracture_warns():
    vcf = report("Acute L1 compression fracture with bone marrow edema, 30% height loss.")
    rec = record(age=76, reports=[vcf], drafts=[draft_med("d1", OXYCODONE, days=60)])
    cards = order_hook_cards(hook_request("order-sign", rec), selected_only=False).cards
    assert "order_check.opioid_vcf" in [c["extension"]["org.msk-cds.rule"] for c in cards]


def test_biologic_draft_without_screening_adds_the_tests():
    rec = record(conditions=[condition("c", ICD, "M46.1")], reports=[report(SYNOVITIS)],
                 drafts=[draft_med("d1", ADALIMUMAB)])
    cards = order_hook_cards(hook_request("order-sign", rec), selected_only=False).cards
    card = next(c for c in cards if c["extension"]["org.msk-cds.rule"] == "safety.biologic_screening")
    actions = card["suggestions"][0]["actions"]
    codes = {a["resource"]["code"]["coding"][0]["code"] for a in actions if a["type"] == "create"}
    assert {"71773-6", "5196-1"} <= codes
    # the drafted biologic is not signed together with its screening: it is removed, re-ordered after the results
    assert {"type": "delete", "description": actions[0]["description"], "resourceId": "MedicationRequest/d1"} in actions


# ------------------------------------------------------------------------------------------------- knowledge
def test_a_bad_reference_in_the_knowledge_stops_start_up_with_file_and_place():
    k = copy.copy(clinical_knowledge())
    pathways = k.pathway_file
    broken_step = pathways.pathways[0].steps[-1].model_copy(
        update={"medications": pathways.pathways[0].steps[-1].medications.model_copy(update={"drugs": ["aspirine"]})})
    broken = pathways.pathways[0].model_copy(update={"steps": [*pathways.pathways[0].steps[:-1], broken_step]})
    k.pathway_file = pathways.model_copy(update={"pathways": [broken, *pathways.pathways[1:]]})
    with pytest.raises(KnowledgeError) as err:
        _cross_check(k, None)
    assert err.value.file == "pathways.yaml" and "nsaid_trial" in err.value.place and "aspirine" in err.value.reason


@pytest.mark.parametrize("field,value,reason", [
    ("sites", ["si_joint", "wirst"], "unknown site 'wirst'"),
    ("regions", ["sacroiliac", "thorax"], "unknown region 'thorax'"),
])
def test_a_site_group_naming_an_unknown_site_or_region_stops_start_up(field, value, reason):
    k = copy.copy(clinical_knowledge())
    groups = dict(k.pathway_file.site_groups)
    groups["axial"] = groups["axial"].model_copy(update={field: value})
    k.pathway_file = k.pathway_file.model_copy(update={"site_groups": groups})
    with pytest.raises(KnowledgeError) as err:
        _cross_check(k, None)
    assert err.value.place == f"site_groups.axial.{field}" and reason in err.value.reason


def test_biologic_drafted_before_the_nsaid_trial_says_what_comes_first():
    rec = record(conditions=[condition("c", ICD, "M46.1")], reports=[report(SYNOVITIS)],
                 meds=[med_request("m", NAPROXEN, 10)], drafts=[draft_med("d1", ADALIMUMAB)])
    cards = order_hook_cards(hook_request("order-sign", rec), selected_only=False).cards
    card = next(c for c in cards if c["extension"]["org.msk-cds.rule"] == "order_check.biologic_not_yet_eligible")
    assert card["indicator"] == "warning" and "NSAID trial" in card["detail"]
    assert card["suggestions"][-1]["actions"] == [{"type": "delete", "description": card["suggestions"][-1]["actions"][0]["description"],
                                                   "resourceId": "MedicationRequest/d1"}]


def test_denosumab_is_held_until_vitamin_d_and_calcium_are_known():
    kwargs, concepts = SCENARIOS["tbmes_refractory"]
    card = cards_for(record(**kwargs), findings(*concepts))[0]
    assert med_codes(card) == []
    codes = {r["code"]["coding"][0]["code"] for r in created(card)}
    assert codes == {"62292-8", "17861-6"} and "denosumab" in card["suggestions"][0]["label"]
    rec = record(observations=[observation("d", "62292-8", 30), observation("c", "17861-6", 9.5)], **kwargs)
    assert med_codes(cards_for(rec, findings(*concepts))[0]) == ["993452"]


def test_a_warn_flag_on_a_suggested_drug_makes_the_card_a_warning():
    rec = record(conditions=[condition("c", ICD, "M46.1")], meds=[med_request("m", NAPROXEN, 70, 5, "stopped")],
                 observations=[pain("o", 7, 100), observation("t", "71773-6", result="positive"),
                               observation("h", "5196-1", result="negative")])
    card = cards_for(rec, findings("active_sacroiliitis"))[0]
    assert card["indicator"] == "warning" and card["overrideReasons"] and "tuberculosis" in card["detail"]


def test_the_knowledge_version_pins_the_content_of_the_knowledge_files():
    """Cards carry the knowledge version so each can be traced to the knowledge that produced it: a change to any
    knowledge file must come with a new version (and its digest recorded in manifest.yaml)."""
    from hooks.knowledge import knowledge_digest, manifest

    m = manifest()
    assert knowledge_digest(m.files) == m.content_digest, (
        f"hooks/knowledge changed since version {m.version}: bump `version` in manifest.yaml and set "
        f"content_digest: \"{knowledge_digest(m.files)}\" (then regenerate the goldens: python -m fixtures.build --goldens)")


def test_every_file_in_the_manifest_loads_and_the_clinical_files_are_listed():
    from hooks.knowledge import load_yaml, manifest

    files = manifest().files
    for name in ("pathways.yaml", "medications.yaml", "safety.yaml", "evidence.yaml", "conditions.yaml",
                 "service_codes.yaml"):
        assert name in files
    for name in files:
        assert load_yaml(name) is not None
