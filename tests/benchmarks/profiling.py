"""Where the time goes: cProfile over real calls, summarised as self time per component (library or package of ours)
and the functions with the most cumulative time. cProfile inflates call-heavy code, so read shares, not totals."""
from __future__ import annotations

import cProfile
import pstats
from typing import Any, Callable

# (component, path fragment) in order: the first fragment found in a function's file names its component.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("hooks.findings (ours)", "/hooks/findings/"),
    ("hooks.pathways / safety (ours)", "/hooks/pathways/"),
    ("hooks.pathways / safety (ours)", "/hooks/safety/"),
    ("hooks.cards (ours)", "/hooks/cards/"),
    ("hooks.record + other hooks (ours)", "/hooks/"),
    ("service (ours)", "/service/"),
    ("fhir.resources / fhir_core", "/fhir/resources/"),
    ("fhir.resources / fhir_core", "/fhir_core/"),
    ("pydantic", "/pydantic"),
    ("spaCy / medspaCy", "/spacy"),
    ("spaCy / medspaCy", "/medspacy"),
    ("spaCy / medspaCy", "/thinc/"),
    ("SQLAlchemy + sqlite3", "/sqlalchemy/"),
    ("SQLAlchemy + sqlite3", "sqlite3"),
    ("Flask / Werkzeug", "/flask/"),
    ("Flask / Werkzeug", "/werkzeug/"),
    ("prometheus_client", "/prometheus_client/"),
    ("logging", "/logging/"),
    ("json / orjson", "/json/"),
    ("json / orjson", "orjson"),
    ("re (regular expressions)", "/re/"),
    ("re (regular expressions)", "_sre"),
    ("yaml", "/yaml/"),
)


def component_of(filename: str, funcname: str) -> str:
    where = f"{filename}:{funcname}"
    for name, fragment in COMPONENTS:
        if fragment in where:
            return name
    if filename == "~":
        return "builtins (C calls)"
    return "other Python (stdlib, typing, dataclasses...)"


def profile(run: Callable[[], int], top: int = 15) -> dict[str, Any]:
    """Profile `run` (returns how many calls it made); per-call self time by component and the top functions."""
    profiler = cProfile.Profile()
    profiler.enable()
    calls = run()
    profiler.disable()
    stats = pstats.Stats(profiler)
    by_component: dict[str, float] = {}
    total = 0.0
    rows = []
    for (filename, line, funcname), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        total += tottime
        component = component_of(filename, funcname)
        by_component[component] = by_component.get(component, 0.0) + tottime
        rows.append((cumtime, tottime, ncalls, _short(filename), line, funcname))
    rows.sort(reverse=True)
    interesting = [r for r in rows if not _is_plumbing(r[3], r[5])][:top]
    return {
        "calls": calls,
        "total_ms_per_call": 1000 * total / max(calls, 1),
        "components": sorted(((name, 1000 * t / max(calls, 1), 100 * t / total if total else 0.0)
                              for name, t in by_component.items()), key=lambda x: -x[1]),
        "top": [{"function": f"{path}:{line}({func})", "cum_ms": 1000 * cum / max(calls, 1),
                 "self_ms": 1000 * tot / max(calls, 1), "ncalls": n / max(calls, 1)}
                for cum, tot, n, path, line, func in interesting],
    }


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/work/main/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _is_plumbing(path: str, funcname: str) -> bool:
    """Frames every request passes through (test client, WSGI dispatch) say nothing about where the time goes."""
    return any(part in path for part in ("werkzeug/test.py", "flask/testing.py", "werkzeug/serving.py",
                                         "tests/benchmarks/")) or \
        funcname in ("wsgi_app", "full_dispatch_request", "dispatch_request", "__call__", "<module>")
