"""The response conformance checker itself: each CDS Hooks 2.0 card rule is detected."""
from __future__ import annotations

import copy
import uuid

import pytest

from service.conformance import check_response


def good_card() -> dict:
    return {
        "uuid": str(uuid.uuid4()),
        "summary": "Start an NSAID trial",
        "detail": "**Why**: SI-joint synovitis on MRI.",
        "indicator": "info",
        "source": {"label": "MSK imaging CDS", "url": "https://example.org/guideline",
                   "topic": {"system": "http://example.org/topics", "code": "nsaid"}},
        "suggestions": [{
            "label": "Order naproxen", "uuid": str(uuid.uuid4()), "isRecommended": True,
            "actions": [{"type": "create", "description": "Create naproxen order",
                         "resource": {"resourceType": "MedicationRequest", "status": "draft"}}],
        }],
        "selectionBehavior": "at-most-one",
        "overrideReasons": [{"system": "http://example.org/override", "code": "declined",
                             "display": "Patient declined"}],
        "links": [{"label": "Guideline", "url": "https://example.org/g", "type": "absolute"}],
    }


def test_good_response_has_no_problems():
    assert check_response({"cards": [good_card()]}) == []
    assert check_response({"cards": []}) == []
    assert check_response({"cards": [], "systemActions": [
        {"type": "update", "description": "d", "resource": {"resourceType": "ServiceRequest", "id": "1"}}]}) == []


def _mutated(path: list, value) -> dict:
    card = good_card()
    target = card
    for part in path[:-1]:
        target = target[part]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return {"cards": [card]}


DELETE = KeyError


@pytest.mark.parametrize("path,value,expected", [
    (["summary"], "x" * 140, "cards[0].summary"),
    (["summary"], DELETE, "cards[0].summary"),
    (["indicator"], "hard-stop", "cards[0].indicator"),
    (["indicator"], "success", "cards[0].indicator"),
    (["source", "label"], DELETE, "cards[0].source.label"),
    (["source"], DELETE, "cards[0].source"),
    (["source", "url"], "/relative", "cards[0].source.url"),
    (["selectionBehavior"], DELETE, "cards[0].selectionBehavior"),
    (["selectionBehavior"], "all", "cards[0].selectionBehavior"),
    (["suggestions", 0, "label"], DELETE, "cards[0].suggestions[0].label"),
    (["suggestions", 0, "uuid"], "123", "cards[0].suggestions[0].uuid"),
    (["suggestions", 0, "actions", 0, "type"], "CREATE", "cards[0].suggestions[0].actions[0].type"),
    (["suggestions", 0, "actions", 0, "description"], DELETE, "cards[0].suggestions[0].actions[0].description"),
    (["suggestions", 0, "actions", 0, "resource"], DELETE, "cards[0].suggestions[0].actions[0].resource"),
    (["uuid"], 42, "cards[0].uuid"),
    (["uuid"], "not-a-uuid", "cards[0].uuid"),
    (["overrideReasons", 0, "display"], DELETE, "cards[0].overrideReasons[0].display"),
    (["links", 0, "type"], "relative", "cards[0].links[0].type"),
    (["links", 0, "label"], DELETE, "cards[0].links[0].label"),
    (["links", 0, "url"], "not a url", "cards[0].links[0].url"),
    (["links", 0, "appContext"], "ctx", "cards[0].links[0].appContext"),
    (["detail"], None, "detail: null value"),
    (["detail"], "", "detail: empty string"),
    (["links"], [], "links: empty array"),
    (["source", "topic"], {}, "topic: empty object"),
])
def test_each_rule_is_detected(path, value, expected):
    problems = check_response(_mutated(path, value))
    assert any(expected in p for p in problems), problems


def test_null_or_empty_anywhere_and_duplicate_uuids():
    card = good_card()
    card["suggestions"][0]["actions"][0]["resource"]["note"] = [{"text": None}]
    assert any("null value" in p for p in check_response({"cards": [card]}))
    twin = copy.deepcopy(good_card())
    assert any("unique" in p for p in check_response({"cards": [twin, copy.deepcopy(twin)]}))
    assert check_response({"cards": None})
    assert check_response({"cards": [], "systemActions": []}) == ["systemActions: empty array"]
    assert check_response([]) == ["response: must be a JSON object"]
    assert check_response({"cards": [], "debug": 1}) == ["response: unexpected top-level fields"]
