"""In-process latency through the real Flask app (test client): the typical chart first-time and again, every
service on the fixture scenarios, the staleness guard, and growth with record size."""
from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from fixtures.build import normalize

from . import workload
from .stats import Series

URL = "/cds-services/{}"


def make_app(tmp: Path, name: str = "bench") -> Any:
    """The real app on its own SQLite file, auth off, the typical chart's evaluation time. Log lines are still
    formatted (that cost is the product's) but not written, so the report stays readable."""
    from service import create_app

    app = create_app({
        "AUTH_DISABLED": True,
        "DATABASE_URL": f"sqlite:///{tmp / (name + '.sqlite3')}",
        "FIXED_NOW": workload.now_of_typical(),
    })
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not getattr(handler, "_bench_silenced", False):
            # format every record as the service would, write nothing
            handler.emit = handler.format  # type: ignore[method-assign]
            handler._bench_silenced = True  # type: ignore[attr-defined]
    # As in production: gunicorn's pre_fork (service/gunicorn_conf.py) freezes what the preload built, so full
    # collections in a worker do not walk the knowledge, NLP pipeline and FHIR model classes (~177k objects).
    gc.freeze()
    return app


class Poster:
    """Posts pre-encoded bodies through a test client and times each call (wall clock, nanoseconds)."""

    def __init__(self, app: Any) -> None:
        self.client = app.test_client()
        self.failures: dict[int, int] = {}

    def post(self, hook: str, body: bytes) -> tuple[int, int, bytes]:
        url = URL.format(workload.SERVICE_IDS[hook])
        start = time.perf_counter_ns()
        response = self.client.post(url, data=body, content_type="application/json")
        elapsed = time.perf_counter_ns() - start
        if response.status_code != 200:
            self.failures[response.status_code] = self.failures.get(response.status_code, 0) + 1
        return elapsed, response.status_code, response.get_data()

    def timed(self, hook: str, body: bytes, series: Series) -> bytes:
        elapsed, _, data = self.post(hook, body)
        series.add_ns(elapsed)
        return data


def warm_up(poster: Poster, rounds: int) -> None:
    """Fill the interpreter's and libraries' lazy state (imports, pydantic validators, spaCy vocab) before timing."""
    made = {hook: workload.Variants(workload.typical_request(hook)) for hook in workload.HOOKS}
    for i in range(rounds):
        for hook in workload.HOOKS:
            poster.post(hook, made[hook].make(10**6 + i))


def typical_sequence(poster: Poster, variants: int, select_calls: int = 3) -> dict[str, Series]:
    """Per chart variant, what an EHR does: patient-view on data never seen (first-time), patient-view again, then
    order-select `select_calls` times and order-sign on the same data (repeat)."""
    series = {
        "patient-view first-time": Series("patient-view first-time"),
        "patient-view repeat": Series("patient-view repeat"),
        "order-select repeat": Series("order-select repeat"),
        "order-sign repeat": Series("order-sign repeat"),
    }
    made = {hook: workload.Variants(workload.typical_request(hook)) for hook in workload.HOOKS}
    # Bodies are built before the clock starts: only the service is timed. Variant n carries the same chart data
    # in all three hooks (the drafts differ by hook), under a new hookInstance each call.
    plans = []
    for n in range(variants):
        plans.append((
            made["patient-view"].make(n),
            made["patient-view"].repeat(n),
            [made["order-select"].repeat(n) for _ in range(select_calls)],
            made["order-sign"].repeat(n),
        ))
    for first, again, selects, sign in plans:
        poster.timed("patient-view", first, series["patient-view first-time"])
        poster.timed("patient-view", again, series["patient-view repeat"])
        for body in selects:
            poster.timed("order-select", body, series["order-select repeat"])
        poster.timed("order-sign", sign, series["order-sign repeat"])
    return series


def fixture_services(poster: Poster, calls: int) -> dict[str, dict[str, Any]]:
    """Every service over its fixture scenarios: `calls` first-time calls (each a new variant of the next fixture)
    and `calls` repeat calls (the fixtures as they are, after one round)."""
    out: dict[str, dict[str, Any]] = {}
    for hook, requests in workload.fixture_requests().items():
        if not requests:
            continue
        first = Series(f"{hook} first-time")
        repeat = Series(f"{hook} repeat")
        makers = [workload.Variants(r) for _, r in requests]
        first_bodies = [makers[i % len(makers)].make(5 * 10**5 + i) for i in range(calls)]
        plain = [workload.encode(r) for _, r in requests]
        for body in plain:                       # the round that makes them "seen before"
            poster.post(hook, body)
        repeat_bodies = [workload.encode(workload.new_hook_instance(requests[i % len(requests)][1]))
                         for i in range(calls)]
        for body in first_bodies:
            poster.timed(hook, body, first)
        for body in repeat_bodies:
            poster.timed(hook, body, repeat)
        sizes = [workload.resource_count(r)[0] for _, r in requests]
        out[hook] = {"scenarios": len(requests), "resources": (min(sizes), max(sizes)),
                     "first": first, "repeat": repeat}
    return out


# -- staleness guard ------------------------------------------------------------------------------------------------

def _cards(data: bytes) -> Any:
    body = json.loads(data)
    for card in body.get("cards", ()):
        # which cards, what they say and suggest; uuids differ per call by design
        card.pop("uuid", None)
    return normalize(body)


def _edit(request: dict[str, Any], resource_type: str, resource_id: str, change: Callable[[dict], None]) -> dict:
    out = json.loads(json.dumps(request))
    for resource in workload.prefetch_resources(out):
        if resource["resourceType"] == resource_type and resource["id"] == resource_id:
            change(resource)
            return out
    raise KeyError(f"{resource_type}/{resource_id} not in the typical chart")


EDITS: tuple[tuple[str, str, str, Callable[[dict], None]], ...] = (
    ("the MRI report now reads normal", "DiagnosticReport", "rep-06-mri-si",
     lambda r: r.update(conclusion="Normal MRI of the sacroiliac joints. No synovitis, no bone marrow edema, "
                                   "no erosions. STIR and T1-weighted sequences obtained.")),
    ("eGFR now 25", "Observation", "obs-06-egfr", lambda r: r["valueQuantity"].update(value=25)),
    ("IGRA now positive", "Observation", "obs-06-igra", lambda r: r.update(valueCodeableConcept={
        "coding": [{"system": "http://snomed.info/sct", "code": "10828004", "display": "Positive"}],
        "text": "Positive"})),
)


def staleness_guard(app_factory: Callable[[str], Any]) -> list[dict[str, Any]]:
    """Change one resource (same id) after the chart was seen and cached; the answer must change, and must equal
    the answer a fresh process (cold caches) gives for the changed chart."""
    results = []
    warm = Poster(app_factory("stale-warm"))
    base = workload.typical_request("patient-view")
    before = _cards(warm.post("patient-view", workload.encode(base))[2])
    warm.post("patient-view", workload.encode(workload.new_hook_instance(base)))      # now it is all cached
    for label, resource_type, resource_id, change in EDITS:
        edited = _edit(base, resource_type, resource_id, change)
        after = _cards(warm.post("patient-view", workload.encode(workload.new_hook_instance(edited)))[2])
        cold = _cold_answer(app_factory, edited)
        changed = after != before
        fresh = after == cold
        if not before.get("cards") and not after.get("cards"):
            verdict = "NOT SHOWN (no cards either way: engine not answering yet)"
        elif changed and fresh:
            verdict = "PASS"
        elif fresh:
            verdict = "PASS (same answer, and a cold process agrees)"
        else:
            verdict = "FAIL (stale: differs from a cold process)"
        results.append({"edit": label, "answer_changed": changed, "matches_cold": fresh, "verdict": verdict,
                        "cards_before": len(before.get("cards", ())), "cards_after": len(after.get("cards", ()))})
    return results


def _cold_answer(app_factory: Callable[[str], Any], request: dict[str, Any]) -> Any:
    """The answer with every per-content cache emptied: what a process that never saw the chart says."""
    for clear in _content_cache_clearers():
        clear()
    return _cards(Poster(app_factory("stale-cold")).post("patient-view", workload.encode(request))[2])


def _content_cache_clearers() -> list[Callable[[], None]]:
    """`clear` of every module-level cache of the hooks package (validated models, report findings, report text,
    built suggestions...), found by name so a cache added later is emptied too. Loaders memoised with lru_cache
    (knowledge, NLP pipeline) are start-up state, not patient data, and are kept."""
    import sys

    out: list[Callable[[], None]] = []
    for name, module in list(sys.modules.items()):
        if not (name == "hooks" or name.startswith("hooks.")) or module is None:
            continue
        for attr, value in vars(module).items():
            if isinstance(value, type) or callable(value) and not hasattr(value, "clear"):
                continue
            if ("cache" in attr.lower() or attr == "_BUILT") and callable(getattr(value, "clear", None)):
                out.append(value.clear)
    return out


# -- growth with record size ----------------------------------------------------------------------------------------

# Two axes: record size with 2 reports, and report count in a record of 60 resources.
SCALE_RESOURCES = ((10, 2), (30, 2), (100, 2), (1000, 2))
SCALE_REPORTS = ((60, 1), (60, 10), (60, 50))


def _summaries(data: bytes) -> list[tuple[str, int]]:
    return [(c.get("summary"), len(c.get("suggestions", ()))) for c in json.loads(data).get("cards", ())]


def scale(poster: Poster, calls: int, budget_seconds: float) -> list[dict[str, Any]]:
    """p50 of first-time patient-view on charts of growing size; each size bounded by `calls` and by time."""
    out = []
    typical = _summaries(poster.post("patient-view", workload.Variants(
        workload.typical_request("patient-view")).make(9 * 10**5 + 1))[2])
    for resources, reports in SCALE_RESOURCES + SCALE_REPORTS:
        base = workload.sized_request(resources, reports)
        variants = workload.Variants(base)
        bodies = [variants.make(7 * 10**5 + i) for i in range(calls)]
        series = Series(f"{resources} resources, {reports} reports")
        same_cards = _summaries(poster.post("patient-view", variants.make(9 * 10**5))[2]) == typical
        deadline = time.monotonic() + budget_seconds
        for body in bodies:
            poster.timed("patient-view", body, series)
            if time.monotonic() > deadline and series.n >= 3:
                break
        repeat = Series("repeat")
        again = workload.encode(workload.new_hook_instance(base))
        poster.post("patient-view", again)
        for _ in range(max(3, min(series.n, 20))):
            poster.timed("patient-view", again, repeat)
        out.append({"resources": resources, "reports": reports, "bytes": len(bodies[0]), "first": series,
                    "repeat": repeat, "same_cards": same_cards})
    return out
