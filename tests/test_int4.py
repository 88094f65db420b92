"""INT4 decoding agrees bit for bit with compressed-tensors' own unpacking."""
from __future__ import annotations

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

from hybrid_k2.checkpoint.reader import CheckpointReader
from hybrid_k2.quant.int4 import dequantize_int4, pack_int4, unpack_int4


@pytest.mark.parametrize("shape", [(1, 32), (7, 64), (33, 96), (64, 2048)])
def test_unpack_matches_compressed_tensors(shape):
    g = torch.Generator().manual_seed(shape[0])
    q = torch.randint(-8, 8, shape, generator=g, dtype=torch.int8)
    packed = pack_to_int32(q, 4)
    assert torch.equal(unpack_int4(packed, shape[1]), unpack_from_int32(packed, 4, torch.Size(shape)))
    assert torch.equal(unpack_int4(packed, shape[1]), q)
    assert torch.equal(pack_int4(q), packed)


def test_extreme_nibbles():
    q = torch.tensor([[-8] * 16 + [7] * 16], dtype=torch.int8)
    packed = pack_to_int32(q, 4)
    assert torch.equal(unpack_int4(packed, 32), q)


def test_checkpoint_experts_decode_like_compressed_tensors(tiny_model):
    reader = CheckpointReader(tiny_model)
    names = [n[: -len(".weight_packed")] for n in reader.names() if n.endswith(".weight_packed")]
    assert names and all(".mlp.experts." in n for n in names)
    for name in names[:12]:
        packed, scale = reader.get(name + ".weight_packed"), reader.get(name + ".weight_scale")
        shape = tuple(reader.get(name + ".weight_shape").tolist())
        ours = unpack_int4(packed, shape[1])
        theirs = unpack_from_int32(packed, 4, torch.Size(shape))
        assert torch.equal(ours, theirs)
        # exact dequantisation = the integer times the bf16 scale, formed in fp32
        w = dequantize_int4(packed, scale, shape)
        assert torch.equal(w, theirs.float() * scale.float().repeat_interleave(32, 1))


def test_bf16_decoding_is_the_exact_value_rounded_once(tiny_model):
    """The one decoder forms W in the compute dtype directly (no fp32 temporaries): the same bits as the
    exact fp32 value cast to bf16."""
    reader = CheckpointReader(tiny_model)
    names = [n[: -len(".weight_packed")] for n in reader.names() if n.endswith(".weight_packed")]
    for name in names[:12]:
        packed, scale = reader.get(name + ".weight_packed"), reader.get(name + ".weight_scale")
        shape = tuple(reader.get(name + ".weight_shape").tolist())
        w16 = dequantize_int4(packed, scale, shape, torch.bfloat16)
        assert w16.dtype == torch.bfloat16 and torch.equal(w16, dequantize_int4(packed, scale, shape).to(torch.bfloat16))


def random_experts(E=6, D=64, I=32, seed=0) -> dict:
    from hybrid_k2.quant.int4 import quantize_int4

    g = torch.Generator().manual_seed(seed)
    parts = {}
    for name, (rows, cols) in (("gate", (I, D)), ("up", (I, D)), ("down", (D, I))):
        q, s = zip(*(quantize_int4(torch.randn(rows, cols, generator=g)) for _ in range(E)))
        parts[f"{name}_packed"] = torch.stack([pack_int4(x) for x in q])
        parts[f"{name}_scale"] = torch.stack(s)
    return parts


def test_both_expert_stores_share_one_interface():
    """The reference store and the kernels' PackedExperts differ only in who runs them: the same views,
    and the same reference result from either."""
    from hybrid_k2.model.experts import Int4ExpertStore, routed_experts_reference
    from hybrid_k2.runtime.cpu_experts import kernels_available

    if not kernels_available():
        pytest.skip("the C++ kernels are not built")
    from hybrid_k2.kernels import PackedExperts

    parts = random_experts()
    E, I, D8 = parts["gate_packed"].shape
    ref_store = Int4ExpertStore(E, D8 * 8, I)
    for e in range(E):
        ref_store.load_expert(e, **{k: v[e] for k, v in parts.items()})
    packed = PackedExperts.from_stacked(**parts)
    for e in range(E):
        a, b = ref_store.expert_tensors(e), packed.expert_tensors(e)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, D8 * 8, generator=g)
    ids = torch.stack([torch.randperm(E, generator=g)[:3] for _ in range(5)])
    w = torch.rand(5, 3, generator=g)
    assert torch.equal(routed_experts_reference(x, ids, w, ref_store), routed_experts_reference(x, ids, w, packed))
