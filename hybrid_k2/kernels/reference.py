"""Pure-torch reference of the routed-MoE op: dequantise, then matmul in fp32. The test oracle."""
from __future__ import annotations

import torch

from hybrid_k2.kernels.experts import PackedExperts


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """compressed-tensors pack-quantized -> fp32: packed int32 [R, C/8], scale bf16 [R, C/32] -> [R, C].

    Element (r, k) is nibble k % 8 of word k // 8 (least significant first), value q = nibble - 8,
    weight = q * scale[r, k // 32]; q * scale is exact in fp32."""
    R, C8 = packed.shape
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    nib = (packed.unsqueeze(-1) >> shifts) & 0xF                      # [R, C/8, 8]
    q = (nib.reshape(R, C8 * 8) - 8).to(torch.float32)                 # [R, C]
    return q * scale.to(torch.float32).repeat_interleave(32, dim=1)    # [R, C]


def moe_reference(*, x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor,
                  experts: PackedExperts) -> torch.Tensor:
    """out[t] = sum_k weights[t, k] * down(silu(gate x[t]) * up x[t]) for expert expert_ids[t, k].

    x [T, D] fp32/bf16, expert_ids [T, K] int, weights [T, K] fp32 -> [T, D] fp32."""
    x = x.to(torch.float32)                                            # [T, D]
    T, D = x.shape
    out = torch.zeros(T, D, dtype=torch.float32)
    for e in torch.unique(expert_ids).tolist():
        tok, slot = torch.nonzero(expert_ids == e, as_tuple=True)      # tokens routed to e
        w = experts.expert_tensors(int(e))
        gate = dequantize_int4(w["gate_packed"], w["gate_scale"])      # [I, D]
        up = dequantize_int4(w["up_packed"], w["up_scale"])            # [I, D]
        down = dequantize_int4(w["down_packed"], w["down_scale"])      # [D, I]
        xe = x[tok]                                                    # [n, D]
        h = torch.nn.functional.silu(xe @ gate.T) * (xe @ up.T)        # [n, I]
        out.index_add_(0, tok, (h @ down.T) * weights[tok, slot].to(torch.float32).unsqueeze(1))
    return out
