"""MLA's folds on the CPU kernels at the real K2 shape, as decode meets them: from memory, not cache.

    python bench/bench_mla_fold.py                   # T = 1, 2 threads, fp32 and int8 weights
    python bench/bench_mla_fold.py -T 1,64 --threads 1,2 --reps 128

The absorbed form folds W_UK into the queries (form "cols": q_nope [T, H, N] -> [T, H, R]) and W_UV out
of the latent output (form "rows": [T, H, R] -> [T, H, V]), reading kv_b_proj's weight [H, N + V, R] once
per layer and token: 16.8 MB per form in fp32 (a bf16 kv_b_proj's copy), 4.2 MB in int8. Each timed call
uses the next of enough weight copies (over 128 MB) that none is in cache, as in a decode step that
streams every layer's weights. Prints ms per call and the weight bytes read per second; compare the
latter with the machine's read bandwidth (`python bench/bench_bandwidth.py`).
"""
from __future__ import annotations

import argparse
import time

import torch

from hybrid_k2.kernels.mla_attention import mla_fold

H, N, V, R = 64, 128, 128, 512  # K2: heads, nope, v_head_dim, kv_lora_rank
COPIES_BYTES = 128 * 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-T", default="1", help="tokens per call, comma-separated")
    ap.add_argument("--threads", default="2", help="kernel threads, comma-separated")
    ap.add_argument("--reps", type=int, default=64, help="timed calls per cell (each on the next weight copy)")
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    weights = {}
    for name, dtype in (("fp32", torch.float32), ("int8", torch.int8)):
        one = H * (N + V) * R * torch.empty(0, dtype=dtype).element_size()
        n = max(2, COPIES_BYTES // one)
        if dtype == torch.int8:
            weights[name] = [torch.randint(-127, 128, (H, N + V, R), dtype=dtype, generator=g) for _ in range(n)]
        else:
            weights[name] = [torch.randn(H, N + V, R, generator=g) for _ in range(n)]
    print(f"{'T':>4} {'threads':>7} {'weights':>7} {'form':>5} {'ms':>8} {'GB/s':>6}")
    for T in (int(t) for t in a.T.split(",")):
        for threads in (int(t) for t in a.threads.split(",")):
            for name, ws in weights.items():
                for form in ("cols", "rows"):
                    x = torch.randn(T, H, N if form == "cols" else R, generator=g)
                    view = (lambda w: w[:, :N]) if form == "cols" else (lambda w: w[:, N:])
                    for w in ws:  # untimed: page faults, thread start
                        mla_fold(x=x, w=view(w), form=form, threads=threads)
                    t0 = time.perf_counter()
                    for i in range(a.reps):
                        mla_fold(x=x, w=view(ws[i % len(ws)]), form=form, threads=threads)
                    ms = (time.perf_counter() - t0) / a.reps * 1e3
                    nbytes = view(ws[0]).numel() * ws[0].element_size()
                    print(f"{T:>4} {threads:>7} {name:>7} {form:>5} {ms:>8.3f} {nbytes / ms / 1e6:>6.1f}")


if __name__ == "__main__":
    main()
