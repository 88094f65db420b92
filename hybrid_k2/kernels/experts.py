"""PackedExperts: one MoE layer's routed INT4 experts in host RAM, in the kernels' layout.

Layout "ct-int4-g32" keeps the compressed-tensors bytes as they are in the checkpoint (see
docs/kernels.md): per expert, gate/up `weight_packed` int32 [I, D/8] and `weight_scale` bf16
[I, D/32], down int32 [D, I/8] and bf16 [D, I/32]; nibble = q + 8, low nibble first, one scale per
32 inputs. The loader fills it expert by expert with load_expert(), so no second copy of the layer
is ever held.
"""
from __future__ import annotations

import torch

from hybrid_k2.errors import HybridK2Error

LAYOUT = "ct-int4-g32"
_PROJ = ("gate", "up", "down")


class PackedExperts:
    """The experts of one MoE layer (num_experts E, hidden D, intermediate I)."""

    def __init__(self, store, module):
        self._store = store
        self._module = module  # the extension that made `store` runs the kernels on it
        self._bytes = torch.frombuffer(store, dtype=torch.uint8)  # keeps `store` alive

    @classmethod
    def empty(cls, *, num_experts: int, hidden: int, intermediate: int, layout: str | None = None) -> "PackedExperts":
        """Allocates (64-byte aligned, untouched until loaded) room for `num_experts` experts."""
        from hybrid_k2 import _C

        return cls._empty_on(_C, num_experts=num_experts, hidden=hidden, intermediate=intermediate, layout=layout)

    @classmethod
    def _empty_on(cls, module, *, num_experts, hidden, intermediate, layout=None) -> "PackedExperts":
        """empty() on another build of the kernels (the emulated-ISA test module)."""
        layout = LAYOUT if layout is None else layout
        if layout != LAYOUT:
            raise HybridK2Error(f"unsupported expert layout {layout!r} (supported: {LAYOUT!r})")
        for name, v in (("num_experts", num_experts), ("hidden", hidden), ("intermediate", intermediate)):
            if not isinstance(v, int) or v <= 0:
                raise HybridK2Error(f"{name} must be a positive int, got {v!r}")
        if hidden % 32 or intermediate % 32:
            raise HybridK2Error(f"hidden ({hidden}) and intermediate ({intermediate}) must be multiples of 32")
        return cls(module.ExpertStore(num_experts, hidden, intermediate, layout), module)

    @classmethod
    def from_stacked(cls, *, gate_packed, gate_scale, up_packed, up_scale, down_packed, down_scale,
                     layout: str | None = None) -> "PackedExperts":
        """From stacked checkpoint tensors: gate/up [E, I, D/8] int32 + [E, I, D/32] bf16,
        down [E, D, I/8] int32 + [E, D, I/32] bf16 (tests and benchmarks)."""
        if gate_packed.dim() != 3 or down_packed.dim() != 3:
            raise HybridK2Error("from_stacked expects [E, rows, cols/8] packed tensors")
        E, I, D8 = gate_packed.shape
        pe = cls.empty(num_experts=E, hidden=D8 * 8, intermediate=I, layout=layout)
        for e in range(E):
            pe.load_expert(e, gate_packed=gate_packed[e], gate_scale=gate_scale[e], up_packed=up_packed[e],
                           up_scale=up_scale[e], down_packed=down_packed[e], down_scale=down_scale[e])
        return pe

    @property
    def num_experts(self) -> int:
        return self._store.num_experts

    @property
    def hidden(self) -> int:
        return self._store.hidden

    @property
    def intermediate(self) -> int:
        return self._store.intermediate

    @property
    def layout(self) -> str:
        return self._store.layout

    @property
    def nbytes(self) -> int:
        return self._store.total_bytes

    def _shapes(self) -> dict:
        D, I = self.hidden, self.intermediate
        return {"gate_packed": ((I, D // 8), torch.int32), "gate_scale": ((I, D // 32), torch.bfloat16),
                "up_packed": ((I, D // 8), torch.int32), "up_scale": ((I, D // 32), torch.bfloat16),
                "down_packed": ((D, I // 8), torch.int32), "down_scale": ((D, I // 32), torch.bfloat16)}

    def load_expert(self, e: int, *, gate_packed, gate_scale, up_packed, up_scale, down_packed, down_scale) -> None:
        """Copies expert `e`'s six checkpoint tensors (the `*.weight_packed` / `*.weight_scale`)."""
        if not isinstance(e, int) or not 0 <= e < self.num_experts:
            raise HybridK2Error(f"expert index {e!r} out of range [0, {self.num_experts})")
        given = {"gate_packed": gate_packed, "gate_scale": gate_scale, "up_packed": up_packed,
                 "up_scale": up_scale, "down_packed": down_packed, "down_scale": down_scale}
        ptrs = []
        keep = []
        for name, (shape, dtype) in self._shapes().items():
            t = given[name]
            if not isinstance(t, torch.Tensor):
                raise HybridK2Error(f"{name} of expert {e} must be a torch.Tensor, got {type(t).__name__}")
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise HybridK2Error(f"{name} of expert {e}: expected {dtype} {list(shape)}, "
                                    f"got {t.dtype} {list(t.shape)}")
            if t.device.type != "cpu":
                t = t.cpu()
            t = t.contiguous()
            keep.append(t)
            ptrs.append(t.data_ptr())
        self._store.load_expert(e, ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4], ptrs[5])

    def expert_tensors(self, e: int) -> dict[str, torch.Tensor]:
        """Views (no copy) of expert `e`'s six tensors, shaped as in the checkpoint."""
        if not 0 <= e < self.num_experts:
            raise HybridK2Error(f"expert index {e} out of range [0, {self.num_experts})")
        base = e * self._store.expert_stride
        offs = self._store.sections()
        out = {}
        for name, (shape, dtype) in self._shapes().items():
            n = shape[0] * shape[1] * (4 if dtype == torch.int32 else 2)
            out[name] = self._bytes[base + offs[name]: base + offs[name] + n].view(dtype).view(shape)
        return out

    def is_loaded(self, e: int) -> bool:
        return bool(self._store.loaded(e))

    def __repr__(self) -> str:
        return (f"PackedExperts(num_experts={self.num_experts}, hidden={self.hidden}, "
                f"intermediate={self.intermediate}, layout={self.layout!r}, {self.nbytes / 2**20:.1f} MiB)")
