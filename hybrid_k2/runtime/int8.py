"""Weight-only int8 for GPU-side linears: what `device-int8` placement stores (half of bf16).

Per output channel o: scale[o] = max_k |W[o, k]| / 127 and q[o, k] = round(W[o, k] / scale[o]) in
[-127, 127], computed once at load from the checkpoint's bf16 weight. Activations stay in the compute
dtype: y = (x @ q^T) * scale, with q cast to the activation dtype on the fly. `weight` gives the
dequantised matrix for code that reads it directly (MLA's absorbed decode folds kv_b_proj.weight).
Swapped in from outside the model (by the loader, following the placement), like any speed-up.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_BYTES = 64 * 2**20  # largest dequantised weight block alive at once (the planner counts it)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] -> (q [out, in] int8, scale [out] fp32), symmetric per output channel."""
    wf = w.float()
    scale = (wf.abs().amax(dim=1) / 127.0).clamp_min(1e-12)  # [out]
    q = torch.round(wf / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    def __init__(self, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.dtype = dtype
        self.register_buffer("weight_int8", q)  # [out, in] int8
        self.register_buffer("weight_scale", scale)  # [out] fp32

    @classmethod
    def from_weight(cls, w: torch.Tensor, *, device: torch.device, dtype: torch.dtype) -> "Int8Linear":
        q, scale = quantize_int8(w)
        return cls(q.to(device), scale.to(device), dtype)

    @property
    def weight(self) -> torch.Tensor:  # [out, in] dequantised, in the compute dtype
        return (self.weight_int8.float() * self.weight_scale[:, None]).to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out]
        # Dequantise BLOCK_BYTES of rows at a time: lm_head in bf16 would be a 2.35 GB temporary.
        rows = max(1, BLOCK_BYTES // (self.in_features * x.element_size()))
        if rows >= self.out_features:
            return F.linear(x, self.weight_int8.to(x.dtype)) * self.weight_scale.to(x.dtype)
        out = torch.empty(*x.shape[:-1], self.out_features, dtype=x.dtype, device=x.device)
        for o0 in range(0, self.out_features, rows):
            o1 = min(o0 + rows, self.out_features)
            out[..., o0:o1] = F.linear(x, self.weight_int8[o0:o1].to(x.dtype)) * self.weight_scale[o0:o1].to(x.dtype)
        return out

    @property
    def nbytes(self) -> int:
        return self.weight_int8.numel() + 4 * self.weight_scale.numel()

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 per-channel"
