"""Fixture-driven test: every patient scenario through the real Flask app, against its golden response and the
clinical expectations written in the scenario (fixtures/scenarios/*.yaml; see fixtures/README.md).

Regenerate goldens after an intended change: `.venv/bin/python -m fixtures.build --goldens`, then review the diff.
"""
from __future__ import annotations

import difflib
import json
import re
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import pytest
from fhir.resources.R4B import get_fhir_model_class

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:           # `fixtures` is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from fixtures import build  # noqa: E402
from hooks.knowledge import KNOWLEDGE_DIR, SYSTEMS, load_yaml  # noqa: E402
from service.conformance import check_response  # noqa: E402

UNVERIFIED_URL = "https://msk-cds.org/fhir/StructureDefinition/code-verification"
RXNORM, SNOMED, LOINC = SYSTEMS["rxnorm"], SYSTEMS["snomed"], SYSTEMS["loinc"]

# Expectations the engine does not meet yet: (request name) -> the bug, for the team to fix (see the report).
# Only the expectation test is marked; the golden test records what the engine does today.
KNOWN_ENGINE_BUGS: dict[str, str] = {}

# -- what a suggestion is, by kind ---------------------------------------------------------------------------------
# Drug kinds by RxNorm code (ingredient and clinical-drug codes of ../shared/reference/codes-verified.md) and by name.
_DRUG_CODES = {
    "naproxen": {"7258", "198014", "198013", "849574"},
    "ibuprofen": {"5640", "197805", "197806"},
    "diclofenac": {"3355", "855926", "855906"},
    "celecoxib": {"140587", "205323", "205322"},
    "meloxicam": {"41493", "152695", "311486"},
    "ppi": {"7646", "198051", "40790", "314200"},
    "adalimumab": {"327361", "1726844", "727703", "1655726", "1872979", "2103477", "2103479"},
    "etanercept": {"214555", "727757", "1653223"},
    "golimumab": {"819300", "1653142", "848160", "1431642"},
    "infliximab": {"191831", "310994"},
    "certolizumab": {"709271", "849597", "795081"},
    "il17i": {"1599788", "1599792", "1653241", "2637347", "1745099", "1745103", "1745112"},
    "jaki": {"1357536", "1357541", "2048566", "1741046", "2196092", "2196894"},
    "methotrexate": {"6851", "105585"},
    "glucocorticoid": {"8640", "312617", "198145", "312615"},
    "denosumab": {"993449", "993452", "2715513"},
    "opioid": {"7804", "1049621", "10689"},
    "acetaminophen": {"161", "198440", "313782"},      # HL7 PDDI-CDS WarfarinNSAIDsCDSLogic.cql (unverified)
}
_DRUG_NAMES = {
    "naproxen": r"naproxen", "ibuprofen": r"ibuprofen", "diclofenac": r"diclofenac", "celecoxib": r"celecoxib",
    "meloxicam": r"meloxicam", "ppi": r"omeprazole|pantoprazole|esomeprazole|lansoprazole",
    "adalimumab": r"adalimumab", "etanercept": r"etanercept", "golimumab": r"golimumab",
    "infliximab": r"infliximab", "certolizumab": r"certolizumab", "il17i": r"secukinumab|ixekizumab",
    "jaki": r"tofacitinib|upadacitinib", "methotrexate": r"methotrexate",
    "glucocorticoid": r"prednison|prednisolon|methylprednisolon", "denosumab": r"denosumab",
    "opioid": r"oxycodone|tramadol|morphine|hydrocodone|codeine",
    "acetaminophen": r"acetaminophen|paracetamol",
}
_DRUG_GROUPS = {
    "nonselective_nsaid": {"naproxen", "ibuprofen", "diclofenac", "meloxicam"},
    "nsaid": {"naproxen", "ibuprofen", "diclofenac", "meloxicam", "celecoxib"},
    "tnfi": {"adalimumab", "etanercept", "golimumab", "infliximab", "certolizumab"},
}
# ServiceRequest kinds by words of its code text/display (case-insensitive) or by LOINC code.
_SERVICE_WORDS = {
    "physiotherapy": r"physio|physical therap",
    "si_injection": r"sacroiliac[^.]*inject|inject[^.]*sacroiliac|si[- ]joint[^.]*inject",
    "hip_injection": r"hip[^.]*inject|inject[^.]*hip",
    "mr_arthrography": r"arthrogra",
    "arthroscopy": r"arthroscop",
    "tb_screening": r"tubercul|interferon-gamma|\bigra\b|quantiferon",
    "hbv_screening": r"hepatitis b|hbsag",
    "hematology_referral": r"haematolog|hematolog|marrow biopsy",
    "orthopaedic_referral": r"orthop",
    "multidisciplinary_foot_referral": r"diabetic foot|foot team|multidisciplinary",
    "offloading": r"offload|total[- ]contact cast",
    "vitamin_d_test": r"vitamin d",
    "vertebral_augmentation": r"vertebroplasty|kyphoplasty|augmentation",
    "mri": r"\bmri\b|magnetic resonance",
}
_SERVICE_LOINC = {"71773-6": "tb_screening", "5196-1": "hbv_screening", "5195-3": "hbv_screening",
                  "16933-4": "hbv_screening", "62292-8": "vitamin_d_test"}


def _concept_words(concept: Mapping[str, Any] | None) -> str:
    if not concept:
        return ""
    parts = [concept.get("text") or ""]
    parts += [c.get("display") or "" for c in concept.get("coding") or ()]
    return " ".join(parts).lower()


def _concept_codes(concept: Mapping[str, Any] | None, system: str) -> set[str]:
    return {c.get("code") for c in (concept or {}).get("coding") or () if c.get("system") == system}


def resource_kinds(resource: Mapping[str, Any]) -> set[str]:
    """What a suggested resource is, in the vocabulary of the scenarios' `suggest` / `not_suggest`."""
    kinds: set[str] = set()
    if resource.get("resourceType") in ("MedicationRequest", "MedicationStatement"):
        concept = resource.get("medicationCodeableConcept")
        codes, words = _concept_codes(concept, RXNORM), _concept_words(concept)
        for drug, drug_codes in _DRUG_CODES.items():
            if codes & drug_codes or re.search(_DRUG_NAMES[drug], words):
                kinds.add(drug)
    elif resource.get("resourceType") == "ServiceRequest":
        concept = resource.get("code")
        words = _concept_words(concept)
        for kind, pattern in _SERVICE_WORDS.items():
            if re.search(pattern, words):
                kinds.add(kind)
        kinds |= {_SERVICE_LOINC[c] for c in _concept_codes(concept, LOINC) if c in _SERVICE_LOINC}
    for group, members in _DRUG_GROUPS.items():
        if kinds & members:
            kinds.add(group)
    return kinds


def _created_resources(suggestion: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for action in suggestion.get("actions") or ():
        if action.get("type") in ("create", "update") and isinstance(action.get("resource"), Mapping):
            yield action["resource"]


def suggestion_kinds(suggestion: Mapping[str, Any]) -> set[str]:
    out: set[str] = set()
    for resource in _created_resources(suggestion):
        out |= resource_kinds(resource)
    return out


def cards_of(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(body.get("cards") or ())


def all_suggestions(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [s for card in cards_of(body) for s in card.get("suggestions") or ()]


def card_text(body: Mapping[str, Any]) -> str:
    parts = []
    for card in cards_of(body):
        parts += [card.get("summary") or "", card.get("detail") or ""]
        parts += [s.get("label") or "" for s in card.get("suggestions") or ()]
        parts += [a.get("description") or "" for s in card.get("suggestions") or () for a in s.get("actions") or ()]
    return "\n".join(parts)


def extension(card: Mapping[str, Any], key: str) -> Any:
    return (card.get("extension") or {}).get(key)


# -- the requests, run once each through a fresh app ---------------------------------------------------------------
REQUESTS = build.all_requests()
NAMES = sorted(REQUESTS)


def _param(name: str, marked: bool = False) -> Any:
    if marked and name in KNOWN_ENGINE_BUGS:
        return pytest.param(name, marks=pytest.mark.xfail(reason=KNOWN_ENGINE_BUGS[name], strict=False))
    return name


@lru_cache(maxsize=None)
def run(name: str) -> tuple[int, Any]:
    """(status, raw JSON body) of one request posted to a fresh app with its scenario's FIXED_NOW."""
    scenario, hook, request = REQUESTS[name]
    with tempfile.TemporaryDirectory() as tmp:
        app = build.make_app(scenario, Path(tmp) / "cds.sqlite3")
        status, body = build.post(app.test_client(), hook, request)
        build._dispose(app)
    return status, body


def test_there_are_enough_scenarios_covering_every_pathway_and_hook() -> None:
    scenarios = build.load_scenarios()
    assert len(scenarios) >= 25
    expected = {p for s in scenarios for e in (s.get("expect") or {}).values() for p in e.get("pathways") or ()}
    assert expected >= {"axspa_si_synovitis", "labral_calcification", "bme_differential",
                        "refractory_sacroiliitis", "bme_by_etiology"}
    assert {h for s in scenarios for h in build.hooks_of(s)} == set(build.HOOKS)
    for s in scenarios:
        assert s.get("description") and s.get("intent"), f"{s['name']}: description and intent are required"
        assert set(s.get("expect") or {}) == set(build.hooks_of(s)), f"{s['name']}: one expect block per hook"


def test_request_files_are_up_to_date() -> None:
    stale = [p for p in build.check(goldens=False)]
    assert not stale, f"request files differ from the scenarios; run `python -m fixtures.build`: {stale}"


def test_scenario_table_matches_the_goldens() -> None:
    index = build.GOLDEN / "INDEX.md"
    assert index.exists() and index.read_text(encoding="utf-8") == build.scenario_table(), (
        "fixtures/golden/INDEX.md is stale: run `.venv/bin/python -m fixtures.build --goldens`")


@pytest.mark.parametrize("name", NAMES)
def test_scenario_resources_are_valid_fhir_r4(name: str) -> None:
    scenario, hook, request = REQUESTS[name]
    resources = [request["prefetch"]["patient"]]
    for key, value in request["prefetch"].items():
        if key != "patient":
            get_fhir_model_class("Bundle").model_validate(value)
            resources += [e["resource"] for e in value.get("entry") or ()]
    resources += [e["resource"] for e in (request["context"].get("draftOrders") or {}).get("entry") or ()]
    for resource in resources:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


@pytest.mark.parametrize("name", NAMES)
def test_response_matches_golden(name: str) -> None:
    golden_path = build.GOLDEN / f"{name}.json"
    assert golden_path.exists(), f"no golden for {name}: run `.venv/bin/python -m fixtures.build --goldens`"
    status, body = run(name)
    actual = {"status": status, "body": build.normalize(body)}
    expected = json.loads(golden_path.read_text(encoding="utf-8"))
    if actual != expected:
        diff = "\n".join(difflib.unified_diff(
            build.dumps(expected).splitlines(), build.dumps(actual).splitlines(),
            f"golden/{name}.json", "actual", lineterm="", n=2))
        pytest.fail(f"response differs from golden (if intended: python -m fixtures.build --goldens):\n{diff}")


@pytest.mark.parametrize("name", NAMES)
def test_response_is_cds_hooks_conformant(name: str) -> None:
    status, body = run(name)
    assert status == 200
    assert check_response(body) == []


@pytest.mark.parametrize("name", NAMES)
def test_accepting_every_card_never_orders_the_same_thing_twice(name: str) -> None:
    """Across the cards of one answer, an order offered on its own in an "any" card is offered only once
    (scenario 15: osteomyelitis and Charcot cards both want the diabetic foot team referral)."""
    status, body = run(name)
    seen: list[tuple[Any, ...]] = []
    for card in body.get("cards", []):
        if card.get("selectionBehavior") != "any":
            continue
        for suggestion in card.get("suggestions", []):
            creates = [a["resource"] for a in suggestion["actions"] if a["type"] == "create"]
            if len(creates) == 1:
                concept = creates[0].get("code") or creates[0].get("medicationCodeableConcept") or {}
                seen.append((creates[0]["resourceType"],
                             tuple((c.get("system"), c.get("code")) for c in concept.get("coding", []))))
    assert len(seen) == len(set(seen)), seen


@lru_cache(maxsize=None)
def verified_codes() -> frozenset[tuple[str, str]]:
    """(system, code) of every coding marked `verified: true` anywhere in the knowledge data."""
    found: set[tuple[str, str]] = set()

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            if value.get("verified") is True and "code" in value and "system" in value:
                found.add((SYSTEMS.get(value["system"], value["system"]), str(value["code"])))
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for path in sorted(KNOWLEDGE_DIR.glob("*.yaml")):
        walk(load_yaml(path.name))
    return frozenset(found)


def _marked_unverified(*elements: Mapping[str, Any] | None) -> bool:
    return any(
        ext.get("url") == UNVERIFIED_URL and ext.get("valueCode") == "unverified"
        for element in elements if element for ext in element.get("extension") or ()
    )


@pytest.mark.parametrize("name", NAMES)
def test_suggested_resources_are_valid_r4_with_verified_or_marked_codes(name: str) -> None:
    _, body = run(name)
    problems = []
    for s_index, suggestion in enumerate(all_suggestions(body)):
        for resource in _created_resources(suggestion):
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
            concept = resource.get("medicationCodeableConcept") or resource.get("code")
            for coding in (concept or {}).get("coding") or ():
                if coding.get("system") not in (RXNORM, SNOMED):
                    continue
                if (coding["system"], coding.get("code")) in verified_codes():
                    continue
                if not _marked_unverified(coding, concept, resource):
                    problems.append(f"suggestion {s_index}: {coding.get('system')}|{coding.get('code')} is "
                                    "neither verified in the knowledge data nor marked unverified")
    assert not problems, problems


# -- the clinical expectations of each scenario --------------------------------------------------------------------

def check_expectations(expect: Mapping[str, Any], status: int, body: Any) -> list[str]:
    """Every way the response breaks the scenario's `expect` block for this hook (empty when it meets it)."""
    if status != 200 or not isinstance(body, Mapping):
        return [f"status {status}, expected 200 with a JSON body"]
    problems: list[str] = []
    cards = cards_of(body)
    if expect.get("no_cards"):
        return [] if body == {"cards": []} else [f"expected {{'cards': []}}, got {len(cards)} card(s): "
                                                 f"{[c.get('summary') for c in cards]}"]
    pathways = {extension(c, "org.msk-cds.pathway") for c in cards}
    rules = [str(extension(c, "org.msk-cds.rule")) for c in cards]
    indicators = {c.get("indicator") for c in cards}
    suggestions = all_suggestions(body)
    kinds = set().union(*(suggestion_kinds(s) for s in suggestions)) if suggestions else set()
    text = card_text(body)

    for p in expect.get("pathways") or ():
        if p not in pathways:
            problems.append(f"no card of pathway {p!r} (pathways shown: {sorted(map(str, pathways))})")
    for p in expect.get("not_pathways") or ():
        if p in pathways:
            problems.append(f"card of pathway {p!r} shown, the scenario rules it out")
    for pattern in expect.get("not_rules_matching") or ():
        hits = [r for r in rules if re.search(pattern, r)]
        if hits:
            problems.append(f"rule(s) {hits} match {pattern!r}")
    for i in expect.get("indicators") or ():
        if i not in indicators:
            problems.append(f"no {i!r} card (indicators: {sorted(map(str, indicators))})")
    for i in expect.get("not_indicators") or ():
        if i in indicators:
            problems.append(f"a {i!r} card is shown")
    for k in expect.get("suggest") or ():
        if k not in kinds:
            problems.append(f"no suggestion of kind {k!r} (suggested kinds: {sorted(kinds)})")
    for k in expect.get("not_suggest") or ():
        if k in kinds:
            problems.append(f"suggestion of kind {k!r} present, the scenario rules it out")
    alternatives = expect.get("suggest_one_of")
    if alternatives and not any(set(alt) <= kinds for alt in alternatives):
        problems.append(f"none of {alternatives} fully suggested (suggested kinds: {sorted(kinds)})")
    together = expect.get("same_suggestion")
    if together and not any(set(together) <= suggestion_kinds(s) for s in suggestions):
        problems.append(f"no single suggestion carries all of {together}")
    if expect.get("override_reasons"):
        for c in cards:
            if c.get("indicator") in ("warning", "critical") and not c.get("overrideReasons"):
                problems.append(f"{c.get('indicator')} card {extension(c, 'org.msk-cds.rule')!r} has no overrideReasons")
    if expect.get("delete_draft"):
        ref = expect["delete_draft"]
        deletes = [a for s in suggestions for a in s.get("actions") or ()
                   if a.get("type") == "delete" and ref in json.dumps(a)]
        if not deletes:
            problems.append(f"no suggestion deletes {ref}")
    if expect.get("alternative") and not any(list(_created_resources(s)) for s in suggestions):
        problems.append("no alternative order is suggested")
    for pattern in expect.get("mentions") or ():
        if not re.search(pattern, text, re.IGNORECASE):
            problems.append(f"cards do not mention /{pattern}/")
    for pattern in expect.get("not_mentions") or ():
        if re.search(pattern, text, re.IGNORECASE):
            problems.append(f"cards mention /{pattern}/, the scenario rules it out")
    if cards:
        for pattern in expect.get("mentions_if_cards") or ():
            if not re.search(pattern, text, re.IGNORECASE):
                problems.append(f"cards do not mention /{pattern}/")
    return problems


@pytest.mark.parametrize("name", [_param(n, marked=True) for n in NAMES])
def test_response_meets_clinical_expectations(name: str) -> None:
    scenario, hook, _ = REQUESTS[name]
    status, body = run(name)
    problems = check_expectations(scenario["expect"][hook], status, body)
    assert not problems, f"{name} ({scenario['intent']}):\n  - " + "\n  - ".join(problems)


def _no_repeat_scenarios() -> list[str]:
    return [s["name"] for s in build.load_scenarios() if s.get("no_repeat")]


@pytest.mark.parametrize("scenario_name", _no_repeat_scenarios())
def test_order_sign_does_not_repeat_the_order_select_card_for_the_same_draft(scenario_name: str) -> None:
    scenario = build.load_scenario(build.SCENARIOS / f"{scenario_name}.yaml")
    spec = scenario["no_repeat"]
    select_request = build.build_request(scenario, spec["select"])
    sign_request = build.build_request(scenario, spec["sign"])
    with tempfile.TemporaryDirectory() as tmp:
        app = build.make_app(scenario, Path(tmp) / "cds.sqlite3")
        client = app.test_client()
        fresh_status, fresh_sign = run(f"{scenario_name}__{spec['sign']}")
        select_status, select_body = build.post(client, spec["select"], select_request)
        sign_status, sign_body = build.post(client, spec["sign"], sign_request)
        build._dispose(app)
    assert select_status == sign_status == fresh_status == 200

    def keys(body: Mapping[str, Any]) -> set[tuple[Any, Any]]:
        """(rule, dedupe key) of the cards about the draft (all cards when none names the draft)."""
        cards = [c for c in cards_of(body) if spec["draft"] in json.dumps(c)] or cards_of(body)
        return {(extension(c, "org.msk-cds.rule"), extension(c, "org.msk-cds.dedupe-key")) for c in cards}

    shown = keys(select_body)
    assert shown, "order-select showed no card about the draft: the scenario cannot test the no-repeat rule"
    assert shown & keys(fresh_sign), "order-sign alone (fresh app) should show the card, or the test proves nothing"
    assert not shown & keys(sign_body), f"order-sign repeated {sorted(map(str, shown & keys(sign_body)))}"


@pytest.mark.parametrize("name", NAMES)
def test_suggested_orders_are_draft_coded_dosed_and_reasoned_from_this_record(name: str) -> None:
    """Issue 4: MedicationRequests are drafts with an RxNorm code, a dosage and a reasonReference; ServiceRequests are
    drafts with a reasonReference; both for this patient, and every reason points at a resource of the request.
    Alternatives carry at most one isRecommended, and none where the guideline prefers none (issue 16: CDS Hooks 2.0
    makes it optional; "TNF inhibitor, none preferred" must not mark one)."""
    _, hook, request = REQUESTS[name]
    _, body = run(name)
    patient = f"Patient/{request['context']['patientId']}"
    known = {f"{e['resource']['resourceType']}/{e['resource']['id']}"
             for key, bundle in request["prefetch"].items() if key != "patient" for e in bundle.get("entry") or ()}
    known |= {f"{e['resource']['resourceType']}/{e['resource']['id']}"
              for e in (request["context"].get("draftOrders") or {}).get("entry") or ()}
    problems = []
    for card in cards_of(body):
        rule = extension(card, "org.msk-cds.rule")
        suggestions = card.get("suggestions") or ()
        recommended = sum(1 for s in suggestions if s.get("isRecommended"))
        if recommended > 1:
            problems.append(f"{rule}: {recommended} recommended alternatives, expected at most 1")
        for suggestion in suggestions:
            for resource in _created_resources(suggestion):
                where = f"{rule}: {resource['resourceType']}"
                if resource.get("status") != "draft":
                    problems.append(f"{where} status {resource.get('status')!r}, expected draft")
                if (resource.get("subject") or {}).get("reference") != patient:
                    problems.append(f"{where} is not for {patient}")
                reasons = [r.get("reference") for r in resource.get("reasonReference") or ()]
                if not reasons:
                    problems.append(f"{where} has no reasonReference")
                problems += [f"{where} reason {r} is not in the request" for r in reasons if r not in known]
                if resource["resourceType"] == "MedicationRequest":
                    if not _concept_codes(resource.get("medicationCodeableConcept"), RXNORM):
                        problems.append(f"{where} has no RxNorm code")
                    if not resource.get("dosageInstruction"):
                        problems.append(f"{where} has no dosageInstruction")
    assert not problems, problems


@pytest.mark.parametrize("name", NAMES)
def test_every_card_names_its_rule_pathway_and_knowledge_version(name: str) -> None:
    """Issue 4: each card says which rule (`<pathway>.<step/check>`) and pathway produced it, and which knowledge."""
    from hooks.knowledge import knowledge_version

    _, body = run(name)
    for card in cards_of(body):
        rule, pathway = extension(card, "org.msk-cds.rule"), extension(card, "org.msk-cds.pathway")
        assert isinstance(rule, str) and re.fullmatch(r"[a-z0-9_]+\.[a-z0-9_]+", rule), rule
        assert isinstance(pathway, str) and pathway, f"{rule}: no org.msk-cds.pathway"
        assert extension(card, "org.msk-cds.knowledge-version") == knowledge_version()
