"""The CPU side of the routed experts: one FIFO queue of jobs, run by one worker thread.

A job is one layer's routed experts for T tokens, read from host staging buffers:
  x [T, D] fp32, ids [T, K] int32 (-1 = slot not for this job), weights [T, K] fp32 -> out [T, D] fp32
The worker drops the -1 slots (hot experts on the device, deferred or not-yet-deferred slots), then runs
the backend on [T, K'] with no skipped slot left, so the CPU reads only experts it has to.

Backends: "kernel" (hybrid_k2.kernels.moe_forward, the C++ INT4 kernels; they release the GIL) and
"reference" (hybrid_k2.model.experts.routed_experts_reference, pure torch; torch releases the GIL inside
its ops too). One worker thread for both: jobs run in submission order (a layer's deferred job after
its own job, before the next layer's), and every job has real start/end timestamps for traces.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch

from hybrid_k2.errors import HybridK2Error
from hybrid_k2.profiling import NullTimer, PhaseTimer


def kernels_available() -> bool:
    try:
        from hybrid_k2 import _C
        from hybrid_k2.kernels import PackedExperts, moe_forward  # noqa: F401
    except Exception:  # not built yet, or an import error in a half-written module
        return False
    return hasattr(_C, "moe_submit")


def choose_backend(requested: str) -> str:
    if requested == "auto":
        return "kernel" if kernels_available() else "reference"
    if requested == "kernel" and not kernels_available():
        raise HybridK2Error("experts backend 'kernel' requested but hybrid_k2.kernels is not built "
                            "(pip install -e . --no-build-isolation)")
    return requested


def make_store_factory(backend: str) -> Callable[[int, int, int, int], object]:
    """expert_store(layer, E, D, I) for hybrid_k2.load: the container the loader fills expert by expert."""
    if backend == "kernel":
        from hybrid_k2.kernels import PackedExperts

        return lambda layer, E, D, I: PackedExperts.empty(num_experts=E, hidden=D, intermediate=I)
    from hybrid_k2.model.experts import Int4ExpertStore

    return lambda layer, E, D, I: Int4ExpertStore(E, D, I)


def compact_slots(ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """ids [T, K] with -1 holes, weights [T, K] -> ([T, K'] ids, [T, K'] weights) without holes, or None.

    Rows with fewer valid slots than K' are padded with one of their own experts (else any expert of the
    job) at weight 0: no expert is read only for padding.
    """
    valid = ids >= 0  # [T, K]
    counts = valid.sum(dim=1)  # [T]
    k = int(counts.max()) if ids.numel() else 0
    if k == 0:
        return None
    if bool((counts == ids.shape[1]).all()):
        return ids, weights
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices[:, :k]  # valid slots first
    ids_c, w_c, valid_c = ids.gather(1, order), weights.gather(1, order), valid.gather(1, order)
    fallback = ids[valid][0]
    row_first = torch.where(valid_c[:, :1], ids_c[:, :1], fallback)  # [T, 1]
    ids_c = torch.where(valid_c, ids_c, row_first)
    w_c = torch.where(valid_c, w_c, torch.zeros_like(w_c))
    return ids_c.contiguous(), w_c.contiguous()


class CpuJob:
    def __init__(self, future: Future | None):
        self.future = future
        self.start = self.end = None  # perf_counter timestamps taken by the worker

    def wait(self) -> None:
        self.future.result()

    def done(self) -> bool:
        return self.future.done()


class CpuExperts:
    def __init__(self, stores: dict[int, object], *, backend: str, precision: str, threads: int | None,
                 timer: PhaseTimer | None = None):
        self.stores, self.backend, self.precision, self.threads = stores, backend, precision, threads
        self.timer = timer or NullTimer()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hk2-cpu-experts")
        # observer(layer, ids [T, K] int32 host, -1 holes) before each job: what the CPU reads, seen where the
        # ids are on the host in every mode (eager executor, CUDA-graph host callback); benchmarks count here
        self.observers: list[Callable[[int, torch.Tensor], None]] = []
        if backend == "kernel":
            from hybrid_k2.kernels import moe_forward

            self._kernel = moe_forward

    # -- what runs on the worker ------------------------------------------------------------------
    def compute(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                out: torch.Tensor) -> None:
        """x [T, D] fp32, ids [T, K] int32 with -1 holes, weights [T, K] fp32 -> out [T, D] fp32."""
        with torch.inference_mode():  # thread-local: the worker needs it too (staging may be inference tensors)
            for observe in self.observers:
                observe(layer, ids)
            self._compute(layer, x, ids, weights, out)

    def _compute(self, layer, x, ids, weights, out) -> None:
        slots = compact_slots(ids, weights)
        if slots is None:
            out.zero_()
            return
        ids_c, w_c = slots
        if self.backend == "kernel":
            self._kernel(x=x, expert_ids=ids_c, weights=w_c, experts=self.stores[layer],
                         precision=self.precision, threads=self.threads, out=out)
        else:
            from hybrid_k2.model.experts import routed_experts_reference

            out.copy_(routed_experts_reference(x, ids_c.long(), w_c, self.stores[layer]))

    def run(self, layer: int, *, x, ids, weights, out) -> None:
        """Synchronously, on the calling thread (the CUDA-graph host callback uses this)."""
        t0 = time.perf_counter()
        self.compute(layer, x, ids, weights, out)
        self.timer.add("cpu_experts", t0, time.perf_counter())

    # -- the queue --------------------------------------------------------------------------------
    def submit(self, layer: int, *, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
               out: torch.Tensor) -> CpuJob:
        job: CpuJob

        def work():
            job.start = time.perf_counter()
            try:
                self.compute(layer, x, ids, weights, out)
            finally:
                job.end = time.perf_counter()
                self.timer.add("cpu_experts", job.start, job.end)

        job = CpuJob(None)
        job.future = self._pool.submit(work)
        return job

    def close(self) -> None:
        self._pool.shutdown(wait=True)
