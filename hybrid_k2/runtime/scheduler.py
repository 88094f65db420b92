"""Policy: what runs where, and in which order, for one forward step. Pure Python, no tensors.

The executor (executor.py) interprets a StepPlan op by op; this file alone decides the order, so the
order can be tested without a GPU and without a model. Per MoE layer with overlap (the default):

    attention      MLA on the device (the residual is added)
    router         post-attention norm + router on the device: top-k ids [T, K] and weights [T, K]
    to_host        hidden states, ids and weights -> (pinned) host staging
    submit         the CPU job of this layer's routed experts (and, with deferral, the deferred job after it)
    shared_experts the shared expert on the device, while the CPU job runs
    device_experts hot experts kept on the device (only when the layer has some)
    wait           block until this layer's CPU job is done (and the previous layer's deferred job)
    to_device      the [T, D] fp32 result back to the device
    combine        routed (+ deferred from the previous layer) -> dtype, + shared, + residual

Without overlap, `wait` and `to_device` come right after `submit` (the serial order, for the bench).
A layer whose prompt is longer than the device-prefill threshold streams its experts to the device
instead (`stream_experts`), and the CPU does nothing for it.
Deferral D: the D lowest-weighted CPU experts of every token go to a second CPU job whose result is
added at the next MoE layer's combine, so the device never waits for them; the last MoE layer defers
nothing (its result is needed for the logits).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SchedulerConfig:
    num_layers: int
    first_moe_layer: int
    top_k: int
    overlap: bool = True
    defer_experts: int = 0
    device_prefill_threshold: int | None = None
    device_experts: dict[int, tuple[int, ...]] = field(default_factory=dict)  # layer -> hot experts

    def __post_init__(self):
        if not 0 <= self.defer_experts < max(self.top_k, 1):
            raise ValueError(f"defer_experts must be in 0..{self.top_k - 1} (top-k is {self.top_k})")


@dataclass(frozen=True)
class LayerPlan:
    layer: int
    moe: bool
    experts: str  # "none" (dense layer), "cpu", "device-stream"
    defer: int  # slots per token deferred to the next MoE layer
    add_deferred: bool  # the previous MoE layer deferred slots: add them at this combine
    device_experts: tuple[int, ...]
    ops: tuple[str, ...]


@dataclass(frozen=True)
class StepPlan:
    tokens: int
    phase: str  # "prefill" | "decode"
    layers: tuple[LayerPlan, ...]

    def ops(self) -> list[tuple[int, str]]:
        return [(lp.layer, op) for lp in self.layers for op in lp.ops]


class Scheduler:
    def __init__(self, config: SchedulerConfig):
        self.config = config
        self._cache: dict[tuple[int, str], StepPlan] = {}

    def plan(self, tokens: int) -> StepPlan:
        phase = "decode" if tokens == 1 else "prefill"
        stream = (phase == "prefill" and self.config.device_prefill_threshold is not None
                  and tokens > self.config.device_prefill_threshold)
        key = (tokens if stream or phase == "decode" else -1, phase)
        if key not in self._cache:
            self._cache[key] = StepPlan(tokens, phase, tuple(self._layers(stream)))
        plan = self._cache[key]
        return plan if plan.tokens == tokens else StepPlan(tokens, phase, plan.layers)

    def _layers(self, stream: bool) -> list[LayerPlan]:
        c = self.config
        moe_layers = [L for L in range(c.num_layers) if L >= c.first_moe_layer]
        out, deferred_pending = [], False
        for L in range(c.num_layers):
            if L < c.first_moe_layer:
                out.append(LayerPlan(L, False, "none", 0, False, (), ("attention", "dense_mlp")))
                continue
            if stream:
                out.append(LayerPlan(L, True, "device-stream", 0, False, (),
                                     ("attention", "router", "shared_experts", "stream_experts", "combine")))
                continue
            hot = tuple(c.device_experts.get(L, ()))
            defer = c.defer_experts if L != moe_layers[-1] else 0
            ops = ["attention", "router", "to_host", "submit"]
            device_side = ["shared_experts"] + (["device_experts"] if hot else [])
            if c.overlap:
                ops += device_side + ["wait", "to_device"]
            else:
                ops += ["wait", "to_device"] + device_side
            ops.append("combine")
            out.append(LayerPlan(L, True, "cpu", defer, deferred_pending, hot, tuple(ops)))
            deferred_pending = defer > 0
        return out
