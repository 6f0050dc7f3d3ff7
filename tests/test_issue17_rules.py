"""The clinical rules of issue 17, one by one, from their sources: the ACG 2009 GI x cardiovascular risk grid,
acetaminophen as the non-NSAID alternative with its dose ceilings, duplicate therapy, the stop reason of a biologic,
doses by the coded indication with loading doses as their own Dosage, and screening first."""
from __future__ import annotations

from hooks.cards.suggestions import OrderContext, medication_request
from hooks.knowledge.clinical import clinical_knowledge
from hooks.pathways.engine import assess
from hooks.pipeline import pathway_cards
from hooks.record import PatientRecord
from hooks.safety.checks import evaluate_drug
from clinical_builders import (ADALIMUMAB, APIXABAN, ICD, NAPROXEN, NOW, PREDNISONE, SNOMED, bundle, condition,
                               facts_of, findings, med_request, observation, pain, patient, record)

ASPIRIN = "1191"
CTX = OrderContext("p1", "Practitioner/dr1", NOW, "proposal", None)


def by_pathway(rec, fs):
    return {a.pathway.id: a for a in assess(fs, facts_of(rec))}


def suggestible(drug, rec):
    return not evaluate_drug(drug, facts_of(rec)).blocked


# ------------------------------------------------------------------------------------ ACG 2009 GI x CV grid
def test_low_gi_low_cv_any_nsaid_alone():
    rec = record(age=40)
    assert facts_of(rec).get("gi_risk_tier") == "low"
    assert evaluate_drug("ibuprofen", facts_of(rec)).add_drugs == ()


def test_moderate_gi_low_cv_cox2_or_nsaid_with_ppi():
    rec = record(age=70)                                           # one factor: age > 65
    assert facts_of(rec).get("gi_risk_tier") == "moderate"
    assert evaluate_drug("naproxen", facts_of(rec)).add_drugs == (("omeprazole", "gastroprotection"),)
    assert suggestible("celecoxib", rec) and evaluate_drug("celecoxib", facts_of(rec)).add_drugs == ()


def test_high_gi_from_a_complicated_ulcer_history_cox2_with_ppi_only():
    rec = record(age=50, conditions=[condition("u", ICD, "K92.2", onset_days=400, status="resolved")])
    facts = facts_of(rec)
    assert facts.get("gi_risk_tier") == "high"
    assert not suggestible("naproxen", rec) and not suggestible("ibuprofen", rec)
    celecoxib = evaluate_drug("celecoxib", facts)
    assert not celecoxib.blocked and celecoxib.add_drugs == (("omeprazole", "gastroprotection"),)


def test_high_gi_from_more_than_two_factors():
    rec = record(age=70, meds=[med_request("p", PREDNISONE, 20), med_request("a", ASPIRIN, 300)],
                 conditions=[condition("u", SNOMED, "13200003", onset_days=900, status="resolved")])
    assert facts_of(rec).get("gi_risk_tier") == "high"


def test_low_gi_high_cv_naproxen_with_ppi():
    rec = record(age=50, meds=[med_request("a", ASPIRIN, 300)])     # aspirin: one factor, and high CV risk
    facts = facts_of(rec)
    assert facts.get("cv_risk_high") and facts.get("gi_risk_tier") == "moderate"
    assert evaluate_drug("naproxen", facts).add_drugs == (("omeprazole", "gastroprotection"),)
    assert not suggestible("celecoxib", rec) and not suggestible("ibuprofen", rec)


def test_high_gi_high_cv_no_nsaid_at_all_and_acetaminophen_is_offered():
    rec = record(age=70, meds=[med_request("a", ASPIRIN, 300)],
                 conditions=[condition("u", ICD, "K92.2", onset_days=400, status="resolved")])
    for drug in ("naproxen", "ibuprofen", "diclofenac", "celecoxib"):
        assert not suggestible(drug, rec), drug
    a = by_pathway(rec, findings("si_joint_synovitis"))["axspa_si_synovitis"]
    assert [o.drug for o in a.options] == ["acetaminophen"]


# --------------------------------------------------------------------------------------------- acetaminophen
def test_anticoagulant_gives_acetaminophen_not_an_nsaid():
    rec = record(meds=[med_request("w", APIXABAN, 300)])
    a = by_pathway(rec, findings("si_joint_synovitis"))["axspa_si_synovitis"]
    assert [o.drug for o in a.options] == ["acetaminophen"]
    assert {o.drug for o in a.blocked} == {"naproxen", "ibuprofen", "diclofenac", "celecoxib"}


def test_acetaminophen_order_has_one_dose_and_a_daily_ceiling():
    k = clinical_knowledge()
    mr = medication_request("acetaminophen", "non_nsaid_analgesic", CTX, k, "Reassess on {date}.")
    dosage = mr["dosageInstruction"][0]
    assert mr["medicationCodeableConcept"]["coding"][0]["code"] == "198440"
    assert dosage["doseAndRate"] == [{"doseQuantity": {"value": 1000, "unit": "mg",
                                                       "system": "http://unitsofmeasure.org", "code": "mg"}}]
    assert dosage["asNeededBoolean"] is True
    assert dosage["maxDosePerPeriod"]["numerator"]["value"] == 3000
    assert "expert advice" in dosage["text"]


def test_liver_disease_lowers_the_acetaminophen_ceiling_and_age_is_said():
    rec = record(age=80, conditions=[condition("l", ICD, "K74.60", onset_days=900)],
                 meds=[med_request("w", APIXABAN, 300)])
    safety = evaluate_drug("acetaminophen", facts_of(rec))
    assert safety.dosing == "non_nsaid_analgesic_reduced"
    checks = {f.check for f in safety.flags}
    assert {"acetaminophen_liver", "acetaminophen_older_adult"} <= checks
    a = by_pathway(rec, findings("si_joint_synovitis"))["axspa_si_synovitis"]
    assert a.options[0].dosing == "non_nsaid_analgesic_reduced"
    k = clinical_knowledge()
    mr = medication_request("acetaminophen", a.options[0].dosing, CTX, k, "Reassess on {date}.")
    assert mr["dosageInstruction"][0]["maxDosePerPeriod"]["numerator"]["value"] == 2000


# ------------------------------------------------------------------------------------------------ duplicates
def test_a_second_nsaid_warns_to_stop_the_first_including_over_the_counter():
    otc = {"resourceType": "MedicationStatement", "id": "otc", "status": "active",
           "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": {"text": "Motrin IB 200mg"},
           "effectivePeriod": {"start": "2026-10-01"}}
    prefetch = {"patient": patient(), "conditions": bundle(()), "reports": bundle(()),
                "medicationRequests": bundle(()), "medicationStatements": bundle([otc]),
                "observations": bundle(()), "allergies": bundle(())}
    rec = PatientRecord.from_prefetch(prefetch)
    flags = {f.check: f for f in evaluate_drug("naproxen", facts_of(rec)).flags}
    assert "duplicate_therapy" in flags and "ibuprofen" in flags["duplicate_therapy"].text
    assert "stop it" in flags["duplicate_therapy"].text
    # a refill of the same drug is not a duplicate
    assert "duplicate_therapy" not in {f.check for f in evaluate_drug("ibuprofen", facts_of(rec)).flags}


def test_a_second_biologic_warns():
    rec = record(meds=[med_request("b", ADALIMUMAB, 100)])
    flags = {f.check: f for f in evaluate_drug("secukinumab", facts_of(rec)).flags}
    assert "adalimumab" in flags["duplicate_therapy"].text


# -------------------------------------------------------------------------------------- why a biologic stopped
def _stopped_tnf(reason):
    res = med_request("t", ADALIMUMAB, 300, 10, "stopped")
    if reason is not None:
        res["statusReason"] = reason
    return record(conditions=[condition("c", ICD, "M46.1", onset_days=600)],
                  meds=[med_request("n", NAPROXEN, 500, 400, "stopped"), res],
                  observations=[pain("o1", 7, 200), pain("o2", 7, 3), observation("t1", "71773-6", result="negative"),
                                observation("h1", "5196-1", result="negative")])


def test_stop_reason_from_coding_display_and_text():
    coded = {"coding": [{"system": SNOMED, "code": "0", "display": "Secondary loss of response"}]}
    a = by_pathway(_stopped_tnf(coded), findings("active_sacroiliitis"))["refractory_sacroiliitis"]
    assert a.step.id == "tnf_switch"
    a = by_pathway(_stopped_tnf({"text": "never worked, BASDAI unchanged"}),
                   findings("active_sacroiliitis"))["refractory_sacroiliitis"]
    assert a.step.id == "il17_inhibitor"


def test_no_stop_reason_asks_for_the_response_check_and_recommends_none():
    a = by_pathway(_stopped_tnf(None), findings("active_sacroiliitis"))["refractory_sacroiliitis"]
    assert a.step.id == "stop_reason_unknown"
    drugs = [o.drug for o in a.options]
    assert "adalimumab" not in drugs and {"secukinumab", "etanercept"} <= set(drugs)
    assert not any(o.recommended for o in a.options)


# --------------------------------------------------------------------------------- doses by the coded indication
def _il17_card(code_system, code):
    rec = record(conditions=[condition("c", code_system, code, onset_days=600)],
                 meds=[med_request("n", NAPROXEN, 500, 400, "stopped"),
                       med_request("t", ADALIMUMAB, 300, 10, "stopped", reason="primary non-response")],
                 observations=[pain("o1", 7, 200), pain("o2", 7, 3), observation("t1", "71773-6", result="negative"),
                               observation("h1", "5196-1", result="negative")])
    k = clinical_knowledge()
    facts = facts_of(rec)
    card = next(c.to_json() for c in pathway_cards(findings("active_sacroiliitis"), facts, "h", CTX, k)
                if c.to_json()["extension"]["org.msk-cds.pathway"] == "refractory_sacroiliitis")
    return {r["medicationCodeableConcept"]["coding"][0]["code"]: r for s in card["suggestions"] for act in s["actions"]
            if (r := act["resource"])["resourceType"] == "MedicationRequest"}


def test_ixekizumab_in_nr_axspa_has_no_loading_dose():
    ixe = _il17_card(ICD, "M45.A8")["1745103"]
    assert len(ixe["dosageInstruction"]) == 1
    assert ixe["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 80
    assert "160" not in ixe["dosageInstruction"][0]["text"]


def test_ixekizumab_in_ankylosing_spondylitis_loads_160_mg_once_as_its_own_dosage():
    ixe = _il17_card(SNOMED, "9631008")["1745103"]
    load, maintenance = ixe["dosageInstruction"]
    assert (load["sequence"], maintenance["sequence"]) == (1, 2)
    assert load["doseAndRate"][0]["doseQuantity"]["value"] == 160 and load["timing"]["repeat"]["count"] == 1
    assert maintenance["doseAndRate"][0]["doseQuantity"]["value"] == 80
    assert maintenance["timing"]["repeat"]["period"] == 4 and maintenance["timing"]["repeat"]["periodUnit"] == "wk"


def test_secukinumab_step_up_only_in_ankylosing_spondylitis():
    assert "300 mg" not in str(_il17_card(ICD, "M45.A8")["1599792"])
    assert "300 mg" in _il17_card(ICD, "M45.8")["1599792"]["dosageInstruction"][0]["text"]


def test_every_medication_order_carries_one_dose_per_dosage_and_a_product_code():
    k = clinical_knowledge()
    for drug in k.medications.drugs:
        for key, dosing in drug.dosing.items():
            mr = medication_request(drug.id, key, CTX, k, "Reassess on {date}.")
            code = mr["medicationCodeableConcept"]["coding"][0]["code"]
            assert code in {p.code for p in drug.products}, (drug.id, key)
            for dosage in mr["dosageInstruction"]:
                assert list(dosage["doseAndRate"][0]) == ["doseQuantity"], (drug.id, key)


# --------------------------------------------------------------------------------------- coded diagnoses enter D
def test_coded_axial_disease_enters_the_refractory_pathway_never_early_sacroiliitis():
    for system, code in ((SNOMED, "9631008"), (ICD, "M45.6"), (ICD, "M45.A5"), (SNOMED, "723116002"),
                         (SNOMED, "713777005")):
        rec = record(conditions=[condition("c", system, code, onset_days=400)])
        got = by_pathway(rec, findings("si_joint_synovitis"))
        assert "refractory_sacroiliitis" in got and "axspa_si_synovitis" not in got, code
