"""MLA attention of one layer at the real K2 shape over a latent cache at depth: the reference (the
whole-cache attention MLA ran before the blocks: absorbed decode, naive prefill expanding every cached
position with [T, H, S] scores, in the compute dtype) against the blockwise forms (model/attention.py).

    python bench/bench_attention.py                      # T in 1,64,512, depths 0..32768, bf16, 1 thread
    python bench/bench_attention.py -T 1,128,256 -d 8192 --dtype fp32 --threads 2 --kv-cache-dtype fp8

Prints ms per call and the peak extra memory of each (tracemalloc cannot see torch: the figure is the
growth of the process's peak RSS, VmHWM, measured in a fresh subprocess per cell). Only attention runs:
projections are outside the timed region, so the numbers isolate what grows with the depth.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

H, R, P, N, V = 64, 512, 64, 128, 128  # K2: heads, kv_lora_rank, rope, nope, v_head_dim
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def cell(T: int, depth: int, form: str, dtype: str, kv_dtype: str, block: int, reps: int,
         kernel_threads: int) -> dict:
    """One (T, depth, form) in this process: ms per call (median) and peak RSS growth."""
    from hybrid_k2.model import attention
    from hybrid_k2.runtime.cpu_attention import CpuAbsorbedAttention
    from hybrid_k2.model.latent_cache import LatentCache
    from hybrid_k2.model.linear import Linear

    torch.manual_seed(0)
    dt = DTYPES[dtype]
    kv_b = Linear(R, H * (N + V))
    kv_b.weight = torch.nn.Parameter((torch.randn(H * (N + V), R) / R ** 0.5).to(dt), requires_grad=False)
    S = depth + T
    cache = LatentCache(R + P, R, capacity=S, dtype=dt, device=torch.device("cpu"), kv_dtype=kv_dtype)
    for s0 in range(0, S, 4096):
        cache.write(s0, torch.randn(min(4096, S - s0), R + P).to(dt))
    q_nope, q_pe = torch.randn(T, H, N).to(dt), torch.randn(T, H, P).to(dt)
    w = kv_b.weight.view(H, N + V, R)
    scale = (N + P) ** -0.5

    def reference():  # what MLA(impl="reference") runs, the whole-cache attention of before the blocks
        latent = cache.read(0, S, dt)
        c_all, pe_all = latent[:, :R], latent[:, R:]
        if T == 1:  # absorbed decode in the compute dtype
            q_lat = torch.einsum("thn,hnr->thr", q_nope, w[:, :N])
            scores = torch.einsum("thr,sr->ths", q_lat.float(), c_all.float())
            scores = scores + torch.einsum("thp,sp->ths", q_pe.float(), pe_all.float())
            p = torch.softmax(scores * scale, dim=-1)
            return torch.einsum("thr,hvr->thv", torch.einsum("ths,sr->thr", p.to(dt), c_all), w[:, N:])
        kvb = kv_b(c_all).view(S, H, N + V)
        scores = torch.einsum("thn,shn->ths", q_nope.float(), kvb[..., :N].float())
        scores = scores + torch.einsum("thp,sp->ths", q_pe.float(), pe_all.float())
        mask = torch.arange(S)[None, :] > torch.arange(depth, S)[:, None]
        p = torch.softmax(scores.masked_fill(mask[:, None, :], float("-inf")) * scale, dim=-1)
        return torch.einsum("ths,shv->thv", p.to(dt), kvb[..., N:])

    w32 = w.float()  # what MLA.attention_weight keeps on the CPU

    def absorbed():
        q_lat = torch.einsum("thn,hnr->thr", q_nope.float(), w32[:, :N])
        o_lat = attention.absorbed(q_lat, q_pe, cache, depth, scale, block)
        return torch.einsum("thr,hvr->thv", o_lat, w32[:, N:]).to(dt)

    def expanded():
        w2 = w32.view(H * (N + V), R)
        return attention.expanded(q_nope, q_pe, cache, lambda c: torch.nn.functional.linear(c.float(), w2),
                                  depth, scale, block, V).to(dt)

    attend = CpuAbsorbedAttention(kernel_threads)

    def kernel():  # absorbed on the CPU kernels (runtime/cpu_attention.py), what device = cpu runs in fast mode
        return attend(q_nope, q_pe, w32, cache, depth, scale, block).to(dt)

    fn = {"reference": reference, "absorbed": absorbed, "expanded": expanded, "kernel": kernel}[form]
    base = vm_hwm()
    with torch.inference_mode():
        fn()  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    times.sort()
    return {"T": T, "depth": depth, "form": form, "ms": 1e3 * times[len(times) // 2],
            "peak_growth_mb": (vm_hwm() - base) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-T", default="1,64,512", help="query tokens per call (list)")
    ap.add_argument("-d", "--depths", default="0,2048,8192,32768", help="cached positions before the chunk (list)")
    ap.add_argument("--forms", default="reference,absorbed,expanded,kernel",
                    help="reference, absorbed, expanded (torch), kernel (absorbed on the CPU kernels)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--kv-cache-dtype", default="auto", choices=("auto", "bf16", "fp8"))
    ap.add_argument("--block", type=int, default=0, help="key positions per block (0: the CPU default)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the runtime's device side uses 1 on CPU)")
    ap.add_argument("--kernel-threads", type=int, default=os.cpu_count() or 1,
                    help="kernel pool threads of the kernel form (the runtime gives it the experts' pool)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-reference-gb", type=float, default=12.0,
                    help="skip reference cells whose [T, H, S] scores and expanded cache exceed this")
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from hybrid_k2.model.attention import block_for

    if a.cell:
        T, depth, form = a.cell.split(":")
        block = a.block or block_for("cpu", int(T))
        print(json.dumps(cell(int(T), int(depth), form, a.dtype, a.kv_cache_dtype, block, a.reps, a.kernel_threads)))
        return
    print(f"# MLA attention, one layer, K2 shape (H {H}, R {R}, P {P}), {a.dtype}, cache {a.kv_cache_dtype}, "
          f"block {a.block or 'block_for(cpu, T)'}, {a.threads} torch thread(s), kernel form on {a.kernel_threads} "
          f"thread(s), {os.cpu_count()} CPUs; GFLOP/s counts the absorbed form's multiply-adds x 2")
    print(f"{'T':>5} {'depth':>7} {'form':>10} {'ms':>10} {'peak +MB':>9} {'GFLOP/s':>8}")
    for T in map(int, a.T.split(",")):
        for depth in map(int, a.depths.split(",")):
            for form in a.forms.split(","):
                S = depth + T
                if form == "reference" and (3 * T * H * S * 4 + S * H * (N + V) * 6) / 1e9 > a.max_reference_gb:
                    print(f"{T:>5} {depth:>7} {form:>10} {'(skipped: over --max-reference-gb)':>20}")
                    continue
                r = subprocess.run([sys.executable, __file__, "--cell", f"{T}:{depth}:{form}", "--dtype", a.dtype,
                                    "--kv-cache-dtype", a.kv_cache_dtype, "--block", str(a.block),
                                    "--threads", str(a.threads), "--reps", str(a.reps),
                                    "--kernel-threads", str(a.kernel_threads)],
                                   capture_output=True, text=True)
                if r.returncode:
                    print(f"{T:>5} {depth:>7} {form:>10} failed: {r.stderr.strip().splitlines()[-1:]}")
                    continue
                d = json.loads(r.stdout)
                flops = 2 * T * H * (S * (2 * R + P) + R * (N + V))  # absorbed: scores, values, folds
                rate = f"{flops / d['ms'] / 1e6:>8.1f}" if form in ("absorbed", "kernel") else f"{'-':>8}"
                print(f"{T:>5} {depth:>7} {form:>10} {d['ms']:>10.2f} {d['peak_growth_mb']:>9.0f} {rate}", flush=True)


if __name__ == "__main__":
    main()
