"""The memory plan: what goes where and how many bytes, from config.json alone (no weights).

Classes (bytes):
  gpu_weights     GPU-side tensors placed on `device` (compute dtype) or `device-int8` (1 B per weight +
                  one fp32 scale per output channel); the router bias stays fp32
  gpu_experts     routed experts kept on the device (INT4 nibbles + bf16 scales, dequantised when used)
  kv_cache        latent KV: (kv_lora_rank + rope) values x layers per token in the cache dtype (fp8: plus
                  two fp32 scales per row), times the context; allocated once per session at this size
  activations     the largest transient set of one forward; models hybrid_k2/model/attention.py (the
                  cache is read in blocks of key positions with an online softmax, so attention's
                  transients depend on the chunk and the block, not on the depth)
  graphs          CUDA-graph pools and static inputs/outputs, one decode graph per batch size
  reserve         on CUDA, what torch's allocator cannot hand out: the CUDA context, cuBLAS workspaces,
                  fragmentation of the caching allocator (GPU_RESERVE)
  stream          device-prefill double buffers (two chunks of experts on the device + pinned twins)
  pinned          host staging for hidden states, top-k ids/weights and results (two sets)
  cpu_experts     routed experts in host RAM (every expert: the hot copies on the device stay here too)
  embed           the embedding table in host RAM (a lookup needs no GPU)
With device = cpu every class lives in host RAM and only the RAM budget applies.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from hybrid_k2.config import ModelArgs
from hybrid_k2.errors import HybridK2Error
from hybrid_k2.info import kv_bytes_per_token, routed_bytes_per_expert
from hybrid_k2.runtime.placement import Placement, ResolvedPlacement, expected, resolve

DTYPE_BYTES = {"fast": 2, "exact": 4}
PREFILL_CHUNKS = (512, 256, 128, 64, 32, 16)
STAGING_SETS = 2
GPU_RESERVE = 3 * 2**29  # 1.5 GiB: CUDA context (~0.5 GiB), cuBLAS workspaces, allocator fragmentation
# Measured on the tiny models (tests/test_runtime_int8.py, docs/placement.md): what int8 costs.
INT8_ACCURACY_NOTE = ("measured cost on the tiny random-weight models: mean KL 0.001-0.003 nats/token, top-1 "
                      "agreement 91-97% (docs/placement.md)")
FP8_ACCURACY_NOTE = "accuracy cost measured in docs/placement.md (fp8 latent cache)"


@dataclass(frozen=True)
class PlanOptions:
    gpu_mem: int | None = None  # bytes; None: not checked
    ram: int | None = None
    ctx: int = 4096
    precision: str = "fast"
    device: str = "cuda"  # "cuda": GPU classes on the GPU; "cpu": everything in host RAM
    graph_batch_sizes: tuple[int, ...] = (1,)
    cuda_graphs: bool = True
    prefill_chunk: int = 512
    stream_chunk: int = 16
    device_prefill: bool = False
    kv_dtype: str = "auto"  # latent cache storage (hybrid_k2/model/latent_cache.py KV_DTYPES)


@dataclass
class Plan:
    gpu_weight_bytes: int
    gpu_int8_linears: int
    gpu_expert_bytes: int
    n_gpu_experts: int
    kv_bytes_per_token: int
    kv_cache_bytes: int
    activation_bytes: int
    graph_bytes: int
    reserve_bytes: int
    stream_bytes: int
    pinned_bytes: int
    cpu_expert_bytes: int
    embed_bytes: int
    embed_on: str
    gpu_total: int
    ram_total: int
    gpu_mem: int | None
    ram: int | None
    ctx: int
    prefill_chunk: int
    max_context: int
    fits: bool
    precision: str
    device: str
    kv_dtype: str = "auto"
    problems: list[str] = field(default_factory=list)
    proposals: list[str] = field(default_factory=list)

    @property
    def gpu_headroom(self) -> int | None:
        return None if self.gpu_mem is None else self.gpu_mem - self.gpu_total

    @property
    def ram_headroom(self) -> int | None:
        return None if self.ram is None else self.ram - self.ram_total

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(gpu_headroom=self.gpu_headroom, ram_headroom=self.ram_headroom)
        return d


# -- the arithmetic, class by class ----------------------------------------------------------------
def device_weight_bytes(a: ModelArgs, rp: ResolvedPlacement, dtype_bytes: int) -> tuple[int, int]:
    """(bytes of every GPU-side tensor, bytes of the embedding table) at the compute dtype."""
    total = embed = 0
    for name, (shape, _) in expected(a).items():
        if ".mlp.experts." in name:
            continue
        n = 1
        for d in shape:
            n *= d
        if name.startswith("model.embed_tokens"):
            embed = n * dtype_bytes
        elif name.endswith("e_score_correction_bias"):
            total += 4 * n  # kept fp32: it decides which experts are picked
        elif name.endswith((".weight_shape", ".weight_scale")):
            continue  # INT4 GPU-side linears (none in K2) are dequantised at load: counted at .weight_packed
        elif name.endswith(".weight_packed"):
            total += (shape[0] * shape[1] * 8) * dtype_bytes
        elif name.endswith(".weight") and name[:-len(".weight")] in rp.int8_linears:
            total += n + 4 * shape[0]
        else:
            total += n * dtype_bytes
    return total, embed


def attention_bytes(a: ModelArgs, *, tokens: int, context: int, dtype_bytes: int, device: str) -> int:
    """Transient bytes of blockwise MLA (hybrid_k2/model/attention.py) for one chunk: the form the model
    picks for `tokens` queries, one block of key positions at a time."""
    from hybrid_k2.model.attention import block_for, choose_form

    T, H = tokens, a.num_attention_heads
    B = min(block_for(device, T), max(context, tokens))
    N, V, R, P = a.qk_nope_head_dim, a.v_head_dim, a.kv_lora_rank, a.qk_rope_head_dim
    rows = 2 * B * (R + P) * 4  # one block of cache rows read as fp32 (and its dequantisation)
    if choose_form(T, max(context, tokens), rank=R, nope=N, rope=P, v_dim=V) == "absorbed":
        # fp32 queries [T H, R + P], q_lat and o_lat in the compute dtype, acc + its update + p @ v [T H, R],
        # scores and probabilities [T H, B]
        return rows + T * H * ((R + P) * 4 + 2 * R * dtype_bytes + 3 * R * 4 + 2 * B * 4)
    # expanded: kv_b_proj output [B, H, N + V] and its fp32 k/v, queries, acc x3 [H, T, V], scores x2
    return rows + B * H * (N + V) * (dtype_bytes + 4) + T * H * ((N + P) * 4 + 3 * V * 4 + 2 * B * 4)


def activation_bytes(a: ModelArgs, *, tokens: int, context: int, dtype_bytes: int, device: str = "cuda") -> int:
    """Peak transient bytes of a forward of `tokens` new tokens over `context` positions (see module doc)."""
    T, D = tokens, a.hidden_size
    attention = attention_bytes(a, tokens=T, context=context, dtype_bytes=dtype_bytes, device=device)
    attention += T * a.num_attention_heads * a.qk_head_dim * dtype_bytes * 2  # q and the roped q_pe
    mlp = 3 * T * max(a.intermediate_size, a.moe_intermediate_size * max(1, a.n_shared_experts)) * dtype_bytes
    logits = T * a.vocab_size * (4 + dtype_bytes)
    residual = 8 * T * D * 4
    return max(attention, mlp, logits) + residual


def staging_bytes(a: ModelArgs, tokens: int) -> int:
    """One set: hidden states in, results out (now + deferred), ids and weights (now + deferred), fp32/int32."""
    D, K = a.hidden_size, a.num_experts_per_tok
    return tokens * D * 4 * 3 + 2 * tokens * K * 8


def _fixed(a, rp, o: PlanOptions):
    dt = DTYPE_BYTES[o.precision]
    weights, embed_dev = device_weight_bytes(a, rp, dt)
    per_expert = routed_bytes_per_expert(a)
    n_hot = rp.n_device_experts
    expert_scratch = 3 * a.hidden_size * a.moe_intermediate_size * dt if (n_hot or o.device_prefill) else 0
    if rp.int8_linears:  # one dequantised block of an int8 linear at a time (runtime/int8.py)
        from hybrid_k2.runtime.int8 import BLOCK_BYTES

        expert_scratch += BLOCK_BYTES
    stream = 2 * o.stream_chunk * per_expert if o.device_prefill else 0
    if o.device == "cpu" and dt != 4:  # MLA keeps a bf16 kv_b_proj in fp32 on the CPU (an int8 one is read as stored)
        bf16_kvb = a.num_hidden_layers - sum(n.endswith(".kv_b_proj") for n in rp.int8_linears)
        weights += bf16_kvb * a.kv_lora_rank * a.num_attention_heads * (a.qk_nope_head_dim + a.v_head_dim) * 4
    return dict(dt=dt, weights=weights + (embed_dev if rp.embed == "device" else 0), hot=n_hot * per_expert,
                expert_scratch=expert_scratch, stream=stream, embed=embed_dev if rp.embed == "cpu" else 0,
                cpu_experts=a.n_moe_layers * a.n_routed_experts * per_expert)


def _context_bytes(a, o: PlanOptions, ctx: int, chunk: int, dt: int) -> tuple[int, int, int]:
    """(kv cache, activations, graph pools) at context ctx."""
    device = "cuda" if o.device == "cuda" else "cpu"
    kv = kv_bytes_per_token(a, dt, o.kv_dtype) * ctx
    act = max(activation_bytes(a, tokens=min(chunk, ctx), context=ctx, dtype_bytes=dt, device=device),
              activation_bytes(a, tokens=1, context=ctx, dtype_bytes=dt, device=device))
    graphs = 0
    if o.device == "cuda" and o.cuda_graphs and o.graph_batch_sizes:
        b = max(o.graph_batch_sizes)  # one pool shared by every captured batch size
        graphs = b * activation_bytes(a, tokens=1, context=ctx, dtype_bytes=dt, device=device) + sum(
            bs * (a.hidden_size * 4 + a.vocab_size * 4) for bs in o.graph_batch_sizes)
    return kv, act, graphs


def make_plan(a: ModelArgs, placement: Placement | ResolvedPlacement | None = None,
              options: PlanOptions = PlanOptions(), *, propose: bool = True) -> Plan:
    if options.precision not in DTYPE_BYTES:
        raise HybridK2Error(f"precision must be fast or exact, got {options.precision!r}")
    if options.ctx < 1:
        raise HybridK2Error("--ctx must be at least 1")
    rp = placement if isinstance(placement, ResolvedPlacement) else resolve(a, placement or Placement())
    o = options
    f = _fixed(a, rp, o)
    dt = f["dt"]
    staging_tokens = max(o.prefill_chunk, *o.graph_batch_sizes) if o.graph_batch_sizes else o.prefill_chunk
    pinned = STAGING_SETS * staging_bytes(a, staging_tokens) + f["stream"]
    reserve = GPU_RESERVE if o.device == "cuda" else 0
    gpu_fixed = f["weights"] + f["hot"] + f["expert_scratch"] + f["stream"] + reserve
    ram_fixed = f["cpu_experts"] + f["embed"] + pinned

    def totals(ctx: int, chunk: int) -> tuple[int, int]:
        kv, act, graphs = _context_bytes(a, o, ctx, chunk, dt)
        gpu = gpu_fixed + kv + act + graphs
        if o.device == "cpu":
            return 0, ram_fixed + gpu
        return gpu, ram_fixed

    def fits(ctx: int, chunk: int) -> bool:
        gpu, ram = totals(ctx, chunk)
        return (o.gpu_mem is None or o.device == "cpu" or gpu <= o.gpu_mem) and (o.ram is None or ram <= o.ram)

    lo, hi = 0, a.max_position_embeddings  # largest context that fits: totals grow with ctx
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid, o.prefill_chunk) else (lo, mid - 1)
    ctx = o.ctx
    kv, act, graphs = _context_bytes(a, o, ctx, o.prefill_chunk, dt)
    gpu_total, ram_total = totals(ctx, o.prefill_chunk)
    plan = Plan(gpu_weight_bytes=f["weights"], gpu_int8_linears=len(rp.int8_linears), gpu_expert_bytes=f["hot"],
                n_gpu_experts=rp.n_device_experts, kv_bytes_per_token=kv_bytes_per_token(a, dt, o.kv_dtype),
                kv_cache_bytes=kv, activation_bytes=act + f["expert_scratch"], graph_bytes=graphs, reserve_bytes=reserve,
                stream_bytes=f["stream"], pinned_bytes=pinned, cpu_expert_bytes=f["cpu_experts"],
                embed_bytes=f["embed"] if rp.embed == "cpu" else 0, embed_on=rp.embed,
                gpu_total=gpu_total, ram_total=ram_total, gpu_mem=o.gpu_mem, ram=o.ram, ctx=ctx,
                prefill_chunk=o.prefill_chunk, max_context=lo, fits=fits(ctx, o.prefill_chunk),
                precision=o.precision, device=o.device, kv_dtype=o.kv_dtype)
    if o.ctx > a.max_position_embeddings:
        plan.problems.append(f"--ctx {o.ctx:,} exceeds the model's maximum context {a.max_position_embeddings:,}")
        plan.fits = False
    if not plan.fits:
        plan.problems.append(_shortfall(plan))
    if propose and not plan.fits:
        plan.proposals.extend(_proposals(a, rp, o))
    return plan


def _shortfall(p: Plan) -> str:
    if p.device == "cuda" and p.gpu_mem is not None and p.gpu_total > p.gpu_mem:
        return (f"GPU needs {gb(p.gpu_total)} at context {p.ctx:,} (weights {gb(p.gpu_weight_bytes)}, KV "
                f"{gb(p.kv_cache_bytes)}, activations {gb(p.activation_bytes)}) but has {gb(p.gpu_mem)}")
    return (f"host RAM needs {gb(p.ram_total)} (routed experts {gb(p.cpu_expert_bytes)}) at context {p.ctx:,} "
            f"but has {gb(p.ram or 0)}")


def _proposals(a: ModelArgs, rp: ResolvedPlacement, o: PlanOptions) -> list[str]:
    """The first change (flags chat, serve and bench accept) that makes the plan fit, cheapest first."""
    int8 = rp.placement.with_overrides(["*=device-int8"])
    candidates = []  # (flags, placement, option changes, what it costs)
    if not rp.int8_linears and o.device == "cuda":
        candidates.append(("--place '*=device-int8'", int8, {}, INT8_ACCURACY_NOTE))
    if o.kv_dtype != "fp8":
        candidates.append(("--kv-cache-dtype fp8", rp.placement, {"kv_dtype": "fp8"}, FP8_ACCURACY_NOTE))
        if not rp.int8_linears and o.device == "cuda":
            candidates.append(("--place '*=device-int8' --kv-cache-dtype fp8", int8, {"kv_dtype": "fp8"},
                               f"{INT8_ACCURACY_NOTE}; {FP8_ACCURACY_NOTE}"))
    base = candidates[-1] if candidates else ("", rp.placement, {}, "")
    for chunk in PREFILL_CHUNKS:
        if chunk < o.prefill_chunk:
            candidates.append(((base[0] + " " if base[0] else "") + f"--prefill-chunk {chunk}", base[1],
                               {**base[2], "prefill_chunk": chunk}, "smaller prompt chunks, slower prefill"))
    for flags, placement, changes, cost in candidates:
        p = make_plan(a, placement, replace(o, **changes), propose=False)
        if p.fits:
            spare = p.gpu_headroom if o.device == "cuda" and p.gpu_headroom is not None else p.ram_headroom
            return [f"{flags}: fits with {gb(spare or 0)} to spare (GPU-side weights {gb(p.gpu_weight_bytes)}, "
                    f"KV cache {gb(p.kv_cache_bytes)}); {cost}"]
    return ["no placement fits: lower --ctx (see the largest context that fits) or add memory"]


def gb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e9:,.2f} GB"


def check_plan(plan: Plan) -> None:
    """Load-time refusal, one line: what does not fit, and what would."""
    if plan.fits:
        return
    hint = f"; try {plan.proposals[0].split(':')[0]}" if plan.proposals and plan.proposals[0].startswith("--") else ""
    raise HybridK2Error(f"cannot load: {plan.problems[0]}{hint} (see hybrid-k2 plan)")
