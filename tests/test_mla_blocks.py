"""Blockwise MLA (model/attention.py) against the whole-cache reference (MLA impl="reference"), and the
latent cache's storage kinds (model/latent_cache.py)."""
from __future__ import annotations

import pytest
import torch

import hybrid_k2
from hybrid_k2.model import attention
from hybrid_k2.model.latent_cache import FP8_MAX, LatentCache, dequantize_fp8, quantize_fp8, row_bytes
from hybrid_k2.runtime import RuntimeConfig

REL = 1e-5  # fp32: blockwise and reference differ only in summation order


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def exact(make_model):
    path = make_model(seed=21, layers=2, experts=8, top_k=2)
    return hybrid_k2.load(path, runtime=RuntimeConfig.reference())


def attend(model, impl: str, block: int, x, prefix_rows, start: int, kv_dtype="auto"):
    """One MLA call of layer 1 over a cache holding prefix_rows at positions [0, start)."""
    attn, a = model.net.model.layers[1].self_attn, model.args
    cache = LatentCache(a.kv_dim, a.kv_lora_rank, capacity=start + x.shape[0], dtype=torch.float32,
                        device=torch.device("cpu"), kv_dtype=kv_dtype)
    if start:
        cache.write(0, prefix_rows)
    cos, sin = model.net.rope.tables(start, x.shape[0])
    attn.impl, attn.block = impl, block
    try:
        with torch.inference_mode():
            return attn(x, cache, start, cos, sin)
    finally:
        attn.impl, attn.block = "auto", None


@pytest.mark.parametrize("start,T,block", [(0, 37, 8), (50, 13, 16), (100, 1, 32), (33, 64, 7), (5, 3, 1024),
                                           (64, 64, 64)])
@pytest.mark.parametrize("form", ["absorbed", "expanded"])
def test_blockwise_equals_reference(exact, form, start, T, block):
    """Depths crossing several blocks, causal masking inside the chunk, block edges on and off the chunk."""
    torch.manual_seed(start * 100 + T)
    D, kv = exact.args.hidden_size, exact.args.kv_dim
    x, prefix = torch.randn(T, D), torch.randn(start, kv)
    ref = attend(exact, "reference", 0, x, prefix, start)
    assert rel_err(attend(exact, form, block, x, prefix, start), ref) <= REL


@pytest.mark.parametrize("kind", ["torch", "cpu kernels"])
def test_int8_kv_b_proj_is_folded_as_stored(exact, kind):
    """An int8 kv_b_proj (device-int8 placement, or fast on the CPU): both forms read its int8 rows and
    scales (MLA.attention_weight) and equal the reference, which dequantises the matrix."""
    from hybrid_k2.runtime.int8 import CpuInt8Linear, Int8Linear

    attn = exact.net.model.layers[1].self_attn
    dense = attn.kv_b_proj
    cls = Int8Linear if kind == "torch" else CpuInt8Linear
    attn.kv_b_proj = cls.from_weight(dense.weight.detach(), device=torch.device("cpu"), dtype=torch.float32)
    try:
        assert attn.attention_weight()[0].dtype == torch.int8
        torch.manual_seed(4)
        x, prefix = torch.randn(20, exact.args.hidden_size), torch.randn(70, exact.args.kv_dim)
        ref = attend(exact, "reference", 0, x, prefix, 70)
        for form in ("absorbed", "expanded"):
            assert rel_err(attend(exact, form, 16, x, prefix, 70), ref) <= REL, form
    finally:
        attn.kv_b_proj = dense


@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8"])
def test_blockwise_equals_reference_on_stored_kinds(exact, kv_dtype):
    """Both read the same dequantised rows: the storage kind changes the values, not the agreement."""
    torch.manual_seed(3)
    x, prefix = torch.randn(20, exact.args.hidden_size), torch.randn(70, exact.args.kv_dim)
    ref = attend(exact, "reference", 0, x, prefix, 70, kv_dtype)
    for form in ("absorbed", "expanded"):
        assert rel_err(attend(exact, form, 16, x, prefix, 70, kv_dtype), ref) <= REL


def test_model_logits_with_small_blocks(exact, make_model):
    """The whole model (prefill in chunks, then decode) with 8-position blocks equals the reference."""
    fast = hybrid_k2.load(make_model(seed=21, layers=2, experts=8, top_k=2), runtime=RuntimeConfig.reference())
    for layer in fast.net.model.layers:
        layer.self_attn.block = 8
    ids = list(range(3, 60))
    a, b = exact.new_session(), fast.new_session()
    for layer in exact.net.model.layers:
        layer.self_attn.impl = "reference"
    try:
        la = torch.cat([a.prefill(ids[:20]), a.prefill(ids[20:50])])
        lb = torch.cat([b.prefill(ids[:20]), b.prefill(ids[20:50])])
        assert rel_err(lb, la) <= 1e-4
        for t in ids[50:]:
            assert rel_err(b.decode(t), a.decode(t)) <= 1e-4
    finally:
        for layer in exact.net.model.layers:
            layer.self_attn.impl = "auto"


def test_choose_form_crossover():
    k2 = dict(rank=512, nope=128, rope=64, v_dim=128)
    assert attention.choose_form(1, 1, **k2) == "expanded"  # one row: expanding it costs less than the two folds
    assert attention.choose_form(1, 32768, **k2) == "absorbed"
    assert attention.choose_form(64, 64, **k2) == "expanded"  # a short first prompt: few rows to expand
    assert attention.choose_form(169, 32768, **k2) == "absorbed"  # at depth: ~170 tokens, R (N + V) / 768
    assert attention.choose_form(171, 32768, **k2) == "expanded"
    # an absorbed form twice as fast (the CPU kernels on 2 threads against torch on one): a 512-token
    # chunk at depth 8192 absorbs (measured 4.59 s against 6.14 s), a 512-token first prompt still expands
    assert attention.choose_form(512, 8704, **k2, absorbed_speed=2.0) == "absorbed"
    assert attention.choose_form(512, 512, **k2, absorbed_speed=2.0) == "expanded"


def test_online_softmax_matches_softmax():
    torch.manual_seed(0)
    scores, values = torch.randn(5, 40) * 30, torch.randn(40, 7)
    sm = attention.OnlineSoftmax()
    for s0 in range(0, 40, 9):
        block = slice(s0, s0 + 9)
        sm.add(scores[:, block].clone(), lambda p, v=values[block]: p @ v)
    assert rel_err(sm.result(), torch.softmax(scores, -1) @ values) <= REL


def test_cache_is_allocated_once_for_its_capacity():
    c = LatentCache(12, 8, capacity=100, dtype=torch.float32, device=torch.device("cpu"))
    assert not c.allocated and c.nbytes() == 0
    c.write(0, torch.randn(10, 12))
    data = c.data
    c.write(10, torch.randn(90, 12))
    assert c.data is data and c.data.shape == (100, 12) and c.length == 100  # no growth, no copy
    with pytest.raises(ValueError, match="holds 100 positions"):
        c.write(100, torch.randn(1, 12))


def test_fp8_rows_keep_both_ranges():
    """c_kv is normalised (|x| ~ 1) while k_pe can be thousands: one scale per part keeps both."""
    torch.manual_seed(1)
    rows = torch.cat((torch.randn(50, 16), 3000 * torch.randn(50, 4)), dim=1)
    rows[7] = 0  # an all-zero row stays zero (scale 1, no division by zero)
    q, scale = quantize_fp8(rows, 16)
    back = dequantize_fp8(q, scale, 16, torch.float32)
    assert back[7].abs().max() == 0 and torch.isfinite(back).all()
    for part in (slice(0, 16), slice(16, 20)):
        err = (back[:, part] - rows[:, part]).abs().amax(-1) / rows[:, part].abs().amax(-1).clamp_min(1e-9)
        assert err.max() <= 2 ** -4  # e4m3: 3 mantissa bits, half an ulp relative to the row's amax at worst
    assert (q.float().abs().amax(-1) <= FP8_MAX).all()


def test_state_round_trip_and_bytes():
    for kind in ("auto", "bf16", "fp8"):
        c = LatentCache(20, 16, capacity=64, dtype=torch.float32, device=torch.device("cpu"), kv_dtype=kind)
        c.write(0, torch.randn(30, 20))
        saved = tuple(t.clone() for t in c.state(25))
        d = LatentCache(20, 16, capacity=64, dtype=torch.float32, device=torch.device("cpu"), kv_dtype=kind)
        d.load_state(saved)
        assert d.length == 25 and torch.equal(d.read(0, 25), c.read(0, 25))
        assert c.nbytes(25) == 25 * row_bytes(20, kind, 4)
    with pytest.raises(ValueError, match="do not fit"):
        d.load_state((torch.zeros(3, 20),))  # fp32 rows into an fp8 cache


def test_blockwise_attention_runs_in_and_out_of_inference_mode():
    # the reused per-thread block buffer is a normal tensor: made inside inference mode, it must still be
    # writable outside it (a test or a user calling the model without inference mode after a session)
    cache = LatentCache(24, 16, capacity=40, dtype=torch.float32, device="cpu", kv_dtype="bf16")
    cache.write(0, torch.randn(40, 24))
    q_lat, q_pe = torch.randn(1, 2, 16), torch.randn(1, 2, 8)
    attention.SCRATCH.buffers.clear()
    with torch.inference_mode():
        inside = attention.absorbed(q_lat, q_pe, cache, 39, 0.1, 8)
    assert torch.equal(attention.absorbed(q_lat, q_pe, cache, 39, 0.1, 8), inside)
