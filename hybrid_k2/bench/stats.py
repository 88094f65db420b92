"""Summaries of repeated measurements, reported the way llama-bench does: mean ± sample std."""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for one sample
    median: float
    min: float
    max: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, values) -> "Summary":
        v = [float(x) for x in values]
        if not v:
            raise ValueError("no samples")
        std = statistics.stdev(v) if len(v) > 1 else 0.0
        return cls(statistics.fmean(v), std, statistics.median(v), min(v), max(v), tuple(v))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["samples"] = list(self.samples)
        return d

    def format(self, digits: int = 2) -> str:
        return f"{self.mean:,.{digits}f} ± {self.std:,.{digits}f}"


def rates(counts: list[int] | int, seconds: list[float]) -> list[float]:
    """Tokens per second of each repetition: counts / seconds (inf-free: a 0 s sample is an error)."""
    n = counts if isinstance(counts, list) else [counts] * len(seconds)
    out = []
    for c, s in zip(n, seconds):
        if not s > 0 or math.isinf(s):
            raise ValueError(f"bad duration {s!r}")
        out.append(c / s)
    return out
