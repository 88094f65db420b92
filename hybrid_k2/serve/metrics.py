"""Server counters in Prometheus' text exposition format (no client library: a few lines of text).

Counters only grow; gauges are read at scrape time. Throughput is reported both as totals (tokens and
seconds, so `rate()` works) and as the last request's tok/s, which is what a person watching wants.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from typing import Callable

PREFIX = "hybrid_k2"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)  # (route, status) -> count
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion_tokens = 0
        self.reasoning_tokens = 0
        self.prefill_tokens = 0        # tokens actually run through prefill (prompt - cached)
        self.prefill_seconds = 0.0
        self.decode_tokens = 0
        self.decode_seconds = 0.0
        self.mask_seconds = 0.0        # grammar mask time the decode loop waited for
        self.cancelled = 0
        self.rejected_queue_full = 0
        self.last_prefill_tps = 0.0
        self.last_decode_tps = 0.0
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def count_request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, status)] += 1

    def record_generation(self, *, prompt: int, cached: int, completion: int, reasoning: int,
                          prefill_s: float, decode_s: float, mask_s: float, cancelled: bool) -> None:
        with self._lock:
            self.reasoning_tokens += reasoning
            self.prompt_tokens += prompt
            self.cached_tokens += cached
            self.completion_tokens += completion
            ran = prompt - cached
            self.prefill_tokens += ran
            self.prefill_seconds += prefill_s
            self.decode_tokens += completion
            self.decode_seconds += decode_s
            self.mask_seconds += mask_s
            self.cancelled += int(cancelled)
            if prefill_s > 0 and ran > 0:
                self.last_prefill_tps = ran / prefill_s
            if decode_s > 0 and completion > 0:
                self.last_decode_tps = completion / decode_s

    def count_rejected(self) -> None:
        with self._lock:
            self.rejected_queue_full += 1

    def render(self) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            full = f"{PREFIX}_{name}"
            out.append(f"# HELP {full} {help_}")
            out.append(f"# TYPE {full} {kind}")
            for labels, value in samples:
                out.append(f"{full}{labels} {_num(value)}")

        with self._lock:
            reqs = sorted(self.requests.items())
            metric("requests_total", "counter", "HTTP requests by route and status.",
                   [(f'{{route="{r}",status="{s}"}}', n) for (r, s), n in reqs] or [("", 0)])
            metric("prompt_tokens_total", "counter", "Prompt tokens of finished generations.", [("", self.prompt_tokens)])
            metric("cached_prompt_tokens_total", "counter", "Prompt tokens served from the prefix cache.",
                   [("", self.cached_tokens)])
            metric("completion_tokens_total", "counter", "Generated tokens.", [("", self.completion_tokens)])
            metric("reasoning_tokens_total", "counter", "Generated tokens inside the reasoning part.",
                   [("", self.reasoning_tokens)])
            metric("prefill_tokens_total", "counter", "Tokens run through prefill.", [("", self.prefill_tokens)])
            metric("prefill_seconds_total", "counter", "Time spent in prefill.", [("", self.prefill_seconds)])
            metric("decode_tokens_total", "counter", "Tokens decoded.", [("", self.decode_tokens)])
            metric("decode_seconds_total", "counter", "Time spent decoding.", [("", self.decode_seconds)])
            metric("grammar_mask_wait_seconds_total", "counter",
                   "Time decode waited for grammar masks (beyond the overlap with the model).", [("", self.mask_seconds)])
            metric("prefill_tokens_per_second", "gauge", "Prefill speed of the last request.", [("", self.last_prefill_tps)])
            metric("decode_tokens_per_second", "gauge", "Decode speed of the last request.", [("", self.last_decode_tps)])
            metric("requests_cancelled_total", "counter", "Generations stopped because the client went away.",
                   [("", self.cancelled)])
            metric("requests_rejected_total", "counter", "Requests refused with 429 (queue full).",
                   [("", self.rejected_queue_full)])
            gauges = dict(self.gauges)
        for name, (help_, fn) in sorted(gauges.items()):
            metric(name, "gauge", help_, [("", fn())])
        return "\n".join(out) + "\n"

    def add_gauge(self, name: str, help_: str, fn: Callable[[], float]) -> None:
        self.gauges[name] = (help_, fn)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.6g}"
