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
