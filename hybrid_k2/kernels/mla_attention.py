"""Keyword-only wrapper over the C++ absorbed MLA attention (csrc/mla_attention/): decode and short chunks
of the device side's attention when the device is the CPU.

out [T, H, R] fp32 = the absorbed attention of the folded, scaled queries q [T, H, R + P] over the first
`length` rows of one layer's latent cache as stored (fp32, bf16, or fp8 e4m3 with scales [*, 2]); query t
sits at position start + t and sees the rows up to it. The math of model/attention.py `absorbed` (the
readable torch version it is tested against), on the kernel thread pool the routed experts use.
`mla_fold` runs the per-head folds around it (W_UK into the queries, W_UV out of the latent output).
"""
from __future__ import annotations

import os

import torch

from hybrid_k2.errors import HybridK2Error
from hybrid_k2.kernels.isa import ISA_ENV, auto_candidates, resolve_isa

KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float8_e4m3fn: 2}


def _c():
    from hybrid_k2 import _C

    return _C


def _check(q, data, scale, length, start, rank, out, threads):
    for name, t in (("q", q), ("data", data)):
        if not isinstance(t, torch.Tensor):
            raise HybridK2Error(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise HybridK2Error(f"{name} must be on the CPU, got {t.device}")
    if data.dim() != 2 or data.dtype not in KINDS or not data.is_contiguous():
        raise HybridK2Error(f"data must be contiguous [S, K] float32, bfloat16 or float8_e4m3fn, "
                            f"got {data.dtype} {list(data.shape)}")
    K = data.shape[1]
    if q.dim() != 3 or q.dtype != torch.float32 or q.shape[2] != K or not q.is_contiguous() or q.shape[0] < 1:
        raise HybridK2Error(f"q must be contiguous float32 [T, H, {K}], got {q.dtype} {list(q.shape)}")
    if not isinstance(rank, int) or not 1 <= rank <= K:
        raise HybridK2Error(f"rank must be an int in [1, {K}], got {rank!r}")
    T = q.shape[0]
    if not isinstance(start, int) or not isinstance(length, int) or start < 0 or start + T > length:
        raise HybridK2Error(f"queries at positions {start}..{start + T - 1} need length >= {start + T}, got {length}")
    if length > data.shape[0]:
        raise HybridK2Error(f"length {length} exceeds the {data.shape[0]} rows of data")
    if data.dtype == torch.float8_e4m3fn:
        if (not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32 or scale.device.type != "cpu"
                or scale.dim() != 2 or scale.shape[1] != 2 or scale.shape[0] < length or not scale.is_contiguous()):
            raise HybridK2Error("fp8 data needs contiguous CPU float32 scales [S, 2]")
    elif scale is not None:
        raise HybridK2Error("scale is for fp8 data only")
    if out is not None and (not isinstance(out, torch.Tensor) or out.dtype != torch.float32 or out.device.type != "cpu"
                            or tuple(out.shape) != (T, q.shape[1], rank) or not out.is_contiguous()):
        raise HybridK2Error(f"out must be a contiguous CPU float32 tensor [{T}, {q.shape[1]}, {rank}]")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise HybridK2Error(f"threads must be a positive int or None, got {threads!r}")


def mla_absorbed(*, q: torch.Tensor, data: torch.Tensor, scale: torch.Tensor | None = None, length: int,
                 start: int, rank: int, out: torch.Tensor | None = None, threads: int | None = None,
                 isa: str | None = None) -> torch.Tensor:
    """q [T, H, K] fp32 (queries folded into the latent space and multiplied by the softmax scale), data
    [>= length, K] the cache rows as stored (scale [>= length, 2] for fp8) -> [T, H, rank] fp32.

    threads: participants on the shared kernel pool (default: the CPUs of this process); the result does
    not depend on it. isa: "scalar" runs the reference kernel; any SIMD path the AVX2 one (default:
    $HYBRID_K2_ISA, else the automatic choice)."""
    _check(q, data, scale, length, start, rank, out, threads)
    _C = _c()
    path = resolve_isa(isa, _C) if isa is not None or os.environ.get(ISA_ENV) else auto_candidates(_C)[0]
    T, H, K = q.shape
    if out is None:
        out = torch.empty(T, H, rank, dtype=torch.float32)
    _C.mla_absorbed(q.data_ptr(), T, H, rank, K - rank, data.data_ptr(), 0 if scale is None else scale.data_ptr(),
                    KINDS[data.dtype], length, start, out.data_ptr(), path,
                    threads if threads is not None else _C.default_threads())
    return out


FOLD_FORMS = ("cols", "rows")


def mla_fold(*, x: torch.Tensor, w: torch.Tensor, form: str, threads: int | None = None,
             isa: str | None = None) -> torch.Tensor:
    """Every head's fold, x [T, H, I] fp32 -> [T, H, O] fp32:
         form "cols": y[t, h, o] = sum_i x[t, h, i] w[h, i, o]   (w [H, I, O]: W_UK, q_nope -> q_lat)
         form "rows": y[t, h, o] = sum_i x[t, h, i] w[h, o, i]   (w [H, O, I]: W_UV, o_lat -> o)
    w: fp32 or int8 on the CPU, its last dimension contiguous (a view into kv_b_proj's [H, N + V, R] weight
    is fine); int8 is widened in registers, its scales are the caller's (see runtime/cpu_attention.py).
    The einsums of model/attention.py `absorbed_heads` are the reference."""
    if form not in FOLD_FORMS:
        raise HybridK2Error(f"form must be one of {', '.join(FOLD_FORMS)}, got {form!r}")
    for name, t, dtypes in (("x", x, (torch.float32,)), ("w", w, (torch.float32, torch.int8))):
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.dtype not in dtypes or t.dim() != 3:
            raise HybridK2Error(f"{name} must be a 3-D {' or '.join(str(d)[6:] for d in dtypes)} CPU tensor")
    if not x.is_contiguous() or w.stride(2) != 1 or w.stride(1) < w.shape[2] or w.stride(0) < 1:
        raise HybridK2Error("x must be contiguous and w's last dimension contiguous")
    T, H, I = x.shape
    if w.shape[0] != H or w.shape[1 if form == "cols" else 2] != I:
        raise HybridK2Error(f"w {list(w.shape)} does not fold x {list(x.shape)} in form {form!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise HybridK2Error(f"threads must be a positive int or None, got {threads!r}")
    _C = _c()
    path = resolve_isa(isa, _C) if isa is not None or os.environ.get(ISA_ENV) else auto_candidates(_C)[0]
    O = w.shape[2 if form == "cols" else 1]
    y = torch.empty(T, H, O, dtype=torch.float32)
    _C.mla_fold(form == "cols", x.data_ptr(), T, H, I, O, w.data_ptr(), w.dtype == torch.int8, w.stride(0), w.stride(1),
                y.data_ptr(), path,
                threads if threads is not None else _C.default_threads())
    return y
