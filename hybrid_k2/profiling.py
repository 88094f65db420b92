"""Phase timing for a decode step, recorded by whoever runs the work (executor, session, sampler).

The model code never times itself: runners take a `PhaseTimer` and wrap their stages in `span(name)`.
Phase names used across the project (so `hybrid-k2 bench` can add them up):
  embed, attention, router, shared_experts, dense_mlp, to_host, cpu_experts, wait, to_device,
  lm_head, sampling, python (what is left of the step)
On CUDA pass `sync=torch.cuda.synchronize` so device work is charged to the phase that issued it.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator


class PhaseTimer:
    def __init__(self, sync: Callable[[], None] | None = None):
        self.sync = sync
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.events: list[tuple[str, float, float]] | None = None  # (name, start, end) when tracing

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.sync is not None:
                self.sync()
            self.add(name, t0, time.perf_counter())

    def add(self, name: str, start: float, end: float) -> None:
        self.seconds[name] += end - start
        self.counts[name] += 1
        if self.events is not None:
            self.events.append((name, start, end))

    def trace(self, on: bool = True) -> None:
        self.events = [] if on else None

    def reset(self) -> None:
        self.seconds.clear()
        self.counts.clear()
        if self.events is not None:
            self.events.clear()

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)


class NullTimer(PhaseTimer):
    """A timer that records nothing (the default when nobody is measuring)."""

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        yield

    def add(self, name: str, start: float, end: float) -> None:
        pass
