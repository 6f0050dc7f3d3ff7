"""The card budget (issue 16, design.md "Cards for clinicians") over every golden and every scenario answer: what a
clinician reads in a few seconds, in plain clinical words, with the evidence for that card's own recommendation.

- summary < 140 characters naming the finding and the action;
- detail <= 600 characters of Markdown in the order finding (study and date) -> step -> <= 3 reasons -> <= 1 caution;
- suggestion labels <= 80 characters, verb first; at most three links, to the papers (DOI or publisher page);
- no ids, concept keys, file names, "seed" or "unverified" on the card face;
- each card's source is one of the citations its rule names in the knowledge data.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest

from hooks.knowledge import load_yaml
from hooks.knowledge.cards import card_wording
from hooks.knowledge.clinical import clinical_knowledge
from test_scenarios import NAMES, REQUESTS, run

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "golden"
GOLDENS = sorted(p.name for p in GOLDEN.glob("*.json"))

# The first word of a one-click order: what the click does.
VERBS = {"Start", "Order", "Refer", "Remove", "Replace", "Keep", "Add", "Switch", "Stop", "Book", "Arrange", "Check"}
# Words that say what to do, one of which every summary carries.
ACTIONS = re.compile(
    r"\b(start|switch|refer|referral|consider|check|avoid|advised|use|continue|monitor|complete|correlate|assess|"
    r"protect|offload|work-up|work through|reassess|review|no|not|fits|order|stop|treat|before|first|only)\b", re.I)
LINK_OK = re.compile(r"^https://(doi\.org/10\.|ard\.bmj\.com/content/|www\.fda\.gov/drugs/|github\.com/HL7/)")


def golden_cards(name: str) -> list[Mapping[str, Any]]:
    body = json.loads((GOLDEN / name).read_text())["body"]
    return list(body.get("cards") or [])


def all_golden_cards() -> Iterator[tuple[str, Mapping[str, Any]]]:
    for name in GOLDENS:
        for card in golden_cards(name):
            yield name, card


def face_texts(card: Mapping[str, Any]) -> list[str]:
    """Everything a clinician sees: summary, detail, labels, source label, link labels, override reasons."""
    out = [card["summary"], card.get("detail", ""), card["source"]["label"]]
    out += [s["label"] for s in card.get("suggestions", [])]
    out += [link["label"] for link in card.get("links", [])]
    out += [r.get("display", "") for r in card.get("overrideReasons", [])]
    return out


def budget_problems(card: Mapping[str, Any]) -> list[str]:
    rule = card["extension"]["org.msk-cds.rule"]
    problems = []
    summary, detail = card["summary"], card.get("detail", "")
    if len(summary) >= 140:
        problems.append(f"{rule}: summary {len(summary)} characters")
    if not ACTIONS.search(summary):
        problems.append(f"{rule}: summary names no action: {summary!r}")
    if len(detail) > 600:
        problems.append(f"{rule}: detail {len(detail)} characters")
    blocks = detail.split("\n\n")
    kinds = []
    for block in blocks:
        if block.startswith("**Finding**"):
            kinds.append("finding")
        elif block.startswith("**Draft order**"):
            kinds.append("draft")
        elif block.startswith("**Next step**"):
            kinds.append("step")
        elif block.startswith("_Caution"):
            kinds.append("caution")
        elif all(line.startswith("- ") for line in block.split("\n")):
            kinds.append("reasons")
            if len(block.split("\n")) > 3:
                problems.append(f"{rule}: {len(block.splitlines())} reasons")
        else:
            problems.append(f"{rule}: detail block out of the layout: {block[:60]!r}")
    order = ["finding", "draft", "step", "reasons", "caution"]
    if kinds != sorted(kinds, key=order.index) or len(kinds) != len(set(kinds)):
        problems.append(f"{rule}: detail blocks in the order {kinds}")
    if "step" not in kinds or ("finding" not in kinds and "draft" not in kinds):
        problems.append(f"{rule}: detail lacks the finding or the step: {kinds}")
    for s in card.get("suggestions", []):
        label = s["label"]
        if len(label) > 80:
            problems.append(f"{rule}: label {len(label)} characters: {label!r}")
        if label.split(" ", 1)[0] not in VERBS:
            problems.append(f"{rule}: label does not start with a verb: {label!r}")
    links = card.get("links", [])
    if len(links) > 3:
        problems.append(f"{rule}: {len(links)} links")
    for link in links + [card["source"]]:
        url = link.get("url")
        if url and not LINK_OK.match(url):
            problems.append(f"{rule}: link is not a paper (DOI or publisher page): {url}")
    return problems


def summary_names_the_finding(card: Mapping[str, Any]) -> bool:
    """A word of the finding line or of the drafted drug (5+ letters) is in the summary."""
    detail = card.get("detail", "")
    head = " ".join(b for b in detail.split("\n\n") if b.startswith(("**Finding**", "**Draft order**")))
    words = {w.lower() for w in re.findall(r"[A-Za-z]{5,}", head)} - {"finding", "order", "draft", "report",
                                                                        "joints", "problem"}
    return any(w in card["summary"].lower() for w in words)


@pytest.mark.parametrize("name", GOLDENS)
def test_every_golden_card_keeps_the_budget(name: str) -> None:
    problems = [p for card in golden_cards(name) for p in budget_problems(card)]
    problems += [f"{card['extension']['org.msk-cds.rule']}: summary does not name the finding: {card['summary']!r}"
                 for card in golden_cards(name) if not summary_names_the_finding(card)]
    assert not problems, problems


@pytest.mark.parametrize("name", NAMES)
def test_every_scenario_answer_keeps_the_budget(name: str) -> None:
    """The live answer of each scenario (not only its stored golden)."""
    _, body = run(name)
    problems = [p for card in body.get("cards", []) for p in budget_problems(card)]
    assert not problems, problems


@lru_cache(maxsize=1)
def internal_words() -> re.Pattern[str]:
    """Ids and keys of our own knowledge (concept, fact, rule, drug, service, evidence ids with an underscore) and
    the words that only mean something to us."""
    k = clinical_knowledge()
    concepts = [c["id"] for c in load_yaml("concepts.yaml")["concepts"]]
    keys = {*concepts, *k.drugs, *k.services.services, *k.evidence, *k.pathway_file.fact_labels,
            *(p.id for p in k.pathway_file.pathways), *card_wording().rules}
    keys = {key for key in keys if "_" in key or "." in key}
    words = [re.escape(key) for key in sorted(keys, key=len, reverse=True)]
    words += [r"seed", r"unverified", r"AI-generated", r"[\w-]+\.(?:ya?ml|py|json|md|txt)\b", r"\b[0-9a-f]{12,}\b",
              r"Status:", r"match to the"]
    return re.compile("|".join(words), re.I)


ID_PATTERN = re.compile(r"\b(?:Patient|Condition|DiagnosticReport|MedicationRequest|MedicationStatement|Observation|"
                        r"AllergyIntolerance|ServiceRequest|DocumentReference|Practitioner|Encounter)/[A-Za-z0-9\-.]+")


def internal_text_problems(card: Mapping[str, Any], resource_ids: set[str]) -> list[str]:
    rule = card["extension"]["org.msk-cds.rule"]
    problems = []
    for text in face_texts(card):
        plain = text.replace("\\", "")
        for hit in internal_words().findall(plain):
            problems.append(f"{rule}: internal word {hit!r} in {plain[:80]!r}")
        for hit in ID_PATTERN.findall(plain):
            problems.append(f"{rule}: FHIR reference {hit!r} on the card")
        for rid in resource_ids:
            if len(rid) > 3 and re.search(rf"(?<![\w-]){re.escape(rid)}(?![\w-])", plain):
                problems.append(f"{rule}: resource id {rid!r} on the card")
    return problems


def request_ids(name: str) -> set[str]:
    _, _, request = REQUESTS[name]
    ids = {request["context"]["patientId"]}
    for bundle in request.get("prefetch", {}).values():
        if isinstance(bundle, Mapping):
            ids.add(str(bundle.get("id", "")))
            for entry in bundle.get("entry") or ():
                ids.add(str(entry["resource"].get("id", "")))
    for entry in (request["context"].get("draftOrders") or {}).get("entry") or ():
        ids.add(str(entry["resource"].get("id", "")))
    return {i for i in ids if i}


@pytest.mark.parametrize("name", NAMES)
def test_no_card_text_has_an_id_a_concept_key_seed_unverified_or_a_file_name(name: str) -> None:
    _, body = run(name)
    problems = [p for card in body.get("cards", []) for p in internal_text_problems(card, request_ids(name))]
    assert not problems, problems


def test_the_internal_text_check_catches_what_the_old_cards_showed() -> None:
    """The check is not vacuous: the texts issue 16 saw on the old cards fail it."""
    seen_before = [
        "Seed 004: bone marrow edema management by etiology",
        "Guideline summary 004_2945b8e5afe773d0 (AI-generated; content pending human review)",
        "Status: unverified; match to the seed: inferred",
        "Remove the draft order MedicationRequest/request-123",
        "Findings (DiagnosticReport/dr-34)",
        "see pathways.yaml",
        "Bone marrow edema, deep_bone_marrow_edema",
    ]
    for text in seen_before:
        card = {"summary": text, "detail": "", "source": {"label": "x"}, "extension": {"org.msk-cds.rule": "t.t"}}
        assert internal_text_problems(card, {"request-123"}), text


def allowed_sources(rule: str) -> set[str]:
    """The citations the rule names in the knowledge data: its cards.yaml sources, the citations of the safety
    check or draft-order check it is, or (ordering guidance) the fitting dose's and the pathway's."""
    k = clinical_knowledge()
    wording = card_wording().rules.get(rule)
    allowed = set(wording.sources) if wording else set()
    if rule.startswith("safety."):
        allowed |= set(k.checks[rule.split(".", 1)[1]].citations)
    elif rule.startswith("order_check."):
        allowed |= {c for check in k.pathway_file.order_checks if check.rule == rule for c in check.citations}
    elif rule.endswith(".order_guidance"):
        pathway = k.pathways[rule.split(".", 1)[0]]
        allowed |= set(pathway.evidence)
        allowed |= {c for drug in k.drugs.values() for d in drug.dosing.values() for c in d.citations}
    return allowed


def source_id(card: Mapping[str, Any]) -> str | None:
    k = clinical_knowledge()
    return next((s.id for s in k.evidence.values()
                 if s.label == card["source"]["label"] and s.url == card["source"].get("url")), None)


def test_each_card_cites_the_evidence_its_rule_names() -> None:
    problems = []
    for name, card in all_golden_cards():
        rule = card["extension"]["org.msk-cds.rule"]
        sid = source_id(card)
        if sid is None or sid not in allowed_sources(rule):
            problems.append(f"{name} {rule}: source {card['source']['label']!r} is not one of {sorted(allowed_sources(rule))}")
        provenance = card["extension"]["org.msk-cds.provenance"]
        if sid not in provenance["citations"]:
            problems.append(f"{name} {rule}: source not in the provenance citations")
    assert not problems, problems


def test_every_pathway_step_and_check_has_its_own_wording_and_sources() -> None:
    from hooks.knowledge.cards import rule_ids

    rules = card_wording().rules
    missing = sorted(r for r in rule_ids(clinical_knowledge()) if r not in rules and not r.endswith(".order_guidance"))
    assert not missing, f"rules without card wording in cards.yaml: {missing}"


@pytest.mark.parametrize("rule,expected", [
    ("bme_differential.osteomyelitis_diabetic", "iwgdf_idsa_infection_2023"),
    ("bme_by_etiology.charcot_offloading", "iwgdf_charcot_2023"),
    ("safety.gi_risk", "nsaid_gi_prevention"),
    ("safety.renal_block", "kdigo_ckd_2024"),
])
def test_the_cards_issue_16_found_wrongly_sourced_now_cite_their_own_evidence(rule: str, expected: str) -> None:
    cards = [card for _, card in all_golden_cards() if card["extension"]["org.msk-cds.rule"] == rule]
    assert cards, f"no golden shows {rule}"
    for card in cards:
        assert source_id(card) == expected
        assert "axSpA" not in card["detail"] or rule.startswith("safety.")


def test_unverified_sources_are_marked_in_the_data_and_reach_governance_not_the_card() -> None:
    k = clinical_knowledge()
    for sid in ("iwgdf_idsa_infection_2023", "iwgdf_charcot_2023", "acr_ac_osteonecrosis", "aaos_vcf_2010"):
        assert k.evidence[sid].status == "unverified"
    for _, card in all_golden_cards():
        review = card["extension"]["org.msk-cds.provenance"]["knowledge"]["review"]
        assert review["status"] in ("verified", "unverified") and review["sources"]
        assert "unverified" not in " ".join(face_texts(card)).lower()


def test_provenance_keeps_what_left_the_card_face() -> None:
    """Findings with their source resource and sentence, facts with sources, rule, step and knowledge version."""
    from hooks.knowledge import knowledge_version

    seen_sentence = seen_fact_source = False
    for _, card in all_golden_cards():
        p = card["extension"]["org.msk-cds.provenance"]
        assert p["rule"] == card["extension"]["org.msk-cds.rule"] and p["knowledge"]["version"] == knowledge_version()
        for f in p.get("findings", []):
            assert f["reference"] and f["concept"]
            seen_sentence |= bool(f.get("text"))
        seen_fact_source |= any(fact.get("sources") for fact in p.get("facts", []))
    assert seen_sentence and seen_fact_source


def longest() -> tuple[tuple[int, str], tuple[int, str]]:
    """(longest detail, longest label) over every golden: for the closing note."""
    details = [(len(c.get("detail", "")), f"{n} {c['extension']['org.msk-cds.rule']}") for n, c in all_golden_cards()]
    labels = [(len(s["label"]), s["label"]) for _, c in all_golden_cards() for s in c.get("suggestions", [])]
    return max(details), max(labels)


if __name__ == "__main__":
    (d, where), (l, label) = longest()
    print(f"longest detail: {d} characters ({where}); longest label: {l} characters ({label!r})")
