"""The doctor's GPU-only checks (listed as skipped on a machine without a GPU): placement, pinned
staging, CUDA-graph decode (against the CPU reference and eager decode; after a >4,096-token prompt over
NaN-poisoned memory) and peak GPU memory against the plan."""
from __future__ import annotations

import torch

import hybrid_k2
from hybrid_k2.doctor.common import CTX, DECODE, EXACT_TOL, PROMPT, Ctx, closed, expect, max_diff, run
from hybrid_k2.runtime import RuntimeConfig


# -- GPU only ----------------------------------------------------------------------------------------------
def check_placement(ctx: Ctx) -> str:
    with closed(ctx.load()) as m:
        wrong = [(n, str(p.device)) for n, p in m.net.named_parameters()
                 if p.device.type != ("cpu" if n.startswith("model.embed_tokens") else ctx.device.type)]
        expect(not wrong, f"{len(wrong)} weights misplaced, e.g. {wrong[:3]}")
        n = sum(1 for _ in m.net.named_parameters())
        return f"{n} weights: the embedding in RAM, every other GPU-side weight on {ctx.device.type}"


def check_pinned(ctx: Ctx) -> str:
    with closed(ctx.load(cuda_graphs=False)) as m:
        run(m, ctx.tokens(8), n_decode=2)
        bufs = [getattr(st, f) for st in m.runtime.executor.staging for f in ("x", "out", "ids", "weights")]
        expect(all(b.is_pinned() for b in bufs), "executor staging buffers are not pinned")
        return f"{len(bufs)} executor staging buffers pinned"


def check_graph_decode(ctx: Ctx) -> str:
    ids = ctx.tokens(PROMPT + DECODE)
    with closed(ctx.load()) as m:
        expect(m.runtime.graphs is not None, "CUDA graphs are not enabled on this device")
        s = m.new_session(CTX)  # kept alive: its graph stays cached
        got, ref = run(m, ids, session=s), ctx.ref(ids)
        d = max_diff(got, ref)
        expect(d <= EXACT_TOL, f"graph decode: max |Δ logits| {d:.2e} > {EXACT_TOL:g} against the CPU reference")
        with closed(ctx.load(cuda_graphs=False)) as eager:
            e = max_diff(got[-DECODE:], run(eager, ids)[-DECODE:])
        expect(e <= EXACT_TOL, f"graph decode: max |Δ logits| {e:.2e} > {EXACT_TOL:g} against eager decode")
        statics = [value[0] for value, _ in m.runtime.graphs.graphs.entries.values()]
        expect(len(statics) == 1, f"{len(statics)} graphs captured for one session")
        host = [b for st in statics for bufs in st.staging.values() for k, b in bufs.items() if k != "out_dev"]
        expect(all(b.is_pinned() for b in host), "graph staging buffers are not pinned")
        return (f"max |Δ logits| {d:.1e} over {len(ids)} positions ({DECODE} graph decodes) against the "
                f"reference, {e:.1e} against eager decode; staging pinned")


def check_graph_long_prompt(ctx: Ctx) -> str:
    """A >4,096-token prompt, then graph decode, after filling freed device memory with NaN. Compared
    with the hybrid runtime on the CPU (exact; the first check holds it to the reference), which runs
    the 4,200 tokens ~10x faster than the plain module forward."""
    ids = ctx.tokens(4200 + DECODE, seed=3)
    with closed(hybrid_k2.load(ctx.path, device="cpu", precision="exact", runtime=RuntimeConfig(ctx=CTX))) as cpu:
        ref = run(cpu, ids)
    with closed(ctx.load()) as m:
        free, _ = torch.cuda.mem_get_info(ctx.device)
        poison = torch.full((min(free // 4, 2**30) // 4,), float("nan"), device=ctx.device)
        del poison  # back to the caching allocator: the session's caches reuse it
        got = run(m, ids)
        expect(bool(torch.isfinite(got).all()), "non-finite logits after the long prompt")
        d = max_diff(got[-DECODE:], ref[-DECODE:])
        expect(d <= EXACT_TOL, f"graph decode after 4,200 tokens: max |Δ logits| {d:.2e} > {EXACT_TOL:g}")
        return f"4,200-token prompt, {DECODE} graph decodes: max |Δ logits| {d:.1e}"


def check_peak_memory(ctx: Ctx) -> str:
    torch.cuda.synchronize(ctx.device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(ctx.device)
    base = torch.cuda.memory_allocated(ctx.device)
    with closed(ctx.load("fast")) as m:
        run(m, ctx.tokens(600 + DECODE, seed=4))
        peak = torch.cuda.max_memory_allocated(ctx.device) - base
        plan = m.runtime.prepared.plan
        expect(peak <= plan.gpu_total, f"peak {peak / 2**20:.1f} MiB above the plan's {plan.gpu_total / 2**20:.1f} MiB")
        return f"peak {peak / 2**20:.1f} MiB of the plan's {plan.gpu_total / 2**20:.1f} MiB (ctx {plan.ctx:,})"
