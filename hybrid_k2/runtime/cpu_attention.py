"""The device side's absorbed MLA attention on the CPU kernels (device = cpu).

model/attention.py `absorbed_heads` (fold W_UK in, attend in the latent space, fold W_UV out) runs in
torch on the device side's one intra-op thread: at depth the attention is the step's largest cost (4.5
GFLOP per layer at 32K positions for K2), at depth 0 the folds (kv_b_proj's rows: 2 x 4.2 MB in int8, the
fast default, or 2 x 16.8 MB of fp32 for a bf16 one, per layer and token) are. CpuAbsorbedAttention is a drop-in for it (same arguments, same result within fp32
rounding) that runs the three on csrc/mla_attention, on the kernel pool the routed experts use, which is
idle while a layer attends, and reads fp8 rows without a torch dequantisation pass. Set on every MLA module by the runtime (`install`), from outside the model code.
"""
from __future__ import annotations

import torch

from hybrid_k2.kernels.mla_attention import mla_absorbed, mla_fold
from hybrid_k2.model import attention


class CpuAbsorbedAttention:
    def __init__(self, threads: int):
        self.threads = threads
        # POLICY for attention.choose_form: its multiply-adds run `threads` times as fast as the expanded
        # form's, which stays torch on the device side's one thread: per thread the kernel matches torch's
        # fp32 matmul (73 against 70 GFLOP/s at depth 32K on this Zen3). bench/bench_attention.py, one K2
        # layer, 2 threads: T = 512 at depth 8192 absorbed here 4.59 s against expanded 6.14 s; at depth 0
        # 0.52 s against 0.43 s, which the count keeps expanded (docs/placement.md section 2a).
        self.speed = float(threads)

    def __call__(self, q_nope: torch.Tensor, q_pe: torch.Tensor, w: torch.Tensor, cache, start, scale: float,
                 block: int, *, w_scale: torch.Tensor | None = None) -> torch.Tensor:
        """attention.absorbed_heads: q_nope [T, H, N], q_pe [T, H, P], w [H, N + V, R] fp32, or int8 with
        w_scale [H, N + V] -> o [T, H, V] fp32."""
        if (isinstance(start, torch.Tensor) or cache.device.type != "cpu" or cache.data is None
                or w.dtype != (torch.float32 if w_scale is None else torch.int8) or w.device.type != "cpu"):
            return attention.absorbed_heads(q_nope, q_pe, w, cache, start, scale, block,
                                            w_scale=w_scale)  # graph form, other devices
        N = q_nope.shape[-1]
        x = q_nope.float() if w_scale is None else q_nope.float() * w_scale[:, :N]  # W_UK's row scales: [T, H, N]
        q_lat = mla_fold(x=x.contiguous(), w=w[:, :N], form="cols", threads=self.threads)  # [T, H, R]
        q = torch.cat((q_lat, q_pe.float()), dim=-1).mul_(scale)  # [T, H, R + P]
        o_lat = mla_absorbed(q=q, data=cache.data, scale=cache.scale, length=start + q.shape[0], start=start,
                             rank=cache.rank, threads=self.threads)  # [T, H, R]
        o = mla_fold(x=o_lat, w=w[:, N:], form="rows", threads=self.threads)  # [T, H, V]
        return o if w_scale is None else o.mul_(w_scale[:, N:])  # W_UV's row scales


def install(net, threads: int) -> int:
    """Puts CpuAbsorbedAttention(threads) on every MLA module of net; returns how many."""
    from hybrid_k2.model.mla import MLA

    mlas = [m for m in net.modules() if isinstance(m, MLA)]
    for m in mlas:
        m.absorbed_attention = CpuAbsorbedAttention(threads)
    return len(mlas)
