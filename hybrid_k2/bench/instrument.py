"""Where a step's time goes, measured from outside the model.

Two sources of phases, both into one `PhaseTimer` (hybrid_k2/profiling.py names):
  executor  the hybrid runtime records its own spans (`Runtime.set_timer`): embed, attention, router,
            to_host, shared_experts, wait, to_device, lm_head, ...; its CPU worker records cpu_experts,
            which runs CONCURRENTLY with the device-side phases (its visible cost is `wait`).
  hooks     the plain module forward (no runtime): forward pre/post hooks on the checkpoint-named
            modules. input_layernorm + self_attn + post_attention_layernorm -> attention, mlp.gate ->
            router, mlp.experts -> cpu_experts, mlp.shared_experts -> shared_experts, a dense layer's mlp ->
            dense_mlp, embed_tokens -> embed, model.norm + lm_head -> lm_head. Everything runs in series.
Either way the runner adds `sampling`, and Python overhead is the step time minus the serial phases.

Routed-expert traffic is counted from the router's output (a hook on every `mlp.gate`): the distinct
experts a layer selected in a step are the experts whose weights that step had to read.
"""
from __future__ import annotations

import time

import torch

from hybrid_k2.profiling import PhaseTimer

CONCURRENT = ("cpu_experts",)  # phases that overlap others when the executor runs them on a worker


def _hook_phase(name: str, module, moe_layers: set[int]) -> str | None:
    parts = name.split(".")
    if name == "model.embed_tokens":
        return "embed"
    if name in ("model.norm", "lm_head"):
        return "lm_head"
    if len(parts) < 4 or parts[:2] != ["model", "layers"]:
        return None
    layer, rest = int(parts[2]), ".".join(parts[3:])
    if rest in ("input_layernorm", "self_attn", "post_attention_layernorm"):
        return "attention"
    if layer in moe_layers:
        return {"mlp.gate": "router", "mlp.experts": "cpu_experts", "mlp.shared_experts": "shared_experts"}.get(rest)
    return "dense_mlp" if rest == "mlp" else None


class ExpertCounter:
    """Keeps the router's expert ids of every MoE layer while `recording` (cheap: references only)."""

    def __init__(self, net, device_experts: dict[int, tuple[int, ...]] | None = None):
        self.recording = False
        self.calls: list[tuple[int, torch.Tensor]] = []
        self.device_experts = {L: set(v) for L, v in (device_experts or {}).items()}
        self.handles = []
        for name, module in net.named_modules():
            if name.endswith(".mlp.gate") and name.startswith("model.layers."):
                self.handles.append(module.register_forward_hook(self._hook(int(name.split(".")[2]))))

    def _hook(self, layer: int):
        def hook(module, args, output):
            if self.recording:
                self.calls.append((layer, output[0]))  # ids [T, K]
        return hook

    def take(self) -> list[tuple[int, torch.Tensor]]:
        calls, self.calls = self.calls, []
        return calls

    def distinct(self, calls) -> tuple[int, int]:
        """(experts the CPU read, experts the device read), summed over the recorded layer calls."""
        cpu = dev = 0
        for layer, ids in calls:
            chosen = set(ids.flatten().tolist())
            on_device = chosen & self.device_experts.get(layer, set())
            cpu += len(chosen) - len(on_device)
            dev += len(on_device)
        return cpu, dev

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class ModuleHooks:
    """PhaseTimer spans around checkpoint-named modules, without touching the model's code."""

    def __init__(self, net, timer: PhaseTimer, moe_layers: set[int]):
        self.timer, self.handles = timer, []
        sync = torch.cuda.synchronize if net.device.type == "cuda" else None
        for name, module in net.named_modules():
            phase = _hook_phase(name, module, moe_layers)
            if phase is None:
                continue
            starts: list[float] = []

            def pre(module, args, starts=starts):
                if sync:
                    sync()
                starts.append(time.perf_counter())

            def post(module, args, output, starts=starts, phase=phase):
                if sync:
                    sync()
                self.timer.add(phase, starts.pop(), time.perf_counter())

            self.handles.append(module.register_forward_pre_hook(pre))
            self.handles.append(module.register_forward_hook(post))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class Instrument:
    """Attaches phase timing and expert counting to a loaded Model; `mode` says which source is used."""

    def __init__(self, model):
        self.timer = PhaseTimer(sync=torch.cuda.synchronize if model.device.type == "cuda" else None)
        runtime = getattr(model, "runtime", None)
        net = model.net
        moe_layers = {L for L in range(model.args.num_hidden_layers) if model.args.is_moe_layer(L)}
        hybrid = runtime is not None and getattr(getattr(runtime, "config", None), "executor", "") == "hybrid"
        device_experts = (runtime.prepared.placement.device_experts
                          if runtime is not None and hasattr(runtime, "prepared") else {})
        self.counter = ExpertCounter(net, device_experts)
        self.hooks = None
        if hybrid and hasattr(runtime, "set_timer"):
            self.mode = "executor"
            runtime.set_timer(self.timer)
            self._runtime = runtime
        else:
            self.mode = "hooks"
            self.hooks = ModuleHooks(net, self.timer, moe_layers)
            self._runtime = None

    def concurrent_phases(self, seen: dict[str, float]) -> tuple[str, ...]:
        """Phases that overlap the others: cpu_experts when a worker runs it (the executor waits for it)."""
        return CONCURRENT if self.mode == "executor" and "wait" in seen else ()

    def close(self) -> None:
        self.counter.close()
        if self.hooks is not None:
            self.hooks.close()
        if self._runtime is not None:
            self._runtime.set_timer(None)
