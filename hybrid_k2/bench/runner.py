"""The measurement loop, with llama-bench's semantics.

  pp<P> @ d<D>: the cache holds D tokens; a prompt of P random tokens is prefilled in forwards of
                `batch` tokens; tok/s = P / wall time.
  tg<N> @ d<D>: the cache holds D tokens; N tokens are decoded one at a time, each next token the
                argmax of the last logits (greedy sampling, timed as `sampling`); tok/s = N / wall time.
Each is repeated r times (the cache is truncated back to D before each) and reported as mean ± std.
Before any timing, a warm-up runs a short prompt and a few decode steps and pushes rows through every
routed expert of every layer, so page faults and first-touch costs are not measured.

During tg the phases of every step are recorded (instrument.py) in the same runs that give tg tok/s;
Python overhead is the step's wall time minus its serial phases. The distinct experts the router picked
give the routed bytes each token read.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch

from hybrid_k2.bench.instrument import Instrument
from hybrid_k2.bench.options import BenchOptions
from hybrid_k2.errors import HybridK2Error

WARMUP_PROMPT = 32
WARMUP_DECODE = 4


@dataclass
class Measurement:
    kind: str  # "pp" | "tg"
    depth: int
    threads: int
    tokens: int
    batch: int | None
    seconds: list[float] = field(default_factory=list)


@dataclass
class StepProfile:
    """Totals over every tg step at one (threads, depth): phases, wall time, experts read."""
    depth: int
    threads: int
    mode: str  # "executor" | "hooks"
    steps: int = 0
    wall_s: float = 0.0
    phases_s: dict[str, float] = field(default_factory=dict)
    concurrent: tuple[str, ...] = ()
    cpu_experts_read: int = 0  # distinct (layer, expert) pairs summed over steps
    device_experts_read: int = 0
    context_sum: float = 0.0  # sum over steps of the positions attended (for the KV bytes)


@dataclass
class RunData:
    measurements: list[Measurement] = field(default_factory=list)
    profiles: list[StepProfile] = field(default_factory=list)
    bandwidth: dict[int, dict] = field(default_factory=dict)  # threads -> probe result
    torch_threads: int = 0
    gpu_gbps: float | None = None  # device-memory bandwidth when the device is a GPU
    instrument_mode: str = ""
    experts_backend: str = ""
    warmup_experts_touched: int = 0
    memory: list[dict] = field(default_factory=list)  # per (threads, depth): peak memory of the process


def reset_peak_memory(device: torch.device) -> None:
    """Starts a new peak: VmHWM (writing 5 to /proc/self/clear_refs) and torch's CUDA peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """Peak resident memory of the process since the last reset (VmHWM), and the CUDA allocator's peak."""
    rss = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"peak_rss_bytes": rss, "peak_gpu_bytes": gpu}


def load_model(path, opts: BenchOptions, threads: int, progress: bool):
    """hybrid_k2.load with the runtime flags, `threads` kernel threads and --torch-threads if given (else
    the runtime's policy: 1 torch thread on device = cpu, see runtime.torch_threads_for)."""
    from hybrid_k2 import api
    from hybrid_k2.runtime import RuntimeConfig

    config = (opts.runtime or RuntimeConfig()).replace(cpu_threads=threads)
    if opts.torch_threads:
        config = config.replace(torch_threads=opts.torch_threads)
    return api.load(path, device=opts.device, precision=opts.precision, progress=progress, runtime=config)


def model_threads(model) -> int | None:
    runtime = getattr(model, "runtime", None)
    return getattr(runtime, "threads", None) if runtime is not None else None


def experts_backend(model) -> str:
    runtime = getattr(model, "runtime", None)
    return getattr(runtime, "backend", None) or "reference (plain module forward)"


def touch_experts(model) -> int:
    """Runs a few rows through every routed expert of every MoE layer; returns how many were touched."""
    a, net = model.args, model.net
    E, K = a.n_routed_experts, a.num_experts_per_tok
    T = math.ceil(E / K)
    ids = (torch.arange(T * K) % E).view(T, K)  # [T, K]: every expert at least once
    weights = torch.full((T, K), 1.0 / K)  # [T, K] fp32
    g = torch.Generator().manual_seed(0)
    touched = 0
    with torch.inference_mode():
        for block in net.model.layers:
            experts = getattr(block.mlp, "experts", None)
            if experts is None:
                continue
            x = torch.randn(T, a.hidden_size, generator=g).to(device=net.device, dtype=net.dtype)  # [T, D]
            experts(x, ids.to(net.device), weights.to(net.device))
            touched += E
    return touched


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Runner:
    def __init__(self, opts: BenchOptions, model, tokens: list[int], progress):
        self.opts, self.model, self.tokens, self.progress = opts, model, tokens, progress

    def prefill(self, session, ids: list[int], batch: int) -> None:
        for i in range(0, len(ids), batch):
            session.prefill(ids[i:i + batch], last_only=True)

    def warmup(self, threads: int) -> int:
        o, session = self.opts, self.model.new_session()
        task = self.progress.add_task(f"warm-up ({threads} threads)", total=3)
        self.prefill(session, self.tokens[:min(o.n_prompt or WARMUP_PROMPT, WARMUP_PROMPT)], min(o.batches))
        self.progress.advance(task)
        tok = self.tokens[0]
        for _ in range(min(o.n_gen or WARMUP_DECODE, WARMUP_DECODE)):
            tok = int(torch.argmax(session.decode(tok)))
        self.progress.advance(task)
        touched = touch_experts(self.model)
        self.progress.advance(task)
        return touched

    def pp(self, session, depth: int, batch: int, threads: int) -> Measurement:
        o = self.opts
        m = Measurement("pp", depth, threads, o.n_prompt, batch)
        ids = self.tokens[depth:depth + o.n_prompt]
        task = self.progress.add_task(f"pp{o.n_prompt} @ d{depth} b{batch} t{threads}", total=o.repetitions)
        for _ in range(o.repetitions):
            session.truncate(depth)
            t0 = time.perf_counter()
            self.prefill(session, ids, batch)
            _sync(self.model.device)
            m.seconds.append(time.perf_counter() - t0)
            self.progress.advance(task)
        return m

    def tg(self, session, depth: int, threads: int, instrument: Instrument) -> tuple[Measurement, StepProfile]:
        o, timer, counter = self.opts, instrument.timer, instrument.counter
        m = Measurement("tg", depth, threads, o.n_gen, None)
        prof = StepProfile(depth, threads, instrument.mode)
        task = self.progress.add_task(f"tg{o.n_gen} @ d{depth} t{threads}", total=o.repetitions * o.n_gen)
        for _ in range(o.repetitions):
            session.truncate(depth)
            tok = self.tokens[depth]
            timer.reset()
            counter.take()
            counter.recording = True
            t_rep = time.perf_counter()
            for i in range(o.n_gen):
                t0 = time.perf_counter()
                logits = session.decode(tok)  # [V] fp32
                with timer.span("sampling"):
                    tok = int(torch.argmax(logits))
                prof.wall_s += time.perf_counter() - t0
                prof.context_sum += depth + i + 1
                self.progress.advance(task)
            m.seconds.append(time.perf_counter() - t_rep)
            counter.recording = False
            cpu, dev = counter.distinct(counter.take())
            prof.cpu_experts_read += cpu
            prof.device_experts_read += dev
            prof.steps += o.n_gen
            seen = timer.snapshot()
            for name, s in seen.items():
                prof.phases_s[name] = prof.phases_s.get(name, 0.0) + s
            prof.concurrent = instrument.concurrent_phases(seen)
        timer.reset()
        return m, prof

    def sweep(self, threads: int, data: RunData) -> None:
        o = self.opts
        instrument = Instrument(self.model)
        data.instrument_mode = instrument.mode
        try:
            data.warmup_experts_touched = self.warmup(threads) if o.warmup else 0
            instrument.timer.reset()
            session = self.model.new_session()
            for depth in sorted(o.depths):
                reset_peak_memory(self.model.device)
                fill = self.progress.add_task(f"fill cache to d{depth}", total=None) if depth else None
                session.truncate(min(len(session), depth))
                t0 = time.perf_counter()
                if o.fill == "synthetic":
                    fill_synthetic(session, self.tokens[len(session):depth])
                else:
                    self.prefill(session, self.tokens[len(session):depth], max(o.batches))
                fill_s = time.perf_counter() - t0
                if fill is not None:
                    self.progress.remove_task(fill)
                if o.n_prompt:
                    for batch in o.batches:
                        data.measurements.append(self.pp(session, depth, batch, threads))
                if o.n_gen:
                    m, prof = self.tg(session, depth, threads, instrument)
                    data.measurements.append(m)
                    data.profiles.append(prof)
                top = depth + max(o.n_prompt, o.n_gen)  # the longest the cache got at this depth
                data.memory.append({"threads": threads, "depth": depth, **peak_memory(self.model.device),
                                    "kv_cache_bytes": sum(c.nbytes(top) for c in session.caches),
                                    "fill_seconds": fill_s if depth else 0.0})
        finally:
            instrument.close()


def fill_synthetic(session, ids: list[int], chunk: int = 4096) -> None:
    """Appends ids to the session with random latent rows in every layer's cache instead of running the model:
    attention's cost at a depth depends on how many rows there are, not on their values, so pp/tg at depth
    are measured without the (on a CPU: hour-long) prefill of the depth itself. Rows are N(0, 1), the scale
    of kv_a_layernorm's output."""
    g = torch.Generator().manual_seed(len(session))
    with torch.inference_mode():
        for i in range(0, len(ids), chunk):
            part = ids[i:i + chunk]
            start = len(session)
            for cache in session.caches:
                rows = torch.randn(len(part), cache.kv_dim, generator=g).to(device=cache.device, dtype=cache.dtype)
                cache.write(start, rows)
            session.tokens.extend(part)


def random_tokens(vocab_size: int, count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(vocab_size) for _ in range(count)]


def run(opts: BenchOptions, model_path, hardware: dict, progress_factory,
        show_progress: bool = False) -> tuple[RunData, object]:
    """Loads the model, probes bandwidth, measures every (threads, depth, batch); returns (data, model)."""
    from hybrid_k2.bench import probe

    threads_list = opts.threads or (hardware["physical_cores"],)
    data = RunData()
    torch_threads_before = torch.get_num_threads()
    model = None
    if opts.device != "cpu" and torch.cuda.is_available():  # before the model fills the device memory
        data.gpu_gbps = probe.gpu_bandwidth(torch.device("cuda" if opts.device == "auto" else opts.device))
    try:
        for threads in threads_list:
            if model is None or model_threads(model) not in (None, threads):
                model = None  # release the previous copy before loading the next
                model = load_model(model_path, opts, threads, progress=show_progress)
            data.torch_threads = torch.get_num_threads()  # the runtime set them at load
            need = max(opts.depths) + max(opts.n_prompt, opts.n_gen, 1) + 1
            if need > model.ctx:
                raise HybridK2Error(f"depth + test length ({need}) exceeds the context of {model.ctx:,} tokens "
                                    f"(--ctx)")
            tokens = random_tokens(model.args.vocab_size, need, opts.seed)
            with progress_factory() as progress:
                task = progress.add_task(f"memory bandwidth probe ({threads} threads)", total=None)
                data.bandwidth[threads] = probe.bandwidth(hardware["cpu_model"], threads, reprobe=opts.reprobe)
                if model.device.type != "cuda":
                    data.gpu_gbps = None
                progress.remove_task(task)
                Runner(opts, model, tokens, progress).sweep(threads, data)
            data.experts_backend = experts_backend(model)
    finally:
        torch.set_num_threads(torch_threads_before)
    return data, model
