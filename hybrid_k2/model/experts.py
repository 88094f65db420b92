"""Routed experts: INT4 weights in host RAM, kept in the checkpoint's own compressed-tensors layout.

Glossary: T tokens, D hidden, I expert width, E experts in the layer, K experts per token, G = 32.

`Int4ExpertStore` stacks one layer's experts as the checkpoint stores each of them:
  gate_packed, up_packed [E, I, D/8] int32   gate_scale, up_scale [E, I, D/G] bf16
  down_packed            [E, D, I/8] int32   down_scale           [E, D, I/G] bf16
and is filled expert by expert while loading (one copy of the experts, ever).

`routed_experts_reference` is the readable pure-torch computation (dequantise, then matmul in fp32):
the oracle for the C++ kernels, and the path used when no kernel is attached. `RoutedExperts.impl` is
replaced from outside the model (hybrid_k2.runtime) to run the C++ kernels instead.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hybrid_k2.quant.int4 import GROUP, dequantize_int4

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


class Int4ExpertStore:
    def __init__(self, num_experts: int, hidden: int, intermediate: int):
        E, D, I = num_experts, hidden, intermediate
        self.num_experts, self.hidden, self.intermediate = E, D, I
        self.gate_packed = torch.empty(E, I, D // 8, dtype=torch.int32)
        self.up_packed = torch.empty(E, I, D // 8, dtype=torch.int32)
        self.down_packed = torch.empty(E, D, I // 8, dtype=torch.int32)
        self.gate_scale = torch.empty(E, I, D // GROUP, dtype=torch.bfloat16)
        self.up_scale = torch.empty(E, I, D // GROUP, dtype=torch.bfloat16)
        self.down_scale = torch.empty(E, D, I // GROUP, dtype=torch.bfloat16)

    def load_expert(self, e: int, *, gate_packed, gate_scale, up_packed, up_scale, down_packed, down_scale):
        self.gate_packed[e].copy_(gate_packed)
        self.gate_scale[e].copy_(gate_scale)
        self.up_packed[e].copy_(up_packed)
        self.up_scale[e].copy_(up_scale)
        self.down_packed[e].copy_(down_packed)
        self.down_scale[e].copy_(down_scale)

    def dequantized(self, e: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
        """(gate [I, D], up [I, D], down [D, I]) of expert e, dequantised exactly."""
        D, I = self.hidden, self.intermediate
        return (dequantize_int4(self.gate_packed[e], self.gate_scale[e], (I, D), dtype),
                dequantize_int4(self.up_packed[e], self.up_scale[e], (I, D), dtype),
                dequantize_int4(self.down_packed[e], self.down_scale[e], (D, I), dtype))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (
            self.gate_packed, self.up_packed, self.down_packed, self.gate_scale, self.up_scale, self.down_scale))


def routed_experts_reference(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                             store: Int4ExpertStore) -> torch.Tensor:
    """x [T, D], ids [T, K], weights [T, K] fp32 -> [T, D] fp32 = sum_k w * down(silu(gate x) * up x)."""
    xf = x.float()
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    for e in torch.unique(ids).tolist():
        token, slot = torch.nonzero(ids == e, as_tuple=True)  # tokens routed to e, and where
        gate, up, down = (w.to(x.device) for w in store.dequantized(e))
        h = xf[token]  # [n, D]
        y = F.linear(F.silu(F.linear(h, gate)) * F.linear(h, up), down)  # [n, D]
        out.index_add_(0, token, y * weights[token, slot, None].float())
    return out


class RoutedExperts(nn.Module):
    def __init__(self, store):
        super().__init__()
        self.store = store
        self.impl: Callable[..., torch.Tensor] = lambda x, ids, w: routed_experts_reference(x, ids, w, self.store)

    def forward(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.impl(x, ids, weights)  # [T, D] fp32
