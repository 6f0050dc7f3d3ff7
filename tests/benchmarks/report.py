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


def sqlite_commit_ms(directory: Path, commits: int = 100) -> dict[str, tuple[float, float]]:
    """p50 and p95 of one small SQLite commit in WAL mode on this disk, synchronous=FULL (the service's setting:
    an fsync per commit) and NORMAL (no fsync per commit): what the card ledger's write costs here."""
    import sqlite3
    import time

    out = {}
    for sync in ("FULL", "NORMAL"):
        path = directory / f"commit-{sync}.sqlite3"
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={sync}")
            conn.execute("CREATE TABLE t (v TEXT)")
            conn.commit()
            times = []
            for _ in range(commits):
                start = time.perf_counter()
                conn.execute("INSERT INTO t VALUES (?)", ("x" * 200,))
                conn.commit()
                times.append(1000 * (time.perf_counter() - start))
        finally:
            conn.close()
        times.sort()
        out[sync] = (times[len(times) // 2], times[int(len(times) * 0.95)])
    return out


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its waited-for children (the gunicorn servers, the cold-start interpreters)."""
    import resource

    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


class MachineShare:
    """How much of the machine other processes used while the benchmark ran: the noise behind the numbers."""

    def __init__(self) -> None:
        self.busy, self.total = cpu_jiffies()
        self.own = own_cpu_seconds()

    def summary(self) -> dict[str, float]:
        busy, total = cpu_jiffies()
        ticks = os.sysconf("SC_CLK_TCK")
        cpus = os.cpu_count() or 1
        wall = (total - self.total) / ticks / cpus
        busy_s = (busy - self.busy) / ticks
        own = own_cpu_seconds() - self.own
        return {"cpu_capacity_s": wall * cpus, "busy_s": busy_s, "own_s": own,
                "others_s": max(busy_s - own, 0.0), "load_end": os.getloadavg()[0]}


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
