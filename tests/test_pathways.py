"""Pathway engine: patient facts from built records and the step each pathway lands on (seeds 000-004)."""
from __future__ import annotations

import datetime as dt

import pytest

from hooks.knowledge.clinical import clinical_knowledge
from hooks.model import ReportFacts
from hooks.pathways.engine import assess
from clinical_builders import (ADALIMUMAB, CELECOXIB, ETANERCEPT, ICD, NAPROXEN, NOW, SNOMED, allergy,
                                     condition, facts_of, finding, findings, med_request, observation, pain, record)

M461 = ("cond-si", ICD, "M46.1")
HIP_PAIN = ("cond-hip", ICD, "M25.552")


def by_pathway(rec, fs):
    return {a.pathway.id: a for a in assess(fs, facts_of(rec))}


def option_drugs(a):
    return [o.drug for o in a.options]


# ------------------------------------------------------------------------------------------------------ facts
def test_nsaid_trial_days_merge_consecutive_courses_and_current_status():
    rec = record(meds=[med_request("m1", NAPROXEN, 60, 40, "completed"),
                       med_request("m2", CELECOXIB, 39, None, "active")])
    facts = facts_of(rec)
    assert facts.get("nsaid_trial_days") == 60
    assert facts.get("nsaid_current") is True
    assert set(facts.sources["nsaid_trial_days"]) == {"MedicationRequest/m1", "MedicationRequest/m2"}


def test_a_medication_given_by_reference_to_a_contained_medication_is_recognised():
    res = med_request("m1", "0", 40, 5, "completed")
    del res["medicationCodeableConcept"]
    res["contained"] = [{"resourceType": "Medication", "id": "med",
                         "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                              "code": NAPROXEN}]}}]
    res["medicationReference"] = {"reference": "#med"}
    assert facts_of(record(meds=[res])).get("nsaid_trial_days") == 35


def test_a_gap_longer_than_allowed_starts_a_new_trial():
    rec = record(meds=[med_request("m1", NAPROXEN, 60, 50, "completed"),
                       med_request("m2", NAPROXEN, 30, 10, "completed")])
    assert facts_of(rec).get("nsaid_trial_days") == 20


def test_pain_score_and_duration_come_from_observations_and_pain_conditions():
    rec = record(conditions=[condition(*HIP_PAIN, onset_days=120)],
                 observations=[pain("o1", 7, 60), pain("o2", 5, 2)])
    facts = facts_of(rec)
    assert facts.get("pain_nrs") == 5
    assert facts.get("pain_days") == 120
    assert facts.sources["pain_nrs"] == ("Observation/o2",)


@pytest.mark.parametrize("reason,kind", [
    ("Primary non-response at week 16", "tnf_failed_primary"),
    ("Loss of response after 2 years (secondary non-response)", "tnf_failed_secondary"),
])
def test_tnf_failure_kind_is_read_from_status_reason(reason, kind):
    rec = record(meds=[med_request("b1", ADALIMUMAB, 400, 30, "stopped", reason)])
    facts = facts_of(rec)
    assert facts.get("tnf_failed") is True
    assert facts.get(kind) is True
    assert facts.failed_families == {"adalimumab"}


def test_unobtainable_data_makes_facts_unknown_not_absent():
    rec = record(unavailable=["medicationRequests", "medicationStatements", "observations", "allergies"])
    facts = facts_of(rec)
    for name in ("nsaid_trial_days", "nsaid_current", "pain_nrs", "egfr", "nsaid_allergy"):
        assert facts.get(name) is None, name
    assert "medication history" in facts.unknown and "allergies" in facts.unknown


def test_refuted_and_resolved_conditions_do_not_count():
    rec = record(conditions=[condition("c1", ICD, "M46.1", verification="refuted"),
                             condition("c2", ICD, "E11.9", status="resolved")])
    facts = facts_of(rec)
    assert "sacroiliitis" not in facts.conditions
    assert facts.get("diabetes") is False


# ---------------------------------------------------------------------------------------------- pathway A (000)
def test_no_finding_no_assessment_and_red_marrow_reconversion_alone_is_not_a_reason():
    rec = record()
    assert assess(findings(), facts_of(rec)) == ()
    assert assess(findings("red_marrow_reconversion"), facts_of(rec)) == ()


def test_negated_synovitis_does_not_start_a_pathway():
    rec = record()
    assert assess(findings(finding("si_joint_synovitis", "negated")), facts_of(rec)) == ()


def test_a_nsaid_naive_gets_continuous_nsaid_with_physiotherapy():
    a = by_pathway(record(), findings("si_joint_synovitis", "red_marrow_reconversion"))["axspa_si_synovitis"]
    assert a.rule == "axspa_si_synovitis.nsaid_trial"
    assert option_drugs(a) == ["naproxen", "ibuprofen", "diclofenac", "celecoxib"]
    # no NSAID is preferred over another by the guideline: none is marked recommended (issue 16)
    assert not any(o.recommended for o in a.options) and "physiotherapy_pelvic_girdle" in a.companions


def test_a_gi_risk_recommends_the_cox2_inhibitor_and_adds_a_ppi_to_the_others():
    a = by_pathway(record(age=70), findings("si_joint_synovitis"))["axspa_si_synovitis"]
    assert a.options[0].drug == "celecoxib" and a.options[0].recommended
    naproxen = next(o for o in a.options if o.drug == "naproxen")
    assert naproxen.safety.add_drugs == (("omeprazole", "gastroprotection"),)
    assert a.options[0].safety.add_drugs == ()


def test_a_already_on_an_nsaid_under_a_month_is_not_suggested_again():
    rec = record(meds=[med_request("m1", NAPROXEN, 12)], observations=[pain("o1", 6, 1)])
    a = by_pathway(rec, findings("si_joint_synovitis"))["axspa_si_synovitis"]
    assert a.rule == "axspa_si_synovitis.nsaid_trial"
    assert a.options == () and a.already_on == ("naproxen",)
    assert a.text_values["nsaid_trial_due"] == (NOW - dt.timedelta(days=12) + dt.timedelta(days=28)).date().isoformat()


def test_a_failed_nsaid_month_goes_to_si_injection_then_tnf_after_the_injection():
    meds = [med_request("m1", NAPROXEN, 60, 5, "stopped", "inadequate response")]
    obs = [pain("o1", 7, 50), pain("o2", 6, 2)]
    a = by_pathway(record(meds=meds, observations=obs), findings("si_joint_synovitis"))["axspa_si_synovitis"]
    assert a.rule == "axspa_si_synovitis.si_injection"
    assert a.services == ("si_joint_injection", "physiotherapy_pelvic_girdle")
    injection = {"resourceType": "DiagnosticReport", "id": "inj", "status": "final",
                 "code": {"text": "Fluoroscopy-guided left sacroiliac joint injection"}}
    a = by_pathway(record(meds=meds, observations=obs, reports=[injection]),
                   findings("si_joint_synovitis"))["axspa_si_synovitis"]
    assert a.rule == "axspa_si_synovitis.tnf_inhibitor"
    assert option_drugs(a) == ["adalimumab", "etanercept", "golimumab"]


def test_a_responding_to_nsaid_switches_to_on_demand():
    rec = record(meds=[med_request("m1", NAPROXEN, 60, 5, "completed")], observations=[pain("o1", 2, 3)])
    assert by_pathway(rec, findings("si_joint_synovitis"))["axspa_si_synovitis"].rule == \
        "axspa_si_synovitis.on_demand_nsaid"


def test_a_tnf_failure_goes_to_il17_and_biologics_contraindicated_to_jak():
    meds = [med_request("b1", ADALIMUMAB, 300, 20, "stopped", "primary non-response")]
    a = by_pathway(record(meds=meds), findings("si_joint_synovitis"))["axspa_si_synovitis"]
    assert a.rule == "axspa_si_synovitis.il17_inhibitor"
    assert option_drugs(a) == ["secukinumab", "ixekizumab"]
    ibd = condition("c-ibd", ICD, "K50.90")
    a = by_pathway(record(meds=meds, conditions=[ibd]), findings("si_joint_synovitis"))["axspa_si_synovitis"]
    assert option_drugs(a) == ["upadacitinib", "tofacitinib"]
    assert {o.drug for o in a.blocked} == {"secukinumab", "ixekizumab"}
    assert "JAK" in a.summary


def test_a_defers_to_refractory_sacroiliitis_when_m46_1_is_on_the_problem_list():
    rec = record(conditions=[condition(*M461)])
    assert set(by_pathway(rec, findings("si_joint_synovitis"))) == {"refractory_sacroiliitis"}


# ---------------------------------------------------------------------------------------------- pathway B (001)
def test_b_without_symptoms_says_imaging_is_not_used_in_isolation():
    a = by_pathway(record(), findings("labral_calcification"))["labral_calcification"]
    assert a.rule == "labral_calcification.imaging_in_isolation" and a.options == () and a.services == ()


@pytest.mark.parametrize("pain_days,nsaid_days,extra,rule", [
    (5, 0, (), "labral_calcification.conservative"),
    (30, 0, (), "labral_calcification.conservative"),
    (30, 10, (), "labral_calcification.physiotherapy"),
    (80, 10, (), "labral_calcification.hip_injection"),
    (110, 10, (), "labral_calcification.mr_arthrography"),
    (110, 10, ("labral_tear",), "labral_calcification.orthopaedic_referral"),
])
def test_b_steps_follow_the_nsaid_course_and_how_long_the_hip_has_hurt(pain_days, nsaid_days, extra, rule):
    meds = [med_request("m", "197806", nsaid_days + 2, 2, "completed")] if nsaid_days else []
    rec = record(conditions=[condition(*HIP_PAIN, onset_days=pain_days)], meds=meds)
    a = by_pathway(rec, findings("labral_calcification", *extra))["labral_calcification"]
    assert a.rule == rule


def test_b_first_step_is_ibuprofen_and_an_nsaid_allergy_withholds_every_nsaid():
    rec = record(conditions=[condition(*HIP_PAIN, onset_days=3)])
    a = by_pathway(rec, findings("labral_calcification"))["labral_calcification"]
    assert option_drugs(a)[0] == "ibuprofen"
    rec = record(conditions=[condition(*HIP_PAIN, onset_days=3)], allergies=[allergy("al1", text="Ibuprofen")])
    a = by_pathway(rec, findings("labral_calcification"))["labral_calcification"]
    assert option_drugs(a) == ["acetaminophen"] and {o.drug for o in a.blocked} == {"ibuprofen", "celecoxib"}
    assert a.services == ("physiotherapy_hip",)


# ---------------------------------------------------------------------------------------------- pathway C (002)
def test_c_possible_osteomyelitis_with_diabetes_is_critical_and_urgent():
    rec = record(conditions=[condition("dm", ICD, "E11.610")])
    a = by_pathway(rec, findings("bone_marrow_edema", finding("osteomyelitis", "uncertain")))["bme_differential"]
    assert a.rule == "bme_differential.osteomyelitis_diabetic"
    assert a.step.indicator == "critical" and a.step.service_priority == "urgent"
    assert "diabetic_foot_mdt_referral" in a.services


@pytest.mark.parametrize("concepts,rule", [
    (("bone_marrow_edema", "osteonecrosis"), "bme_differential.osteonecrosis"),
    (("bone_marrow_edema", "subchondral_insufficiency_fracture"), "bme_differential.insufficiency_fracture"),
    (("diffuse_marrow_signal_change",), "bme_differential.diffuse_marrow_change"),
    (("bone_marrow_edema", "physiological_bme"), "bme_differential.physiological"),
    (("bone_marrow_edema",), "bme_differential.nonspecific"),
])
def test_c_branches(concepts, rule):
    assert by_pathway(record(), findings(*concepts))["bme_differential"].rule == rule


SI_MRI = ReportFacts("DiagnosticReport/r1", "MR", "sacroiliac", "36031-3")
WRIST_MRI = ReportFacts("DiagnosticReport/r1", "MR", "wrist", None)
UNKNOWN_MRI = ReportFacts("DiagnosticReport/r1", "MR", None, None)


@pytest.mark.parametrize("lesions,reports,rule", [
    # structural lesions at an axial site, or naming no site in an SI-joint report: the axSpA pattern
    ([finding("erosion", site="ilium"), finding("deep_bone_marrow_edema", site="sacrum")], [], "axspa_pattern"),
    ([finding("erosion"), finding("deep_bone_marrow_edema")], [SI_MRI], "axspa_pattern"),
    ([finding("ankylosis", site="si_joint")], [WRIST_MRI], "axspa_pattern"),
    # the same lesions at the wrist or MCP joints, or with no site and no known region: not an axSpA card
    ([finding("erosion", site="hand"), finding("deep_bone_marrow_edema", site="wrist")], [], "nonspecific"),
    ([finding("erosion"), finding("fat_metaplasia")], [WRIST_MRI], "nonspecific"),
    ([finding("erosion"), finding("sclerosis")], [UNKNOWN_MRI], "nonspecific"),
])
def test_c_axspa_pattern_needs_axial_lesions(lesions, reports, rule):
    fs = findings(finding("bone_marrow_edema", site="wrist"), *lesions, reports=reports)
    assert by_pathway(record(), fs)["bme_differential"].rule == f"bme_differential.{rule}"


def test_c_postpartum_context_is_physiological():
    rec = record(conditions=[condition("pp", SNOMED, "86569001")])
    assert by_pathway(rec, findings("bone_marrow_edema"))["bme_differential"].rule == "bme_differential.physiological"


def test_c_says_stir_must_be_read_with_t1_when_t1_is_missing():
    report = ReportFacts("DiagnosticReport/r1", "MR", "pelvis", None, t1_sequence=False, fluid_sensitive_sequence=True)
    a = by_pathway(record(), findings("bone_marrow_edema", reports=[report]))["bme_differential"]
    assert "T1" in a.notes[0] and "DiagnosticReport/r1" in a.notes[0]


def test_c_nonspecific_edema_defers_to_the_etiology_pathway():
    got = by_pathway(record(), findings("bone_marrow_edema", "transient_bme_syndrome"))
    assert set(got) == {"bme_by_etiology"}


# ---------------------------------------------------------------------------------------------- pathway D (003)
def test_d_not_yet_eligible_says_what_comes_first():
    rec = record(conditions=[condition(*M461)], meds=[med_request("m1", NAPROXEN, 12)],
                 observations=[pain("o1", 7, 100), pain("o2", 7, 5)])
    a = by_pathway(rec, findings("active_sacroiliitis"))["refractory_sacroiliitis"]
    assert a.rule == "refractory_sacroiliitis.not_yet_eligible"
    assert a.options == () and a.already_on == ("naproxen",)


def test_d_eligible_gets_tnf_inhibitors_with_screening_and_adjunct_injection():
    rec = record(conditions=[condition(*M461)], meds=[med_request("m1", NAPROXEN, 70, 5, "stopped")],
                 observations=[pain("o1", 7, 100), pain("o2", 7, 5)])
    a = by_pathway(rec, findings("active_sacroiliitis"))["refractory_sacroiliitis"]
    assert a.rule == "refractory_sacroiliitis.tnf_inhibitor"
    assert option_drugs(a) == ["adalimumab", "etanercept", "golimumab", "infliximab", "certolizumab"]
    assert a.options[0].safety.add_services == ("tb_igra", "hbsag", "anti_hbc")
    assert "si_joint_injection" in a.companions


def test_d_screening_on_record_is_not_ordered_again():
    rec = record(conditions=[condition(*M461)], meds=[med_request("m1", NAPROXEN, 70, 5, "stopped")],
                 observations=[pain("o1", 7, 100), pain("o2", 7, 5), observation("t", "71773-6", result="negative"),
                               observation("h", "5196-1", result="negative")])
    a = by_pathway(rec, findings("active_sacroiliitis"))["refractory_sacroiliitis"]
    assert a.options[0].safety.add_services == ()


def test_d_primary_nonresponse_il17_secondary_a_different_tnf_never_the_same_family():
    base = dict(conditions=[condition(*M461)], observations=[pain("o1", 7, 300)])
    primary = record(meds=[med_request("b1", ADALIMUMAB, 300, 20, "stopped", "primary non-response")], **base)
    assert by_pathway(primary, findings("active_sacroiliitis"))["refractory_sacroiliitis"].rule == \
        "refractory_sacroiliitis.il17_inhibitor"
    secondary = record(meds=[med_request("b1", ADALIMUMAB, 300, 20, "stopped", "secondary loss of response")], **base)
    a = by_pathway(secondary, findings("active_sacroiliitis"))["refractory_sacroiliitis"]
    assert a.rule == "refractory_sacroiliitis.tnf_switch"
    assert "adalimumab" not in option_drugs(a) and option_drugs(a)[0] == "etanercept"


def test_d_trial_done_but_pain_criterion_unmet_does_not_restart_the_nsaid():
    rec = record(conditions=[condition(*M461)], meds=[med_request("m1", NAPROXEN, 110, 50, "stopped")],
                 observations=[pain("o1", 6, 110), pain("o2", 3, 4)])
    a = by_pathway(rec, findings("active_sacroiliitis"))["refractory_sacroiliitis"]
    assert a.rule == "refractory_sacroiliitis.criteria_not_met"
    assert a.options == () and a.services == ("physiotherapy_supervised",)


def test_d_on_a_tnf_inhibitor_gets_the_response_check_date():
    rec = record(conditions=[condition(*M461)], meds=[med_request("b1", ETANERCEPT, 40)])
    a = by_pathway(rec, findings("active_sacroiliitis"))["refractory_sacroiliitis"]
    assert a.rule == "refractory_sacroiliitis.response_check" and a.options == ()
    assert a.text_values["response_check_due"] == (NOW - dt.timedelta(days=40) + dt.timedelta(days=84)).date().isoformat()


def test_d_pregnancy_prefers_certolizumab():
    rec = record(conditions=[condition(*M461), condition("preg", SNOMED, "77386006")],
                 meds=[med_request("m1", NAPROXEN, 70, 5, "stopped")], observations=[pain("o1", 7, 100)])
    a = by_pathway(rec, findings("active_sacroiliitis"))["refractory_sacroiliitis"]
    assert a.options[0].drug == "certolizumab" and a.options[0].recommended
    assert [o.drug for o in a.withheld] == ["naproxen"]


# ---------------------------------------------------------------------------------------------- pathway E (004)
@pytest.mark.parametrize("concept,pain_days,rule", [
    ("vertebral_compression_fracture", 20, "bme_by_etiology.vcf_conservative"),
    ("vertebral_compression_fracture", 120, "bme_by_etiology.vcf_augmentation"),
    ("transient_bme_syndrome", 30, "bme_by_etiology.tbmes_conservative"),
    ("transient_bme_syndrome", 120, "bme_by_etiology.tbmes_refractory"),
    ("charcot_neuroarthropathy", 10, "bme_by_etiology.charcot_offloading"),
    ("ra_with_bme", 10, "bme_by_etiology.inflammatory_bme"),
])
def test_e_steps_by_etiology(concept, pain_days, rule):
    rec = record(conditions=[condition("lbp", ICD, "M54.50", onset_days=pain_days)])
    assert by_pathway(rec, findings(concept))["bme_by_etiology"].rule == rule


def test_e_refractory_tbmes_orders_vitamin_d_and_calcium_with_denosumab():
    rec = record(conditions=[condition("lbp", ICD, "M54.50", onset_days=120)])
    a = by_pathway(rec, findings("transient_bme_syndrome"))["bme_by_etiology"]
    assert option_drugs(a) == ["denosumab"]
    assert a.options[0].safety.add_services == ("vitamin_d", "calcium") and a.options[0].safety.hold


def test_every_rule_id_is_stable_and_unique():
    k = clinical_knowledge()
    rules = [p.rule(s.id) for p in k.pathway_file.pathways for s in p.steps]
    assert len(rules) == len(set(rules))
    assert "refractory_sacroiliitis.tnf_inhibitor" in rules and "axspa_si_synovitis.nsaid_trial" in rules
    assert "order_check.methotrexate_axial" in [c.rule for c in k.pathway_file.order_checks]
