"""Latency samples and their summary (nearest-rank percentiles, in milliseconds)."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Series:
    """Samples of one measurement, in milliseconds."""

    name: str
    samples: list[float] = field(default_factory=list)

    def add_ns(self, nanoseconds: int) -> None:
        self.samples.append(nanoseconds / 1e6)

    @property
    def n(self) -> int:
        return len(self.samples)

    def summary(self) -> dict[str, float]:
        values = sorted(self.samples)
        if not values:
            return {"n": 0, "mean": float("nan"), "p50": float("nan"), "p95": float("nan"), "p99": float("nan"),
                    "max": float("nan")}
        return {
            "n": len(values),
            "mean": statistics.fmean(values),
            "p50": percentile(values, 50),
            "p95": percentile(values, 95),
            "p99": percentile(values, 99),
            "max": values[-1],
        }


def fmt_ms(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_ratio(value: float) -> str:
    if value != value:
        return "n/a"
    return f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"
