"""CPU kernels: the routed INT4 experts of one MoE layer (see docs/kernels.md)."""
from hybrid_k2.kernels.bandwidth import measure_bandwidth
from hybrid_k2.kernels.experts import LAYOUT, PackedExperts
from hybrid_k2.kernels.isa import available_isas, default_isa, resolve_isa
from hybrid_k2.kernels.ops import MoeHandle, moe_forward, moe_scalar_reference, moe_submit
from hybrid_k2.kernels.reference import moe_reference

__all__ = ["PackedExperts", "LAYOUT", "moe_forward", "moe_submit", "MoeHandle", "moe_reference",
           "moe_scalar_reference", "measure_bandwidth", "available_isas", "default_isa",
           "resolve_isa"]
