"""The pure-torch reference of the routed-MoE op, under the kernels' keyword-only calling convention.

No second copy of the math: it is hybrid_k2.model.experts.routed_experts_reference (the one INT4
decoder of hybrid_k2.quant.int4, then the SwiGLU expert in fp32), run on a PackedExperts through the
expert-store interface every store shares (expert_tensors)."""
from __future__ import annotations

import torch

from hybrid_k2.kernels.experts import PackedExperts
from hybrid_k2.model.experts import routed_experts_reference


def moe_reference(*, x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor,
                  experts: PackedExperts) -> torch.Tensor:
    """out[t] = sum_k weights[t, k] * down(silu(gate x[t]) * up x[t]) for expert expert_ids[t, k].

    x [T, D] fp32/bf16, expert_ids [T, K] int, weights [T, K] fp32 -> [T, D] fp32."""
    return routed_experts_reference(x, expert_ids.long(), weights, experts)
