"""Keyword-only wrappers over the C++ routed-MoE op (csrc/int4_moe/)."""
from __future__ import annotations

import torch

from hybrid_k2.errors import HybridK2Error
from hybrid_k2.kernels.experts import PackedExperts
from hybrid_k2.kernels.isa import resolve_isa

PRECISIONS = ("exact", "fast")


class MoeHandle:
    """A routed-MoE call running on the kernel thread pool; wait() returns its output [T, D] fp32."""

    def __init__(self, handle, out: torch.Tensor, keep: tuple):
        self._handle = handle
        self._out = out
        self._keep = keep  # the inputs stay alive until the kernels are done with them

    def wait(self) -> torch.Tensor:
        """Blocks (without the GIL) until the op is done; returns `out`."""
        self._handle.wait()
        self._keep = ()
        return self._out

    def done(self) -> bool:
        return self._handle.done()

    def __del__(self):
        # A handle dropped without wait(): the pool may still read the inputs kept alive here.
        handle = getattr(self, "_handle", None)
        if handle is not None:
            try:
                handle.wait()
            except Exception:  # the error belonged to the call nobody waited for
                pass


def _check(x, expert_ids, weights, experts, precision, threads, out):
    if not isinstance(experts, PackedExperts):
        raise HybridK2Error(f"experts must be a PackedExperts, got {type(experts).__name__}")
    if precision not in PRECISIONS:
        raise HybridK2Error(f"precision must be 'exact' or 'fast', got {precision!r}")
    for name, t in (("x", x), ("expert_ids", expert_ids), ("weights", weights)):
        if not isinstance(t, torch.Tensor):
            raise HybridK2Error(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise HybridK2Error(f"{name} must be on the CPU, got {t.device}")
    if x.dim() != 2 or x.shape[1] != experts.hidden:
        raise HybridK2Error(f"x must be [T, {experts.hidden}], got {list(x.shape)}")
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise HybridK2Error(f"x must be float32 or bfloat16, got {x.dtype}")
    T = x.shape[0]
    if expert_ids.dim() != 2 or expert_ids.shape[0] != T or expert_ids.shape[1] < 1:
        raise HybridK2Error(f"expert_ids must be [T={T}, K>=1], got {list(expert_ids.shape)}")
    if expert_ids.dtype not in (torch.int32, torch.int64):
        raise HybridK2Error(f"expert_ids must be int32 or int64, got {expert_ids.dtype}")
    if tuple(weights.shape) != tuple(expert_ids.shape) or weights.dtype != torch.float32:
        raise HybridK2Error(f"weights must be float32 {list(expert_ids.shape)}, got {weights.dtype} {list(weights.shape)}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise HybridK2Error(f"threads must be a positive int or None, got {threads!r}")
    if out is not None:
        if not isinstance(out, torch.Tensor) or out.dtype != torch.float32 or tuple(out.shape) != (T, experts.hidden) \
                or not out.is_contiguous() or out.device.type != "cpu":
            raise HybridK2Error(f"out must be a contiguous CPU float32 tensor [{T}, {experts.hidden}]")


def moe_submit(*, x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor, experts: PackedExperts,
               precision: str = "exact", threads: int | None = None, out: torch.Tensor | None = None,
               isa: str | None = None) -> MoeHandle:
    """Starts out = sum_k weights[:, k] * expert_{expert_ids[:, k]}(x) on the kernel pool; returns at once.

    x [T, D] fp32/bf16, expert_ids [T, K] int32/int64, weights [T, K] fp32 -> handle.wait() [T, D] fp32.
    precision "exact" (fp32 activations) or "fast" (activations as int8 per group of 32).
    isa: force a kernel path (default: $HYBRID_K2_ISA, else the fastest this CPU has)."""
    _check(x, expert_ids, weights, experts, precision, threads, out)
    _C = experts._module
    path = resolve_isa(isa, _C, tokens=x.shape[0])
    x = x.contiguous()
    expert_ids = expert_ids.contiguous()
    weights = weights.contiguous()
    T = x.shape[0]
    if out is None:
        out = torch.empty(T, experts.hidden, dtype=torch.float32)
    n = threads if threads is not None else _C.default_threads()
    h = _C.moe_submit(experts._store, x.data_ptr(), x.dtype == torch.bfloat16, T, expert_ids.data_ptr(),
                      expert_ids.dtype == torch.int64, expert_ids.shape[1], weights.data_ptr(), out.data_ptr(),
                      precision == "fast", path, n)
    return MoeHandle(h, out, (x, expert_ids, weights, experts))


def moe_forward(*, x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor, experts: PackedExperts,
                precision: str = "exact", threads: int | None = None, out: torch.Tensor | None = None,
                isa: str | None = None) -> torch.Tensor:
    """moe_submit(...).wait(): the routed experts of one layer, [T, D] fp32."""
    return moe_submit(x=x, expert_ids=expert_ids, weights=weights, experts=experts, precision=precision,
                      threads=threads, out=out, isa=isa).wait()


def moe_scalar_reference(*, x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor,
                         experts: PackedExperts, precision: str = "exact") -> torch.Tensor:
    """The scalar C++ reference path (csrc/int4_moe/int4_moe_ref.cpp), one thread."""
    return moe_forward(x=x, expert_ids=expert_ids, weights=weights, experts=experts, precision=precision,
                       threads=1, isa="scalar")
