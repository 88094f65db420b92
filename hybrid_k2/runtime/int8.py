"""Weight-only int8 for GPU-side linears: what `device-int8` placement stores (half of bf16).

Per output channel o: scale[o] = max_k |W[o, k]| / 127 and q[o, k] = round(W[o, k] / scale[o]) in
[-127, 127], computed once at load from the checkpoint's bf16 weight. Activations stay in the compute
dtype: y = (x @ q^T) * scale, with q cast to the activation dtype on the fly. `weight` gives the
dequantised matrix for code that reads it directly (MLA's absorbed decode folds kv_b_proj.weight).
Swapped in from outside the model (by the loader, following the placement), like any speed-up.

On device = cpu with the C++ kernels built, CpuInt8Linear runs the same weights through the project's
CPU kernels (hybrid_k2/kernels/int8_linear.py: fp32 activations, AVX2 GEMV for decode reading each weight
byte once per token, a blocked GEMM for prefill) on the pool the routed experts use; Int8Linear's torch
forward stays its reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_BYTES = 64 * 2**20  # largest dequantised weight block alive at once (the planner counts it)
QUANT_BLOCK_BYTES = 4 * 2**20  # fp32 rows quantised at once while loading


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] -> (q [out, in] int8, scale [out] fp32), symmetric per output channel.

    In blocks of rows, so that the fp32 temporaries stay near QUANT_BLOCK_BYTES (lm_head in fp32 would
    be 4.7 GB for K2, loading must not need it)."""
    out_f, in_f = w.shape
    q = torch.empty(out_f, in_f, dtype=torch.int8, device=w.device)
    scale = torch.empty(out_f, dtype=torch.float32, device=w.device)
    rows = max(1, QUANT_BLOCK_BYTES // (4 * max(1, in_f)))
    # one fp32 block, worked in place: loading allocates nothing per block (fresh temporaries per block
    # fragmented the heap between the kept int8 tensors, and the peak RSS of loading with it)
    block = torch.empty(min(rows, out_f), in_f, dtype=torch.float32, device=w.device)
    for o0 in range(0, out_f, rows):
        o1 = min(o0 + rows, out_f)
        wf = block[:o1 - o0]  # [rows, in]
        wf.copy_(w[o0:o1])
        lo, hi = torch.aminmax(wf, dim=1)  # [rows] each
        s = (torch.maximum(hi, -lo) / 127.0).clamp_min(1e-12)  # [rows]
        q[o0:o1].copy_(wf.div_(s[:, None]).round_().clamp_(-127, 127))
        scale[o0:o1] = s
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


class CpuInt8Linear(Int8Linear):
    """Int8Linear on the CPU kernels. `threads` (the runtime's kernel pool size) and `gemm_min_tokens`
    (the GEMV/GEMM crossover, kernels/tuning.py) are set by the runtime after loading."""

    threads: int | None = None
    gemm_min_tokens: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        from hybrid_k2.kernels.int8_linear import DEFAULT_GEMM_MIN_TOKENS, int8_linear

        y = int8_linear(x=x.reshape(-1, self.in_features), q=self.weight_int8, scale=self.weight_scale,
                        threads=self.threads, gemm_min_tokens=self.gemm_min_tokens or DEFAULT_GEMM_MIN_TOKENS)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)  # [T, out] fp32 -> x's dtype

    def extra_repr(self) -> str:
        return super().extra_repr() + ", CPU kernels"


def kernels_built() -> bool:
    try:
        from hybrid_k2 import _C

        return hasattr(_C, "int8_linear")
    except ImportError:
        return False


def make_int8_linear(w: torch.Tensor, *, device: torch.device, dtype: torch.dtype) -> Int8Linear:
    """POLICY: the CPU kernels where the weights live in host RAM and they are built, else the torch path."""
    cls = CpuInt8Linear if torch.device(device).type == "cpu" and kernels_built() else Int8Linear
    return cls.from_weight(w, device=device, dtype=dtype)
