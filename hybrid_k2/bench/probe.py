"""The machine's memory bandwidth, the yardstick of decode: measured once per CPU model and thread count.

The probe is the kernels' own (`hybrid_k2.kernels.measure_bandwidth`: AVX2 read-only sum and STREAM
triad over 1 GB, best of 5). Results are cached in `$XDG_CACHE_HOME/hybrid-k2/bandwidth.json` under the
CPU model, the probe method and the thread count; `--reprobe` measures again. Decode kernels are judged
against the read-only figure (they only read weights).

FALLBACK (marked "torch-fallback" in the output): when the kernels are not built, a torch read-only
sum and a torch triad stand in. They are slower than the AVX2 probe on most machines, so ratios against
them flatter the kernels; the output says which probe was used.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import torch

from hybrid_k2.paths import cache_dir

PROBE_MB = 1024
REPEATS = 5


def cache_file() -> Path:
    return cache_dir() / "bandwidth.json"


def _kernel_probe():
    try:
        from hybrid_k2.kernels import measure_bandwidth
    except Exception:  # kernels not built
        return None
    return measure_bandwidth


def _torch_probe(*, size_mb: int, threads: int, repeats: int) -> dict:
    """FALLBACK probe: torch's multi-threaded sum (read-only) and add(out=) triad, best of `repeats`."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        buf = torch.ones(size_mb * 10**6 // 4, dtype=torch.float32)  # touched by the fill
        read_s = min(_seconds(lambda: buf.sum()) for _ in range(repeats))
        read = buf.numel() * 4 / read_s / 1e9
        del buf
        n = size_mb * 10**6 // 3 // 8
        a, b, c = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64), torch.full((n,), 2.0,
                                                                                                      dtype=torch.float64)
        triad_s = min(_seconds(lambda: torch.add(b, c, alpha=3.0, out=a)) for _ in range(repeats))
        triad = n * 24 / triad_s / 1e9  # STREAM counting: read b, c, write a
    finally:
        torch.set_num_threads(before)
    return {"read_gbps": read, "triad_gbps": triad, "read_kernel": "torch.sum"}


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(threads: int, *, size_mb: int = PROBE_MB, repeats: int = REPEATS) -> dict:
    kernel = _kernel_probe()
    if kernel is not None:
        r = kernel(size_mb=size_mb, threads=threads, repeats=repeats)
        method = "kernels"
    else:
        r = _torch_probe(size_mb=size_mb, threads=threads, repeats=repeats)
        method = "torch-fallback"
    return {"read_gbps": float(r["read_gbps"]), "triad_gbps": float(r["triad_gbps"]), "threads": threads,
            "method": method, "read_kernel": str(r.get("read_kernel", "")), "size_mb": size_mb,
            "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def bandwidth(cpu_model: str, threads: int, *, reprobe: bool = False) -> dict:
    """The cached probe result for this CPU model and thread count (measured now if missing or asked)."""
    method = "kernels" if _kernel_probe() is not None else "torch-fallback"
    path = cache_file()
    try:
        cache = json.loads(path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    key = f"{cpu_model} | {method} | {threads} threads"
    hit = cache.get(key)
    if isinstance(hit, dict) and not reprobe and {"read_gbps", "triad_gbps"} <= hit.keys():
        return {**hit, "cached": True}
    result = measure(threads)
    cache[key] = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=2) + "\n")
        os.replace(tmp, path)  # atomic: concurrent benches never read half a file
    except OSError:
        pass  # a read-only cache dir only costs a re-measure next time
    return {**result, "cached": False}


def gpu_probe_bytes(size_mb: int, free_bytes: int) -> int:
    """Bytes of each of the probe's two device buffers: size_mb, at most an eighth of the free memory
    (both buffers together a quarter), so the probe never pushes a loaded model out of its budget."""
    return max(0, min(size_mb * 10**6, free_bytes // 8) // 4 * 4)


def gpu_bandwidth(device: torch.device, *, size_mb: int = PROBE_MB, repeats: int = REPEATS) -> float | None:
    """Device-memory bandwidth of a CUDA device in GB/s: best of `repeats` device-to-device copies of
    up to 1 GB, counted as read + write. None on other devices. Run it BEFORE loading a model (the
    runner does): the buffers are released to the driver afterwards, and sized to what is free."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    n = gpu_probe_bytes(size_mb, free) // 4
    if n < 2**20:  # under 4 MB free: nothing meaningful to measure
        return None
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    del src, dst
    torch.cuda.empty_cache()  # the model's budget, not the caching allocator, gets this memory back
    return 2 * n * 4 / best / 1e9
