"""Whole reports as hospitals write them: sections (indication/history, technique, comparison, findings, impression,
addendum) and time (the newest report of a region decides; old reports are history). Each class below gave a false
current finding (and a false card) before reports were split into sections and dated."""
from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from hooks.pipeline import patient_view_cards
from hooks.findings import extract_findings
from hooks.findings.sections import split_sections
from hooks.record import PatientRecord
from hooks.registry import HookRequest

NOW = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.timezone.utc)
LOINC = "http://loinc.org"
MR_SI, MR_HIP_R, MR_FOOT_L, MR_PELVIS = "36031-3", "36022-2", "36350-7", "30657-1"


def day(days_ago: float) -> str:
    return (NOW - dt.timedelta(days=days_ago)).date().isoformat()


def report(rid: str, text: str, loinc: str = MR_SI, days_ago: float = 3, status: str = "final",
           element: str = "conclusion") -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "DiagnosticReport", "id": rid, "status": status,
                                "subject": {"reference": "Patient/p1"},
                                "code": {"coding": [{"system": LOINC, "code": loinc}]},
                                "effectiveDateTime": day(days_ago)}
    resource[element] = text
    return resource


def record_of(*reports: dict[str, Any]) -> PatientRecord:
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in reports]}
    patient = {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1985-01-01"}
    return PatientRecord.from_prefetch({"patient": patient, "reports": bundle,
                                        "conditions": {"resourceType": "Bundle", "type": "searchset"}})


def current(rec: PatientRecord) -> set[str]:
    return {f.concept for f in extract_findings(rec, NOW).findings if f.active or (
        f.certainty == "uncertain" and not f.historical)}


def cards(rec: PatientRecord) -> list[dict[str, Any]]:
    request = HookRequest("msk-imaging-patient-view", "patient-view", "hook-1", {"patientId": "p1"}, rec, NOW)
    return [c if isinstance(c, dict) else c.to_json() for c in patient_view_cards(request).cards]


NORMAL_SI_WITH_QUESTION = """MRI SACROILIAC JOINTS WITHOUT CONTRAST
CLINICAL INDICATION: 29M, 6 months of inflammatory back pain. ?sacroiliitis ?axial spondyloarthritis.
TECHNIQUE: Coronal oblique T1 and STIR sequences.
COMPARISON: None.
FINDINGS: The sacroiliac joints are normal in width and outline. No subchondral bone marrow oedema. No erosions,
sclerosis, fat metaplasia or ankylosis. Normal marrow signal in the lumbar spine and pelvis.
IMPRESSION: Normal MRI of the sacroiliac joints. No evidence of sacroiliitis."""

HIP_QUESTIONS_EXCLUDED = """Exam: MRI RIGHT HIP
Reason for exam: 54F runner, right groin pain. ?AVN ?stress fracture
Technique: multiplanar PD fat-sat, T1 and STIR.
Findings: Normal femoral head contour and marrow signal. No subchondral fracture line. No osteonecrosis.
No bone marrow oedema. Labrum intact. Small joint effusion.
Impression: No avascular necrosis or stress fracture. Small effusion."""

FOOT_WITH_OLD_AMPUTATION = """mri left foot
history
Diabetic. Amputation of the left 2nd toe for osteomyelitis 7 years ago. Now swelling of the forefoot.
technique
T1, STIR and post-contrast T1 fat-saturated sequences.
findings
Post-surgical changes at the 2nd ray amputation site. Normal marrow signal in the remaining metatarsals and
phalanges. No cortical destruction. No abscess or sinus tract. Mild subcutaneous oedema of the dorsum.
impression
No MRI evidence of osteomyelitis."""


def test_a_question_in_the_indication_is_no_finding_and_gives_no_card() -> None:
    rec = record_of(report("si", NORMAL_SI_WITH_QUESTION))
    assert not current(rec) & {"active_sacroiliitis", "si_joint_synovitis", "bone_marrow_edema"}
    assert cards(rec) == []


def test_questions_the_findings_exclude_give_no_osteonecrosis_or_fracture() -> None:
    rec = record_of(report("hip", HIP_QUESTIONS_EXCLUDED, MR_HIP_R, element="conclusion"))
    found = current(rec)
    assert "osteonecrosis" not in found and "subchondral_insufficiency_fracture" not in found
    assert "joint_effusion" in found
    assert not any(c.get("indicator") in ("warning", "critical") for c in cards(rec))


def test_a_past_event_in_the_history_is_history_not_a_current_finding() -> None:
    rec = record_of(report("foot", FOOT_WITH_OLD_AMPUTATION, MR_FOOT_L))
    findings = [f for f in extract_findings(rec, NOW).findings if f.concept == "osteomyelitis"]
    assert not any(f.active for f in findings)
    assert any(f.historical and f.section == "reason" for f in findings)       # a historical fact, kept as such
    assert not any(c.get("indicator") == "critical" for c in cards(rec))


def test_comparison_statements_are_about_prior_studies() -> None:
    text = ("Comparison: MRI 14 months ago showed bone marrow oedema of the left ilium and active sacroiliitis.\n"
            "Findings: Resolution of the previously seen marrow oedema. No synovitis. Small erosions of the left "
            "iliac surface, unchanged.\nImpression: No active sacroiliitis. Stable structural change.")
    rec = record_of(report("si", text))
    found = current(rec)
    assert "bone_marrow_edema" not in found and "active_sacroiliitis" not in found
    assert "erosion" in found
    assert any(f.concept == "active_sacroiliitis" and f.historical for f in extract_findings(rec, NOW).findings)


def test_the_impression_wins_over_the_findings_where_they_disagree() -> None:
    text = ("FINDINGS: Subtle increased STIR signal in the right ilium, possibly bone marrow oedema.\n"
            "IMPRESSION: No bone marrow oedema; the signal is partial volume of the iliac vessels.")
    rec = record_of(report("si", text))
    bme = [f for f in extract_findings(rec, NOW).findings if f.concept == "bone_marrow_edema"]
    assert bme and all(f.certainty == "negated" for f in bme)


def test_an_addendum_wins_over_what_it_amends() -> None:
    text = ("FINDINGS: Subchondral bone marrow oedema of the left ilium.\n"
            "IMPRESSION: Active sacroiliitis, left.\n"
            "ADDENDUM: On review with the prior radiographs there is no active sacroiliitis; the oedema is "
            "mechanical, related to the adjacent insufficiency change.")
    rec = record_of(report("si", text))
    sacroiliitis = [f for f in extract_findings(rec, NOW).findings if f.concept == "active_sacroiliitis"]
    assert sacroiliitis and all(f.certainty == "negated" for f in sacroiliitis)


@pytest.mark.parametrize("text, roles", [
    ("INDICATION: back pain\nFINDINGS: normal", ["reason", "findings"]),
    ("Indication - back pain\nFindings - normal", ["reason", "findings"]),
    ("clinical history\nback pain\nfindings\nnormal\nimpression\nnormal", ["reason", "findings", "impression"]),
    ("CLINICAL HISTORY 45M back pain\nFINDINGS Normal joints.", ["reason", "findings"]),
    ("Indication: ?AVN. Findings: normal. Impression: normal.", ["reason", "findings", "impression"]),
    ("MRI PELVIS\nFINDINGS: normal.\nADDENDUM 1: discussed.", ["header", "findings", "addendum"]),
    ("The findings are normal. These findings: nothing else.", ["headingless"]),
    ("NO EROSIONS.\nFINDINGS ARE CONSISTENT WITH A NORMAL STUDY.", ["headingless"]),
    ("Mild synovitis of the left SI joint.", ["headingless"]),
    ("Mild oedema of the ilium.\nIMPRESSION: sacroiliitis.", ["headingless", "impression"]),
    ("HISTORY/INDICATION: ?sacroiliitis\nFINDINGS & IMPRESSION: normal", ["reason", "findings"]),
])
def test_headings_with_and_without_colons_in_any_case(text: str, roles: list[str]) -> None:
    sections = split_sections(text)
    assert [s.role for s in sections] == roles
    # a section's body never carries its own heading's words or colon
    assert not any(text[s.start:s.end].lstrip().startswith((":", "/", "&")) for s in sections)


def test_the_newest_report_of_a_region_decides_and_older_reports_are_history() -> None:
    old = report("si-old", "Active sacroiliitis with bone marrow oedema of the left ilium.", days_ago=200)
    new = report("si-new", "Resolution of the previously seen inflammation. The sacroiliac joints are normal.",
                 days_ago=10)
    rec = record_of(old, new)
    result = extract_findings(rec, NOW)
    assert not result.active("active_sacroiliitis") and not result.active("bone_marrow_edema")
    old_findings = [f for f in result.findings if f.source.reference == "DiagnosticReport/si-old"]
    assert old_findings and all(f.historical and f.study_date == day(200) for f in old_findings)
    assert cards(rec) == []


def test_a_newer_preliminary_report_does_not_replace_the_final_one() -> None:
    final = report("si-final", "Active sacroiliitis with bone marrow oedema of the left ilium.", days_ago=20)
    prelim = report("si-prelim", "Sacroiliac joints: awaiting full review.", days_ago=2, status="preliminary")
    assert extract_findings(record_of(final, prelim), NOW).active("active_sacroiliitis")


def test_reports_of_other_regions_stay_current() -> None:
    si = report("si", "Active sacroiliitis, left.", days_ago=90)
    hip = report("hip", "Small right hip joint effusion.", MR_HIP_R, days_ago=5)
    result = extract_findings(record_of(si, hip), NOW)
    assert result.active("active_sacroiliitis") and result.active("joint_effusion")


def test_a_report_older_than_the_window_starts_no_pathway() -> None:
    rec = record_of(report("si", "Active sacroiliitis with bone marrow oedema of the left ilium.", days_ago=900))
    result = extract_findings(rec, NOW)
    assert not result.active("active_sacroiliitis")
    assert any(f.historical for f in result.findings if f.concept == "active_sacroiliitis")
    assert cards(rec) == []


# Sentence-level classes, each inside a whole report (the report reads right only when the sentence does).
MR_PELVIS_CODE, XR_HIP = "24867-4", "24762-7"
SENTENCE_CLASS_REPORTS = {
    "addendum_changes_the_conclusion": (MR_PELVIS_CODE, """MRI PELVIS
INDICATION: Hip pain and anaemia.
FINDINGS: Diffuse intermediate T1 marrow signal in the pelvis and proximal femora, attributed to red marrow
reconversion. No fracture. Femoral heads normal.
IMPRESSION: Red marrow reconversion. No osteonecrosis.
ADDENDUM: Reviewed with the prior laboratory results. The marrow signal is lower than that of skeletal muscle on T1.
This is not typical of red marrow reconversion and is suspicious for a diffuse marrow-replacing process; haematology
referral is advised.""", {("diffuse_marrow_signal_change", "affirmed")},
        {"red_marrow_reconversion"}),
    "concessive_negation": (MR_SI, """MRI SACROILIAC JOINTS
FINDINGS: Although no erosions or ankylosis are seen, there is subchondral bone marrow oedema of the left ilium.
IMPRESSION: While the joints show no structural damage, the oedema is in keeping with active left sacroiliitis.""",
        {("bone_marrow_edema", "affirmed"), ("active_sacroiliitis", "affirmed")}, {"erosion", "ankylosis"}),
    "double_negative_hedges": (MR_SI, """MRI SACROILIAC JOINTS
FINDINGS: Faint periarticular signal at the right iliac surface.
IMPRESSION: Appearances are not inconsistent with early right sacroiliitis; follow-up MRI in 3 months.""",
        {("active_sacroiliitis", "uncertain")}, set()),
    "leading_diagnosis_hedges": (MR_HIP_R, """MRI RIGHT HIP
FINDINGS: Diffuse marrow oedema of the femoral head and neck without a subchondral fracture line or rim sign.
IMPRESSION: The leading diagnosis is transient bone marrow oedema syndrome.""",
        {("bone_marrow_edema", "affirmed"), ("transient_bme_syndrome", "uncertain")}, set()),
    "soft_tissue_oedema_is_not_bone": (MR_PELVIS_CODE, """MRI PELVIS
FINDINGS: Normal bone marrow signal. Oedema within the left gluteus medius muscle belly and along the fascia lata.
Subcutaneous oedema over the greater trochanter.
IMPRESSION: Gluteal muscle strain. No bony abnormality.""", set(), {"bone_marrow_edema"}),
    "muscle_fat_is_not_fat_metaplasia": (MR_PELVIS_CODE, """MRI LUMBOSACRAL
FINDINGS: SI joints normal. Marked fatty infiltration of the multifidus muscles at L5-S1.
IMPRESSION: Muscle atrophy. Normal sacroiliac joints.""", set(), {"fat_metaplasia"}),
    "follow_up_lesion_still_present": (MR_SI, """MRI SACROILIAC JOINTS (FOLLOW-UP)
CLINICAL HISTORY: Known axial spondyloarthritis on NSAIDs for 3 months.
COMPARISON: MRI 4 months ago.
FINDINGS: The previously seen subchondral bone marrow oedema of the left ilium persists, unchanged in extent.
Previously described small erosions are again noted.
IMPRESSION: Persistent active left sacroiliitis.""",
        {("bone_marrow_edema", "affirmed"), ("erosion", "affirmed"), ("active_sacroiliitis", "affirmed")}, set()),
    "labral_calcification_projects_over_the_labrum": (XR_HIP, """XR RIGHT HIP 2 VIEWS
FINDINGS: Tiny calcification projecting over the region of the superior acetabular labrum. Joint space preserved.
IMPRESSION: No fracture. Joint space preserved.""",
        {("labral_calcification", "affirmed")}, set()),
}


@pytest.mark.parametrize("name", sorted(SENTENCE_CLASS_REPORTS))
def test_sentence_classes_in_whole_reports(name: str) -> None:
    loinc, text, wanted, not_current = SENTENCE_CLASS_REPORTS[name]
    result = extract_findings(record_of(report("r", text, loinc)), NOW)
    got = {(f.concept, f.certainty) for f in result.findings if f.certainty != "negated" and not f.historical}
    assert wanted <= got, got
    assert not {c for c, _ in got} & not_current, got


def test_a_preliminary_read_in_the_text_is_superseded_by_the_final_report() -> None:
    text = """MRI LEFT HIP
INDICATION: Runner with groin pain.
PRELIMINARY REPORT (resident, 22:10): Possible femoral neck stress fracture. Small joint effusion.
FINAL REPORT (attending, 08:30): The low-signal band is the physeal scar. No stress fracture. Subchondral bone marrow
oedema of the left femoral head.
IMPRESSION (final): Bone marrow oedema of the left femoral head; no fracture."""
    result = extract_findings(record_of(report("hip", text, MR_HIP_R)), NOW)
    current = {f.concept for f in result.findings if f.certainty != "negated" and not f.historical}
    assert "bone_marrow_edema" in current
    assert not current & {"subchondral_insufficiency_fracture", "joint_effusion"}, current
    assert any(f.section == "preliminary" and f.historical for f in result.findings)


def test_a_newer_report_that_cannot_be_read_does_not_make_the_older_one_history() -> None:
    """Safety fails closed: a newer report sent only as a PDF (or a Binary that could not be fetched) says nothing we
    could read, so it cannot say the lesion of the older, readable report is gone."""
    old = report("si-old", "Active sacroiliitis with bone marrow oedema of the left ilium.", days_ago=60)
    pdf_only = report("si-new", "", days_ago=5)
    del pdf_only["conclusion"]
    pdf_only["presentedForm"] = [{"contentType": "application/pdf", "data": "JVBERi0xLjQK"}]
    result = extract_findings(record_of(old, pdf_only), NOW)
    assert result.active("active_sacroiliitis") and result.active("bone_marrow_edema")
