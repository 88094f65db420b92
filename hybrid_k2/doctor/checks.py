"""The doctor's check list: each check loads a tiny model on a device and compares with the CPU reference.

A check is a function check(ctx) -> detail string; it raises CheckFailed (or anything) to fail. The same
functions run on `cpu` and, when there is one, on `cuda` (Ctx.device); the GPU-only checks
(hybrid_k2/doctor/cuda_checks.py) are listed as skipped on a machine without a GPU. The reference is the
plain module forward with the pure-torch experts, exact (fp32), on the CPU (RuntimeConfig.reference()),
computed once per prompt (hybrid_k2/doctor/common.py).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from hybrid_k2.doctor.common import (CTX, DECODE, DEFER_1, DELAY_S, EXACT_TOL, FAST, INT8, PROMPT, CheckFailed,
                                     Ctx, bounded_against_reference, closed, exact_against_reference, expect,
                                     max_diff, sync)
from hybrid_k2.doctor.cuda_checks import (check_graph_decode, check_graph_long_prompt, check_peak_memory,
                                          check_pinned, check_placement)
from hybrid_k2.runtime import Placement, RuntimeConfig


# -- checks on every device ------------------------------------------------------------------------------
def check_kernels(ctx: Ctx) -> str:
    from hybrid_k2.kernels import PackedExperts, moe_forward, moe_reference, resolve_isa
    from hybrid_k2.quant.int4 import pack_int4, quantize_int4

    g = torch.Generator().manual_seed(1)
    E, D, I, T, K = 8, 256, 128, 5, 4
    parts = {}
    for name, (rows, cols) in (("gate", (I, D)), ("up", (I, D)), ("down", (D, I))):
        q, s = zip(*(quantize_int4(torch.randn(rows, cols, generator=g) * 0.05) for _ in range(E)))
        parts[f"{name}_packed"] = torch.stack([pack_int4(x) for x in q])
        parts[f"{name}_scale"] = torch.stack(s)
    experts = PackedExperts.from_stacked(**parts)
    x = torch.randn(T, D, generator=g)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]).to(torch.int32)
    w = torch.rand(T, K, generator=g)
    out = torch.empty(T, D)
    moe_forward(x=x, expert_ids=ids, weights=w, experts=experts, precision="exact", threads=1, out=out)
    ref = moe_reference(x=x, expert_ids=ids, weights=w, experts=experts)
    rel = ((out - ref).norm() / ref.norm()).item()
    expect(rel <= 1e-4, f"kernel path {resolve_isa()}: relative error {rel:.1e} against the reference")
    return f"ISA path {resolve_isa()}: relative error {rel:.1e} against the pure-torch reference"


def check_hybrid(ctx: Ctx) -> str:
    with closed(ctx.load(cuda_graphs=False)) as m:
        return exact_against_reference(ctx, m, "hybrid executor")


def check_overlap(ctx: Ctx) -> str:
    """Eager overlap of the CPU job with the shared expert, made visible with DELAY_S on both sides."""
    with closed(ctx.load(cuda_graphs=False)) as m:
        rt = m.runtime
        sleep_device = device_sleeper(ctx.device)
        rt.cpu.observers.append(lambda layer, ids: time.sleep(DELAY_S))
        hooks = [b.mlp.shared_experts.register_forward_pre_hook(lambda mod, args: sleep_device(DELAY_S))
                 for b in m.net.model.layers if getattr(b.mlp, "shared_experts", None) is not None]
        n = len(hooks)
        s = m.new_session(64)
        s.prefill(ctx.tokens(4))

        def step_time(overlap: bool) -> float:
            rt.set_policy(overlap=overlap)
            best = float("inf")
            for t in (5, 6):
                sync(ctx.device)
                t0 = time.perf_counter()
                s.decode(t)
                sync(ctx.device)
                best = min(best, time.perf_counter() - t0)
                s.truncate(len(s) - 1)
            return best

        serial, overlapped = step_time(False), step_time(True)
        for h in hooks:
            h.remove()
        saved = serial - overlapped
        expect(n > 0, "the model has no shared expert to overlap with")
        expect(saved >= 0.5 * n * DELAY_S,
               f"overlap saved {saved * 1e3:.0f} ms per step, expected >= {0.5 * n * DELAY_S * 1e3:.0f} ms "
               f"({n} MoE layers x {DELAY_S * 1e3:.0f} ms on each side)")
        return (f"step {serial * 1e3:.0f} ms serial -> {overlapped * 1e3:.0f} ms overlapped "
                f"({n} MoE layers, {DELAY_S * 1e3:.0f} ms delay on each side)")


def device_sleeper(device: torch.device) -> Callable[[float], None]:
    """sleep(seconds) on the device's stream without holding the host (CUDA), or on the host (CPU)."""
    if device.type != "cuda":
        return time.sleep
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    cycles = 10**7
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    per_s = cycles / (start.elapsed_time(end) / 1e3)
    return lambda seconds: torch.cuda._sleep(int(seconds * per_s))


def check_deferral(ctx: Ctx) -> str:
    with closed(ctx.load(cuda_graphs=False, defer_experts=1)) as m:
        return bounded_against_reference(ctx, m, "deferral 1", DEFER_1)


def check_int8(ctx: Ctx) -> str:
    with closed(ctx.load(cuda_graphs=False, placement=Placement().with_overrides(["*=device-int8"]))) as m:
        return bounded_against_reference(ctx, m, "int8 linears", INT8)


def counts_file(ctx: Ctx) -> Path:
    """A profile-experts file making experts 0.. the hottest of every MoE layer."""
    a = ctx.reference.args
    path = ctx.work / "counts.json"
    counts = {str(L): [a.n_routed_experts - e for e in range(a.n_routed_experts)]
              for L in range(a.num_hidden_layers) if a.is_moe_layer(L)}
    path.write_text(json.dumps({"counts": counts, "tokens": 1, "prompts": 1}))
    return path


def check_hot_experts(ctx: Ctx) -> str:
    n = max(1, ctx.reference.args.n_routed_experts // 2)
    with closed(ctx.load(gpu_experts=n, expert_counts=str(counts_file(ctx)))) as m:
        expect(m.runtime.device_experts is not None and m.runtime.graphs is None, "hot experts not attached")
        detail = exact_against_reference(ctx, m, f"{n} hot experts per layer")
        used = {t.device.type for s in m.runtime.device_experts.stores.values() for t in s.expert_tensors(0).values()}
        expect(used == {ctx.device.type}, f"hot experts live on {used}, not {ctx.device.type}")
        return f"{n} per layer on {ctx.device.type}: {detail}"


def check_streamed_prefill(ctx: Ctx) -> str:
    """Every prompt streams its experts (threshold 0) in chunks of 5 (a short last chunk of E % 5), in
    prefill chunks of 16 tokens (a short last one), two prompts in a row."""
    E = ctx.reference.args.n_routed_experts
    with closed(ctx.load(cuda_graphs=False, device_prefill_threshold=0, stream_chunk=5, prefill_chunk=16)) as m:
        details = []
        for seed in (1, 2):
            ids = ctx.tokens(PROMPT + DECODE, seed=seed)
            details.append(exact_against_reference(ctx, m, f"streamed prefill, prompt {seed}", ids))
        return f"E={E} in chunks of 5, prefill chunks of 16, two prompts: " + details[-1]


def check_fast(ctx: Ctx) -> str:
    with closed(ctx.load("fast", cuda_graphs=False)) as m:
        return bounded_against_reference(ctx, m, "precision fast (bf16)", FAST)


def check_sampling(ctx: Ctx) -> str:
    from hybrid_k2.chat.sampling import SamplingParams, make_generator, sample

    with closed(ctx.load(cuda_graphs=False)) as m:
        s = m.new_session(64)
        logits = s.prefill(ctx.tokens(8))[-1]  # [V] on the device
        expect(logits.device.type == ctx.device.type, f"logits on {logits.device}, not {ctx.device}")
        V = logits.shape[0]
        allowed = torch.zeros(V, dtype=torch.bool)
        allowed[: V // 2] = True  # a host mask, as grammars make
        params = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, min_p=0.01, seed=0)
        drawn = []
        for seed in range(8):
            on_device = sample(logits, params, make_generator(seed), allowed)
            on_host = sample(logits.cpu(), params, make_generator(seed), allowed)
            expect(on_device == on_host, f"seed {seed}: token {on_device} from device logits, {on_host} from host")
            expect(on_device < V // 2, f"seed {seed}: token {on_device} outside the allowed mask")
            drawn.append(on_device)
        return f"8 seeded draws from {ctx.device.type} logits with a host mask equal the host draws: {drawn}"


def check_server(ctx: Ctx) -> str:
    """One /v1/chat/completions request through a real server on loopback, logits on the device."""
    import urllib.error
    import urllib.request

    import uvicorn

    from hybrid_k2.serve.app import create_app
    from hybrid_k2.serve.engine import ServeConfig, load_engine

    engine = load_engine(ctx.path, ServeConfig(), device=str(ctx.device), precision="fast",
                         runtime=RuntimeConfig(ctx=CTX))
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started:
            expect(thread.is_alive() and time.time() < deadline, "the server did not start")
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        body = {"model": engine.config.served_model_name, "max_tokens": 6, "temperature": 0.7, "seed": 1,
                "messages": [{"role": "user", "content": "Say hi."}]}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as r:  # the standard library: no extra dependency
                usage = json.loads(r.read())["usage"]
        except urllib.error.HTTPError as e:
            raise CheckFailed(f"HTTP {e.code}: {e.read()[:200]!r}") from None
        expect(usage["completion_tokens"] >= 1, f"no token generated: {usage}")
        return f"HTTP 200, {usage['completion_tokens']} tokens sampled from {ctx.device.type} logits"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        if engine.model.runtime is not None:
            engine.model.runtime.close()


def check_static_body(ctx: Ctx) -> str:
    """The CUDA graph's body run eagerly (CPU): same logits as decode, and a NaN tail stays masked out
    when the cache starts zero-filled."""
    from hybrid_k2.runtime.cuda_graph import StaticDecode, ensure_allocated

    with closed(ctx.load()) as m:
        ids = ctx.tokens(PROMPT + DECODE)
        ref = ctx.ref(ids)
        s = m.new_session(2100)  # more than one attention block of rows
        for c in s.caches:
            c.zero_fill = True
        s.prefill(ids[:PROMPT])
        ensure_allocated(s.caches)
        static = StaticDecode(m.runtime, s.caches)
        worst = 0.0
        with torch.inference_mode():
            for i, t in enumerate(ids[PROMPT:]):
                start = len(s)
                static.load_inputs(torch.tensor([t]), start)
                static.body()
                expect(static.error is None, f"CPU job failed: {static.error!r}")
                for c in s.caches:
                    c.length = start + 1
                s.tokens.append(t)
                worst = max(worst, max_diff(static.logits[0].float().cpu(), ref[PROMPT + i]))
        expect(worst <= EXACT_TOL, f"static decode body: max |Δ logits| {worst:.2e} > {EXACT_TOL:g}")
        return f"{DECODE} static steps over a 2,100-row zero-filled cache: max |Δ logits| {worst:.1e}"


def check_job_error(ctx: Ctx) -> str:
    """An exception inside the CPU job (on CUDA: a host callback of the graph; on CPU: the eager
    executor's worker) reaches the caller; the next decode works."""
    ids = ctx.tokens(PROMPT + DECODE)
    with closed(ctx.load()) as m:
        expect((m.runtime.graphs is not None) == (ctx.device.type == "cuda"), "graphs on CUDA only, by default")
        s = m.new_session(CTX)
        s.prefill(ids[:PROMPT])
        s.decode(ids[PROMPT])  # captures the graph
        armed = [True]

        def boom(layer, _ids):
            if armed[0]:
                armed[0] = False
                raise RuntimeError("doctor: injected failure in the CPU job")
        m.runtime.cpu.observers.append(boom)
        try:
            s.decode(ids[PROMPT + 1])
            raise CheckFailed("the injected CPU-job failure did not reach the caller")
        except RuntimeError as e:
            expect("injected" in str(e), f"another error reached the caller: {e!r}")
        got = s.decode(ids[PROMPT + 1]).float().cpu()
        d = max_diff(got, ctx.ref(ids)[PROMPT + 1])
        expect(d <= EXACT_TOL, f"the decode after the failure: max |Δ logits| {d:.2e}")
        return f"the error was raised by decode; the next decode matches (max |Δ| {d:.1e})"


@dataclass(frozen=True)
class Check:
    name: str
    fn: Callable[[Ctx], str]
    where: str  # "any": on cpu and on cuda; "cpu": on the CPU only; "cuda": needs a GPU


CHECKS = (
    Check("kernels", check_kernels, "cpu"),
    Check("hybrid executor = reference", check_hybrid, "any"),
    Check("overlap (CPU job || shared expert)", check_overlap, "any"),
    Check("deferral", check_deferral, "any"),
    Check("int8 linears", check_int8, "any"),
    Check("hot experts", check_hot_experts, "any"),
    Check("streamed device prefill", check_streamed_prefill, "any"),
    Check("precision fast (bf16)", check_fast, "any"),
    Check("sampling with device logits", check_sampling, "any"),
    Check("server request", check_server, "any"),
    Check("graph body, eager", check_static_body, "cpu"),
    Check("placement", check_placement, "cuda"),
    Check("pinned staging", check_pinned, "cuda"),
    Check("CUDA-graph decode = reference", check_graph_decode, "cuda"),
    Check("CUDA graph after a 4,200-token prompt over NaN memory", check_graph_long_prompt, "cuda"),
    Check("CPU-job exception reaches the caller (graph on CUDA)", check_job_error, "any"),
    Check("peak GPU memory <= plan", check_peak_memory, "cuda"),
)
