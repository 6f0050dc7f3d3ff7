"""Per-finding-class precision and recall of the text extractor on the labelled corpus
(fixtures/findings/corpus.yaml). Run: python tests/findings_metrics.py [--corpus fixtures/findings/heldout.yaml]"""
from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hooks.findings import findings_from_text
from hooks.model import Finding

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "findings" / "corpus.yaml"
LATERALITIES = {"left", "right", "bilateral", "unilateral"}
SEVERITIES = {"mild", "moderate", "severe"}
CERTAINTIES = {"affirmed", "negated", "uncertain"}


@dataclass(frozen=True)
class Expected:
    concept: str
    certainty: str
    historical: bool
    laterality: str | None
    severity: str | None
    depth_mm: float | None
    measurements: tuple[tuple[str, float], ...]
    site: str | None          # compared only when given

    def key(self) -> tuple:
        return (self.concept, self.certainty, self.historical, self.laterality, self.severity, self.depth_mm,
                self.measurements)


def parse(spec: str) -> Expected:
    """'<concept> <certainty> [historical] [side] [grade] [site=x] [depth=n] [name=value]' -> Expected."""
    words = spec.split()
    concept, certainty, rest = words[0], words[1], words[2:]
    if certainty not in CERTAINTIES:
        raise ValueError(f"bad certainty in {spec!r}")
    historical, laterality, severity, site, depth = False, None, None, None, None
    measurements: dict[str, float] = {}
    for word in rest:
        if word == "historical":
            historical = True
        elif word in LATERALITIES:
            laterality = word
        elif word in SEVERITIES:
            severity = word
        elif word.startswith("site="):
            site = word[5:]
        elif word.startswith("depth="):
            depth = float(word[6:])
        elif "=" in word:
            name, value = word.split("=", 1)
            measurements[name] = float(value)
        else:
            raise ValueError(f"unknown word {word!r} in {spec!r}")
    return Expected(concept, certainty, historical, laterality, severity, depth,
                    tuple(sorted(measurements.items())), site)


def actual_key(f: Finding) -> tuple:
    return (f.concept, f.certainty, f.historical, f.laterality, f.severity, f.depth_mm,
            tuple(sorted(f.measurements.items())))


def load(path: Path = CORPUS) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))["sentences"]


def compare(text: str, specs: list[str], region: str | None = None) -> tuple[list[str], Counter, Counter, Counter]:
    """Mismatch messages and per-concept true positives, false positives, false negatives for one sentence, read as
    a sentence of a report of `region` (ReportFacts.region; None: not known)."""
    expected = [parse(s) for s in specs]
    actual = list(findings_from_text(text, "DiagnosticReport/corpus", region=region))
    problems: list[str] = []
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    remaining = list(actual)
    for exp in expected:
        match = next((f for f in remaining if actual_key(f) == exp.key()
                      and (exp.site is None or f.site == exp.site)), None)
        if match is None:
            fn[exp.concept] += 1
            problems.append(f"missing {exp}")
        else:
            tp[exp.concept] += 1
            remaining.remove(match)
    for f in remaining:
        fp[f.concept] += 1
        problems.append(f"unexpected {actual_key(f)} site={f.site}")
    return problems, tp, fp, fn


def metrics(path: Path = CORPUS) -> tuple[dict[str, tuple[int, int, int]], list[tuple[str, list[str]]]]:
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    failures = []
    for item in load(path):
        problems, t, p, n = compare(item["text"], item["expect"], item.get("region"))
        tp.update(t)
        fp.update(p)
        fn.update(n)
        if problems:
            failures.append((item["text"], problems))
    concepts = sorted(set(tp) | set(fp) | set(fn))
    return {c: (tp[c], fp[c], fn[c]) for c in concepts}, failures


def table(per_class: dict[str, tuple[int, int, int]]) -> str:
    lines = [f"{'concept':36} {'TP':>4} {'FP':>4} {'FN':>4} {'precision':>9} {'recall':>7}"]
    totals = [0, 0, 0]
    for concept, (t, p, n) in per_class.items():
        totals = [totals[0] + t, totals[1] + p, totals[2] + n]
        precision = t / (t + p) if t + p else 1.0
        recall = t / (t + n) if t + n else 1.0
        lines.append(f"{concept:36} {t:4d} {p:4d} {n:4d} {precision:9.3f} {recall:7.3f}")
    t, p, n = totals
    lines.append(f"{'ALL (micro)':36} {t:4d} {p:4d} {n:4d} {t / (t + p) if t + p else 1:9.3f} "
                 f"{t / (t + n) if t + n else 1:7.3f}")
    return "\n".join(lines)




# ---- Full reports (fixtures/findings/reports/*.yaml): the report-level view of issue 13 ----------------------------

REPORTS = Path(__file__).resolve().parent.parent / "fixtures" / "findings" / "reports"
REPORT_NOW = "2026-12-04T12:00:00+00:00"       # the reports are read as studies of the week before
DEFAULT_LOINC = "18748-4"                        # "Diagnostic imaging study" when a report names no code


@dataclass
class ReportScore:
    """Report-level counts over a set of full reports. A current finding is one that is neither negated nor history;
    it is matched to a `current` label on concept and certainty (the side is scored apart)."""

    tp: Counter
    fp: Counter
    fn: Counter
    from_not_current: list[tuple[str, str]]      # (report id, concept) current though labelled not current
    absent_found: int
    absent_total: int
    side_right: int
    side_wrong: int
    side_missing: int
    problems: list[tuple[str, list[str]]]

    def micro(self) -> tuple[float, float]:
        t, p, n = sum(self.tp.values()), sum(self.fp.values()), sum(self.fn.values())
        return (t / (t + p) if t + p else 1.0), (t / (t + n) if t + n else 1.0)

    def per_class(self) -> dict[str, tuple[int, int, int]]:
        return {c: (self.tp[c], self.fp[c], self.fn[c]) for c in sorted(set(self.tp) | set(self.fp) | set(self.fn))}


def load_reports(directory: Path = REPORTS) -> list[dict[str, Any]]:
    return [yaml.safe_load(path.read_text(encoding="utf-8")) for path in sorted(directory.glob("*.yaml"))]


def report_resource(item: dict[str, Any], days_ago: int = 7) -> dict[str, Any]:
    """A labelled report as an EHR sends it: a final DiagnosticReport with the text as a presentedForm of its format."""
    import base64
    import datetime as dt

    when = dt.datetime.fromisoformat(REPORT_NOW) - dt.timedelta(days=days_ago)
    media = item.get("format", "text/plain")
    encoding = "latin-1" if "rtf" in media else "utf-8"
    return {"resourceType": "DiagnosticReport", "id": str(item["id"]), "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": str(item.get("loinc") or DEFAULT_LOINC)}],
                     "text": item.get("title") or "Imaging report"},
            "effectiveDateTime": when.date().isoformat(),
            "presentedForm": [{"contentType": media,
                               "data": base64.b64encode(item["text"].encode(encoding, "replace")).decode("ascii")}]}


def report_findings(item: dict[str, Any]) -> list[Finding]:
    import datetime as dt

    from hooks.findings import extract_findings
    from hooks.record import PatientRecord

    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": report_resource(item)}]}
    record = PatientRecord.from_prefetch({"reports": bundle})
    return list(extract_findings(record, dt.datetime.fromisoformat(REPORT_NOW)).findings)


def score_reports(items: list[dict[str, Any]]) -> ReportScore:
    score = ReportScore(Counter(), Counter(), Counter(), [], 0, 0, 0, 0, 0, [])
    for item in items:
        found = report_findings(item)
        current = [f for f in found if f.certainty != "negated" and not f.historical]
        negated = {f.concept for f in found if f.certainty == "negated" and not f.historical}
        labels = [parse(s) for s in item.get("current") or ()]
        wanted = {(e.concept, e.certainty) for e in labels}
        got = {(f.concept, f.certainty) for f in current}
        problems = []
        for concept, certainty in sorted(wanted & got):
            score.tp[concept] += 1
        for concept, certainty in sorted(got - wanted):
            score.fp[concept] += 1
            problems.append(f"unexpected current {concept} {certainty}")
        for concept, certainty in sorted(wanted - got):
            score.fn[concept] += 1
            problems.append(f"missing {concept} {certainty}")
        for concept in sorted({c for c, _ in got} & set(item.get("not_current") or ())):
            score.from_not_current.append((str(item["id"]), concept))
            problems.append(f"current though not current: {concept}")
        for spec in item.get("absent") or ():
            score.absent_total += 1
            if parse(spec).concept in negated:
                score.absent_found += 1
        for exp in labels:
            if exp.laterality is None:
                continue
            sides = {f.laterality for f in current if (f.concept, f.certainty) == (exp.concept, exp.certainty)}
            if not sides:
                continue
            if exp.laterality in sides:
                score.side_right += 1
            elif sides == {None}:
                score.side_missing += 1
            else:
                score.side_wrong += 1
        if problems:
            score.problems.append((f"{item['id']} ({item.get('format')}): {item.get('style', '')[:70]}", problems))
    return score


def print_reports(directory: Path = REPORTS) -> None:
    items = load_reports(directory)
    score = score_reports(items)
    precision, recall = score.micro()
    print(f"{len(items)} full reports in {directory}: current findings matched on concept + certainty")
    print(table(score.per_class()))
    print(f"false current findings from indication/history/comparison/withdrawn text: {len(score.from_not_current)}"
          f" {score.from_not_current}")
    print(f"absent labels found negated: {score.absent_found} of {score.absent_total}")
    print(f"side of matched sided labels: right {score.side_right}, wrong {score.side_wrong}, "
          f"none extracted {score.side_missing}")
    for name, problems in score.problems:
        print(f"\n{name}")
        for problem in problems:
            print(f"   {problem}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="a corpus file (default: corpus.yaml)")
    parser.add_argument("--reports", type=Path, nargs="?", const=REPORTS, default=None,
                        help="score the full reports of a directory instead (default: fixtures/findings/reports)")
    args = parser.parse_args()
    if args.reports is not None:
        print_reports(args.reports)
        return
    path = args.corpus
    per_class, failures = metrics(path)
    print(f"{path.name}: {len(load(path))} sentences; a finding counts as correct only when concept, certainty, history, laterality,"
          " severity, depth, measurements (and site when labelled) all match")
    print(table(per_class))
    for text, problems in failures:
        print(f"\n{text}")
        for problem in problems:
            print(f"   {problem}")


if __name__ == "__main__":
    main()
