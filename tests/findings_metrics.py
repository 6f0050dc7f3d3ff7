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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="a corpus file (default: corpus.yaml)")
    path = parser.parse_args().corpus
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
