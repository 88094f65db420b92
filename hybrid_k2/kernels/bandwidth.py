"""Memory-bandwidth probe (csrc/bench/bandwidth_py.cpp): the yardstick of the decode kernels."""
from __future__ import annotations

from hybrid_k2.errors import HybridK2Error


def measure_bandwidth(*, size_mb: int = 1024, threads: int | None = None, repeats: int = 5) -> dict:
    """Best-of-`repeats` read-only (AVX2 sum) and STREAM-triad bandwidth over `size_mb` MB.

    Returns {"read_gbps", "triad_gbps", "best_gbps", "threads", "bytes", "read_kernel"}; best_gbps is
    the higher of the two, the figure the decode kernels are judged against."""
    from hybrid_k2 import _C

    if threads is None:
        threads = _C.default_threads()
    if not isinstance(size_mb, int) or size_mb < 1:
        raise HybridK2Error(f"size_mb must be a positive int, got {size_mb!r}")
    r = dict(_C.measure_bandwidth(size_mb * 10**6, threads, repeats))
    r["best_gbps"] = max(r["read_gbps"], r["triad_gbps"])
    return r
