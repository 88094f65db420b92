"""The absorbed MLA attention on the CPU kernels (csrc/mla_attention, kernels/mla_attention.py,
runtime/cpu_attention.py) against model/attention.py `absorbed`, the torch version it replaces on
device = cpu: every storage kind, both kernels, causal chunks, several row groups and position ranges."""
from __future__ import annotations

import pytest
import torch
from test_runtime_approx import logits

import hybrid_k2
from hybrid_k2 import _C
from hybrid_k2.errors import HybridK2Error
from hybrid_k2.kernels.isa import available_isas
from hybrid_k2.kernels.mla_attention import mla_absorbed
from hybrid_k2.model import attention
from hybrid_k2.model.latent_cache import LatentCache
from hybrid_k2.model.mla import MLA
from hybrid_k2.runtime.cpu_attention import CpuAbsorbedAttention

ISAS = ["scalar"] + (["avx2"] if "avx2" in available_isas() else [])
SCALE = 0.1


def case(T, H, R, P, start, kv_dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    cache = LatentCache(R + P, R, capacity=start + T + 5, dtype=torch.float32, device="cpu", kv_dtype=kv_dtype)
    cache.write(0, torch.randn(start + T, R + P, generator=g) * 2)
    q_lat, q_pe = torch.randn(T, H, R, generator=g), torch.randn(T, H, P, generator=g)
    return cache, q_lat, q_pe


def kernel(cache, q_lat, q_pe, start, **kw):
    q = torch.cat((q_lat, q_pe), dim=-1).mul_(SCALE)  # [T, H, R + P]
    return mla_absorbed(q=q, data=cache.data, scale=cache.scale, length=start + q.shape[0], start=start,
                        rank=cache.rank, **kw)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_dtype", ["auto", "bf16", "fp8"])
@pytest.mark.parametrize("T,H,R,P,start", [
    (1, 4, 40, 16, 0),       # one position; R and K not multiples of the kernel's tiles
    (1, 4, 40, 16, 1500),    # decode at depth: several position ranges merged
    (3, 4, 40, 16, 700),     # a causal chunk across blocks
    (70, 4, 40, 16, 100),    # 280 query rows: several row groups, rows of one group at different positions
    (5, 8, 32, 8, 3),        # chunk longer than what precedes it
    (2, 64, 512, 64, 1100),  # K2's shape
])
def test_kernel_equals_the_torch_blockwise_attention(isa, kv_dtype, T, H, R, P, start):
    cache, q_lat, q_pe = case(T, H, R, P, start, kv_dtype)
    ref = attention.absorbed(q_lat, q_pe, cache, start, SCALE, 64)  # [T, H, R] fp32
    got = kernel(cache, q_lat, q_pe, start, isa=isa)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_result_does_not_depend_on_the_thread_count():
    cache, q_lat, q_pe = case(1, 16, 64, 16, 3000, "bf16")
    assert _C.mla_splits(3001, 16) > 1  # several ranges, merged in a fixed order
    one = kernel(cache, q_lat, q_pe, 3000, threads=1)
    assert torch.equal(one, kernel(cache, q_lat, q_pe, 3000, threads=2))
    assert torch.equal(one, kernel(cache, q_lat, q_pe, 3000, threads=3))


def test_splits_follow_the_shape_only():
    assert _C.mla_splits(100, 64) == 1  # short: one range, normalised in place
    assert _C.mla_splits(32768, 64) == 32  # decode at depth: 32 ranges of 1,024 positions
    assert _C.mla_splits(32768, 64 * 64) == 1  # 64 row groups already make enough items


def test_bad_input_is_one_clear_error():
    cache, q_lat, q_pe = case(2, 4, 32, 8, 10, "fp8")
    q = torch.cat((q_lat, q_pe), dim=-1)
    ok = dict(q=q, data=cache.data, scale=cache.scale, length=12, start=10, rank=32)
    for bad, words in [(dict(q=q.double()), "q must be contiguous float32"),
                       (dict(q=q[:, :, :20].contiguous()), "q must be contiguous float32"),
                       (dict(length=11), "need length >= 12"),
                       (dict(length=10_000), "exceeds the"),
                       (dict(scale=None), "fp8 data needs"),
                       (dict(rank=0), "rank must be"),
                       (dict(data=cache.data.view(torch.uint8)), "data must be contiguous"),
                       (dict(threads=0), "threads must be"),
                       (dict(out=torch.empty(2, 4, 31)), "out must be")]:
        with pytest.raises(HybridK2Error, match=words):
            mla_absorbed(**{**ok, **bad})


def test_static_positions_and_other_devices_fall_back_to_torch():
    cache, q_lat, q_pe = case(1, 4, 32, 8, 20, "auto")
    cpu = CpuAbsorbedAttention(threads=2)
    ref = attention.absorbed(q_lat, q_pe, cache, torch.tensor([20]), SCALE, 64)  # the CUDA-graph form
    assert torch.equal(cpu(q_lat, q_pe, cache, torch.tensor([20]), SCALE, 64), ref)


def test_fast_mode_on_cpu_attends_on_the_kernels_and_matches_torch(make_model):
    path = make_model(layers=3, experts=8, top_k=2)
    model = hybrid_k2.load(path, precision="fast")
    mlas = [m for m in model.net.modules() if isinstance(m, MLA)]
    assert mlas and all(isinstance(m.absorbed_attention, CpuAbsorbedAttention) for m in mlas)
    assert {m.absorbed_attention.threads for m in mlas} == {model.runtime.threads}
    ids = torch.randint(0, model.args.vocab_size, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    fast = logits(model, ids)  # 8 decode steps attend on the kernels
    for m in mlas:
        m.absorbed_attention = attention.absorbed
    ref = logits(model, ids)
    assert (fast - ref).abs().max().item() <= 1e-3 * ref.abs().max().item()
    model.runtime.close()
    exact = hybrid_k2.load(path, precision="exact")
    assert all(m.absorbed_attention is attention.absorbed for m in exact.net.modules() if isinstance(m, MLA))
    exact.runtime.close()
