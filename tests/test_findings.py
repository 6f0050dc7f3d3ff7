"""Findings extraction beyond the sentence corpus: catalogue, codes vs text, Condition statuses, report text
sources (conclusion, presentedForm), modality and sequences, evidence, caching, bounds."""
from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any

import pytest
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hooks.findings import (
    concept_catalogue,
    extract_findings,
    findings_from_condition,
    findings_from_report,
    findings_from_text,
    warm_up,
)
from hooks.findings.catalogue import ConceptCatalogue, NlpRules, check_sites, expand_text
from hooks.findings.report import REPORT_CACHE, _attachment_text, clear_caches
from hooks.knowledge import SYSTEMS, KnowledgeError, load_model, load_yaml
from hooks.record import PatientRecord

CONCEPT_IDS = {
    "si_joint_synovitis", "active_sacroiliitis", "red_marrow_reconversion", "bone_marrow_edema",
    "deep_bone_marrow_edema", "erosion", "fat_metaplasia", "sclerosis", "ankylosis", "joint_effusion",
    "labral_calcification", "labral_tear", "fai_morphology", "osteonecrosis", "subchondral_insufficiency_fracture",
    "transient_bme_syndrome", "osteomyelitis", "diffuse_marrow_signal_change", "vertebral_compression_fracture",
    "charcot_neuroarthropathy", "ra_with_bme", "physiological_bme",
}

# One sentence per concept, as a radiologist would write it.
SENTENCE = {
    "si_joint_synovitis": "Mild synovitis of the left SI joint.",
    "active_sacroiliitis": "Active sacroiliitis.",
    "red_marrow_reconversion": "Red marrow reconversion in the pelvis.",
    "bone_marrow_edema": "Bone marrow edema in the ilium.",
    "deep_bone_marrow_edema": "Deep bone marrow edema in the ilium.",
    "erosion": "Erosions of the iliac surface.",
    "fat_metaplasia": "Periarticular fat metaplasia.",
    "sclerosis": "Subchondral sclerosis.",
    "ankylosis": "Partial ankylosis of the SI joint.",
    "joint_effusion": "Small joint effusion.",
    "labral_calcification": "Subtle tiny calcification in the region of the labrum.",
    "labral_tear": "Anterosuperior labral tear.",
    "fai_morphology": "Cam morphology.",
    "osteonecrosis": "Avascular necrosis of the femoral head.",
    "subchondral_insufficiency_fracture": "Subchondral insufficiency fracture of the femoral head.",
    "transient_bme_syndrome": "Transient osteoporosis of the hip.",
    "osteomyelitis": "Osteomyelitis of the calcaneus.",
    "diffuse_marrow_signal_change": "Diffuse marrow replacement.",
    "vertebral_compression_fracture": "L1 compression fracture.",
    "charcot_neuroarthropathy": "Charcot neuroarthropathy of the midfoot.",
    "ra_with_bme": "Rheumatoid arthritis with bone marrow edema.",
    "physiological_bme": "Postpartum SIJ edema.",
}

TYPICAL_TEXT = (
    "MRI SACROILIAC JOINTS\n"
    "Technique: coronal oblique T1-weighted and STIR sequences.\n"
    "Findings: Mild synovitis of the left SI joint. Subchondral bone marrow oedema extending 12 mm into the left "
    "ilium. No erosions, sclerosis or ankylosis. Red marrow reconversion in the sacrum. Small joint effusion.\n"
    "Impression: Active left sacroiliitis."
)


def b64(text: str, encoding: str = "utf-8") -> str:
    return base64.b64encode(text.encode(encoding)).decode("ascii")


def report(**fields: Any) -> DiagnosticReport:
    data = {"resourceType": "DiagnosticReport", "id": "r1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "36031-3"}]}}
    data.update(fields)
    return DiagnosticReport.model_validate(data)


def condition(code: tuple[str, str], clinical: str | None = "active", verification: str | None = None) -> Condition:
    data: dict[str, Any] = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                            "code": {"coding": [{"system": code[0], "code": code[1]}]}}
    if clinical:
        data["clinicalStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical}]}
    if verification:
        data["verificationStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]}
    return Condition.model_validate(data)


def concepts(findings: Any) -> set[tuple[str, str]]:
    return {(f.concept, f.certainty) for f in findings}


# --- catalogue ---------------------------------------------------------------------------------------------------
def test_catalogue_has_exactly_the_agreed_concepts() -> None:
    catalogue = concept_catalogue()
    assert catalogue.ids() == CONCEPT_IDS
    assert catalogue.physiological() == {"red_marrow_reconversion", "physiological_bme"}
    assert all(concept.phrasings for concept in catalogue.concepts)


def test_codes_follow_the_references() -> None:
    catalogue = concept_catalogue()
    codes = {(c.system, c.code): c for concept in catalogue.concepts
             for c in (*concept.codes, *concept.related_codes)}
    snomed, icd = SYSTEMS["snomed"], SYSTEMS["icd10cm"]
    assert codes[(snomed, "6411000179107")].verified                  # BME (codes-verified.md)
    assert codes[(snomed, "201724008")].verified                      # Charcot (codes-verified.md)
    assert codes[(icd, "M46.1")].verified
    assert (snomed, "4462003") not in codes                           # synovitis concept not confirmed: absent
    assert not codes[(icd, "M25.451")].verified                       # family expansion, not in the references
    local = catalogue.local_system
    assert all(not c.verified for key, c in codes.items() if key[0] == local)
    # ICD-10-CM M46.1 and SNOMED 55146009 identify active sacroiliitis
    assert catalogue["active_sacroiliitis"].codes and {c.code for c in catalogue["active_sacroiliitis"].codes} >= {
        "55146009", "M46.1"}


def test_a_code_identifies_one_concept_only() -> None:
    data = load_yaml("concepts.yaml")
    broken = {**data, "concepts": [dict(c) for c in data["concepts"]]}
    broken["concepts"][1]["codes"] = list(broken["concepts"][1]["codes"]) + [
        {"system": "snomed", "code": "6411000179107", "display": "Edema of bone marrow", "verified": True}]
    with pytest.raises(ValidationError, match="already identifies"):
        ConceptCatalogue.model_validate(broken)


def test_unknown_keys_and_sites_are_rejected() -> None:
    data = load_yaml("concepts.yaml")
    typo = {**data, "concepts": [{**data["concepts"][0], "phrasing": ["x"]}, *data["concepts"][1:]]}
    with pytest.raises(ValidationError):
        ConceptCatalogue.model_validate(typo)
    # Site ids and report regions are the vocabulary of findings_nlp.yaml (`sites`, `region_terms`/`report_codes`).
    nlp = load_model("findings_nlp.yaml", NlpRules)
    check_sites(ConceptCatalogue.model_validate(data), nlp)
    bad_site = {**data, "concepts": [{**data["concepts"][0], "default_site": "spleen"}, *data["concepts"][1:]]}
    with pytest.raises(KnowledgeError, match="unknown site 'spleen'"):
        check_sites(ConceptCatalogue.model_validate(bad_site), nlp)
    bad_region = {**data, "concepts": [{**data["concepts"][0], "default_site_regions": ["spleen"]},
                                       *data["concepts"][1:]]}
    with pytest.raises(KnowledgeError, match="unknown region 'spleen'"):
        check_sites(ConceptCatalogue.model_validate(bad_region), nlp)


def test_warm_up_runs() -> None:
    warm_up()


# --- coded vs text -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("concept_id", sorted(CONCEPT_IDS))
def test_coded_only_and_text_only_reports_give_the_same_findings(concept_id: str) -> None:
    coding = concept_catalogue()[concept_id].codes[0]
    coded = report(conclusionCode=[{"coding": [coding.fhir()]}])
    text = report(conclusion=SENTENCE[concept_id])
    coded_findings, _ = findings_from_report(coded)
    text_findings, _ = findings_from_report(text)
    assert coded_findings and concepts(coded_findings) == concepts(text_findings)
    assert {f.source.kind for f in coded_findings} == {"coded"}
    assert {f.source.kind for f in text_findings} == {"text"}


def test_typical_report_coded_and_text_agree() -> None:
    catalogue = concept_catalogue()
    text_findings, _ = findings_from_report(report(conclusion=TYPICAL_TEXT))
    present = {f.concept for f in text_findings if f.certainty == "affirmed"}
    assert present == {"si_joint_synovitis", "bone_marrow_edema", "deep_bone_marrow_edema",
                       "red_marrow_reconversion", "joint_effusion", "active_sacroiliitis"}
    coded = report(conclusionCode=[{"coding": [catalogue[c].codes[0].fhir()]} for c in sorted(present)])
    coded_findings, _ = findings_from_report(coded)
    assert {f.concept for f in coded_findings} == present


def test_code_qualifiers_give_laterality_and_site() -> None:
    (finding,) = findings_from_condition(condition((SYSTEMS["icd10cm"], "M87.052")))
    assert (finding.concept, finding.laterality) == ("osteonecrosis", "left")
    findings = findings_from_condition(condition((SYSTEMS["icd10cm"], "M14.671")))
    assert [(f.concept, f.laterality, f.site) for f in findings] == [("charcot_neuroarthropathy", "right", "foot")]


def test_related_codes_do_not_infer_a_concept() -> None:
    # R93.7 is shared by several findings and rheumatoid arthritis is a diagnosis, not "RA with BME".
    assert findings_from_condition(condition((SYSTEMS["icd10cm"], "R93.7"))) == ()
    assert findings_from_condition(condition((SYSTEMS["snomed"], "69896004"))) == ()


# --- Condition statuses -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("clinical", "verification", "expected"), [
    ("active", "confirmed", ("affirmed", False)),
    ("active", None, ("affirmed", False)),
    (None, None, ("affirmed", False)),
    ("recurrence", "confirmed", ("affirmed", False)),
    ("relapse", None, ("affirmed", False)),
    ("active", "unconfirmed", ("uncertain", False)),
    ("active", "provisional", ("uncertain", False)),
    ("active", "differential", ("uncertain", False)),
    ("active", "refuted", ("negated", False)),
    (None, "refuted", ("negated", False)),
    ("resolved", "confirmed", ("affirmed", True)),
    ("inactive", None, ("affirmed", True)),
    ("remission", "confirmed", ("affirmed", True)),
    ("resolved", "unconfirmed", ("uncertain", True)),
    ("active", "entered-in-error", None),
])
def test_condition_status(clinical: str | None, verification: str | None, expected: tuple | None) -> None:
    findings = findings_from_condition(condition((SYSTEMS["icd10cm"], "M46.1"), clinical, verification))
    if expected is None:
        assert findings == ()
        return
    (finding,) = findings
    assert finding.concept == "active_sacroiliitis"
    assert (finding.certainty, finding.historical) == expected
    assert finding.active == (expected == ("affirmed", False))
    assert finding.source.reference == "Condition/c1"
    assert finding.source.code == f"{SYSTEMS['icd10cm']}|M46.1"


def test_snomed_sacroiliitis_condition() -> None:
    (finding,) = findings_from_condition(condition((SYSTEMS["snomed"], "55146009")))
    assert finding.concept == "active_sacroiliitis" and finding.site == "si_joint"


# --- report text sources ------------------------------------------------------------------------------------------------
def test_presented_form_text_plain_is_decoded() -> None:
    findings, _ = findings_from_report(report(presentedForm=[
        {"contentType": "text/plain", "data": b64("No erosions.")},
        {"contentType": "text/plain; charset=ISO-8859-1", "data": b64("Small hip effusion (½ of the joint).",
                                                                        "latin-1")},
    ]))
    assert concepts(findings) == {("erosion", "negated"), ("joint_effusion", "affirmed")}
    assert {f.source.element for f in findings} == {"presentedForm[0]", "presentedForm[1]"}


def test_presented_form_charset_is_respected() -> None:
    text = "Bone marrow oedema in the left ilium — “moderate”, grade ≥ 2."
    findings, _ = findings_from_report(report(presentedForm=[
        {"contentType": 'text/plain; charset="utf-16"', "data": b64(text, "utf-16")}]))
    assert ("bone_marrow_edema", "affirmed") in concepts(findings)


def test_other_attachment_types_are_ignored() -> None:
    findings, facts = findings_from_report(report(presentedForm=[
        {"contentType": "application/pdf", "data": b64("%PDF-1.4 bone marrow edema")},
        {"contentType": "image/png", "data": b64("Bone marrow edema")},
        {"contentType": "text/plain"},                                   # no data
        {"contentType": "text/plain", "url": "https://ehr.example.org/Binary/1"},
    ]))
    assert findings == ()
    assert facts.modality == "MR"
    # named for the log (HTML and RTF are read: tests/test_report_formats.py)
    assert facts.unread_attachments == ("application/pdf", "image/png", "no-data", "url-only")


def test_bad_base64_is_ignored_safely() -> None:
    attachment = SimpleNamespace(contentType="text/plain", data="@@not base64@@")
    assert _attachment_text(attachment, 1000) is None
    good = SimpleNamespace(contentType="text/plain; charset=utf-8", data=b64("No erosions."))
    assert _attachment_text(good, 1000) == "No erosions."
    unknown_charset = SimpleNamespace(contentType="text/plain; charset=x-klingon", data=b64("No erosions."))
    assert _attachment_text(unknown_charset, 1000) == "No erosions."


def test_record_with_bad_base64_report_does_not_raise() -> None:
    bad = {"resourceType": "DiagnosticReport", "id": "bad", "status": "final", "code": {"text": "MRI"},
           "presentedForm": [{"contentType": "text/plain", "data": "@@not base64@@"}]}
    good = {"resourceType": "DiagnosticReport", "id": "good", "status": "final", "code": {"text": "MRI pelvis"},
            "conclusion": "No erosions."}
    record = PatientRecord.from_prefetch({"reports": {"resourceType": "Bundle", "type": "searchset",
                                                      "entry": [{"resource": bad}, {"resource": good}]}})
    result = extract_findings(record)
    assert concepts(result.findings) == {("erosion", "negated")}
    # the tolerant reader keeps the bad report (its code is readable) and drops only the unreadable data, said so
    assert "DiagnosticReport/good" in [r.reference for r in result.reports]
    assert record.unreadable("DiagnosticReport", "presentedForm")[0].path == "DiagnosticReport.presentedForm.data"


def test_text_is_bounded() -> None:
    huge = "Mild synovitis of the left SI joint. " * 20000          # ~740k characters, 20k sentences
    findings = findings_from_text(huge, "DiagnosticReport/huge")
    assert findings and len(findings) <= 400


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "....", "No.", "\x00\x01", "é" * 50, "Left left left ;;;"])
def test_odd_text_gives_no_findings(text: str) -> None:
    assert findings_from_text(text, "DiagnosticReport/x") == ()


def test_entered_in_error_report_gives_no_findings() -> None:
    findings, facts = findings_from_report(report(status="entered-in-error", conclusion="Bone marrow edema."))
    assert findings == () and facts.reference == "DiagnosticReport/r1"


# --- modality and sequences -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "expected"), [
    ({}, ("MR", "sacroiliac", "36031-3")),
    ({"code": {"coding": [{"system": "http://loinc.org", "code": "24762-7"}]}}, ("XR", "hip", "24762-7")),
    ({"code": {"coding": [{"system": "http://loinc.org", "code": "24968-0"}]}}, ("MR", "lumbar_spine", "24968-0")),
    ({"code": {"text": "Imaging"}, "category": [{"coding": [
        {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "MR"}]}]}, ("MR", None, None)),
    ({"code": {"text": "Imaging"}, "category": [{"coding": [
        {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "DX"}]}]}, ("XR", None, None)),
    ({"code": {"text": "X-ray left hip, 2 views"}}, ("XR", "hip", None)),
    ({"code": {"text": "Imaging study"}, "conclusion": "MRI of the sacroiliac joints: no erosions."},
     ("MR", "sacroiliac", None)),
    ({"code": {"text": "Imaging study"}}, (None, None, None)),
])
def test_modality_and_region(fields: dict, expected: tuple) -> None:
    _, facts = findings_from_report(report(**fields))
    assert (facts.modality, facts.region, facts.loinc) == expected


# --- synovitis is the SI joint's only where the SI joint is the site ---------------------------------------------
SYNOVITIS_BME = "Synovitis with bone marrow edema."


@pytest.mark.parametrize(("code", "si_synovitis"), [
    ({"coding": [{"system": "http://loinc.org", "code": "36031-3", "display": "MR Sacroiliac Joint"}]}, True),
    ({"coding": [{"system": "http://loinc.org", "code": "24867-4", "display": "MR Pelvis"}]}, True),
    ({"text": "MRI sacroiliac joints"}, True),
    ({"text": "MRI right wrist"}, False),
    ({"text": "MRI left hand"}, False),
    ({"text": "MRI right knee"}, False),
    ({"coding": [{"system": "http://loinc.org", "code": "36022-2", "display": "MR Hip right"}]}, False),
    ({"text": "Imaging study"}, False),         # region not known: the SI joint is not assumed
])
def test_synovitis_without_a_site_is_si_joint_synovitis_only_in_an_si_joint_or_pelvis_report(
        code: dict, si_synovitis: bool) -> None:
    findings, facts = findings_from_report(report(code=code, conclusion=SYNOVITIS_BME))
    concepts = {f.concept for f in findings}
    assert "bone_marrow_edema" in concepts
    assert ("si_joint_synovitis" in concepts) is si_synovitis, (facts.region, concepts)
    if si_synovitis:
        assert next(f for f in findings if f.concept == "si_joint_synovitis").site == "si_joint"


def test_a_wrist_mri_with_synovitis_gives_no_si_joint_finding_and_no_axspa_pathway() -> None:
    from clinical_builders import facts_of, record
    from hooks.pathways.engine import assess

    def report_json(rid: str, code: dict, text: str | None = None) -> dict:
        data = {"resourceType": "DiagnosticReport", "id": rid, "status": "final", "code": code,
                "effectiveDateTime": "2026-11-20", "conclusion": SYNOVITIS_BME}
        if text:
            data["presentedForm"] = [{"contentType": "text/plain", "data": b64(text)}]
        return data

    wrist = record(reports=[report_json("wrist", {"text": "MRI right wrist"},
                                        "MRI RIGHT WRIST\nFindings: Synovitis of the radiocarpal joint with bone "
                                        "marrow edema in the scaphoid and lunate.")])
    found = extract_findings(wrist)
    assert [r.region for r in found.reports] == ["wrist"]
    assert not {f.concept for f in found.findings} & {"si_joint_synovitis", "active_sacroiliitis"}
    assert "axspa_si_synovitis" not in {a.pathway.id for a in assess(found, facts_of(wrist))}

    si = record(reports=[report_json("si", {"coding": [{"system": "http://loinc.org", "code": "36031-3"}]})])
    found = extract_findings(si)
    assert [r.region for r in found.reports] == ["sacroiliac"]
    assert "si_joint_synovitis" in {f.concept for f in found.findings}
    assert "axspa_si_synovitis" in {a.pathway.id for a in assess(found, facts_of(si))}


def test_sacroiliitis_in_the_sentence_places_bare_synovitis_at_the_si_joint_whatever_the_report() -> None:
    findings = findings_from_text("Active sacroiliitis on the right with capsulitis.", "DiagnosticReport/x")
    assert {(f.concept, f.laterality) for f in findings} >= {("si_joint_synovitis", "right")}


@pytest.mark.parametrize(("text", "t1", "fluid"), [
    ("Coronal T1 and STIR sequences.", True, True),
    ("T1-weighted images only.", True, False),
    ("Axial T2 fat-saturated and TIRM images.", False, True),
    ("Fat-suppressed T2 images.", False, True),
    ("T1W and T2 FS.", True, True),
    ("Compression fracture of T12.", False, False),
    ("Radiographs of the pelvis.", False, False),
])
def test_sequences(text: str, t1: bool, fluid: bool) -> None:
    _, facts = findings_from_report(report(conclusion=text))
    assert (facts.t1_sequence, facts.fluid_sensitive_sequence) == (t1, fluid)


def test_issued_date_is_reported() -> None:
    _, facts = findings_from_report(report(effectiveDateTime="2026-10-01T09:30:00Z"))
    assert facts.issued is not None and facts.issued.startswith("2026-10-01")


# --- evidence and cache -----------------------------------------------------------------------------------------------
def test_text_findings_carry_reference_and_sentence() -> None:
    findings, _ = findings_from_report(report(id="mri-7", conclusion=TYPICAL_TEXT))
    erosion = next(f for f in findings if f.concept == "erosion")
    assert erosion.source.reference == "DiagnosticReport/mri-7"
    assert erosion.source.kind == "text"
    assert erosion.source.element == "conclusion"
    assert erosion.source.text == "No erosions, sclerosis or ankylosis."
    deep = next(f for f in findings if f.concept == "deep_bone_marrow_edema")
    assert deep.depth_mm == 12.0 and deep.laterality == "left" and deep.site == "ilium"
    assert "12 mm" in deep.source.text


def test_coded_findings_carry_code_and_display() -> None:
    findings, _ = findings_from_report(report(conclusionCode=[{"coding": [
        {"system": "http://snomed.info/sct", "code": "202336002", "display": "Acetabular labrum tear"}]}]))
    (finding,) = findings
    assert finding.source.code == "http://snomed.info/sct|202336002"
    assert finding.source.text == "Acetabular labrum tear"
    assert finding.source.element == "conclusionCode[0]"


def test_cache_returns_equal_results_and_sees_changes() -> None:
    clear_caches()
    model = report(conclusion=TYPICAL_TEXT)
    first = findings_from_report(model)
    assert findings_from_report(model) is first                        # the same model: found by identity
    again = findings_from_report(report(conclusion=TYPICAL_TEXT))      # a new model with the same content
    assert again == first and REPORT_CACHE.hits == 1
    changed = findings_from_report(report(conclusion=TYPICAL_TEXT.replace("No erosions", "Small erosions")))
    assert changed != first
    assert ("erosion", "affirmed") in concepts(changed[0])


def test_extract_findings_over_a_record() -> None:
    reports = {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "DiagnosticReport", "id": "mri", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "36031-3"}]},
                      "conclusion": TYPICAL_TEXT}},
        {"resource": {"resourceType": "DiagnosticReport", "id": "xr", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "24762-7"}]},
                      "presentedForm": [{"contentType": "text/plain",
                                         "data": b64("Subtle tiny calcification in the region of the labrum.")}]}},
    ]}
    conditions = {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "Condition", "id": "sa", "subject": {"reference": "Patient/p1"},
                      "code": {"coding": [{"system": SYSTEMS["icd10cm"], "code": "M46.1"}]}}},
        {"resource": {"resourceType": "Condition", "id": "old", "subject": {"reference": "Patient/p1"},
                      "clinicalStatus": {"coding": [{"code": "resolved"}]},
                      "code": {"coding": [{"system": SYSTEMS["snomed"], "code": "397758007"}]}}},
    ]}
    result = extract_findings(PatientRecord.from_prefetch({"reports": reports, "conditions": conditions}))
    assert [r.modality for r in result.reports] == ["MR", "XR"]
    assert result.reports[0].t1_sequence and result.reports[0].fluid_sensitive_sequence
    assert result.active("labral_calcification")[0].source.reference == "DiagnosticReport/xr"
    assert {f.source.reference for f in result.active("active_sacroiliitis")} == {
        "DiagnosticReport/mri", "Condition/sa"}
    assert result.negated("erosion") and not result.active("osteonecrosis")
    assert any(f.historical for f in result.findings if f.concept == "osteonecrosis")
    # the red-marrow trap: that sentence gives the physiological concept only
    trap = [f.concept for f in result.findings if f.source.text and "red marrow" in f.source.text.lower()]
    assert trap == ["red_marrow_reconversion"]


def test_hard_wrapped_lines_stay_one_sentence() -> None:
    text = ("MRI SACROILIAC JOINTS\nFindings: Subchondral bone marrow edema in the left ilium. Small\n"
            "iliac-sided erosions.\nImpression: Active left sacroiliitis.")
    findings = findings_from_text(text, "DiagnosticReport/wrapped")
    erosion = next(f for f in findings if f.concept == "erosion")
    assert (erosion.severity, erosion.site) == ("mild", "ilium")
    assert erosion.source.text == "Small iliac-sided erosions."
    sacroiliitis = next(f for f in findings if f.concept == "active_sacroiliitis")
    assert sacroiliitis.source.text == "Impression: Active left sacroiliitis."


def test_bad_patterns_stop_with_file_place_and_reason() -> None:
    with pytest.raises(KnowledgeError) as unknown:
        expand_text("{nosuchmacro} edema", {}, "concepts.yaml", "concepts.3.phrasings.0")
    assert (unknown.value.file, unknown.value.place) == ("concepts.yaml", "concepts.3.phrasings.0")
    assert "unknown macro" in unknown.value.reason
    with pytest.raises(KnowledgeError, match="invalid pattern"):
        expand_text("marrow (edema", {}, "concepts.yaml", "concepts.3.phrasings.1")


WORDS = st.sampled_from(["no", "left", "right", "bilateral", "mild", "severe", "edema", "oedema", "marrow", "bone",
                         "erosions", "synovitis", "SI", "joint", "cannot", "exclude", "prior", "resolved", "deep",
                         "12", "mm", ">1", "cm", ",", ".", ";", "\n", "red", "labrum", "tear", "L1", "T1", "STIR",
                         "(", ")", "%", "°", "é", "\x00"])


@settings(max_examples=150, deadline=None)
@given(st.lists(WORDS, max_size=40), st.text(max_size=60))
def test_any_text_extracts_without_error(words: list[str], noise: str) -> None:
    text = " ".join(words) + noise
    findings = findings_from_text(text, "DiagnosticReport/fuzz")
    ids = concept_catalogue().ids()
    for finding in findings:
        assert finding.concept in ids
        assert finding.certainty in ("affirmed", "negated", "uncertain")
        assert finding.source.reference == "DiagnosticReport/fuzz"


def test_conclusion_repeated_in_the_attachment_is_counted_once() -> None:
    impression = "Mild synovitis of the left SI joint."
    findings, _ = findings_from_report(report(
        conclusion=impression,
        presentedForm=[{"contentType": "text/plain", "data": b64(f"Findings: No erosions.\n{impression}")}]))
    assert sorted((f.concept, f.source.element) for f in findings) == [
        ("erosion", "presentedForm[0]"), ("si_joint_synovitis", "conclusion")]
