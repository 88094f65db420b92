"""Decode ceilings: the bytes a token must read divided by the bandwidth that reads them.

At batch 1 decode is bandwidth-bound. Per token the CPU reads the routed experts the router picked
(nibbles + bf16 scales of the distinct experts, every MoE layer) and the device reads its weights
(attention, dense MLP, router, shared experts, lm_head) plus the latent KV cache up to the position.

  upper bound (tok/s) = 1 / (cpu bytes / host bandwidth + device bytes / device bandwidth)

in series; with a GPU the two sides can overlap, bounded by 1 / max(cpu time, device time). With
device = cpu both sides share the same memory bus, so the series figure is the only ceiling.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

from hybrid_k2.config import ModelArgs
from hybrid_k2.info import decode_expert_bytes_per_token, kv_bytes_per_token, sizes


@dataclass(frozen=True)
class Ceiling:
    cpu_bytes: float  # per token, routed experts read by the CPU
    device_bytes: float  # per token, weights + KV read by the device
    cpu_gbps: float
    device_gbps: float
    device_reads_host_memory: bool  # device = cpu: both sides compete for the same bandwidth

    @property
    def cpu_ms(self) -> float:
        return self.cpu_bytes / (self.cpu_gbps * 1e9) * 1e3

    @property
    def device_ms(self) -> float:
        return self.device_bytes / (self.device_gbps * 1e9) * 1e3

    @property
    def serial_tok_s(self) -> float:
        return 1e3 / (self.cpu_ms + self.device_ms)

    @property
    def overlap_tok_s(self) -> float:
        return self.serial_tok_s if self.device_reads_host_memory else 1e3 / max(self.cpu_ms, self.device_ms)

    def to_dict(self) -> dict:
        return {**asdict(self), "cpu_ms": self.cpu_ms, "device_ms": self.device_ms,
                "serial_tok_s": self.serial_tok_s, "overlap_tok_s": self.overlap_tok_s}


def device_weight_bytes(net) -> int:
    """Bytes of every weight a decode step reads on the device: all parameters and buffers but the
    embedding table (one row is looked up) and the routed experts (they are not module parameters)."""
    total = 0
    for name, t in list(net.named_parameters()) + list(net.named_buffers()):
        if not name.startswith("model.embed_tokens") and t.device.type != "meta":
            total += t.numel() * t.element_size()
    return total


def phase_weight_bytes(net) -> dict[str, int]:
    """Weight bytes each device-side phase reads per decode step, as loaded (int8 linears at 1 B + their
    scales): the modules the phase names cover (bench/instrument.py's mapping), routed experts excluded."""
    from hybrid_k2.bench.instrument import phase_of_module

    moe = {L for L in range(net.args.num_hidden_layers) if net.args.is_moe_layer(L)}
    out: dict[str, int] = {}
    for name, module in net.named_modules():
        phase = phase_of_module(name, moe)
        if phase is None or phase in ("cpu_experts", "embed"):
            continue
        n = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]
                if t.device.type != "meta")
        out[phase] = out.get(phase, 0) + n
    return out


def kv_read_bytes(args: ModelArgs, context: float, dtype_bytes: int, kv_dtype: str = "auto") -> float:
    """Latent cache bytes one decode step reads at `context` positions (absorbed MLA reads them all)."""
    return kv_bytes_per_token(args, dtype_bytes, kv_dtype) * context


@lru_cache(maxsize=1)
def k2_thinking_args() -> ModelArgs:
    """Kimi-K2-Thinking's architecture: the K2 dimensions make-tiny --k2-shape writes, at full size
    (61 layers, 384 experts, top-8, vocab 163,840)."""
    from hybrid_k2.tiny import TinySpec, build_config

    spec = TinySpec(k2_shape=True, layers=61, experts=384, top_k=8, n_group=1, topk_group=1)
    return ModelArgs.from_hf_config(build_config(spec, vocab_size=163840, n_base=163584))


def target_args(model: str) -> tuple[str, ModelArgs]:
    if model.lower() in ("kimi-k2-thinking", "k2", "kimi-k2"):
        return "Kimi-K2-Thinking", k2_thinking_args()
    return model, ModelArgs.from_hf_config(model)


def projection(target, *, context: float, fraction_of_ceiling: float | None,
               expert_efficiency: float | None) -> dict:
    """The ceiling of `target` (options.Target) for its model, and what this run's efficiencies would give.

    fraction_of_ceiling: this run's tg / this machine's ceiling; expert_efficiency: the routed-expert
    phase's GB/s / the probe's read bandwidth, both measured here in the same run."""
    name, a = target_args(target.model)
    gpu = target.gpu_bw_gbps is not None
    device_bytes = sizes(a).device_bytes + kv_read_bytes(a, context, 2)
    c = Ceiling(cpu_bytes=decode_expert_bytes_per_token(a), device_bytes=device_bytes,
                cpu_gbps=target.bandwidth_gbps, device_gbps=target.gpu_bw_gbps if gpu else target.bandwidth_gbps,
                device_reads_host_memory=not gpu)
    assumptions = [
        f"model: {name} ({a.num_hidden_layers} layers, {a.n_routed_experts} experts, top-{a.num_experts_per_tok}), "
        f"batch 1 decode at context {context:,.0f}",
        f"routed experts in host RAM, INT4 + bf16 scales: {c.cpu_bytes / 1e9:.2f} GB per token read at "
        f"{target.bandwidth_gbps:g} GB/s",
        (f"device side in bf16 on the GPU: {c.device_bytes / 1e9:.2f} GB per token (weights + latent KV) read "
         f"at {target.gpu_bw_gbps:g} GB/s" if gpu else
         f"no GPU: the device side ({c.device_bytes / 1e9:.2f} GB per token in bf16) is read from host RAM too"),
        "the embedding table is a lookup (not counted); no expert is cached on the GPU; no speculative decoding",
    ]
    out = {"name": target.name, "model": name, "bandwidth_gbps": target.bandwidth_gbps,
           "gpu_bw_gbps": target.gpu_bw_gbps, "context": context, "ceiling": c.to_dict(),
           "assumptions": assumptions, "at_this_run_fraction_tok_s": None, "at_this_run_expert_efficiency_tok_s": None}
    if fraction_of_ceiling is not None:
        out["at_this_run_fraction_tok_s"] = fraction_of_ceiling * c.serial_tok_s
        assumptions.append(f"'at this run's fraction': the serial ceiling x {fraction_of_ceiling:.1%}, the share of "
                           f"this machine's ceiling this run reached")
    if expert_efficiency is not None and expert_efficiency > 0:
        ms = c.cpu_ms / expert_efficiency + c.device_ms
        out["at_this_run_expert_efficiency_tok_s"] = 1e3 / ms
        assumptions.append(f"'at this run's expert efficiency': routed experts at {expert_efficiency:.1%} of the "
                           f"bandwidth (as measured here), the device side at its full bandwidth, no overlap")
    return out
