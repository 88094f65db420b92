"""The absorbed MLA attention on the CPU kernels (csrc/mla_attention, kernels/mla_attention.py,
runtime/cpu_attention.py) against model/attention.py `absorbed` / `absorbed_heads`, the torch versions it
replaces on device = cpu: every storage kind, both kernels, causal chunks, several row groups and
position ranges, and the folds into and out of the latent space."""
from __future__ import annotations

import pytest
import torch
from test_runtime_approx import logits

import hybrid_k2
from hybrid_k2 import _C
from hybrid_k2.errors import HybridK2Error
from hybrid_k2.kernels.isa import available_isas
from hybrid_k2.kernels.mla_attention import mla_absorbed, mla_fold
from hybrid_k2.model import attention
from hybrid_k2.model.latent_cache import LatentCache
from hybrid_k2.model.mla import MLA
from hybrid_k2.runtime.cpu_attention import CpuAbsorbedAttention

ISAS = ["scalar"] + (["avx2"] if "avx2" in available_isas() else [])
SCALE = 0.1


def case(T, H, R, P, start, kv_dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    cache = LatentCache(R + P, R, capacity=start + T + 5, dtype=torch.float32, device="cpu", kv_dtype=kv_dtype,
                        zero_fill=True)  # the static (CUDA-graph) form reads the unused rows too
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


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("form", ["cols", "rows"])
@pytest.mark.parametrize("T,H,N,V,R", [(1, 4, 16, 16, 40), (3, 5, 24, 8, 37), (2, 64, 128, 128, 512)])
def test_folds_equal_the_einsums(isa, form, T, H, N, V, R):
    g = torch.Generator().manual_seed(T + H)
    w = torch.randn(H, N + V, R, generator=g)  # kv_b_proj's weight as [H, N + V, R]
    if form == "cols":  # q_nope [T, H, N] -> q_lat [T, H, R] through W_UK = w[:, :N] (a strided view)
        x = torch.randn(T, H, N, generator=g)
        ref = torch.einsum("thn,hnr->thr", x, w[:, :N])
        got = mla_fold(x=x, w=w[:, :N], form="cols", isa=isa)
    else:  # o_lat [T, H, R] -> o [T, H, V] through W_UV = w[:, N:]
        x = torch.randn(T, H, R, generator=g)
        ref = torch.einsum("thr,hvr->thv", x, w[:, N:])
        got = mla_fold(x=x, w=w[:, N:], form="rows", isa=isa)
    assert (got - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("form", ["cols", "rows"])
@pytest.mark.parametrize("T,H,N,V,R", [(1, 4, 16, 16, 40), (3, 5, 24, 8, 37), (2, 64, 128, 128, 512)])
def test_int8_folds_equal_the_einsums_of_the_widened_weight(isa, form, T, H, N, V, R):
    g = torch.Generator().manual_seed(T + H + 1)
    w = torch.randint(-127, 128, (H, N + V, R), dtype=torch.int8, generator=g)  # an int8 kv_b_proj as [H, N + V, R]
    wf = w.float()
    if form == "cols":
        x = torch.randn(T, H, N, generator=g)
        ref, got = torch.einsum("thn,hnr->thr", x, wf[:, :N]), mla_fold(x=x, w=w[:, :N], form="cols", isa=isa)
    else:
        x = torch.randn(T, H, R, generator=g)
        ref, got = torch.einsum("thr,hvr->thv", x, wf[:, N:]), mla_fold(x=x, w=w[:, N:], form="rows", isa=isa)
    assert (got - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_int8_head_weights_equal_their_dequantised_matrix():
    """absorbed_heads and the drop-in given an int8 kv_b_proj (w, row scales) = given w * scale in fp32."""
    from hybrid_k2.runtime.int8 import quantize_int8

    H, N, V, R, P = 4, 16, 8, 32, 8
    cache, _, q_pe = case(3, H, R, P, 30, "bf16")
    g = torch.Generator().manual_seed(5)
    q_nope = torch.randn(3, H, N, generator=g)
    q8, s = quantize_int8(torch.randn(H * (N + V), R, generator=g) * torch.logspace(-2, 0, H * (N + V))[:, None])
    w8, s8 = q8.view(H, N + V, R), s.view(H, N + V)
    wf = w8.float() * s8[..., None]  # the dequantised matrix, [H, N + V, R]
    ref = attention.absorbed_heads(q_nope, q_pe, wf, cache, 30, SCALE, 64)
    torch_int8 = attention.absorbed_heads(q_nope, q_pe, w8, cache, 30, SCALE, 64, w_scale=s8)
    assert (torch_int8 - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    cpu = CpuAbsorbedAttention(threads=2)(q_nope, q_pe, w8, cache, 30, SCALE, 64, w_scale=s8)
    assert (cpu - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_fold_bad_input_is_one_clear_error():
    w = torch.randn(4, 24, 32)
    with pytest.raises(HybridK2Error, match="does not fold"):
        mla_fold(x=torch.randn(1, 4, 20), w=w[:, :16], form="cols")
    with pytest.raises(HybridK2Error, match="form must be"):
        mla_fold(x=torch.randn(1, 4, 16), w=w[:, :16], form="diagonal")
    with pytest.raises(HybridK2Error, match="last dimension contiguous"):
        mla_fold(x=torch.randn(1, 4, 16), w=w[:, :16].mT, form="rows")
    with pytest.raises(HybridK2Error, match="w must be a 3-D float32 or int8"):
        mla_fold(x=torch.randn(1, 4, 16), w=w[:, :16].to(torch.bfloat16), form="cols")


def test_drop_in_equals_torch_and_falls_back_for_static_positions():
    H, N, V, R, P = 4, 16, 8, 32, 8
    cache, _, q_pe = case(2, H, R, P, 30, "bf16")
    g = torch.Generator().manual_seed(3)
    q_nope, w = torch.randn(2, H, N, generator=g), torch.randn(H, N + V, R, generator=g)
    cpu = CpuAbsorbedAttention(threads=2)
    ref = attention.absorbed_heads(q_nope, q_pe, w, cache, 30, SCALE, 64)  # [T, H, V]
    assert (cpu(q_nope, q_pe, w, cache, 30, SCALE, 64) - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    one = (q_nope[:1], q_pe[:1])
    static = attention.absorbed_heads(*one, w, cache, torch.tensor([30]), SCALE, 64)  # the CUDA-graph form
    assert torch.equal(cpu(*one, w, cache, torch.tensor([30]), SCALE, 64), static)


def test_fast_mode_on_cpu_attends_on_the_kernels_and_matches_torch(make_model):
    path = make_model(layers=3, experts=8, top_k=2)
    model = hybrid_k2.load(path, precision="fast")
    mlas = [m for m in model.net.modules() if isinstance(m, MLA)]
    assert mlas and all(isinstance(m.absorbed_attention, CpuAbsorbedAttention) for m in mlas)
    assert {m.absorbed_attention.threads for m in mlas} == {model.runtime.threads}
    ids = torch.randint(0, model.args.vocab_size, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    fast = logits(model, ids)  # 8 decode steps attend on the kernels
    for m in mlas:
        m.absorbed_attention = attention.absorbed_heads
    ref = logits(model, ids)
    assert (fast - ref).abs().max().item() <= 1e-3 * ref.abs().max().item()
    model.runtime.close()
    exact = hybrid_k2.load(path, precision="exact")
    assert all(m.absorbed_attention is attention.absorbed_heads for m in exact.net.modules() if isinstance(m, MLA))
    exact.runtime.close()
