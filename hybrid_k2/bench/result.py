"""The bench document: every output format (table, md, csv, json, plot) is rendered from this one dict.

Its JSON Schema is hybrid_k2/bench/schema.json, described in docs/bench.md.
"""
from __future__ import annotations

from pathlib import Path

from hybrid_k2.bench.options import BenchOptions
from hybrid_k2.bench.roofline import Ceiling, device_weight_bytes, kv_read_bytes, phase_weight_bytes, projection
from hybrid_k2.bench.runner import Measurement, RunData, StepProfile
from hybrid_k2.bench.stats import Summary, rates
from hybrid_k2.info import decode_expert_bytes_per_token, kv_bytes_per_token, routed_bytes_per_expert, sizes

SCHEMA_ID = "hybrid-k2-bench/1"
PHASE_ORDER = ("embed", "attention", "dense_mlp", "router", "to_host", "shared_experts", "device_experts",
               "graph", "cpu_experts", "wait", "to_device", "lm_head", "sampling", "python")
WHERE = {"embed": "host", "attention": "device", "dense_mlp": "device", "router": "device",
         "shared_experts": "device", "device_experts": "device", "lm_head": "device", "cpu_experts": "cpu",
         "to_host": "transfer", "to_device": "transfer", "wait": "cpu (waiting)", "sampling": "host",
         "python": "host", "graph": "device (whole CUDA-graph step)"}


def test_name(m: Measurement) -> str:
    return f"{m.kind}{m.tokens}"


def result_row(m: Measurement) -> dict:
    s = Summary.of(rates(m.tokens, m.seconds))
    return {"test": test_name(m), "kind": m.kind, "depth": m.depth, "batch": m.batch, "threads": m.threads,
            "tokens": m.tokens, "unit": "tokens/s", **s.to_dict(), "seconds": list(m.seconds)}


def phase_bytes(p: StepProfile, model) -> dict[str, float]:
    """Bytes per token each device-side phase reads: its weights as loaded, plus (attention) the latent
    KV at the run's mean context. With device = cpu they come from host memory, like the experts'."""
    out: dict[str, float] = dict(phase_weight_bytes(model.net))
    if "attention" in out:
        out["attention"] += kv_read_bytes(model.args, p.context_sum / p.steps, model.net.dtype.itemsize,
                                          model.kv_dtype)
    return out


def breakdown_row(p: StepProfile, tg_row: dict, nbytes: dict[str, float] | None = None) -> dict:
    nbytes = nbytes or {}
    phases = dict(p.phases_s)
    serial = sum(s for name, s in phases.items() if name not in p.concurrent)
    phases["python"] = p.wall_s - serial  # may be < 0 only if phases were double counted: kept visible
    step_ms = p.wall_s / p.steps * 1e3
    names = [n for n in PHASE_ORDER if n in phases] + sorted(n for n in phases if n not in PHASE_ORDER)
    rows = [{"name": n, "ms": phases[n] / p.steps * 1e3, "share": phases[n] / p.wall_s if p.wall_s else 0.0,
             "concurrent": n in p.concurrent, "where": WHERE.get(n, "other")} for n in names]
    for r in rows:
        if r["name"] in nbytes and phases[r["name"]] > 0:
            r["bytes"] = nbytes[r["name"]]  # per token
            r["gbps"] = nbytes[r["name"]] * p.steps / phases[r["name"]] / 1e9
    return {"depth": p.depth, "threads": p.threads, "mode": p.mode, "steps": p.steps, "step_ms": step_ms,
            "tg_step_ms": 1e3 / tg_row["mean"], "phases": rows,
            "sum_ms": sum(r["ms"] for r in rows if not r["concurrent"])}


def experts_row(p: StepProfile, args, bw: dict) -> dict:
    per_expert = routed_bytes_per_expert(args)
    bytes_per_token = p.cpu_experts_read * per_expert / p.steps
    cpu_s = p.phases_s.get("cpu_experts", 0.0)
    gbps = p.cpu_experts_read * per_expert / cpu_s / 1e9 if cpu_s > 0 else None
    return {"depth": p.depth, "threads": p.threads,
            "experts_per_token": p.cpu_experts_read / p.steps,
            "device_experts_per_token": p.device_experts_read / p.steps,
            "bytes_per_expert": per_expert, "bytes_per_token": bytes_per_token,
            "cpu_experts_ms": cpu_s / p.steps * 1e3, "gbps": gbps,
            "bandwidth_read_gbps": bw["read_gbps"], "bandwidth_method": bw["method"],
            "fraction_of_bandwidth": gbps / bw["read_gbps"] if gbps is not None else None}


def roofline_row(p: StepProfile, model, bw: dict, tg_row: dict, gpu_gbps: float | None) -> dict:
    a, net = model.args, model.net
    context = p.context_sum / p.steps
    cache_bytes = net.dtype.itemsize  # the compute dtype: what the "auto" cache kind stores
    weights = device_weight_bytes(net)
    dev_experts = p.device_experts_read / p.steps * routed_bytes_per_expert(a)
    on_cpu = model.device.type == "cpu"
    c = Ceiling(cpu_bytes=p.cpu_experts_read / p.steps * routed_bytes_per_expert(a),
                device_bytes=weights + dev_experts + kv_read_bytes(a, context, cache_bytes, model.kv_dtype),
                cpu_gbps=bw["read_gbps"], device_gbps=bw["read_gbps"] if on_cpu or not gpu_gbps else gpu_gbps,
                device_reads_host_memory=on_cpu)
    bound = c.serial_tok_s
    return {"depth": p.depth, "threads": p.threads, "context": context, "device_weight_bytes": weights,
            "ceiling": c.to_dict(), "tg_tok_s": tg_row["mean"], "fraction_of_ceiling": tg_row["mean"] / bound,
            "note": ("device = cpu: the device-side weights and KV are read from host memory too, at the same "
                     "probed bandwidth, in series with the routed experts") if on_cpu else
                    "device side read at the GPU bandwidth; the bound assumes no CPU/GPU overlap"}


def model_section(model, opts: BenchOptions, demo: bool, data: RunData) -> dict:
    a = model.args
    s = sizes(a)
    runtime = getattr(model, "runtime", None)
    return {"path": str(model.path), "name": "demo (built-in random weights)" if demo else Path(model.path).name,
            "demo": demo, "layers": a.num_hidden_layers, "moe_layers": a.n_moe_layers,
            "experts": a.n_routed_experts, "top_k": a.num_experts_per_tok, "hidden": a.hidden_size,
            "moe_intermediate": a.moe_intermediate_size, "vocab": a.vocab_size,
            "params_device": s.device_params, "params_routed": s.routed_params, "params_embed": s.embed_params,
            "routed_bytes_per_expert": routed_bytes_per_expert(a),
            "routed_bytes_per_token": decode_expert_bytes_per_token(a),
            "device_weight_bytes": device_weight_bytes(model.net),
            "kv_bytes_per_token": kv_bytes_per_token(a, model.net.dtype.itemsize, model.kv_dtype),
            "precision": opts.precision, "device": str(model.device), "experts_backend": data.experts_backend,
            "runtime": runtime.describe() if runtime is not None and hasattr(runtime, "describe") else None,
            "instrument": data.instrument_mode}


def _headline(results: list[dict], kind: str) -> dict | None:
    rows = [r for r in results if r["kind"] == kind]
    if not rows:
        return None
    r = rows[0]  # first depth, batch and thread count: the llama-bench default line
    return {"test": r["test"], "mean": r["mean"], "std": r["std"], "unit": "tokens/s", "depth": r["depth"],
            "batch": r["batch"], "threads": r["threads"]}


def build(opts: BenchOptions, data: RunData, model, hardware: dict, provenance: dict, demo: bool) -> dict:
    results = [result_row(m) for m in data.measurements]
    tg_rows = {(r["threads"], r["depth"]): r for r in results if r["kind"] == "tg"}
    gpu_gbps = data.gpu_gbps
    breakdown, experts, roof = [], [], []
    for p in data.profiles:
        tg, bw = tg_rows[(p.threads, p.depth)], data.bandwidth[p.threads]
        breakdown.append(breakdown_row(p, tg, phase_bytes(p, model)))
        experts.append(experts_row(p, model.args, bw))
        roof.append(roofline_row(p, model, bw, tg, gpu_gbps))
    proj = None
    if opts.project is not None:
        first = roof[0] if roof else None
        proj = projection(opts.project, context=first["context"] if first else max(opts.depths) + 1,
                          fraction_of_ceiling=first["fraction_of_ceiling"] if first else None,
                          expert_efficiency=experts[0]["fraction_of_bandwidth"] if experts else None)
    bandwidth = [{"threads": t, **{k: v for k, v in bw.items() if k != "threads"}}
                 for t, bw in sorted(data.bandwidth.items())]
    warnings = []
    for r in roof:
        bw = data.bandwidth[r["threads"]]
        if r["fraction_of_ceiling"] > 1.0 and bw.get("cached"):
            warnings.append(f"t{r['threads']} d{r['depth']}: this run beat the ceiling computed from the cached "
                            f"bandwidth probe ({bw['read_gbps']:.1f} GB/s, {bw['measured_at']}): the probe ran on a "
                            f"busier machine; re-run with --reprobe")
    return {
        "schema": SCHEMA_ID,
        "provenance": provenance,
        "hardware": {**hardware, "memory_bandwidth": bandwidth,
                     "gpu": {**hardware["gpu"], "bandwidth_gbps": gpu_gbps} if hardware["gpu"] else None},
        "model": model_section(model, opts, demo, data),
        "settings": {"n_prompt": opts.n_prompt, "n_gen": opts.n_gen, "repetitions": opts.repetitions,
                     "depths": list(opts.depths), "batches": list(opts.batches),
                     "threads": sorted(data.bandwidth), "torch_threads": data.torch_threads,
                     "precision": opts.precision, "device": opts.device,
                     "seed": opts.seed, "warmup": opts.warmup, "fill": opts.fill,
                     "warmup_experts_touched": data.warmup_experts_touched},
        "pp": _headline(results, "pp"),
        "tg": _headline(results, "tg"),
        "results": results,
        "breakdown": breakdown,
        "experts": experts,
        "roofline": roof,
        "projection": proj,
        "memory": data.memory,
        "warnings": warnings,
    }
