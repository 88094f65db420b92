"""Random experts in the checkpoint format, for tests and benchmarks (no checkpoint needed)."""
from __future__ import annotations

import torch

from hybrid_k2.kernels.experts import PackedExperts


def random_checkpoint_tensors(*, rows: int, cols: int, generator: torch.Generator, nibble: int | None = None,
                              scale: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """weight_packed int32 [rows, cols/8] (uniform nibbles, or all equal to `nibble`) and
    weight_scale bf16 [rows, cols/32] in (0.25, 1.25) * scale."""
    if nibble is None:
        packed = torch.randint(-2**31, 2**31 - 1, (rows, cols // 8), dtype=torch.int32, generator=generator)
    else:
        word = 0
        for i in range(8):
            word |= nibble << (4 * i)
        packed = torch.full((rows, cols // 8), word - (1 << 32) if word >= 1 << 31 else word, dtype=torch.int32)
    s = (torch.rand(rows, cols // 32, generator=generator) + 0.25) * scale
    return packed, s.to(torch.bfloat16)


def random_experts(*, num_experts: int, hidden: int, intermediate: int, seed: int = 0,
                   extreme: bool = False, _module=None) -> PackedExperts:
    """A layer of random experts; with extreme=True expert 0 has every nibble 0 (q = -8) and expert 1
    every nibble 15 (q = 7), the ends of the INT4 range."""
    g = torch.Generator().manual_seed(seed)
    if _module is None:
        pe = PackedExperts.empty(num_experts=num_experts, hidden=hidden, intermediate=intermediate)
    else:  # another build of the kernels (tests of the emulated ISA paths)
        pe = PackedExperts._empty_on(_module, num_experts=num_experts, hidden=hidden, intermediate=intermediate)
    for e in range(num_experts):
        nib = (0 if e == 0 else 15 if e == 1 else None) if extreme else None
        gp, gs = random_checkpoint_tensors(rows=intermediate, cols=hidden, generator=g, nibble=nib)
        up, us = random_checkpoint_tensors(rows=intermediate, cols=hidden, generator=g, nibble=nib)
        dp, ds = random_checkpoint_tensors(rows=hidden, cols=intermediate, generator=g, nibble=nib)
        pe.load_expert(e, gate_packed=gp, gate_scale=gs, up_packed=up, up_scale=us, down_packed=dp, down_scale=ds)
    return pe


def random_routing(*, tokens: int, top_k: int, num_experts: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """expert_ids [T, K] int64 (K distinct experts per token, uniform) and weights [T, K] fp32."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.argsort(torch.rand(tokens, num_experts, generator=g), dim=1)[:, :top_k]
    w = torch.rand(tokens, top_k, generator=g)
    return ids, w / w.sum(dim=1, keepdim=True) * 2.827
