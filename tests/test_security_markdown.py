"""Markdown/HTML injection: text taken from reports and other resources is escaped in every card field.

The CDS Hooks Sandbox renders card Markdown with raw HTML enabled, so a report sentence quoted into a card must not
be able to add a script, an image with an event handler, or a link.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hooks.cards.markdown import escape
from service import create_app
from service.conformance import check_response

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "requests" / \
    "01_a_synovitis_nsaid_naive__patient-view.json"
PAYLOADS = (
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "![pixel](https://evil.example/p.png)",
    "<https://evil.example/autolink>",
    "www.evil.example/go",
    "<a href=\"https://evil.example\">x</a>",
    "&lt;script&gt;alert(2)&lt;/script&gt;",
    "<svg/onload=alert(3)>",
    "`code` **bold** | table | ~~strike~~",
    "\n\n# Heading\n\n---\n[ref]: https://evil.example\n",
)
INJECTED = " ".join(PAYLOADS)
# in the same sentence as the finding, so the quoted evidence sentence carries the payloads into the card
QUOTED = ("Mild synovitis of the left SI joint <script>alert(1)</script> <img src=x onerror=alert(1)> "
          "[click](javascript:alert(1)) <https://evil.example/autolink> www.evil.example/go.")

FORBIDDEN = (
    re.compile(r"<\s*script", re.I),
    re.compile(r"<\s*img", re.I),
    re.compile(r"<\s*svg", re.I),
    re.compile(r"<\s*a[\s>]", re.I),
    re.compile(r"\]\(\s*<?\s*javascript:", re.I),
    re.compile(r"javascript:", re.I),
    re.compile(r"\]\(\s*<?https?://evil", re.I),
    re.compile(r"<https?://evil", re.I),
    re.compile(r"(?<![\\/])www\.evil", re.I),
    re.compile(r"https?://evil\.example", re.I),
    re.compile(r"^\s*\[ref\]:", re.M),
    re.compile(r"^#\s", re.M),
)


def strings(value, path=""):
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings(item, f"{path}[{index}]")


def markdown_fields(cards):
    """Text an EHR renders: summary, detail, labels, descriptions (not the FHIR resources inside actions)."""
    for index, card in enumerate(cards):
        for key in ("summary", "detail"):
            if key in card:
                yield f"cards[{index}].{key}", card[key]
        yield f"cards[{index}].source.label", card.get("source", {}).get("label", "")
        for s_index, suggestion in enumerate(card.get("suggestions", [])):
            yield f"cards[{index}].suggestions[{s_index}].label", suggestion.get("label", "")
            for a_index, action in enumerate(suggestion.get("actions", [])):
                yield f"cards[{index}].suggestions[{s_index}].actions[{a_index}].description", \
                    action.get("description", "")
        for l_index, link in enumerate(card.get("links", [])):
            yield f"cards[{index}].links[{l_index}].label", link.get("label", "")


def hostile_request() -> dict:
    request = json.loads(FIXTURE.read_text(encoding="utf-8"))
    report = request["prefetch"]["reports"]["entry"][0]["resource"]
    report["conclusion"] = f"{QUOTED} {INJECTED} No erosions."
    report["code"]["text"] = f"MRI sacroiliac joints {INJECTED}"
    for coding in report["code"].get("coding", []):
        coding["display"] = f"MR Sacroiliac joint {INJECTED}"
    report["presentedForm"] = [{"contentType": "text/plain", "title": INJECTED}]
    report["id"] = "rep-01-mri-si"
    for key in ("conditions", "medicationRequests", "medicationStatements", "observations", "allergies"):
        bundle = request["prefetch"].get(key) or {}
        for entry in bundle.get("entry", []):
            resource = entry.get("resource", {})
            for concept_key in ("code", "medicationCodeableConcept", "valueCodeableConcept"):
                concept = resource.get(concept_key)
                if isinstance(concept, dict):
                    concept["text"] = f"{concept.get('text', '')} {INJECTED}"
                    for coding in concept.get("coding", []):
                        coding["display"] = f"{coding.get('display', '')} {INJECTED}"
    patient = request["prefetch"].get("patient")
    if isinstance(patient, dict):
        patient["name"] = [{"text": INJECTED}]
    return request


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return create_app({
        "AUTH_DISABLED": True,
        "DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('md') / 'm.db'}",
        "FIXED_NOW": "2026-11-22T08:00:00+00:00",
        "TESTING": True,
    }).test_client()


def _assert_clean(where: str, text: str) -> None:
    for pattern in FORBIDDEN:
        assert not pattern.search(text), f"{where} carries {pattern.pattern!r}: {text[:400]}"


@pytest.mark.skipif(not FIXTURE.exists(), reason="scenario fixture not built")
def test_injected_report_text_is_escaped_in_every_card_field(client):
    response = client.post("/cds-services/msk-imaging-patient-view", json=hostile_request())
    assert response.status_code == 200, response.data[:300]
    body = response.get_json()
    assert check_response(body) == []
    cards = body["cards"]
    assert cards, "the real finding in the report must still produce a card"
    # report sentences no longer reach the card face (issue 16): the payload sentence is kept as data in the
    # provenance extension (JSON, never rendered as Markdown) and is nowhere in the Markdown fields
    assert any("&lt;script&gt;" in str(card["extension"].get("org.msk-cds.provenance")) for card in cards)

    assert not any("script" in (card.get("detail") or "").lower() for card in cards)
    for where, text in markdown_fields(cards):
        _assert_clean(where, text)
    for where, text in strings(cards, "cards"):
        assert not re.search(r"<\s*(script|img|svg)", text, re.I), where
        assert "](javascript:" not in text.lower(), where


@pytest.mark.parametrize("service_id,hook", [("msk-imaging-order-select", "order-select"),
                                             ("msk-imaging-order-sign", "order-sign")])
@pytest.mark.skipif(not FIXTURE.exists(), reason="scenario fixture not built")
def test_injected_draft_order_text_is_escaped(client, service_id, hook):
    request = hostile_request()
    request["hook"] = hook
    order = {"resourceType": "MedicationRequest", "id": "draft-1", "status": "draft", "intent": "order",
             "subject": {"reference": f"Patient/{request['context']['patientId']}"},
             "medicationCodeableConcept": {
                 "text": f"methotrexate 15 mg weekly {INJECTED}",
                 "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "6851",
                             "display": f"methotrexate {INJECTED}"}]},
             "note": [{"text": INJECTED}]}
    request["context"]["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                         "entry": [{"resource": order}]}
    if hook == "order-select":
        request["context"]["selections"] = ["MedicationRequest/draft-1"]
    response = client.post(f"/cds-services/{service_id}", json=request)
    assert response.status_code == 200, response.data[:300]
    for where, text in markdown_fields(response.get_json()["cards"]):
        _assert_clean(where, text)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_escape_function_neutralises_each_payload(payload):
    escaped = escape(f"Mild synovitis {payload} of the left SI joint")
    _assert_clean("escape()", escaped)
    assert "\n" not in escaped
    # escaped text inside a link label or bullet cannot close it
    assert "](" not in escaped and "<" not in escaped and ">" not in escaped
