"""ISA policy: which kernel path runs (the registry, mechanism and availability checks live in
csrc/cpu_features.cpp; the measured choice in kernels/tuning.py).

Every list here derives from the C++ registry (`_C.isa_registry()`: name, automatic candidate, what):
one place names the paths. The automatic choice is the measured fastest candidate this CPU runs, for
decode and for prefill separately (`tokens` tells which); a build other than the installed one (the
emulated test module) takes the registry order without measuring.
"""
from __future__ import annotations

import functools
import os
import warnings

from hybrid_k2.errors import HybridK2Error

ISA_ENV = "HYBRID_K2_ISA"


def _c(module=None):
    if module is not None:
        return module
    from hybrid_k2 import _C

    return _C


def isa_names(module=None) -> list[str]:
    """Every path of the registry, the automatic candidates first."""
    return [name for name, _, _ in _c(module).isa_registry()]


def available_isas(module=None) -> list[str]:
    """ISA paths this CPU and OS can run (registry order)."""
    m = _c(module)
    built = m.built_isas()
    return [isa for isa in isa_names(m) if isa in built and not m.isa_unavailable_reason(isa)]


def auto_candidates(module=None) -> list[str]:
    """The automatic choice's candidates this machine runs, in the registry's order (scalar only
    where no SIMD path runs)."""
    m = _c(module)
    auto = {name for name, automatic, _ in m.isa_registry() if automatic}
    simd = [isa for isa in available_isas(m) if isa in auto and isa != "scalar"]
    return simd or ["scalar"]


def _measured(module) -> bool:
    try:
        from hybrid_k2 import _C
    except ImportError:
        return False
    return module is _C


def default_isa(module=None, *, tokens: int | None = None) -> str:
    """The fastest path here (measured once per CPU model, kernels/tuning.py); a CPU without AVX2 gets
    the scalar path with a warning."""
    m = _c(module)
    candidates = auto_candidates(m)
    if candidates == ["scalar"]:
        warnings.warn("this CPU has no AVX2: the INT4 expert kernels run on the slow scalar path",
                      RuntimeWarning, stacklevel=3)
        return "scalar"
    if len(candidates) == 1 or not _measured(m):
        return candidates[0]
    from hybrid_k2.kernels.tuning import auto_isa

    return auto_isa(threads=m.default_threads(), tokens=tokens)


def resolve_isa(isa: str | None = None, module=None, *, tokens: int | None = None) -> str:
    """isa argument, else $HYBRID_K2_ISA, else default_isa() for `tokens` tokens; a path the CPU lacks
    is an error.

    Called on every kernel call: the environment is read each time, the checks once per (name, module,
    phase) (CPU features and the build do not change within a process).
    """
    name = isa if isa is not None else os.environ.get(ISA_ENV) or None
    if name is not None:
        return _resolve(name.strip().lower(), _c(module), None)
    from hybrid_k2.kernels.tuning import PREFILL_TOKENS

    phase = "prefill" if tokens is not None and tokens >= PREFILL_TOKENS // 4 else "decode"
    return _resolve(None, _c(module), phase)


@functools.lru_cache(maxsize=None)
def _resolve(name: str | None, module, phase: str | None) -> str:
    if name is None:
        return default_isa(module, tokens=1 if phase == "decode" else 10**6)
    names = isa_names(module)
    if name not in names:
        raise HybridK2Error(f"unknown ISA path {name!r}; choose one of {', '.join(names)}")
    why = module.isa_unavailable_reason(name)
    if why:
        raise HybridK2Error(f"ISA path {name!r} cannot run on this machine: {why}")
    if name not in module.built_isas():
        raise HybridK2Error(f"ISA path {name!r} is not part of this build")
    return name
