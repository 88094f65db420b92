"""`hybrid-k2 plan`: the memory plan as a table (or JSON), from config.json alone."""
from __future__ import annotations

import json
from pathlib import Path

from hybrid_k2.config import ModelArgs
from hybrid_k2.runtime.config import RuntimeConfig, parse_bytes
from hybrid_k2.runtime.planner import Plan, PlanOptions, gb, make_plan


def plan_for(model: Path, *, gpu_mem: str | None, ram: str | None, ctx: int | None = None,
             precision: str = "fast", device: str = "cuda", place: list[str] | None = None, gpu_experts: int = 0,
             expert_counts: str | None = None, prefill_chunk: int | None = None,
             device_prefill_threshold: int | None = None, graph_batch_sizes: tuple[int, ...] = (1,),
             kv_cache_dtype: str = "auto", runtime: RuntimeConfig | None = None) -> Plan:
    """runtime (what the CLI flags built) replaces place / gpu_experts / expert_counts /
    device_prefill_threshold / ctx / prefill_chunk / kv_cache_dtype. Without a context: the model's maximum."""
    from hybrid_k2.runtime.placement import resolve

    args = ModelArgs.from_hf_config(model)
    config = runtime or RuntimeConfig.from_options(place=place, gpu_experts=gpu_experts, expert_counts=expert_counts,
                                                   device_prefill_threshold=device_prefill_threshold, ctx=ctx,
                                                   prefill_chunk=prefill_chunk, kv_cache_dtype=kv_cache_dtype)
    hot = config.hot_experts({L: args.n_routed_experts for L in range(args.num_hidden_layers)
                              if args.is_moe_layer(L)})
    from hybrid_k2.runtime.config import PREFILL_CHUNK

    options = PlanOptions(gpu_mem=parse_bytes(gpu_mem), ram=parse_bytes(ram),
                          ctx=config.ctx or args.max_position_embeddings, precision=precision,
                          device=device, prefill_chunk=config.prefill_chunk or PREFILL_CHUNK,
                          graph_batch_sizes=graph_batch_sizes, kv_dtype=config.kv_cache_dtype,
                          device_prefill=config.device_prefill_threshold is not None)
    return make_plan(args, resolve(args, config.placement, hot), options)


def print_plan(plan: Plan, *, output: str = "table", model: Path | None = None) -> None:
    if output == "json":
        print(json.dumps(plan.to_json(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    where_dev = "GPU" if plan.device == "cuda" else "host RAM (device=cpu)"
    dt = "bf16" if plan.precision == "fast" else "fp32"
    t = Table(title=f"memory plan{f' for {model}' if model else ''}: context {plan.ctx:,}, {plan.precision}")
    t.add_column("class")
    t.add_column("where")
    t.add_column("bytes", justify="right")
    t.add_column("note")
    rows = [
        ("GPU-side weights", where_dev, plan.gpu_weight_bytes,
         f"{dt}" + (f", {plan.gpu_int8_linears} linears int8" if plan.gpu_int8_linears else "")),
        ("hot routed experts", where_dev, plan.gpu_expert_bytes, f"{plan.n_gpu_experts} experts, INT4"),
        ("KV cache", where_dev, plan.kv_cache_bytes,
         f"{plan.kv_bytes_per_token:,} B/token x {plan.ctx:,} ({plan.kv_dtype if plan.kv_dtype != 'auto' else dt})"),
        ("activations", where_dev, plan.activation_bytes, f"prefill chunk {plan.prefill_chunk}"),
        ("CUDA-graph buffers", where_dev, plan.graph_bytes, "decode graphs"),
        ("CUDA reserve", where_dev, plan.reserve_bytes, "context, cuBLAS workspaces, fragmentation"),
        ("device-prefill stream", where_dev, plan.stream_bytes, "2 chunks of experts"),
        ("pinned staging", "host RAM", plan.pinned_bytes, "hidden states, top-k, results"),
        ("routed experts", "host RAM", plan.cpu_expert_bytes, "INT4 + bf16 scales"),
        ("embedding table", "host RAM" if plan.embed_on == "cpu" else where_dev, plan.embed_bytes, "lookup only"),
    ]
    for name, where, n, note in rows:
        if n or name in ("GPU-side weights", "KV cache", "routed experts"):
            t.add_row(name, where, gb(n), note)
    console.print(t)
    if plan.device == "cuda":
        console.print(_total("GPU", plan.gpu_total, plan.gpu_mem, plan.gpu_headroom, "--gpu-mem"))
    console.print(_total("host RAM", plan.ram_total, plan.ram, plan.ram_headroom, "--ram"))
    budgets = [flag for flag, n in (("--gpu-mem", plan.gpu_mem if plan.device == "cuda" else 0), ("--ram", plan.ram))
               if n is None]
    if budgets:  # an unbounded budget fits anything: say so instead of a bare "fits"
        console.print(f"[yellow]not checked:[/yellow] no {' or '.join(budgets)} given, so nothing bounds "
                      f"{'these totals' if len(budgets) > 1 else 'that total'}")
    console.print(f"largest context that fits: {plan.max_context:,} tokens")
    for p in plan.problems:
        console.print(f"[red]does not fit:[/red] {p}")
    for p in plan.proposals:
        console.print(f"[yellow]proposal:[/yellow] {p}")
    if plan.fits and len(budgets) < (2 if plan.device == "cuda" else 1):
        console.print("[green]fits[/green]" + (" the budget given" if budgets else ""))


def _total(what: str, total: int, budget: int | None, headroom: int | None, flag: str) -> str:
    if budget is None:
        return f"{what} total {gb(total)} (no {flag} budget given)"
    return f"{what} total {gb(total)} of {gb(budget)}: headroom {gb(headroom)}"
