"""ISA policy: which kernel path runs (mechanism and availability checks live in csrc/cpu_features.cpp)."""
from __future__ import annotations

import os
import warnings

from hybrid_k2.errors import HybridK2Error

ISA_ENV = "HYBRID_K2_ISA"
ISAS = ("amx", "avx512bf16", "avx512", "avx2", "scalar")


def _c():
    from hybrid_k2 import _C

    return _C


def available_isas() -> list[str]:
    """ISA paths this CPU and OS can run, fastest first."""
    return [isa for isa in ISAS if not _c().isa_unavailable_reason(isa) and _built(isa)]


def _built(isa: str) -> bool:
    return isa in _c().built_isas()


def default_isa() -> str:
    """The fastest path here; a CPU without AVX2 gets the scalar path with a warning."""
    isas = available_isas()
    if isas[0] == "scalar":
        warnings.warn("this CPU has no AVX2: the INT4 expert kernels run on the slow scalar path",
                      RuntimeWarning, stacklevel=3)
    return isas[0]


def resolve_isa(isa: str | None = None) -> str:
    """isa argument, else $HYBRID_K2_ISA, else default_isa(); a path the CPU lacks is an error."""
    name = isa if isa is not None else os.environ.get(ISA_ENV) or None
    if name is None:
        return default_isa()
    name = name.strip().lower()
    if name not in ISAS:
        raise HybridK2Error(f"unknown ISA path {name!r}; choose one of {', '.join(ISAS)}")
    why = _c().isa_unavailable_reason(name)
    if why:
        raise HybridK2Error(f"ISA path {name!r} cannot run on this machine: {why}")
    if not _built(name):
        raise HybridK2Error(f"ISA path {name!r} is not part of this build")
    return name
