"""The device side's absorbed MLA attention on the CPU kernels (device = cpu).

model/attention.py `absorbed` runs in torch on the device side's one intra-op thread; at depth that is
the step's largest cost (4.5 GFLOP per layer at 32K positions for K2). CpuAbsorbedAttention is a drop-in
for it (same arguments, same result within fp32 rounding) that runs csrc/mla_attention on the kernel pool
the routed experts use, which is idle while a layer attends, and reads fp8 rows without a torch
dequantisation pass. Set on every MLA module by the runtime (`install`), from outside the model code.
"""
from __future__ import annotations

import torch

from hybrid_k2.model import attention


class CpuAbsorbedAttention:
    def __init__(self, threads: int):
        self.threads = threads

    def __call__(self, q_lat: torch.Tensor, q_pe: torch.Tensor, cache, start, scale: float,
                 block: int) -> torch.Tensor:
        """q_lat [T, H, R], q_pe [T, H, P] at positions start.. -> o_lat [T, H, R] fp32 (attention.absorbed)."""
        if isinstance(start, torch.Tensor) or cache.device.type != "cpu" or cache.data is None:
            return attention.absorbed(q_lat, q_pe, cache, start, scale, block)  # static (graph) form, other devices
        from hybrid_k2.kernels.mla_attention import mla_absorbed

        q = torch.cat((q_lat.float(), q_pe.float()), dim=-1).mul_(scale)  # [T, H, R + P]
        return mla_absorbed(q=q, data=cache.data, scale=cache.scale, length=start + q.shape[0], start=start,
                            rank=cache.rank, threads=self.threads)


def install(net, threads: int) -> int:
    """Puts CpuAbsorbedAttention(threads) on every MLA module of net; returns how many."""
    from hybrid_k2.model.mla import MLA

    mlas = [m for m in net.modules() if isinstance(m, MLA)]
    for m in mlas:
        m.absorbed_attention = CpuAbsorbedAttention(threads)
    return len(mlas)
