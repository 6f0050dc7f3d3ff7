"""The Markdown report: machine facts first, one table per part, then targets with PASS/MISS and the profiles."""
from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from .stats import Series, fmt_ms, fmt_ratio

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flask", "werkzeug", "fhir.resources", "fhir-core", "pydantic", "spacy", "medspacy", "gunicorn",
            "orjson", "SQLAlchemy")


def machine_facts() -> list[tuple[str, str]]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit = f"{commit}{' + uncommitted changes' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    load = os.getloadavg()
    return [
        ("date (UTC)", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("CPU", f"{model}; {os.cpu_count()} CPUs, {usable} usable by this process"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()} on {platform.system()} "
                   f"{platform.release()}"),
        ("packages", ", ".join(versions)),
        ("commit", commit),
        ("load average at start (1/5/15 min)", f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"),
    ]


class Report:
    def __init__(self, title: str) -> None:
        self.lines: list[str] = [f"# {title}", ""]

    def text(self, *lines: str) -> None:
        self.lines.extend(lines)
        self.lines.append("")

    def heading(self, text: str, level: int = 2) -> None:
        self.lines.extend([f"{'#' * level} {text}", ""])

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        self.lines.append("| " + " | ".join(header) + " |")
        self.lines.append("|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(header))) + "|")
        for row in rows:
            self.lines.append("| " + " | ".join(str(c) for c in row) + " |")
        self.lines.append("")

    def code(self, text: str) -> None:
        self.lines.extend(["```", text.rstrip("\n"), "```", ""])

    def render(self) -> str:
        return "\n".join(self.lines).rstrip("\n") + "\n"


def latency_row(label: str, series: Series, extra: list[Any] | None = None) -> list[Any]:
    s = series.summary()
    return [label, s["n"], fmt_ms(s["p50"]), fmt_ms(s["p95"]), fmt_ms(s["p99"]), fmt_ms(s["mean"]),
            *(extra or [])]


LATENCY_HEADER = ["measurement", "calls", "p50 ms", "p95 ms", "p99 ms", "mean ms"]


def verdict(measured: float, limit: float, higher_is_better: bool = False) -> str:
    if measured != measured:
        return "NOT MEASURED"
    ok = measured >= limit if higher_is_better else measured <= limit
    return "PASS" if ok else "MISS"


def ratio(a: float, b: float) -> str:
    return fmt_ratio(a / b) if b else "n/a"
