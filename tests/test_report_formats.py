"""Report formats as EHRs send them: the same report as `conclusion`, as a presentedForm in text/plain, text/html
and text/rtf, as a presentedForm given only by url (a Binary read from the EHR's FHIR server, played by `responses`)
and as a DocumentReference radiology narrative gives the same findings. PDFs and images are named in the log."""
from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import threading
import time
from typing import Any

import pytest
import responses

from conftest import FHIR_BASE, PATIENT_ID, complete_prefetch, searchset
from hooks.findings import extract_findings
from hooks.findings.report import clear_caches
from hooks.record import PatientRecord
from hooks.services import default_registry
from service import prefetch as prefetch_module
from service.logs import JsonLineFormatter
from service.hookcall import validate_call

PV = "/cds-services/msk-imaging-patient-view"
DEFINITION = default_registry()["msk-imaging-patient-view"]
NOW = dt.datetime.now(dt.timezone.utc)
DATE = (NOW - dt.timedelta(days=4)).date().isoformat()
LOINC = "http://loinc.org"

REPORT_LINES = [
    ("h", "MRI SACROILIAC JOINTS WITH AND WITHOUT CONTRAST"),
    ("p", "CLINICAL HISTORY: 31F, inflammatory back pain for 8 months. ?sacroiliitis ?AVN"),
    ("p", "TECHNIQUE: Coronal oblique T1, STIR and post-contrast T1 fat-saturated sequences."),
    ("p", "COMPARISON: Pelvic radiograph 2 years ago showed no erosions."),
    ("h", "FINDINGS"),
    ("p", "Bilateral subchondral bone marrow oedema of the iliac and sacral surfaces, extending 15 mm from the "
          "articular surface on the left. Multiple small erosions of both iliac surfaces. No ankylosis."),
    ("h", "IMPRESSION"),
    ("p", "Bilateral active sacroiliitis with deep bone marrow oedema and erosions, in keeping with axial "
          "spondyloarthritis."),
]
PLAIN = "\n".join(text for _, text in REPORT_LINES)
HTML = ("<html><head><style>p {margin:0}</style></head><body><div class='report'>"
        + "".join(f"<h3>{t}</h3>" if kind == "h" else f"<p><span>{t.replace('>', '&gt;')}</span></p>"
                  for kind, t in REPORT_LINES)
        + "</div></body></html>")
RTF = ("{\\rtf1\\ansi\\ansicpg1252\\deff0{\\fonttbl{\\f0\\fswiss Arial;}}\\viewkind4\\uc1\\pard\\f0\\fs20 "
       + "".join(("{\\b " + t + "}\\par\n") if kind == "h" else (t + "\\par\n") for kind, t in REPORT_LINES)
       + "}")


def b64(text: str, encoding: str = "utf-8") -> str:
    return base64.b64encode(text.encode(encoding)).decode("ascii")


def diagnostic_report(rid: str, **elements: Any) -> dict[str, Any]:
    return {"resourceType": "DiagnosticReport", "id": rid, "status": "final",
            "subject": {"reference": f"Patient/{PATIENT_ID}"},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
            "code": {"coding": [{"system": LOINC, "code": "36031-3", "display": "MR Sacroiliac joint"}]},
            "effectiveDateTime": DATE, **elements}


def document_reference(did: str, attachment: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "DocumentReference", "id": did, "status": "current", "docStatus": "final",
            "subject": {"reference": f"Patient/{PATIENT_ID}"},
            "type": {"coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}]},
            "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-"
                                                "category", "code": "clinical-note"}]}],
            "description": "MRI sacroiliac joints",
            "date": f"{DATE}T10:00:00Z", "context": {"period": {"start": DATE}},
            "content": [{"attachment": attachment}]}


def signature(record: PatientRecord) -> set[tuple]:
    clear_caches()
    return {(f.concept, f.certainty, f.historical, f.laterality, f.severity, f.site, f.depth_mm, f.section)
            for f in extract_findings(record, NOW).findings}


def record_of(reports: list[dict[str, Any]] = (), documents: list[dict[str, Any]] = ()) -> PatientRecord:
    prefetch = {"reports": searchset(reports)}
    if documents:
        prefetch["imagingNotes"] = searchset(documents)
    return PatientRecord.from_prefetch(prefetch)


@pytest.fixture(scope="module")
def expected() -> set[tuple]:
    found = signature(record_of([diagnostic_report("r", conclusion=PLAIN)]))
    current = {(c, cert) for c, cert, hist, *_ in found if not hist}
    # The report itself, read by a clinician: bilateral active sacroiliitis, deep BME, erosions; the questions of
    # the history are no findings; the old radiograph's "no erosions" is no current negation.
    assert {("active_sacroiliitis", "affirmed"), ("bone_marrow_edema", "affirmed"),
            ("deep_bone_marrow_edema", "affirmed"), ("erosion", "affirmed"), ("ankylosis", "negated")} <= current
    assert not {c for c, _ in current} & {"osteonecrosis"}
    assert ("erosion", "negated") not in current
    return found


@pytest.mark.parametrize("content_type, data", [
    ("text/plain", b64(PLAIN)),
    ("text/plain; charset=iso-8859-1", b64(PLAIN, "latin-1")),
    ("text/html", b64(HTML)),
    ("text/html; charset=utf-8", b64(HTML)),
    ("application/xhtml+xml", b64(HTML)),
    ("text/rtf", b64(RTF, "latin-1")),
    ("application/rtf", b64(RTF, "latin-1")),
])
def test_presented_form_formats_give_the_findings_of_the_same_text_in_conclusion(expected, content_type, data):
    report = diagnostic_report("r", presentedForm=[{"contentType": content_type, "data": data}])
    assert signature(record_of([report])) == expected


def test_a_document_reference_radiology_narrative_reads_like_a_report(expected):
    document = document_reference("d", {"contentType": "text/html", "data": b64(HTML)})
    assert signature(record_of(documents=[document])) == expected


def test_documents_that_are_not_imaging_reports_are_not_read():
    note = document_reference("d", {"contentType": "text/plain", "data": b64(PLAIN)})
    note["type"] = {"coding": [{"system": LOINC, "code": "11506-3", "display": "Progress note"}]}
    assert signature(record_of(documents=[note])) == set()


def test_html_with_bilateral_active_sacroiliitis_gives_a_card(client, cds_request):
    """The issue's report: an HTML presentedForm with bilateral active sacroiliitis, deep oedema and erosions gave
    no card at all when only text/plain was read."""
    prefetch = complete_prefetch()
    prefetch["reports"] = searchset([diagnostic_report("r", presentedForm=[
        {"contentType": "text/html", "data": b64(HTML)}])])
    response = client.post(PV, json=cds_request("patient-view", prefetch=prefetch))
    assert response.status_code == 200
    assert response.get_json()["cards"], "an HTML report of active sacroiliitis must give a card"


def resolve(app, body):
    with app.test_request_context():
        return prefetch_module.resolve(DEFINITION, validate_call(body, DEFINITION.hook))


@pytest.mark.parametrize("content_type, data", [
    ("text/plain", b64(PLAIN)), ("text/html", b64(HTML)), ("text/rtf", b64(RTF, "latin-1"))])
def test_a_presented_form_by_url_is_read_from_the_fhir_server(app, cds_request, fhir_server, expected,
                                                              content_type, data):
    fhir_server.mock.get(f"{FHIR_BASE}/Binary/b1", json={"resourceType": "Binary", "contentType": content_type,
                                                          "data": data})
    prefetch = complete_prefetch()
    prefetch["reports"] = searchset([diagnostic_report("r", presentedForm=[
        {"contentType": content_type, "url": "Binary/b1"}])])
    body = cds_request("patient-view", prefetch=prefetch, fhir_server=FHIR_BASE, access_token="tok-9")
    resolved = resolve(app, body)
    assert [c.request.headers.get("Authorization") for c in fhir_server.calls] == ["Bearer tok-9"]
    assert signature(PatientRecord.from_prefetch(resolved.data)) == expected
    # the request's own data is not changed
    assert "data" not in body["prefetch"]["reports"]["entry"][0]["resource"]["presentedForm"][0]


def test_a_document_reference_by_absolute_url_of_the_same_server_is_read(app, cds_request, fhir_server, expected):
    fhir_server.mock.get(f"{FHIR_BASE}/Binary/b2", json={"resourceType": "Binary", "contentType": "text/html",
                                                          "data": b64(HTML)})
    prefetch = complete_prefetch()
    prefetch["imagingNotes"] = searchset([document_reference("d", {"contentType": "text/html",
                                                                   "url": f"{FHIR_BASE}/Binary/b2"})])
    resolved = resolve(app, cds_request("patient-view", prefetch=prefetch, fhir_server=FHIR_BASE))
    assert signature(PatientRecord.from_prefetch(resolved.data)) == expected


def test_a_url_on_another_server_is_not_fetched_and_the_token_goes_nowhere(app, cds_request, fhir_server):
    prefetch = complete_prefetch()
    prefetch["reports"] = searchset([diagnostic_report("r", presentedForm=[
        {"contentType": "text/plain", "url": "https://elsewhere.example.com/Binary/b1"}])])
    resolved = resolve(app, cds_request("patient-view", prefetch=prefetch, fhir_server=FHIR_BASE,
                                        access_token="tok-9"))
    assert fhir_server.calls == []
    assert signature(PatientRecord.from_prefetch(resolved.data)) == set()


def test_an_unreadable_binary_leaves_the_report_unread_not_an_error(client, cds_request, fhir_server):
    fhir_server.fail("Binary/b1", status=404)
    prefetch = complete_prefetch()
    prefetch["reports"] = searchset([diagnostic_report("r", presentedForm=[
        {"contentType": "text/plain", "url": "Binary/b1"}])])
    response = client.post(PV, json=cds_request("patient-view", prefetch=prefetch, fhir_server=FHIR_BASE))
    assert response.status_code == 200 and response.get_json()["cards"] == []


def test_pdf_and_images_are_counted_and_named_in_the_log_never_an_error(client, cds_request, caplog):
    prefetch = complete_prefetch()
    prefetch["reports"] = searchset([diagnostic_report("r", presentedForm=[
        {"contentType": "application/pdf", "data": b64("%PDF-1.4 bilateral active sacroiliitis")},
        {"contentType": "image/jpeg", "data": b64("\xff\xd8\xff")},
        {"contentType": "application/pdf", "data": b64("%PDF-1.4")},
    ])])
    with caplog.at_level(logging.INFO, logger="hooks.findings"):
        response = client.post(PV, json=cds_request("patient-view", prefetch=prefetch))
    assert response.status_code == 200 and response.get_json()["cards"] == []
    logged = [r for r in caplog.records if r.getMessage() == "report_attachments_not_read"]
    assert logged and logged[0].count == 3 and logged[0].reason == "application/pdf=2 image/jpeg=1"
    line = json.loads(JsonLineFormatter().format(logged[0]))       # what the service's log really writes
    assert line["count"] == 3 and line["reason"] == "application/pdf=2 image/jpeg=1"
    assert "sacroiliitis" not in caplog.text


def test_a_content_type_that_is_not_a_media_type_is_not_written_to_the_log(client, cds_request, caplog):
    prefetch = complete_prefetch()
    prefetch["reports"] = searchset([diagnostic_report("r", presentedForm=[
        {"contentType": "Jane Doe DOB 1980-01-01", "data": b64("x")}])])
    with caplog.at_level(logging.INFO, logger="hooks.findings"):
        assert client.post(PV, json=cds_request("patient-view", prefetch=prefetch)).status_code == 200
    logged = [r for r in caplog.records if r.getMessage() == "report_attachments_not_read"]
    assert logged and logged[0].reason == "other=1" and "Jane" not in caplog.text


@pytest.mark.parametrize("content_type, data", [
    ("text/html", b64("<p>unclosed <b>bold <table><tr><td>Active sacroiliitis")),
    ("text/html", b64("\x00\x01<<<>>>")),
    ("text/rtf", b64("{\\rtf1 {{{ unbalanced \\par Active sacroiliitis")),
    ("text/rtf", b64("not rtf at all")),
])
def test_malformed_markup_never_raises(content_type, data):
    report = diagnostic_report("r", presentedForm=[{"contentType": content_type, "data": data}])
    signature(record_of([report]))        # whatever is read, nothing raises


def test_a_binary_that_stalls_is_given_up_at_the_prefetch_deadline(app_factory, cds_request, fhir_server):
    """The Binary read shares the prefetch deadline: a stalled server leaves the report unread, the call answers."""
    release = threading.Event()

    def stall(request):
        release.wait(20)
        return 200, {}, json.dumps({"resourceType": "Binary", "contentType": "text/plain", "data": b64(PLAIN)})

    app = app_factory(FHIR_FETCH_DEADLINE_SECONDS=0.5)
    fhir_server.mock.add_callback(responses.GET, f"{FHIR_BASE}/Binary/slow", callback=stall)
    prefetch = complete_prefetch()
    prefetch["reports"] = searchset([diagnostic_report("r", presentedForm=[
        {"contentType": "text/plain", "url": "Binary/slow"}])])
    try:
        started = time.monotonic()
        response = app.test_client().post(PV, json=cds_request("patient-view", prefetch=prefetch,
                                                               fhir_server=FHIR_BASE))
        assert response.status_code == 200 and response.get_json()["cards"] == []
        assert time.monotonic() - started < 10, "the call waited for the stalled Binary instead of its deadline"
    finally:
        release.set()


def test_imaging_notes_are_fetched_by_their_own_prefetch_key_and_give_a_card(client, cds_request, fhir_server):
    """No DiagnosticReport at all: the radiology narrative comes as a DocumentReference, read from the FHIR server
    under the `imagingNotes` key (type 18748-4), and drives the card as a report would."""
    fhir_server.search("DocumentReference", searchset([document_reference("d", {"contentType": "text/html",
                                                                                "data": b64(HTML)})]))
    prefetch = complete_prefetch()
    del prefetch["imagingNotes"]
    response = client.post(PV, json=cds_request("patient-view", prefetch=prefetch, fhir_server=FHIR_BASE))
    assert response.status_code == 200
    assert [c.request.path_url.split("?")[0] for c in fhir_server.calls] == ["/fhir/DocumentReference"]
    assert "type=http://loinc.org%7C18748-4" in fhir_server.calls[0].request.path_url
    assert response.get_json()["cards"], "a DocumentReference report of active sacroiliitis must give a card"
