"""Routed-MoE kernel benchmark at the real Kimi-K2 expert shape (D 7168, I 2048, top-8).

    python bench/bench_moe.py [--experts 64] [--tokens 1 4 16 64 256 512 1024] [--isa avx2 ...]
                              [--precision exact fast] [--repeats 5] [--output table|json]

Rows ("setting"):
  uniform    T tokens routed uniformly (8 distinct experts each) over the --experts in RAM;
  peer16     T in {128, 512} over 16 experts: the setting of the peers' figures (performance.md);
  spread384  the real model's spread: 384 experts give T*8/384 tokens per expert. Only 64 experts
             fit here, so T' = T*64/384 tokens are routed over 64 experts: the same tokens per
             expert and so the same per-expert work; GFLOP/s and GB/s are rates, comparable as such.
Columns: ms per call (median), effective weight GB/s (nibbles + scales of the distinct experts
selected), its fraction of the probe's bandwidth (higher of read-only and triad, same threads),
GFLOP/s (2 * 3 * D * I * T * K / time), its fraction of the int8 peak of the row's own ISA (the
multiply-add loop of that ISA's int8 instructions, csrc/bench/peak_*.cpp; amx and scalar rows have none),
and a torch baseline
(pre-dequantised bf16 weights of the selected experts) for small T. Each repeat uses a different
routing and every expert is touched before timing, so the weights come from RAM as in a real layer.
"""
import argparse
import json
import statistics
import time

import torch

from hybrid_k2.kernels import available_isas, measure_bandwidth, moe_forward, moe_submit
from hybrid_k2.kernels.synthetic import random_experts, random_routing
from hybrid_k2.model.experts import dequantize_expert

D, I, K = 7168, 2048, 8
PEAK_ISAS = ("avx2", "avx512", "avx512vnni", "avx512bf16")  # the ISA paths _C.int8_peak_gops probes


def time_call(fn, repeats):
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        fn(r)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_kernel(experts, *, tokens, num_routed, isa, precision, threads, repeats, seed=0):
    routings = [random_routing(tokens=tokens, top_k=K, num_experts=num_routed, seed=seed + r) for r in range(repeats)]
    xs = [torch.randn(tokens, D, generator=torch.Generator().manual_seed(seed + r)) for r in range(repeats)]
    out = torch.empty(tokens, D)
    moe_forward(x=xs[0], expert_ids=routings[0][0], weights=routings[0][1], experts=experts, precision=precision,
                isa=isa, threads=threads, out=out)  # warm-up: pool, scratch
    s = time_call(lambda r: moe_forward(x=xs[r], expert_ids=routings[r][0], weights=routings[r][1], experts=experts,
                                        precision=precision, isa=isa, threads=threads, out=out), repeats)
    distinct = statistics.median(len(torch.unique(ids)) for ids, _ in routings)
    return s, distinct


def torch_baseline(experts, tokens, repeats):
    """torch on bf16 weights dequantised beforehand (8 experts), the routed tokens of each expert."""
    ws = []
    for e in range(K):
        ws.append(list(dequantize_expert(experts, e, torch.bfloat16)))
    x = torch.randn(tokens, D).to(torch.bfloat16)
    ids, w = random_routing(tokens=tokens, top_k=K, num_experts=K, seed=1)

    def run(_):
        out = torch.zeros(tokens, D)
        for e in range(K):
            tok, slot = torch.nonzero(ids == e, as_tuple=True)
            if len(tok) == 0:
                continue
            g, u, dn = ws[e]
            h = torch.nn.functional.silu(x[tok] @ g.T) * (x[tok] @ u.T)
            out.index_add_(0, tok, (h @ dn.T).float() * w[tok, slot].unsqueeze(1))
        return out

    run(0)
    return time_call(run, repeats)


def fast_mode_error(experts, *, isa, tokens=16, seed=3, outliers=False):
    """Fast vs exact at the real shape: relative Frobenius error and max error over max |exact|.
    With outliers=True a few hidden channels are 30x larger, as in real LLM activations."""
    ids, w = random_routing(tokens=tokens, top_k=K, num_experts=experts.num_experts, seed=seed)
    x = torch.randn(tokens, D, generator=torch.Generator().manual_seed(seed))
    if outliers:
        x[:, ::512] *= 30
    exact = moe_forward(x=x, expert_ids=ids, weights=w, experts=experts, precision="exact", isa=isa)
    fast = moe_forward(x=x, expert_ids=ids, weights=w, experts=experts, precision="fast", isa=isa)
    d = fast - exact
    return dict(isa=isa, tokens=tokens, outliers=outliers, rel_fro=(d.norm() / exact.norm()).item(),
                max_rel=(d.abs().max() / exact.abs().max()).item())


def load_emulated():
    """The `_C_emu` test module: the AVX-512/AMX kernels on SIMDe (slow; for error figures only)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "tests" / "build.py"
    spec = importlib.util.spec_from_file_location("hk2_kernel_build", path)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build.load_emu()


def python_overhead_us(repeats=200):
    """submit + wait of a near-empty op (1 token, one 32x32 expert) through the pool: the per-call cost."""
    tiny = random_experts(num_experts=1, hidden=32, intermediate=32)
    x, ids, w = torch.randn(1, 32), torch.zeros(1, 1, dtype=torch.int64), torch.ones(1, 1)
    out = torch.empty(1, 32)
    for _ in range(20):
        moe_submit(x=x, expert_ids=ids, weights=w, experts=tiny, out=out).wait()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        moe_submit(x=x, expert_ids=ids, weights=w, experts=tiny, out=out).wait()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--tokens", type=int, nargs="*", default=[1, 4, 16, 64, 256, 512, 1024])
    ap.add_argument("--isa", nargs="*", default=None, help="default: every path this CPU has but scalar")
    ap.add_argument("--precision", nargs="*", default=["exact", "fast"], choices=["exact", "fast"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch-max-tokens", type=int, default=64)
    ap.add_argument("--no-extra", action="store_true", help="skip peer16/spread384/scaling rows")
    ap.add_argument("--error", action="store_true", help="only measure the fast mode's error against exact")
    ap.add_argument("--emulated", action="store_true",
                    help="with --error: the AVX-512/AMX paths of the SIMDe test build (csrc/tests/build.py)")
    ap.add_argument("--output", choices=("table", "json"), default="table")
    a = ap.parse_args()
    from hybrid_k2 import _C, info

    threads = a.threads or _C.default_threads()
    isas = a.isa or [i for i in available_isas() if i != "scalar"]
    experts = random_experts(num_experts=a.experts, hidden=D, intermediate=I, seed=0)  # load touches every page
    expert_bytes = info.expert_bytes(D, I)
    torch.set_num_threads(1)  # torch's OpenMP workers spin after each op and would steal the kernels' cores
    if a.error:
        if a.emulated:
            emu = load_emulated()
            experts = random_experts(num_experts=16, hidden=D, intermediate=I, seed=0, _module=emu)
            isas = ["avx512", "avx512vnni", "avx512bf16", "amx"]
        rows = [fast_mode_error(experts, isa=isa, outliers=o) for isa in isas for o in (False, True)]
        if a.output == "json":
            print(json.dumps(rows, indent=1))
        else:
            for r in rows:
                print(f"{r['isa']:>11} T={r['tokens']} outliers={r['outliers']!s:<5} relative Frobenius error "
                      f"{r['rel_fro']:.2e}, max error / max |exact| {r['max_rel']:.2e}")
        return
    bw = {t: measure_bandwidth(size_mb=1024, threads=t, repeats=3)["best_gbps"] for t in sorted({1, threads})}
    # Each row is divided by the peak of its own ISA's int8 instructions (an AVX-512 row by the AVX2 peak
    # gave "%i8pk" above 100%); AMX has no probe and its rows show "-".
    peak = {(isa, t): _C.int8_peak_gops(t, isa) for isa in isas if isa in PEAK_ISAS and isa in available_isas()
            for t in sorted({1, threads})}

    plan = [("uniform", T, a.experts, T, threads) for T in a.tokens]
    if not a.no_extra:
        plan += [("peer16", T, 16, T, threads) for T in (128, 512)]
        plan += [("spread384", T, a.experts, max(1, round(T * a.experts / 384)), threads) for T in (128, 512)]
        if threads > 1:  # 1 -> N thread scaling at decode (T = 1) and prefill (T = 128)
            for T in (1, 128):
                if T not in a.tokens:
                    plan.append(("uniform", T, a.experts, T, threads))
                plan.append(("uniform", T, a.experts, T, 1))
    rows = []
    for isa in isas:
        for precision in a.precision:
            for setting, T, routed, T_run, th in plan:
                s, distinct = bench_kernel(experts, tokens=T_run, num_routed=routed, isa=isa, precision=precision,
                                           threads=th, repeats=a.repeats)
                gbps = distinct * expert_bytes / s / 1e9
                gflops = 2 * 3 * D * I * T_run * K / s / 1e9
                row = dict(setting=setting, tokens=T, tokens_run=T_run, experts=routed, precision=precision, isa=isa,
                           threads=th, ms=s * 1e3, weight_gbps=gbps, read_bw_gbps=bw[th],
                           frac_of_bw=gbps / bw[th], gflops=gflops, distinct_experts=distinct,
                           frac_of_int8_peak=gflops / peak[isa, th] if (isa, th) in peak else None,
                           torch_ms=None)
                if setting == "uniform" and T <= a.torch_max_tokens and th == threads and precision == "fast" \
                        and isa == isas[0]:
                    torch.set_num_threads(th)
                    row["torch_ms"] = torch_baseline(experts, T, a.repeats) * 1e3
                    torch.set_num_threads(1)
                rows.append(row)
    overhead = python_overhead_us()
    if a.output == "json":
        for r in rows:
            r["overhead_us"] = overhead
        print(json.dumps(rows, indent=1))
        return
    print(f"K2 expert shape D={D} I={I} K={K}, {a.experts} experts in RAM ({a.experts * expert_bytes / 1e9:.2f} GB), "
          f"probe bandwidth " + ", ".join(f"{t}T {v:.1f} GB/s" for t, v in bw.items())
          + (", int8 peak " + ", ".join(f"{isa} {t}T {v:.0f} GOP/s" for (isa, t), v in peak.items()) if peak else ""))
    w = 1 + max(len("isa"), *(len(i) for i in isas))  # avx512vnni is 10 characters wide
    print(f"{'setting':<10}{'T':>6}{'isa':>{w}}{'prec':>6}{'thr':>4}{'ms':>10}{'GB/s':>8}{'%bw':>6}{'GFLOP/s':>9}"
          f"{'%i8pk':>7}{'torch ms':>10}")
    for r in rows:
        pk = f"{100 * r['frac_of_int8_peak']:.0f}" if r["frac_of_int8_peak"] is not None else "-"
        tm = f"{r['torch_ms']:.1f}" if r["torch_ms"] is not None else "-"
        print(f"{r['setting']:<10}{r['tokens']:>6}{r['isa']:>{w}}{r['precision']:>6}{r['threads']:>4}{r['ms']:>10.2f}"
              f"{r['weight_gbps']:>8.1f}{100 * r['frac_of_bw']:>6.0f}{r['gflops']:>9.1f}{pk:>7}{tm:>10}")
    print(f"python overhead per call (submit + wait, near-empty op): {overhead:.1f} us")


if __name__ == "__main__":
    main()
