"""Mechanism: runs a StepPlan over the model's own modules, op by op, overlapping device and CPU work.

The model's plain forward (KimiK2.forward) stays the reference; this executor calls the same model code
(KimiK2.embed, Block.attention / feed_forward, MoE.route / shared / combine, norm, KimiK2.logits) in the
order the scheduler gives, and replaces `mlp.experts` by CPU jobs (cpu_experts.py) fed through host
staging (transfer.py), plus hot experts / streamed experts on the device (device_experts.py).

Phases recorded on the timer (hybrid_k2/profiling.py names): embed, attention, dense_mlp, router, to_host
(staging copies + submit), shared_experts, device_experts, wait, to_device, lm_head; the worker records
cpu_experts, which overlaps the device-side phases.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hybrid_k2.profiling import NullTimer, PhaseTimer
from hybrid_k2.runtime.cpu_experts import CpuExperts
from hybrid_k2.runtime.device_experts import DeviceExperts, ExpertStreamer
from hybrid_k2.runtime.scheduler import LayerPlan, Scheduler, StepPlan
from hybrid_k2.runtime.transfer import StagingSet, Transfer


def split_slots(ids: torch.Tensor, weights: torch.Tensor, on_device: torch.Tensor | None,
                defer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids [T, K], weights [T, K] -> (cpu now, cpu deferred, device) ids [T, K] each, -1 where not theirs.

    Deferred: the `defer` lowest-weighted slots of each token among those the CPU computes.
    """
    hole = torch.full_like(ids, -1)
    if on_device is None and not defer:  # the default placement: every slot is the CPU's, now
        return ids, hole, hole
    cpu = ~on_device if on_device is not None else torch.ones_like(ids, dtype=torch.bool)
    deferred = torch.zeros_like(cpu)
    if defer:
        key = torch.where(cpu, weights, torch.full_like(weights, float("inf")))
        deferred.scatter_(1, key.topk(defer, dim=1, largest=False).indices, True)
        deferred &= cpu
    now = cpu & ~deferred
    dev = torch.where(on_device, ids, hole) if on_device is not None else hole
    return torch.where(now, ids, hole), torch.where(deferred, ids, hole), dev


@dataclass
class _Step:
    plan: StepPlan
    x: torch.Tensor  # [T, D] residual stream on the device
    cos: torch.Tensor
    sin: torch.Tensor
    moe_index: int = 0
    deferred_job: object = None  # the previous MoE layer's deferred CPU job
    deferred_out: torch.Tensor | None = None  # [T, D] fp32 host staging it writes


@dataclass
class _Layer:
    h: torch.Tensor | None = None  # [T, D] post-attention-normed hidden states
    ids: torch.Tensor | None = None  # [T, K]
    weights: torch.Tensor | None = None  # [T, K] fp32
    dev_ids: torch.Tensor | None = None  # [T, K] hot-expert slots (-1 holes)
    staging: dict = field(default_factory=dict)
    event: object = None
    job: object = None
    deferred_job: object = None
    shared: torch.Tensor | None = None
    dev: torch.Tensor | None = None
    routed: torch.Tensor | None = None  # [T, D] fp32 on the device
    deferred: torch.Tensor | None = None  # [T, D] fp32: the previous layer's deferred experts


class Executor:
    def __init__(self, net, scheduler: Scheduler, cpu: CpuExperts, transfer: Transfer, *,
                 device_experts: DeviceExperts | None = None, streamer: ExpertStreamer | None = None,
                 timer: PhaseTimer | None = None, prefill_chunk: int | None = None):
        self.net, self.scheduler, self.cpu, self.transfer = net, scheduler, cpu, transfer
        self.device_experts, self.streamer = device_experts, streamer
        self.timer = timer or NullTimer()
        self.prefill_chunk = prefill_chunk
        self.layers = net.model.layers
        a = net.args
        self.staging = [StagingSet(transfer, a.hidden_size, a.num_experts_per_tok) for _ in range(2)]

    # -- public: the same calls as KimiK2 -----------------------------------------------------------
    def hidden(self, ids: torch.Tensor, caches, start: int) -> torch.Tensor:
        """ids [T] (host) -> final-normed hidden states [T, D] on the device."""
        T, chunk = ids.shape[0], self.prefill_chunk
        if chunk and T > chunk:
            return torch.cat([self._step(ids[i:i + chunk], caches, start + i) for i in range(0, T, chunk)])
        return self._step(ids, caches, start)

    def lm_head(self, h: torch.Tensor) -> torch.Tensor:
        with self.timer.span("lm_head"):
            return self.net.logits(h)  # [T, V]

    def __call__(self, ids: torch.Tensor, caches, start: int) -> torch.Tensor:
        return self.lm_head(self.hidden(ids, caches, start))

    # -- one step -----------------------------------------------------------------------------------
    def _step(self, ids: torch.Tensor, caches, start: int) -> torch.Tensor:
        net, T = self.net, ids.shape[0]
        plan = self.scheduler.plan(T)
        with self.timer.span("embed"):
            x = net.embed(ids)  # [T, D]
        cos, sin = net.rope.tables(start, T)
        st = _Step(plan, x, cos, sin)
        self._caches, self._start = caches, start
        stream_layers = [lp.layer for lp in plan.layers if lp.experts == "device-stream"]
        self._next_stream = dict(zip(stream_layers, stream_layers[1:] + [None]))
        for lp in plan.layers:
            block, c = self.layers[lp.layer], _Layer()
            for op in lp.ops:
                getattr(self, "_" + op)(lp, block, c, st)
        assert st.deferred_job is None, "the last MoE layer must not defer"
        return net.model.norm(st.x)

    # -- ops (names are the scheduler's) ----------------------------------------------------------------
    def _attention(self, lp: LayerPlan, block, c: _Layer, st: _Step) -> None:
        with self.timer.span("attention"):
            st.x = block.attention(st.x, self._caches[lp.layer], self._start, st.cos, st.sin)

    def _dense_mlp(self, lp, block, c, st) -> None:
        with self.timer.span("dense_mlp"):
            st.x = block.feed_forward(st.x)

    def _router(self, lp, block, c: _Layer, st) -> None:
        with self.timer.span("router"):
            c.h = block.post_attention_layernorm(st.x)  # [T, D]
            c.ids, c.weights = block.mlp.route(c.h)  # [T, K], [T, K]

    def _to_host(self, lp: LayerPlan, block, c: _Layer, st: _Step) -> None:
        with self.timer.span("to_host"):
            hot = self.device_experts.mask(lp.layer, c.ids) if lp.device_experts else None
            now, deferred, c.dev_ids = split_slots(c.ids, c.weights, hot, lp.defer)
            c.staging = s = self.staging[st.moe_index % 2].views(c.h.shape[0])
            st.moe_index += 1
            self.transfer.to_host(c.h, s["x"])  # fp32 for the CPU kernels
            self.transfer.to_host(now, s["ids"][0])
            if lp.defer:  # the deferred row is read only then
                self.transfer.to_host(deferred, s["ids"][1])
            c.event = self.transfer.to_host(c.weights, s["weights"])

    def _submit(self, lp: LayerPlan, block, c: _Layer, st) -> None:
        with self.timer.span("to_host"):
            self.transfer.ready(c.event)
            s = c.staging
            c.job = self.cpu.submit(lp.layer, x=s["x"], ids=s["ids"][0], weights=s["weights"], out=s["out"])
            if lp.defer:
                c.deferred_job = self.cpu.submit(lp.layer, x=s["x"], ids=s["ids"][1], weights=s["weights"],
                                                 out=s["out_deferred"])

    def _shared_experts(self, lp, block, c: _Layer, st) -> None:
        with self.timer.span("shared_experts"):
            c.shared = block.mlp.shared(c.h)  # [T, D] or None

    def _device_experts(self, lp: LayerPlan, block, c: _Layer, st) -> None:
        with self.timer.span("device_experts"):
            c.dev = self.device_experts.forward(lp.layer, c.h, c.dev_ids, c.weights)  # [T, D] fp32 or None

    def _stream_experts(self, lp: LayerPlan, block, c: _Layer, st) -> None:
        with self.timer.span("device_experts"):
            c.routed = self.streamer.forward(lp.layer, c.h, c.ids, c.weights, self._next_stream[lp.layer])

    def _wait(self, lp: LayerPlan, block, c: _Layer, st: _Step) -> None:
        with self.timer.span("wait"):
            c.job.wait()
            if lp.add_deferred:
                st.deferred_job.wait()

    def _to_device(self, lp: LayerPlan, block, c: _Layer, st: _Step) -> None:
        with self.timer.span("to_device"):
            c.routed = self.transfer.to_device(c.staging["out"])  # [T, D] fp32
            if lp.add_deferred:
                c.deferred = self.transfer.to_device(st.deferred_out)
                st.deferred_job = st.deferred_out = None

    def _combine(self, lp: LayerPlan, block, c: _Layer, st: _Step) -> None:
        st.x = st.x + block.mlp.combine([c.routed, c.dev, c.deferred], c.shared, st.x.dtype)
        if lp.defer:
            st.deferred_job, st.deferred_out = c.deferred_job, c.staging["out_deferred"]
