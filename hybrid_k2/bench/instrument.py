"""Where a step's time goes, measured from outside the model.

Two sources of phases, both into one `PhaseTimer` (hybrid_k2/profiling.py names):
  executor  the hybrid runtime records its own spans (`Runtime.set_timer`): embed, attention, router,
            to_host, shared_experts, wait, to_device, lm_head, ...; its CPU worker records cpu_experts,
            which runs CONCURRENTLY with the device-side phases (its visible cost is `wait`).
  hooks     the plain module forward (no runtime): forward pre/post hooks on the checkpoint-named
            modules. input_layernorm + self_attn + post_attention_layernorm -> attention, mlp.gate ->
            router, mlp.experts -> cpu_experts, mlp.shared_experts -> shared_experts, a dense layer's mlp ->
            dense_mlp, embed_tokens -> embed, model.norm + lm_head -> lm_head. Everything runs in series.
  graph     CUDA-graph decode (the default on CUDA): no module runs in Python during a replay, so the
            step is one `graph` span, and the CPU jobs (host callbacks inside the graph) record
            cpu_experts, which overlaps it. For the per-phase breakdown run with --no-cuda-graphs.
Either way the runner adds `sampling`, and Python overhead is the step time minus the serial phases.

Routed-expert traffic: with the hybrid runtime, counted where the ids are on the host, on every CPU
expert job (CpuExperts.observers: eager and graph modes alike; -1 holes are not read); the experts kept
on the device are counted from the router's output (a hook on `mlp.gate`; hot experts never run under
a graph). Without a runtime, both come from the router hook. The distinct experts a layer's job (or
router call) names are the experts whose weights that step had to read.
"""
from __future__ import annotations

import time

import torch

from hybrid_k2.profiling import PhaseTimer

CONCURRENT = ("cpu_experts",)  # phases that overlap others when the executor runs them on a worker


def phase_of_module(name: str, moe_layers: set[int]) -> str | None:
    """The phase a checkpoint-named module's forward belongs to (None: not a phase's own module)."""
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
    """Keeps the expert ids of every MoE layer while `recording`: the router's output (ids [T, K]) and,
    when `cpu` (the runtime's CpuExperts) is given, each CPU job's host ids ([T, K], -1 holes)."""

    def __init__(self, net, device_experts: dict[int, tuple[int, ...]] | None = None, cpu=None):
        self.recording = False
        self.calls: list[tuple[str, int, torch.Tensor]] = []  # (router | job, layer, ids)
        self.device_experts = {L: set(v) for L, v in (device_experts or {}).items()}
        self.handles = []
        for name, module in net.named_modules():
            if name.endswith(".mlp.gate") and name.startswith("model.layers."):
                self.handles.append(module.register_forward_hook(self._hook(int(name.split(".")[2]))))
        self.cpu = cpu
        if cpu is not None:
            cpu.observers.append(self._job)

    def _hook(self, layer: int):
        def hook(module, args, output):
            if self.recording:
                self.calls.append(("router", layer, output[0]))  # ids [T, K]
        return hook

    def _job(self, layer: int, ids: torch.Tensor) -> None:
        if self.recording:
            self.calls.append(("job", layer, ids.clone()))  # the staging buffer is reused next step

    def take(self) -> list[tuple[str, int, torch.Tensor]]:
        calls, self.calls = self.calls, []
        return calls

    def distinct(self, calls) -> tuple[int, int]:
        """(experts the CPU read, experts the device read), summed over the recorded calls."""
        cpu = dev = 0
        for kind, layer, ids in calls:
            chosen = set(ids.flatten().tolist()) - {-1}
            if kind == "job":
                cpu += len(chosen)
                continue
            on_device = chosen & self.device_experts.get(layer, set())
            dev += len(on_device)
            if self.cpu is None:  # no runtime: the router's choice is what the CPU reads
                cpu += len(chosen) - len(on_device)
        return cpu, dev

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        if self.cpu is not None:
            self.cpu.observers.remove(self._job)


class ModuleHooks:
    """PhaseTimer spans around checkpoint-named modules, without touching the model's code."""

    def __init__(self, net, timer: PhaseTimer, moe_layers: set[int]):
        self.timer, self.handles = timer, []
        sync = torch.cuda.synchronize if net.device.type == "cuda" else None
        for name, module in net.named_modules():
            phase = phase_of_module(name, moe_layers)
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
        self.counter = ExpertCounter(net, device_experts, cpu=runtime.cpu if hybrid else None)
        self.hooks = None
        if hybrid and hasattr(runtime, "set_timer"):
            self.mode = "graph" if getattr(runtime, "graphs", None) is not None else "executor"
            runtime.set_timer(self.timer)
            self._runtime = runtime
        else:
            self.mode = "hooks"
            self.hooks = ModuleHooks(net, self.timer, moe_layers)
            self._runtime = None

    def concurrent_phases(self, seen: dict[str, float]) -> tuple[str, ...]:
        """Phases that overlap the others: cpu_experts when a worker runs it (the executor waits for it)."""
        if self.mode == "graph":  # the host callbacks run while the graph computes the shared expert
            return CONCURRENT
        return CONCURRENT if self.mode == "executor" and "wait" in seen else ()

    def close(self) -> None:
        self.counter.close()
        if self.hooks is not None:
            self.hooks.close()
        if self._runtime is not None:
            self._runtime.set_timer(None)
