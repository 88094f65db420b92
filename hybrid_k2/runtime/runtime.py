"""Runtime: what hybrid_k2.load attaches to a Model, in two steps around the weight loading.

  prepared = prepare(args, config, device=..., precision=...)   # before any weight is read:
        resolves the placement, picks the experts backend, checks the memory plan (refuses in one line)
  runtime = prepared.attach(net, stores)                         # after loading:
        hot experts to the device, CPU job queue, scheduler + executor

Session calls runtime.hidden / runtime(...) / runtime.lm_head exactly as it would call KimiK2.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from hybrid_k2.config import ModelArgs
from hybrid_k2.errors import HybridK2Error
from hybrid_k2.profiling import NullTimer, PhaseTimer
from hybrid_k2.runtime.config import PREFILL_CHUNK, RuntimeConfig
from hybrid_k2.runtime.cpu_experts import CpuExperts, choose_backend, make_store_factory
from hybrid_k2.runtime.device_experts import DeviceExperts, ExpertStreamer
from hybrid_k2.runtime.executor import Executor
from hybrid_k2.runtime.machine import available_gpu_memory, available_ram, detect
from hybrid_k2.runtime.placement import ResolvedPlacement, resolve
from hybrid_k2.runtime.planner import Plan, PlanOptions, check_plan, make_plan
from hybrid_k2.runtime.scheduler import Scheduler, SchedulerConfig
from hybrid_k2.runtime.transfer import Transfer

MIN_DEFAULT_CTX = 4096  # without --ctx, refuse to load rather than plan a context smaller than this


@dataclass
class Prepared:
    args: ModelArgs
    config: RuntimeConfig
    placement: ResolvedPlacement
    backend: str
    plan: Plan
    device: torch.device
    precision: str

    def store_factory(self):
        return make_store_factory(self.backend)

    def attach(self, net, stores: dict[int, object]) -> "Runtime":
        return Runtime(net, stores, self)


def prepare(args: ModelArgs, config: RuntimeConfig | None, *, device: torch.device, precision: str) -> Prepared:
    config = config or RuntimeConfig()
    device = torch.device(device)
    if config.defer_experts >= args.num_experts_per_tok:
        raise HybridK2Error(f"--defer-experts {config.defer_experts} must be below the model's top-k "
                            f"({args.num_experts_per_tok})")
    backend = choose_backend(config.experts_backend)
    hot = config.hot_experts({L: args.n_routed_experts for L in range(args.num_hidden_layers) if args.is_moe_layer(L)})
    placement = resolve(args, device_placement(config, device, precision, backend), hot)
    gpu_mem = config.gpu_mem if config.gpu_mem is not None else available_gpu_memory(device)
    ram = config.ram if config.ram is not None else available_ram()
    if config.ctx is not None and config.ctx > args.max_position_embeddings:
        raise HybridK2Error(f"--ctx {config.ctx:,} exceeds the model's maximum context "
                            f"{args.max_position_embeddings:,}")
    options = PlanOptions(gpu_mem=gpu_mem or None, ram=ram or None,
                          ctx=config.ctx or args.max_position_embeddings, precision=precision,
                          device="cuda" if device.type == "cuda" else "cpu",
                          cuda_graphs=config.cuda_graphs and device.type == "cuda",
                          prefill_chunk=config.prefill_chunk or PREFILL_CHUNK,
                          stream_chunk=config.stream_chunk,
                          device_prefill=config.device_prefill_threshold is not None,
                          kv_dtype=config.kv_cache_dtype)
    plan = make_plan(args, placement, options)
    if config.ctx is None and not plan.fits and plan.max_context >= min(MIN_DEFAULT_CTX, args.max_position_embeddings):
        # POLICY: without --ctx a session gets the largest context the memory holds (as vLLM sizes its cache)
        plan = make_plan(args, placement, replace(options, ctx=plan.max_context))
    check_plan(plan)
    return Prepared(args, config, placement, backend, plan, device, precision)


def cpu_device_kernels(device: torch.device, precision: str, backend: str) -> bool:
    """POLICY: on device = cpu in precision "fast" with the kernels built, the device side runs on the CPU
    kernels: its linears as int8 (placement.CPU_INT8_RULES, runtime/int8.py) and the absorbed MLA form
    (runtime/cpu_attention.py); "exact" keeps the fp32 torch path unchanged."""
    from hybrid_k2.runtime.int8 import kernels_built

    return device.type == "cpu" and precision == "fast" and backend == "kernel" and kernels_built()


def device_placement(config: RuntimeConfig, device: torch.device, precision: str, backend: str):
    """The placement rules, with CPU_INT8_RULES added where the device side runs on the CPU kernels."""
    if cpu_device_kernels(device, precision, backend):
        return config.placement.with_cpu_int8()
    return config.placement


def torch_threads_for(config: RuntimeConfig, device: torch.device, backend: str) -> int | None:
    """POLICY: torch intra-op threads for the device side (None: leave torch's choice). On device = cpu
    the kernels' pool already holds the cores while the executor overlaps it with the device side: two
    torch threads beside it measured 3-25x slower per step on a 2-core machine, so 1 by default."""
    if config.torch_threads is not None:
        return config.torch_threads
    return 1 if device.type == "cpu" and backend == "kernel" else None


class Runtime:
    def __init__(self, net, stores: dict[int, object], prepared: Prepared):
        self.net, self.stores, self.prepared = net, stores, prepared
        self.config, self.args = prepared.config, prepared.args
        self.torch_threads = torch_threads_for(self.config, net.device, prepared.backend)
        if self.torch_threads is not None:  # process-wide: torch has one intra-op pool
            torch.set_num_threads(self.torch_threads)
        self.timer: PhaseTimer = NullTimer()
        self.machine = detect()
        self.threads = self.config.cpu_threads or self.machine.default_threads
        self.backend = prepared.backend
        self.transfer = Transfer(net.device)
        self.cpu = CpuExperts(stores, backend=self.backend, precision=prepared.precision, threads=self.threads,
                              timer=self.timer)
        hot = prepared.placement.device_experts
        self.device_experts = DeviceExperts(stores, hot, net.device) if hot else None
        self.streamer = (ExpertStreamer(stores, self.transfer, self.config.stream_chunk)
                         if self.config.device_prefill_threshold is not None else None)
        a = self.args
        self.scheduler = Scheduler(SchedulerConfig(
            num_layers=a.num_hidden_layers, first_moe_layer=a.first_k_dense_replace, top_k=a.num_experts_per_tok,
            overlap=self.config.overlap, defer_experts=self.config.defer_experts,
            device_prefill_threshold=self.config.device_prefill_threshold, device_experts=hot))
        self.executor = Executor(net, self.scheduler, self.cpu, self.transfer, device_experts=self.device_experts,
                                 streamer=self.streamer, timer=self.timer, prefill_chunk=self.config.prefill_chunk)
        if self.backend == "kernel":  # the plain module forward must run with the kernel's stores too
            for layer in net.model.layers:
                if hasattr(layer.mlp, "experts"):
                    layer.mlp.experts.impl = self._module_impl(layer.layer)
        self._configure_cpu_device_side()
        self.runner = self.executor if self.config.executor == "hybrid" else net
        self.graphs = None  # CUDA-graph decode: eager executor for what graphs do not cover (cuda_graph.py)
        if (net.device.type == "cuda" and self.config.cuda_graphs and self.config.executor == "hybrid"
                and not self.config.defer_experts and not hot):
            from hybrid_k2.runtime.cuda_graph import GraphDecoder

            self.graphs = GraphDecoder(self)

    def _configure_cpu_device_side(self) -> None:
        """The device side's int8 linears and absorbed attention on the CPU share the experts' kernel pool
        (same size: one pool)."""
        from hybrid_k2.kernels.tuning import gemm_min_tokens
        from hybrid_k2.runtime.int8 import CpuInt8Linear

        crossover = None
        for m in self.net.modules():
            if isinstance(m, CpuInt8Linear):
                crossover = crossover or gemm_min_tokens(threads=self.threads)
                m.threads, m.gemm_min_tokens = self.threads, crossover
        if cpu_device_kernels(self.net.device, self.prepared.precision, self.backend):
            from hybrid_k2.runtime import cpu_attention

            cpu_attention.install(self.net, self.threads)

    def _module_impl(self, layer: int):
        def impl(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
            xf = x.float().cpu().contiguous()  # [T, D]
            out = torch.empty_like(xf)
            self.cpu.compute(layer, xf, ids.to("cpu", torch.int32), weights.float().cpu(), out)
            return out.to(x.device)
        return impl

    # -- what Session calls -------------------------------------------------------------------------
    def hidden(self, ids: torch.Tensor, caches, start: int) -> torch.Tensor:
        return self.runner.hidden(ids, caches, start)

    def lm_head(self, h: torch.Tensor) -> torch.Tensor:
        return self.runner.lm_head(h).float()

    def __call__(self, ids: torch.Tensor, caches, start: int) -> torch.Tensor:
        if self.graphs is not None and ids.shape[0] == 1:
            return self.graphs.decode(ids, caches, start)
        return self.runner(ids, caches, start)

    def set_policy(self, *, overlap: bool | None = None, defer_experts: int | None = None,
                   cpu_threads: int | None = None) -> None:
        """Changes the scheduling policy of a loaded model (benchmarks compare policies on one load)."""
        changes = {k: v for k, v in (("overlap", overlap), ("defer_experts", defer_experts)) if v is not None}
        if changes:
            self.config = self.config.replace(**changes)
            sc = self.scheduler.config
            self.scheduler = Scheduler(SchedulerConfig(
                num_layers=sc.num_layers, first_moe_layer=sc.first_moe_layer, top_k=sc.top_k,
                overlap=self.config.overlap, defer_experts=self.config.defer_experts,
                device_prefill_threshold=sc.device_prefill_threshold, device_experts=sc.device_experts))
            self.executor.scheduler = self.scheduler
        if cpu_threads is not None:
            self.threads = self.cpu.threads = cpu_threads
            self._configure_cpu_device_side()

    # -- measurement --------------------------------------------------------------------------------
    def set_timer(self, timer: PhaseTimer | None) -> None:
        """Phases of every step go to `timer` (executor spans, and cpu_experts from the worker)."""
        self.timer = timer or NullTimer()
        self.executor.timer = self.cpu.timer = self.timer

    def describe(self) -> str:
        p = self.prepared
        return (f"device={self.net.device} precision={p.precision} executor={self.config.executor} experts={self.backend} threads={self.threads} "
                f"(of {self.machine.physical_cores} physical cores, {len(self.machine.numa_nodes)} NUMA nodes) "
                f"torch_threads={torch.get_num_threads()} "
                f"overlap={self.config.overlap} defer={self.config.defer_experts} "
                f"gpu_experts={p.placement.n_device_experts} int8_linears={len(p.placement.int8_linears)} "
                f"device_prefill_threshold={self.config.device_prefill_threshold}")

    def close(self) -> None:
        self.cpu.close()
