"""Micro-benchmark of findings extraction (not a test): warm per-report time for a typical 8-sentence MRI report,
cold (caches cleared, pipeline warm) and cached. Run: .venv/bin/python tests/benchmarks/findings_bench.py"""
from __future__ import annotations

import argparse
import base64
import gc
import statistics
import time
from typing import Callable

from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from hooks.findings import findings_from_report, findings_from_text, warm_up
from hooks.findings.report import clear_caches

TYPICAL_REPORT = (
    "MRI SACROILIAC JOINTS\n"
    "Technique: coronal oblique T1-weighted and STIR sequences of the sacroiliac joints.\n"
    "Findings: Mild synovitis of the left SI joint. "
    "Subchondral bone marrow oedema extending 12 mm into the left ilium. "
    "No erosions, sclerosis or ankylosis. "
    "Red marrow reconversion in the sacrum, a normal variant. "
    "Small joint effusion of the left SI joint. "
    "The visualised lumbar spine is unremarkable.\n"
    "Impression: Active left sacroiliitis."
)


def typical_report() -> DiagnosticReport:
    return DiagnosticReport.model_validate({
        "resourceType": "DiagnosticReport", "id": "bench", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "36031-3"}]},
        "presentedForm": [{"contentType": "text/plain; charset=utf-8",
                           "data": base64.b64encode(TYPICAL_REPORT.encode()).decode()}],
    })


def measure(call: Callable[[], object], runs: int, before: Callable[[], None] | None = None) -> list[float]:
    times = []
    gc.disable()
    try:
        for _ in range(runs):
            if before:
                before()
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1000)
    finally:
        gc.enable()
    return times


def summary(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    return (f"{name:44} median {statistics.median(times):8.4f} ms   p95 {p95:8.4f} ms   "
            f"min {ordered[0]:8.4f} ms   (n={len(times)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    start = time.perf_counter()
    warm_up()
    print(f"warm_up (catalogue + spaCy/medspaCy pipeline): {(time.perf_counter() - start) * 1000:.0f} ms")
    report = typical_report()
    sentences = TYPICAL_REPORT.count(".") + 1
    findings, facts = findings_from_report(report)
    print(f"typical report: {len(TYPICAL_REPORT)} chars, ~{sentences} sentences, {len(findings)} findings, "
          f"modality {facts.modality}, T1 {facts.t1_sequence}, STIR/T2 {facts.fluid_sensitive_sequence}")
    measure(lambda: findings_from_report(report), 50, clear_caches)          # settle
    print(summary("findings_from_report, cold (no cache)", measure(lambda: findings_from_report(report),
                                                                   args.runs, clear_caches)))
    print(summary("findings_from_text, cold (no cache)", measure(
        lambda: findings_from_text(TYPICAL_REPORT, "DiagnosticReport/bench"), args.runs, clear_caches)))
    findings_from_report(report)
    print(summary("findings_from_report, cached (same model)", measure(lambda: findings_from_report(report),
                                                                        args.runs)))
    fresh = [typical_report() for _ in range(args.runs)]                 # new models with the same content
    print(summary("findings_from_report, cached (equal content)", measure(
        lambda: findings_from_report(fresh.pop()), args.runs)))
    typical_chart(args.runs)


def typical_chart(runs: int) -> None:
    """The benchmark's typical chart (tests/benchmarks/workload.py): the findings stage over its reports, cold
    (extraction caches cleared before each call; the record's FHIR models are parsed once, as in a request)."""
    import datetime as dt

    import importlib.util
    import pathlib
    import sys

    from hooks.findings import extract_findings
    from hooks.record import PatientRecord

    here = pathlib.Path(__file__).resolve().parent
    sys.path.insert(0, str(here.parents[1]))           # the repository root, for fixtures.build
    spec = importlib.util.spec_from_file_location("msk_cds_bench_workload", here / "workload.py")
    workload = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(workload)

    request = workload.typical_request("patient-view")
    record = PatientRecord.from_prefetch(request["prefetch"])
    now = dt.datetime.fromisoformat(workload.now_of_typical().replace("Z", "+00:00"))
    reports = len(extract_findings(record, now).reports)
    times = measure(lambda: extract_findings(record, now), runs, clear_caches)
    print(summary(f"typical chart: extract_findings ({reports} reports), cold", times))
    print(summary("typical chart: per report, cold", [t / max(1, reports) for t in times]))


if __name__ == "__main__":
    main()
