"""One number, one place (issue 17): a threshold or a dose changed in a COPY of the knowledge files is followed by
every use (step conditions, due dates, card text, the order resource), and knowledge that contradicts itself (a
dose that is not a whole number of the product's strength, a literal threshold, an unknown fact) stops start-up."""
from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import pytest

import hooks.knowledge as knowledge_pkg
from hooks.cards.plans import plan_pathway_card
from hooks.cards.render import render
from hooks.cards.suggestions import OrderContext
from hooks.knowledge import KnowledgeError, load_yaml
from hooks.knowledge.cards import card_wording
from hooks.knowledge.clinical import clinical_knowledge
from hooks.pathways import facts as facts_module
from hooks.pathways.engine import assess
from hooks.pathways.facts import patient_facts
from clinical_builders import (ICD, NAPROXEN, NOW, condition, findings, med_request, observation, pain, record)

KNOWLEDGE = Path(knowledge_pkg.__file__).resolve().parent


def _reset_caches() -> None:
    load_yaml.cache_clear()
    clinical_knowledge.cache_clear()
    card_wording.cache_clear()
    facts_module._INDEX = None


@pytest.fixture
def knowledge_copy(tmp_path, monkeypatch):
    """A copy of hooks/knowledge the test may edit; the service loads it instead of the real one."""
    copy = tmp_path / "knowledge"
    shutil.copytree(KNOWLEDGE, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setattr(knowledge_pkg, "KNOWLEDGE_DIR", copy)
    _reset_caches()

    def edit(name: str, old: str, new: str, count: int | None = None) -> None:
        path = copy / name
        text = path.read_text(encoding="utf-8")
        assert old in text, (name, old)
        if count is not None:
            assert text.count(old) == count, (name, old, text.count(old))
        path.write_text(text.replace(old, new), encoding="utf-8")
        _reset_caches()

    yield edit
    monkeypatch.undo()
    _reset_caches()


def _cards(rec, fs):
    k = clinical_knowledge()
    facts = patient_facts(rec, NOW, k)
    octx = OrderContext("p1", "Practitioner/dr1", NOW, "proposal", None)
    wording = card_wording()
    assessments = assess(fs, facts, k)
    return facts, {a.pathway.id: (a, render(plan_pathway_card(a, fs, facts, "hook-1", octx, k, wording), k, wording,
                                            "hook-1").to_json()) for a in assessments}


def _orders(card):
    return [a["resource"] for s in card.get("suggestions", ()) for a in s["actions"]
            if a["type"] == "create" and a["resource"]["resourceType"] == "MedicationRequest"]


# A patient 35 days into a continuous naproxen course with pain 7/10 and M46.1: the 28-day trial is over.
def _on_naproxen_35_days():
    return record(conditions=[condition("c1", ICD, "M46.1", onset_days=200)],
                  meds=[med_request("m1", NAPROXEN, 35)], observations=[pain("o1", 7, 100), pain("o2", 7, 2)])


def test_nsaid_failure_days_changed_in_one_place_is_followed_everywhere(knowledge_copy):
    facts, cards = _cards(_on_naproxen_35_days(), findings("active_sacroiliitis"))
    a, _ = cards["refractory_sacroiliitis"]
    assert a.step.id == "tnf_inhibitor"                                    # 35 >= 28: the trial failed

    knowledge_copy("pathways.yaml", "  nsaid_failure_days: 28", "  nsaid_failure_days: 42", count=1)
    k = clinical_knowledge()
    facts, cards = _cards(_on_naproxen_35_days(), findings("active_sacroiliitis"))
    a, card = cards["refractory_sacroiliitis"]
    # the step conditions
    assert a.step.id == "not_yet_eligible"                                 # 35 < 42: not yet
    # the due date: 42 days after the start of the course
    start = (NOW - dt.timedelta(days=35)).date()
    assert facts.dates["nsaid_trial_due"] == (start + dt.timedelta(days=42)).isoformat()
    # the card text
    assert "at least 42 days" in card["detail"] and "28" not in card["detail"]
    # the order resource: the trial order lasts the trial (pathway A step 1 for an NSAID-naive patient)
    _, cards = _cards(record(), findings("si_joint_synovitis"))
    orders = _orders(cards["axspa_si_synovitis"][1])
    assert orders and all(
        o["dosageInstruction"][0]["timing"]["repeat"]["boundsDuration"]["value"] == 42 for o in orders
        if o["medicationCodeableConcept"]["coding"][0]["code"] != "198051")     # the PPI has no duration
    assert k.drugs["naproxen"].dosing["continuous_nsaid"].reassess_days == 42


def test_a_threshold_in_a_condition_and_its_card_text_follow_the_parameter(knowledge_copy):
    knowledge_copy("pathways.yaml", "  tnf_pain_nrs_above: 4", "  tnf_pain_nrs_above: 7", count=1)
    _, cards = _cards(_on_naproxen_35_days(), findings("active_sacroiliitis"))
    a, card = cards["refractory_sacroiliitis"]
    assert a.step.id == "criteria_not_met"                                 # 7/10 is no longer > 7
    assert "above 7/10" in card["detail"] and "4/10" not in card["detail"]


def test_a_dose_changed_with_its_product_changes_the_order_and_its_text(knowledge_copy):
    block = ('      continuous_nsaid:\n        product: "198014"\n        dose: {value: 500, unit: mg}')
    knowledge_copy("medications.yaml", block,
                   '      continuous_nsaid:\n        product: "198013"\n        dose: {value: 250, unit: mg}', count=1)
    _, cards = _cards(record(), findings("si_joint_synovitis"))
    naproxen = next(o for o in _orders(cards["axspa_si_synovitis"][1])
                    if o["medicationCodeableConcept"]["coding"][0]["code"].startswith("1980"))
    assert naproxen["medicationCodeableConcept"]["coding"][0] == {
        "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "198013",
        "display": "naproxen 250 MG Oral Tablet"}
    dosage = naproxen["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 250
    assert dosage["text"].startswith("Naproxen 250 mg") and "500" not in dosage["text"]


def test_a_dose_that_disagrees_with_the_product_strength_is_refused_at_start(knowledge_copy):
    knowledge_copy("medications.yaml",
                   '      continuous_nsaid:\n        product: "198014"\n        dose: {value: 500, unit: mg}',
                   '      continuous_nsaid:\n        product: "198014"\n        dose: {value: 250, unit: mg}', count=1)
    with pytest.raises(KnowledgeError, match=r"medications.yaml: drugs.naproxen.dosing.continuous_nsaid: dose 250 mg "
                                             r"is not a whole number of product 198014"):
        clinical_knowledge()


def test_a_dose_in_the_wrong_unit_is_refused(knowledge_copy):
    knowledge_copy("medications.yaml",
                   '      continuous_nsaid:\n        product: "198014"\n        dose: {value: 500, unit: mg}',
                   '      continuous_nsaid:\n        product: "198014"\n        dose: {value: 500, unit: mL}', count=1)
    with pytest.raises(KnowledgeError, match="unit 'mL' does not match product 198014"):
        clinical_knowledge()


def test_a_route_that_does_not_fit_the_product_is_refused(knowledge_copy):
    knowledge_copy("medications.yaml",
                   '        product: "198014"\n        dose: {value: 500, unit: mg}\n        route: oral',
                   '        product: "198014"\n        dose: {value: 500, unit: mg}\n        route: subcutaneous', count=2)
    with pytest.raises(KnowledgeError, match="route 'subcutaneous' does not fit product 198014"):
        clinical_knowledge()


def test_a_dosing_text_that_copies_the_dose_is_refused(knowledge_copy):
    knowledge_copy("medications.yaml", '"Naproxen {dose} by mouth twice daily with food, continuously',
                   '"Naproxen {dose} (two 250 mg tablets) by mouth twice daily with food, continuously', count=1)
    with pytest.raises(KnowledgeError, match=r"copies an amount \('250 mg'\)"):
        clinical_knowledge()


def test_a_dosing_text_without_the_dose_field_is_refused(knowledge_copy):
    knowledge_copy("medications.yaml", '"Naproxen {dose} by mouth twice daily with food, continuously',
                   '"Naproxen 500 mg by mouth twice daily with food, continuously', count=1)
    with pytest.raises(KnowledgeError, match=r"must show the dose as \{dose\}"):
        clinical_knowledge()


def test_a_daily_maximum_below_the_regimen_is_refused(knowledge_copy):
    knowledge_copy("medications.yaml", "max_per_day: {value: 3000, unit: mg}", "max_per_day: {value: 2000, unit: mg}",
                   count=1)
    with pytest.raises(KnowledgeError, match="3000 mg a day, above max_per_day 2000 mg"):
        clinical_knowledge()


def test_a_literal_threshold_in_a_condition_is_refused(knowledge_copy):
    knowledge_copy("pathways.yaml", "{fact: pain_days, gt: vcf_augmentation_pain_days}", "{fact: pain_days, gt: 90}",
                   count=1)
    with pytest.raises(KnowledgeError, match=r"when.all.1.gt: Input should be a valid string"):
        clinical_knowledge()


def test_a_rule_naming_an_undeclared_fact_is_refused(knowledge_copy):
    knowledge_copy("pathways.yaml", "{fact: si_injection_done}", "{fact: si_joint_injected}", count=1)
    with pytest.raises(KnowledgeError, match="unknown fact 'si_joint_injected'"):
        clinical_knowledge()


def test_a_fact_dropped_from_the_vocabulary_stops_start_up(knowledge_copy):
    knowledge_copy("facts.yaml", "  si_injection_done:", "  si_injection_recorded:", count=1)
    with pytest.raises(KnowledgeError, match="si_injection_done"):
        clinical_knowledge()


def test_the_code_computes_exactly_the_declared_facts():
    declared = clinical_knowledge().fact_names
    computed = set(patient_facts(record(), NOW).values)
    assert computed == declared


def test_no_condition_in_the_shipped_knowledge_compares_with_a_literal_number():
    text = (KNOWLEDGE / "pathways.yaml").read_text(encoding="utf-8")
    assert not re.findall(r"\b(?:gt|ge|lt|le): *-?\d", text)
