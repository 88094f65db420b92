"""Experts computed on the device (hot and streamed): decoded in the compute dtype, summed in fp32."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hybrid_k2.model.experts import Int4ExpertStore, routed_experts_reference
from hybrid_k2.runtime.device_experts import run_local
from test_int4 import random_experts


class WeightSizedFp32(TorchDispatchMode):
    """Counts the fp32 tensors of at least one expert matrix's size (I x D) that torch ops produce."""

    def __init__(self, size: int = 32 * 64):
        super().__init__()
        self.size, self.count = size, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.count += sum(isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.numel() >= self.size
                          for t in tree_flatten(out)[0])
        return out


def store_and_routing():
    parts = random_experts(E=6, D=64, I=32, seed=2)
    store = Int4ExpertStore(6, 64, 32)
    for e in range(6):
        store.load_expert(e, **{k: v[e] for k, v in parts.items()})
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 64, generator=g)
    ids = torch.stack([torch.randperm(6, generator=g)[:3] for _ in range(7)])
    return store, x, ids, torch.rand(7, 3, generator=g)


def test_fp32_is_the_reference_and_holes_are_skipped():
    store, x, ids, w = store_and_routing()
    assert torch.equal(run_local(x, ids, w, store), routed_experts_reference(x, ids, w, store))
    holes = ids.clone()
    holes[:, 0] = -1  # slot 0 is not here (the CPU's)
    expected = routed_experts_reference(x, ids[:, 1:], w[:, 1:], store)
    assert torch.allclose(run_local(x, holes, w, store), expected, rtol=1e-6, atol=1e-6)
    assert run_local(x, torch.full_like(ids, -1), w, store) is None


def test_bf16_activations_decode_bf16_weights():
    """precision fast: the expert is decoded in bf16 (88 MB for a K2 expert, as planned; not 176 MB of
    fp32) and the result, summed in fp32, stays close to the fp32 reference."""
    store, x, ids, w = store_and_routing()
    with WeightSizedFp32() as seen:
        got = run_local(x.to(torch.bfloat16), ids, w, store)
    assert seen.count == 0  # no [I, D] weight ever formed in fp32
    with WeightSizedFp32() as seen:
        routed_experts_reference(x, ids, w, store)
    assert seen.count > 0  # (the check sees them where they are: the fp32 reference)
    ref = routed_experts_reference(x, ids, w, store)
    assert got.dtype == torch.float32
    assert ((got - ref).norm() / ref.norm()).item() < 2e-2
