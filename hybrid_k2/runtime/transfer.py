"""Mechanism for moving data between the device and host staging: the ONE switch between CUDA and CPU.

On CUDA: host buffers are pinned, device -> host copies are issued on the compute stream without
blocking (an event marks when they have landed, and the host waits for that event only right before the
CPU job needs the data; a blocking-sync event, so the waiting thread sleeps instead of busy-polling a core
the expert kernels need), host -> device copies from pinned memory are asynchronous too.
On CPU (device = cpu): the same calls are plain copies and the events are None, so the executor runs
the very same code path and stays exact.
"""
from __future__ import annotations

import torch


class Transfer:
    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def host_empty(self, *shape: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype, pin_memory=self.cuda)

    def to_host(self, src: torch.Tensor, dst: torch.Tensor):
        """Starts src (device) -> dst (host staging); returns what `ready` waits on."""
        if not self.cuda:
            dst.copy_(src)
            return None
        dst.copy_(src, non_blocking=True)
        event = torch.cuda.Event(blocking=True)  # the host waits on it: sleep, do not spin a core
        event.record()
        return event

    @staticmethod
    def ready(event) -> None:
        """Blocks the host until the copies before `event` have landed (no-op on CPU)."""
        if event is not None:
            event.synchronize()

    def to_device(self, src: torch.Tensor, dst: torch.Tensor | None = None) -> torch.Tensor:
        if dst is None:
            return src.to(self.device, non_blocking=self.cuda)
        dst.copy_(src, non_blocking=self.cuda)
        return dst

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


class StagingSet:
    """Host buffers of one MoE layer in flight: x, ids/weights and results of its job and deferred job.

    Capacity grows (between steps only) to the largest token count seen; views are contiguous prefixes.
    """

    def __init__(self, transfer: Transfer, hidden: int, top_k: int):
        self.transfer, self.hidden, self.top_k = transfer, hidden, top_k
        self.capacity = 0

    def ensure(self, tokens: int) -> None:
        if tokens <= self.capacity:
            return
        t, D, K = self.transfer, self.hidden, self.top_k
        self.x = t.host_empty(tokens * D, dtype=torch.float32)
        self.out = t.host_empty(tokens * D, dtype=torch.float32)
        self.out_deferred = t.host_empty(tokens * D, dtype=torch.float32)
        self.ids = t.host_empty(2 * tokens * K, dtype=torch.int32)  # this layer's job, then the deferred job
        self.weights = t.host_empty(tokens * K, dtype=torch.float32)
        self.capacity = tokens

    def views(self, tokens: int) -> dict[str, torch.Tensor]:
        self.ensure(tokens)
        T, D, K = tokens, self.hidden, self.top_k
        return dict(x=self.x[:T * D].view(T, D), out=self.out[:T * D].view(T, D),
                    out_deferred=self.out_deferred[:T * D].view(T, D),
                    ids=self.ids[:2 * T * K].view(2, T, K), weights=self.weights[:T * K].view(T, K))
