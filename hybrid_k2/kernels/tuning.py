"""Tuning where it runs: kernel choices measured on this CPU on first use, cached per CPU model.

What is chosen (and why measured rather than assumed: on a real AVX-512 Xeon the plain AVX-512 path
prefilled faster than the VNNI one, and AVX2 ran 2-3x slower on one x86 vendor than another):
  isa.decode, isa.prefill   the routed-expert kernel path, among the automatic candidates of the ISA
                            registry this CPU runs (csrc/cpu_features.cpp); one candidate: no timing.
  int8_gemm_min_tokens      the device side's int8 linears (kernels/int8_linear.py): tokens from which
                            the blocked GEMM beats the GEMV stream.
The measurement takes about a second (synthetic weights; the best of a few repetitions, after a first
untimed call, since the first run of a path after loading is slower). Results go to
`$XDG_CACHE_HOME/hybrid-k2/tuning.json` (default ~/.cache) under the CPU model, the thread count and
TUNING_VERSION; `HYBRID_K2_ISA` still forces the path; `hybrid-k2 info` reports the choice.
"""
from __future__ import annotations

import datetime as dt
import functools
import json
import os
import time
from pathlib import Path

import torch

TUNING_VERSION = 1
CROSSOVER_TOKENS = (1, 2, 4, 8, 16, 32)
DECODE_TOKENS, PREFILL_TOKENS = 1, 64  # the MoE timing points (T tokens, top-k 8 over 16 experts)
REPEATS = 3


def cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hybrid-k2" / "tuning.json"


def _best_seconds(fn, repeats: int = REPEATS) -> float:
    fn()  # untimed: the first call after loading pays page faults and cold caches
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_crossover(*, threads: int, out_features: int = 1024, in_features: int = 4096) -> dict:
    """Times the int8 GEMV and GEMM at CROSSOVER_TOKENS; the crossover is the first T from which GEMM
    wins at every larger T measured (len(CROSSOVER_TOKENS) + 1 past the end: GEMV throughout)."""
    from hybrid_k2.kernels.int8_linear import int8_linear

    g = torch.Generator().manual_seed(0)
    q = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8, generator=g)
    scale = torch.rand(out_features, generator=g) + 0.5
    times = {}
    for T in CROSSOVER_TOKENS:
        x = torch.randn(T, in_features, generator=g)
        out = torch.empty(T, out_features)
        times[T] = {kind: _best_seconds(lambda m=m: int8_linear(x=x, q=q, scale=scale, out=out, threads=threads,
                                                                gemm_min_tokens=m))
                    for kind, m in (("gemv", 10**9), ("gemm", 1))}
    return {"int8_gemm_min_tokens": crossover_from(times),
            "int8_ms": {str(T): {k: round(v * 1e3, 4) for k, v in d.items()} for T, d in times.items()},
            "int8_shape": [out_features, in_features]}


def crossover_from(times: dict[int, dict[str, float]]) -> int:
    """The first T from which GEMM wins at every larger T measured; twice the largest T measured when
    GEMV wins at the largest (GEMV throughout the measured range)."""
    Ts = sorted(times)
    crossover = Ts[-1] * 2
    for T in reversed(Ts):
        if times[T]["gemm"] >= times[T]["gemv"]:
            break
        crossover = T
    return crossover


def measure_isas(candidates: list[str], *, threads: int) -> dict:
    """Times the routed-MoE kernels of each candidate path at decode and prefill; the fastest wins each."""
    if len(candidates) == 1:
        return {"isa": {"decode": candidates[0], "prefill": candidates[0]}, "isa_ms": {}}
    from hybrid_k2.kernels.ops import moe_forward
    from hybrid_k2.kernels.synthetic import random_experts

    experts = random_experts(num_experts=16, hidden=1024, intermediate=512, seed=0)
    g = torch.Generator().manual_seed(1)
    ms: dict[str, dict[str, float]] = {}
    for isa in candidates:
        ms[isa] = {}
        for phase, T in (("decode", DECODE_TOKENS), ("prefill", PREFILL_TOKENS)):
            x = torch.randn(T, 1024, generator=g)
            ids = torch.stack([torch.randperm(16, generator=g)[:8] for _ in range(T)]).to(torch.int32)
            w = torch.rand(T, 8, generator=g)
            ms[isa][phase] = round(1e3 * _best_seconds(lambda: moe_forward(
                x=x, expert_ids=ids, weights=w, experts=experts, precision="fast", threads=threads, isa=isa)), 4)
    return {"isa": {p: min(candidates, key=lambda i: ms[i][p]) for p in ("decode", "prefill")}, "isa_ms": ms}


def _cpu_model() -> str:
    from hybrid_k2 import _C

    return _C.cpu_features()["brand"].strip() or "unknown CPU"


@functools.lru_cache(maxsize=None)
def tuning(threads: int) -> dict:
    """The cached choices for this CPU model and thread count (measured now when missing)."""
    from hybrid_k2.kernels.isa import auto_candidates

    candidates = auto_candidates()
    key = f"{_cpu_model()}|threads={threads}|v{TUNING_VERSION}|{','.join(candidates)}"
    path = cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key in cached:
        return {**cached[key], "cached": True}
    entry = {"cpu_model": _cpu_model(), "threads": threads, "candidates": candidates,
             **measure_isas(candidates, threads=threads), **measure_crossover(threads=threads),
             "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # re-read: another process may have written meanwhile
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = {}
        cached[key] = entry
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: measured again next time
    return {**entry, "cached": False}


def gemm_min_tokens(*, threads: int) -> int:
    return int(tuning(threads)["int8_gemm_min_tokens"])


def auto_isa(*, threads: int, tokens: int | None) -> str:
    """The measured fastest path for decode (tokens < PREFILL_TOKENS / 4, or unknown) or prefill."""
    phase = "prefill" if tokens is not None and tokens >= PREFILL_TOKENS // 4 else "decode"
    return tuning(threads)["isa"][phase]


def describe(*, threads: int | None = None) -> list[str]:
    """Lines for `hybrid-k2 info`: the paths this CPU runs and what the automatic choice picked."""
    from hybrid_k2 import _C
    from hybrid_k2.kernels.isa import ISA_ENV, available_isas

    n = threads or _C.default_threads()
    t = tuning(n)
    how = f"cached from {t['measured_at']}" if t.get("cached") else "measured now"
    lines = [f"kernels: {t['cpu_model']}; paths here: {', '.join(available_isas())}; automatic candidates: "
             f"{', '.join(t['candidates'])}",
             f"kernels: routed experts on {t['isa']['decode']} (decode) / {t['isa']['prefill']} (prefill); "
             f"device-side int8 linears: GEMM from {t['int8_gemm_min_tokens']} tokens, GEMV below "
             f"({n} threads, {how}, {cache_file()})"]
    for isa, ms in t.get("isa_ms", {}).items():
        lines.append(f"kernels:   {isa}: decode {ms['decode']:.3f} ms, prefill {ms['prefill']:.3f} ms")
    forced = os.environ.get(ISA_ENV)
    if forced:
        lines.append(f"kernels: {ISA_ENV}={forced} forces the path")
    return lines
