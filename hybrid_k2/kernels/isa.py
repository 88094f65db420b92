"""ISA policy: which kernel path runs (mechanism and availability checks live in csrc/cpu_features.cpp)."""
from __future__ import annotations

import functools
import os
import warnings

from hybrid_k2.errors import HybridK2Error

ISA_ENV = "HYBRID_K2_ISA"
ISAS = ("amx", "avx512", "avx2", "scalar", "avx512vnni", "avx512bf16")
AUTO = ("amx", "avx512", "avx2", "scalar")  # the automatic choice, fastest first


def _c(module=None):
    if module is not None:
        return module
    from hybrid_k2 import _C

    return _C


def available_isas(module=None) -> list[str]:
    """ISA paths this CPU and OS can run (automatic-choice order first, then the forced-only ones)."""
    built = _c(module).built_isas()
    return [isa for isa in ISAS if isa in built and not _c(module).isa_unavailable_reason(isa)]


def default_isa(module=None) -> str:
    """The fastest path here; a CPU without AVX2 gets the scalar path with a warning."""
    isas = [isa for isa in available_isas(module) if isa in AUTO]
    if isas[0] == "scalar":
        warnings.warn("this CPU has no AVX2: the INT4 expert kernels run on the slow scalar path",
                      RuntimeWarning, stacklevel=3)
    return isas[0]


def resolve_isa(isa: str | None = None, module=None) -> str:
    """isa argument, else $HYBRID_K2_ISA, else default_isa(); a path the CPU lacks is an error.

    Called on every kernel call: the environment is read each time, the checks once per (name, module)
    (CPU features and the build do not change within a process).
    """
    name = isa if isa is not None else os.environ.get(ISA_ENV) or None
    return _resolve(name.strip().lower() if name is not None else None, _c(module))


@functools.lru_cache(maxsize=None)
def _resolve(name: str | None, module) -> str:
    if name is None:
        return default_isa(module)
    if name not in ISAS:
        raise HybridK2Error(f"unknown ISA path {name!r}; choose one of {', '.join(ISAS)}")
    why = module.isa_unavailable_reason(name)
    if why:
        raise HybridK2Error(f"ISA path {name!r} cannot run on this machine: {why}")
    if name not in module.built_isas():
        raise HybridK2Error(f"ISA path {name!r} is not part of this build")
    return name
