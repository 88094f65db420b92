"""Routed experts: INT4 weights in host RAM, kept in the checkpoint's own compressed-tensors layout.

Glossary: T tokens, D hidden, I expert width, E experts in the layer, K experts per token, G = 32.

An expert store is anything with this interface (one interface, two implementations that differ only
in who runs them):
  num_experts, hidden, intermediate, nbytes
  load_expert(e, gate_packed=, gate_scale=, up_packed=, up_scale=, down_packed=, down_scale=)
  expert_tensors(e) -> {"gate_packed": [I, D/8] int32, "gate_scale": [I, D/G] bf16, "up_*": same,
                        "down_packed": [D, I/8] int32, "down_scale": [D, I/G] bf16}   (views, no copy)
`Int4ExpertStore` (below) stacks the six tensors over E in torch tensors (the pure-torch reference, and
the device copies of hot / streamed experts); `hybrid_k2.kernels.PackedExperts` holds the same bytes in
the C++ kernels' aligned buffer. Both are filled expert by expert while loading (one copy, ever).

`routed_experts_reference` is the readable pure-torch computation (dequantise with the one INT4 decoder,
hybrid_k2.quant.int4, then the SwiGLU `expert_mlp`): the oracle for the C++ kernels, and the path used
when no kernel is attached. `RoutedExperts.impl` is replaced from outside the model (hybrid_k2.runtime)
to run the C++ kernels instead.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hybrid_k2.quant.int4 import GROUP, dequantize_int4

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
FIELDS = ("gate_packed", "gate_scale", "up_packed", "up_scale", "down_packed", "down_scale")


class Int4ExpertStore:
    def __init__(self, num_experts: int, hidden: int, intermediate: int, *, device: torch.device | str = "cpu",
                 pin_memory: bool = False):
        E, D, I = num_experts, hidden, intermediate
        self.num_experts, self.hidden, self.intermediate = E, D, I
        kw = dict(device=device, pin_memory=pin_memory)
        self.gate_packed = torch.empty(E, I, D // 8, dtype=torch.int32, **kw)
        self.up_packed = torch.empty(E, I, D // 8, dtype=torch.int32, **kw)
        self.down_packed = torch.empty(E, D, I // 8, dtype=torch.int32, **kw)
        self.gate_scale = torch.empty(E, I, D // GROUP, dtype=torch.bfloat16, **kw)
        self.up_scale = torch.empty(E, I, D // GROUP, dtype=torch.bfloat16, **kw)
        self.down_scale = torch.empty(E, D, I // GROUP, dtype=torch.bfloat16, **kw)

    def load_expert(self, e: int, **tensors: torch.Tensor) -> None:
        for f in FIELDS:
            getattr(self, f)[e].copy_(tensors[f])

    def expert_tensors(self, e: int) -> dict[str, torch.Tensor]:
        return {f: getattr(self, f)[e] for f in FIELDS}

    def slice(self, c0: int, c1: int) -> "Int4ExpertStore":
        """Experts c0..c1-1 as a store of views (no copy)."""
        view = Int4ExpertStore.__new__(Int4ExpertStore)
        view.num_experts, view.hidden, view.intermediate = c1 - c0, self.hidden, self.intermediate
        for f in FIELDS:
            setattr(view, f, getattr(self, f)[c0:c1])
        return view

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).numel() * getattr(self, f).element_size() for f in FIELDS)


def dequantize_expert(store, e: int, dtype: torch.dtype = torch.float32,
                      device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gate [I, D], up [I, D], down [D, I]) of expert e in `dtype`, decoded on `device` (default: where
    the store is; the INT4 bytes move, not the 3.5x larger decoded weights)."""
    D, I = store.hidden, store.intermediate
    t = {f: v.to(device, non_blocking=True) if device is not None else v for f, v in store.expert_tensors(e).items()}
    return (dequantize_int4(t["gate_packed"], t["gate_scale"], (I, D), dtype),
            dequantize_int4(t["up_packed"], t["up_scale"], (I, D), dtype),
            dequantize_int4(t["down_packed"], t["down_scale"], (D, I), dtype))


def expert_mlp(h: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """One expert: h [n, D] -> down(silu(gate h) * up h) [n, D]."""
    return F.linear(F.silu(F.linear(h, gate)) * F.linear(h, up), down)


def routed_experts_reference(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                             store) -> torch.Tensor:
    """x [T, D], ids [T, K], weights [T, K] fp32 -> [T, D] fp32 = sum_k w * down(silu(gate x) * up x)."""
    xf = x.float()
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    for e in torch.unique(ids).tolist():
        token, slot = torch.nonzero(ids == e, as_tuple=True)  # tokens routed to e, and where
        y = expert_mlp(xf[token], *dequantize_expert(store, e, torch.float32, x.device))  # [n, D]
        out.index_add_(0, token, y * weights[token, slot, None].float())
    return out


class RoutedExperts(nn.Module):
    def __init__(self, store):
        super().__init__()
        self.store = store
        self.impl: Callable[..., torch.Tensor] = lambda x, ids, w: routed_experts_reference(x, ids, w, self.store)

    def forward(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.impl(x, ids, weights)  # [T, D] fp32
