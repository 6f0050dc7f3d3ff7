"""Safety checks before any suggestion: each check fires on its trigger, stays quiet otherwise, and cites a source."""
from __future__ import annotations

import pytest

from hooks.knowledge import KnowledgeError
from hooks.knowledge.clinical import clinical_knowledge
from hooks.safety.checks import CHECKS, evaluate_drug, verify_checks
from clinical_builders import (APIXABAN, ICD, PREDNISONE, SNOMED, allergy, condition, facts_of, med_request,
                               observation, record)


def flags(drug, rec):
    return {f.check: f for f in evaluate_drug(drug, facts_of(rec)).flags}


def test_every_check_in_the_data_has_an_implementation_and_a_citation():
    verify_checks()
    k = clinical_knowledge()
    assert set(CHECKS) == {c.id for c in k.safety.checks}
    for check in k.safety.checks:
        assert check.citations and all(c in k.evidence for c in check.citations)


def test_a_check_missing_from_the_data_stops_start_up():
    k = clinical_knowledge()

    class Partial:
        safety = k.safety.model_copy(update={"checks": k.safety.checks[1:]})

    with pytest.raises(KnowledgeError) as err:
        verify_checks(Partial())
    assert err.value.file == "safety.yaml"


@pytest.mark.parametrize("rec_kwargs,factor", [
    (dict(age=70), "age 70"),
    (dict(conditions=[condition("u", ICD, "K27.9", status="resolved")]), "prior ulcer or GI bleed"),
    (dict(meds=[med_request("a", APIXABAN, 100)]), "anticoagulant"),
    (dict(meds=[med_request("p", PREDNISONE, 20)]), "systemic corticosteroid"),
])
def test_gi_risk_adds_a_ppi_to_a_nonselective_nsaid_and_names_the_factor(rec_kwargs, factor):
    rec = record(**rec_kwargs)
    result = evaluate_drug("naproxen", facts_of(rec))
    gi = {f.check: f for f in result.flags}["gi_risk"]
    assert gi.effect == "substitute" and factor in gi.text
    assert result.add_drugs == (("omeprazole", "gastroprotection"),)
    assert evaluate_drug("celecoxib", facts_of(rec)).add_drugs == ()


def test_no_gi_risk_no_ppi():
    result = evaluate_drug("naproxen", facts_of(record(age=40, observations=[observation("e", "98979-8", 95)])))
    assert result.flags == () and result.add_drugs == ()


def test_anticoagulant_withholds_the_nsaid():
    # HL7 PDDI warfarin-NSAID and AGS Beers: avoid; acetaminophen instead (the step's fallback)
    got = flags("ibuprofen", record(meds=[med_request("a", APIXABAN, 100)]))
    assert got["anticoagulant_nsaid"].effect == "block"
    assert not evaluate_drug("acetaminophen", facts_of(record(meds=[med_request("a", APIXABAN, 100)]))).blocked


@pytest.mark.parametrize("egfr,check,blocked", [(25, "renal_block", True), (45, "renal_warn", False)])
def test_kidney_function(egfr, check, blocked):
    rec = record(observations=[observation("e", "98979-8", egfr)])
    result = evaluate_drug("naproxen", facts_of(rec))
    got = {f.check: f for f in result.flags}
    assert check in got and str(egfr) in got[check].text
    assert result.blocked is blocked
    assert not ({"renal_block", "renal_warn"} - {check}) & set(got)      # one kidney message, not two


def test_unobtainable_kidney_function_withholds_the_nsaid():
    # the labs could not be fetched: kidney function is unknown, and an unknown never becomes a one-click NSAID
    got = flags("naproxen", record(unavailable=["observations"]))
    assert got["renal_block"].effect == "withhold"
    assert evaluate_drug("naproxen", facts_of(record(unavailable=["observations"]))).blocked


def test_kidney_function_not_recorded_is_said_not_assumed_normal():
    # no eGFR in a chart that was read in full: said as unknown, the NSAID stays suggestible
    got = flags("naproxen", record())
    assert got["renal_block"].effect == "unknown"
    assert not evaluate_drug("naproxen", facts_of(record())).blocked


@pytest.mark.parametrize("allergen", [allergy("a", rxnorm="5640"), allergy("a", text="Aspirin - bronchospasm")])
def test_nsaid_allergy_blocks_every_nsaid(allergen):
    rec = record(allergies=[allergen])
    for drug in ("naproxen", "celecoxib"):
        assert evaluate_drug(drug, facts_of(rec)).blocked, drug


def test_sulfonamide_allergy_blocks_celecoxib_only():
    rec = record(allergies=[allergy("a", text="Sulfonamide antibiotics")])
    assert evaluate_drug("celecoxib", facts_of(rec)).blocked
    assert not evaluate_drug("naproxen", facts_of(rec)).blocked


@pytest.mark.parametrize("weeks,blocked", [(12, False), (22, True), (None, True)])
def test_pregnancy_blocks_nsaids_from_20_weeks_and_when_gestation_is_unknown(weeks, blocked):
    obs = [observation("ga", "49051-6", weeks)] if weeks is not None else []
    rec = record(conditions=[condition("preg", SNOMED, "77386006")], observations=obs)
    assert evaluate_drug("naproxen", facts_of(rec)).blocked is blocked


@pytest.mark.parametrize("drug", ["methotrexate", "upadacitinib", "denosumab"])
def test_pregnancy_blocks_methotrexate_jak_and_denosumab(drug):
    rec = record(conditions=[condition("preg", SNOMED, "77386006")])
    assert flags(drug, rec)["pregnancy_contraindicated"].effect == "block"


@pytest.mark.parametrize("drug", ["adalimumab", "secukinumab", "tofacitinib"])
def test_active_serious_infection_blocks_biologics_and_jak(drug):
    rec = record(conditions=[condition("tb", SNOMED, "427099000")])
    assert evaluate_drug(drug, facts_of(rec)).blocked


def test_screening_missing_adds_tb_and_hbv_tests_to_the_suggestion():
    result = evaluate_drug("etanercept", facts_of(record()))
    assert result.add_services == ("tb_igra", "hbsag", "anti_hbc")
    assert "TB" in {f.check: f for f in result.flags}["biologic_screening"].text


def test_positive_screening_says_what_comes_first_and_withholds_the_biologic():
    # a positive TB test: latent TB treatment starts before the biologic (labels); no one-click biologic
    rec = record(observations=[observation("t", "71773-6", result="positive"),
                               observation("h", "5196-1", result="negative")])
    result = evaluate_drug("adalimumab", facts_of(rec))
    got = {f.check: f for f in result.flags}
    assert got["screening_positive"].effect == "block" and "Observation/t" in got["screening_positive"].sources
    assert result.blocked and "latent TB treatment starts first" in got["screening_positive"].text
    assert result.add_services == ()


def test_indeterminate_screening_is_repeated_first():
    indeterminate = observation("t", "71773-6")
    indeterminate["valueString"] = "Indeterminate (low mitogen response)"
    rec = record(observations=[indeterminate, observation("h", "5196-1", result="negative")])
    result = evaluate_drug("etanercept", facts_of(rec))
    assert result.blocked and "indeterminate" in {f.check: f for f in result.flags}["screening_positive"].text


def test_missing_screening_holds_the_biologic_until_the_results():
    result = evaluate_drug("adalimumab", facts_of(record()))
    assert result.hold and result.add_services == ("tb_igra", "hbsag", "anti_hbc")


def test_screening_older_than_a_year_does_not_count():
    rec = record(observations=[observation("t", "71773-6", result="negative", days_ago=500),
                               observation("h", "5196-1", result="negative", days_ago=500)])
    assert evaluate_drug("adalimumab", facts_of(rec)).add_services == ("tb_igra", "hbsag", "anti_hbc")


def test_il17_with_ibd_and_tnf_with_multiple_sclerosis_are_not_suggested():
    rec = record(conditions=[condition("c", ICD, "K50.90"), condition("ms", ICD, "G35")])
    assert evaluate_drug("secukinumab", facts_of(rec)).blocked
    assert evaluate_drug("adalimumab", facts_of(rec)).blocked
    assert not evaluate_drug("upadacitinib", facts_of(rec)).blocked


def test_jak_boxed_warning_from_65():
    assert "jak_boxed_warning" in flags("tofacitinib", record(age=67))
    assert "jak_boxed_warning" not in flags("tofacitinib", record(age=50))


def test_denosumab_needs_vitamin_d_and_calcium_first():
    assert evaluate_drug("denosumab", facts_of(record())).add_services == ("vitamin_d", "calcium")
    rec = record(observations=[observation("d", "62292-8", 32), observation("c", "17861-6", 9.4)])
    assert evaluate_drug("denosumab", facts_of(rec)).add_services == ()
