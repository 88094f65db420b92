"""Keyword-only wrapper over the C++ int8 linear (csrc/int8_linear/): the device side's linears on the CPU.

y [T, O] fp32 = x [T, I] @ (q [O, I] int8 * scale [O] fp32)^T, the math of runtime/int8.py's Int8Linear
(device-int8) with fp32 sums; a GEMV below `gemm_min_tokens` tokens, a blocked GEMM from there.
Runs on the kernel thread pool the routed experts use (`threads` workers; one pool per size).
"""
from __future__ import annotations

import os

import torch

from hybrid_k2.errors import HybridK2Error
from hybrid_k2.kernels.isa import ISA_ENV, auto_candidates, resolve_isa

DEFAULT_GEMM_MIN_TOKENS = 8  # replaced by the measured crossover (kernels/tuning.py) when known


def _c():
    from hybrid_k2 import _C

    return _C


def _check(x, q, scale, out, threads, gemm_min_tokens):
    for name, t in (("x", x), ("q", q), ("scale", scale)):
        if not isinstance(t, torch.Tensor):
            raise HybridK2Error(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise HybridK2Error(f"{name} must be on the CPU, got {t.device}")
    if q.dim() != 2 or q.dtype != torch.int8 or not q.is_contiguous() or q.shape[0] < 1 or q.shape[1] < 1:
        raise HybridK2Error(f"q must be a contiguous non-empty int8 [O, I], got {q.dtype} {list(q.shape)}")
    O, I = q.shape
    if scale.dtype != torch.float32 or tuple(scale.shape) != (O,) or not scale.is_contiguous():
        raise HybridK2Error(f"scale must be contiguous float32 [{O}], got {scale.dtype} {list(scale.shape)}")
    if x.dim() != 2 or x.shape[1] != I:
        raise HybridK2Error(f"x must be [T, {I}], got {list(x.shape)}")
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise HybridK2Error(f"x must be float32 or bfloat16, got {x.dtype}")
    if out is not None and (not isinstance(out, torch.Tensor) or out.dtype != torch.float32 or out.device.type != "cpu"
                            or tuple(out.shape) != (x.shape[0], O) or not out.is_contiguous()):
        raise HybridK2Error(f"out must be a contiguous CPU float32 tensor [{x.shape[0]}, {O}]")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise HybridK2Error(f"threads must be a positive int or None, got {threads!r}")
    if not isinstance(gemm_min_tokens, int) or gemm_min_tokens < 1:
        raise HybridK2Error(f"gemm_min_tokens must be a positive int, got {gemm_min_tokens!r}")


def int8_linear(*, x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, out: torch.Tensor | None = None,
                threads: int | None = None, gemm_min_tokens: int = DEFAULT_GEMM_MIN_TOKENS,
                isa: str | None = None) -> torch.Tensor:
    """x [T, I] fp32/bf16, q [O, I] int8, scale [O] fp32 -> [T, O] fp32 (into `out` when given).

    threads: workers of the shared kernel pool (default: the CPUs of this process). isa: force a path
    ("scalar" is the reference; any SIMD path runs the AVX2 kernels; default: $HYBRID_K2_ISA, else the
    automatic choice)."""
    _check(x, q, scale, out, threads, gemm_min_tokens)
    _C = _c()
    # Any SIMD path of the registry runs the AVX2 kernel: no measured choice needed, only scalar or not.
    path = resolve_isa(isa, _C) if isa is not None or os.environ.get(ISA_ENV) else auto_candidates(_C)[0]
    xf = x.float().contiguous()  # [T, I] fp32 (no copy when it already is)
    T, (O, I) = xf.shape[0], q.shape
    if out is None:
        out = torch.empty(T, O, dtype=torch.float32)
    _C.int8_linear(xf.data_ptr(), T, I, q.data_ptr(), scale.data_ptr(), O, out.data_ptr(), path,
                   threads if threads is not None else _C.default_threads(), gemm_min_tokens)
    return out


def int8_linear_reference(*, x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The scalar C++ reference (csrc/int8_linear/int8_linear_ref.cpp), one thread: [T, O] fp32."""
    return int8_linear(x=x, q=q, scale=scale, threads=1, isa="scalar")
