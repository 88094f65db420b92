"""Decode step time with the CPU experts overlapping the device-side shared expert, on vs off (device = cpu).

    hybrid-k2 make-tiny /tmp/k2slice --k2-shape --layers 3 --experts 16 --top-k 8   # once (~2.3 GB)
    python bench/bench_overlap.py --model /tmp/k2slice [--precision exact|fast] [--steps 12] [--repeats 3]

A K2-shaped slice: real K2 dimensions (hidden 7168, 64 heads, expert width 2048, top-8), few layers and
experts. One load; the policy (overlap on/off) and the thread split (torch threads for the "device"
side, kernel threads for the CPU experts) change between runs. Each configuration: a short prefill,
then `steps` decode steps timed one by one, repeated; the median step time is reported, with the phase
breakdown from the runtime's PhaseTimer and the routed-expert bandwidth achieved. On this 2-core
machine both sides share the same cores and memory bus: quote the ratios of one run, not absolutes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import hybrid_k2
from hybrid_k2.info import routed_bytes_per_expert
from hybrid_k2.profiling import PhaseTimer
from hybrid_k2.runtime import RuntimeConfig
from hybrid_k2.runtime.machine import detect


def run(model, *, overlap: bool, torch_threads: int, cpu_threads: int, steps: int, repeats: int) -> dict:
    rt = model.runtime
    rt.set_policy(overlap=overlap, cpu_threads=cpu_threads)
    torch.set_num_threads(torch_threads)
    step_ms, phases = [], {}
    for r in range(repeats):
        s = model.new_session()
        s.prefill(list(range(10, 26)))
        s.decode(5)  # warm: first decode touches every selected expert's pages
        timer = PhaseTimer()
        rt.set_timer(timer)
        for i in range(steps):
            t0 = time.perf_counter()
            s.decode(30 + i)
            step_ms.append(1e3 * (time.perf_counter() - t0))
        rt.set_timer(None)
        for k, v in timer.seconds.items():
            phases.setdefault(k, []).append(1e3 * v / steps)
    return dict(overlap=overlap, torch_threads=torch_threads, cpu_threads=cpu_threads,
                step_ms=statistics.median(step_ms), step_ms_all=step_ms,
                phases_ms={k: statistics.median(v) for k, v in phases.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--precision", default="exact", choices=["exact", "fast"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    cores = detect().physical_cores
    model = hybrid_k2.load(a.model, precision=a.precision, runtime=RuntimeConfig(ctx=64))
    args = model.args
    moe_bytes = args.n_moe_layers * args.num_experts_per_tok * routed_bytes_per_expert(args)
    print(f"{a.model}: {args.num_hidden_layers} layers, {args.n_routed_experts} experts top-{args.num_experts_per_tok}, "
          f"hidden {args.hidden_size}; precision {a.precision}; experts backend {model.runtime.backend}; "
          f"{cores} physical cores; routed experts read per token {moe_bytes / 1e6:.0f} MB")
    half = max(1, cores // 2)
    configs = [(False, cores, cores), (True, cores, cores), (False, half, cores - half or 1),
               (True, half, cores - half or 1)]
    results = []
    # interleave repeats of the configurations so drift of the shared machine hits them alike
    for _ in range(a.repeats):
        for overlap, tt, ct in configs:
            results.append(run(model, overlap=overlap, torch_threads=tt, cpu_threads=ct, steps=a.steps, repeats=1))
    merged = {}
    for r in results:
        key = (r["overlap"], r["torch_threads"], r["cpu_threads"])
        m = merged.setdefault(key, dict(r, step_ms_all=[], phases_all={}))
        m["step_ms_all"] += r["step_ms_all"]
        for k, v in r["phases_ms"].items():
            m["phases_all"].setdefault(k, []).append(v)
    rows = []
    for (overlap, tt, ct), m in merged.items():
        step = statistics.median(m["step_ms_all"])
        ph = {k: statistics.median(v) for k, v in m["phases_all"].items()}
        rows.append(dict(overlap=overlap, torch_threads=tt, cpu_threads=ct, step_ms=step, phases_ms=ph))
        cpu = ph.get("cpu_experts", 0.0)
        print(f"overlap={'on ' if overlap else 'off'} torch threads {tt} kernel threads {ct}: step {step:7.1f} ms"
              f" | attention {ph.get('attention', 0):6.1f}  shared {ph.get('shared_experts', 0):5.1f}"
              f"  cpu_experts {cpu:5.1f} ({moe_bytes / 1e6 / max(cpu, 1e-9):.1f} GB/s)"
              f"  wait {ph.get('wait', 0):5.1f}  dense {ph.get('dense_mlp', 0):5.1f}")
    by = {(r["overlap"], r["torch_threads"], r["cpu_threads"]): r["step_ms"] for r in rows}
    gains = {}
    for (overlap, tt, ct), on in by.items():
        if overlap:
            off = by[(False, tt, ct)]
            gains[f"{tt}/{ct}"] = (off - on) / off
            print(f"threads torch {tt} / kernel {ct}: serial {off:.1f} ms -> overlapped {on:.1f} ms: "
                  f"{100 * gains[f'{tt}/{ct}']:+.1f}%")
    best_on = min(v for k, v in by.items() if k[0])
    best_off = min(v for k, v in by.items() if not k[0])
    gain = (best_off - best_on) / best_off
    print(f"best overlapped vs best serial: {best_off:.1f} -> {best_on:.1f} ms: {100 * gain:+.1f}%")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(model=a.model, precision=a.precision, rows=rows, gain=gain, gains=gains), f, indent=2)
    model.runtime.close()


if __name__ == "__main__":
    main()
