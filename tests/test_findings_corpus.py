"""The labelled report-sentence corpus (fixtures/findings/corpus.yaml): every sentence must give exactly its
expected findings. Run with -s to print per-class precision and recall."""
from __future__ import annotations

import pytest

import findings_metrics as fm

CORPUS = fm.load()
EXACT = [item for item in CORPUS if "known_miss" not in item]
KNOWN_MISSES = [item for item in CORPUS if "known_miss" in item]


def test_corpus_is_large_and_varied() -> None:
    assert len(CORPUS) >= 200
    specs = [fm.parse(s) for item in CORPUS for s in item["expect"]]
    assert {s.certainty for s in specs} == {"affirmed", "negated", "uncertain"}
    assert any(s.historical for s in specs)
    assert {s.laterality for s in specs} >= {"left", "right", "bilateral", "unilateral"}
    assert {s.severity for s in specs} >= {"mild", "moderate", "severe"}
    assert any(len(item["expect"]) >= 3 for item in CORPUS)         # several findings in one sentence
    assert any(not item["expect"] for item in CORPUS)                # sentences with no finding at all
    from hooks.findings import concept_catalogue
    assert {s.concept for s in specs} == set(concept_catalogue().ids())   # every concept is exercised


@pytest.mark.parametrize("item", EXACT, ids=[f"{n:03d}" for n in range(len(EXACT))])
def test_sentence(item: dict) -> None:
    problems, *_ = fm.compare(item["text"], item["expect"], item.get("region"))
    assert not problems, f"{item['text']!r}: " + "; ".join(problems)


@pytest.mark.parametrize("item", KNOWN_MISSES, ids=[f"miss{n}" for n in range(len(KNOWN_MISSES))])
def test_known_misses_are_still_only_partial(item: dict) -> None:
    """A documented miss: it must not get worse (no unexpected findings) — and a fix should move it to EXACT."""
    problems, _, fp, _ = fm.compare(item["text"], item["expect"], item.get("region"))
    assert problems and not fp


def test_precision_and_recall_per_class(capsys: pytest.CaptureFixture[str]) -> None:
    per_class, _ = fm.metrics()
    with capsys.disabled():
        print("\n" + fm.table(per_class))
    for concept, (tp, fp, fn) in per_class.items():
        assert fp == 0, concept
        assert tp / (tp + fn) >= 0.9, concept


# Held-out sets: written after the corpus and scored unseen first (fixtures/findings/README.md records those first
# scores). Gaps they revealed were fixed in the data, so they are no longer unseen; here they guard against
# regressions at the level reached (micro precision and recall, floors a little under the current scores).
HELD_OUT_FLOORS = {"heldout.yaml": 0.95, "heldout_2.yaml": 0.88, "heldout_3.yaml": 0.85, "heldout_4.yaml": 0.76}


@pytest.mark.parametrize("name", sorted(HELD_OUT_FLOORS))
def test_held_out_sets_do_not_regress(name: str) -> None:
    per_class, _ = fm.metrics(fm.CORPUS.parent / name)
    tp = sum(v[0] for v in per_class.values())
    fp = sum(v[1] for v in per_class.values())
    fn = sum(v[2] for v in per_class.values())
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert precision >= HELD_OUT_FLOORS[name] and recall >= HELD_OUT_FLOORS[name], (name, precision, recall)
