"""The routed-MoE kernels on this CPU's ISA paths against the torch and the scalar C++ references.

Odd shapes on purpose: D, I multiples of 32 but not of 64/256 (tail groups in every k-order), T
around the GEMV/GEMM switch and the 256-token chunk, repeated ids, zero weights, and two experts
at the ends of the INT4 range."""
import pytest
import torch

from hybrid_k2.errors import HybridK2Error
from hybrid_k2.kernels import (PackedExperts, available_isas, moe_forward, moe_reference, moe_scalar_reference,
                               moe_submit)
from hybrid_k2.kernels.synthetic import random_experts, random_routing

# Named error bounds, relative to max |reference| of the output.
EXACT_RTOL = 1e-5   # exact mode: fp32 sums in another order; observed ~5e-7
FAST_RTOL = 4e-2    # fast mode vs torch fp32: two int8 quantisations (x and h); observed ~1.5e-2
FAST_VS_SCALAR_RTOL = 2e-3   # fast mode vs the scalar fast path: same q8 math, h may round differently

E, D, I = 10, 96, 352   # D: 3 groups, I: 11 groups
ISAS = [isa for isa in available_isas()]


@pytest.fixture(scope="module")
def experts():
    return random_experts(num_experts=E, hidden=D, intermediate=I, seed=1, extreme=True)


def routing(T, K, seed):
    ids, w = random_routing(tokens=T, top_k=K, num_experts=E, seed=seed)
    if T > 2:
        ids[1] = ids[1, :1]        # one token sends all its K slots to the same expert
        w[2] = 0.0                 # one token with zero weights
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(seed)) * 2
    return x, ids, w


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("T", [1, 2, 7, 64, 130, 600])
@pytest.mark.parametrize("K", [1, 4, 8])
def test_exact_matches_torch(experts, isa, T, K):
    x, ids, w = routing(T, K, seed=T * 10 + K)
    ref = moe_reference(x=x, expert_ids=ids, weights=w, experts=experts)
    out = moe_forward(x=x, expert_ids=ids, weights=w, experts=experts, precision="exact", isa=isa, threads=2)
    assert rel_err(out, ref) < EXACT_RTOL
    if T > 2:
        assert torch.all(out[2] == 0)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("T", [1, 2, 7, 64, 130, 600])
@pytest.mark.parametrize("K", [1, 4, 8])
def test_fast_within_bounds(experts, isa, T, K):
    x, ids, w = routing(T, K, seed=T * 10 + K)
    ref = moe_reference(x=x, expert_ids=ids, weights=w, experts=experts)
    out = moe_forward(x=x, expert_ids=ids, weights=w, experts=experts, precision="fast", isa=isa, threads=2)
    assert rel_err(out, ref) < FAST_RTOL
    scalar = moe_scalar_reference(x=x, expert_ids=ids, weights=w, experts=experts, precision="fast")
    assert rel_err(out, scalar) < FAST_VS_SCALAR_RTOL


def test_extreme_experts_exact(experts):
    """Experts 0 (all q = -8) and 1 (all q = 7) alone: checks the nibble offset at both ends."""
    T = 5
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(3))
    for e in (0, 1):
        ids = torch.full((T, 1), e, dtype=torch.int32)
        w = torch.ones(T, 1)
        ref = moe_reference(x=x, expert_ids=ids, weights=w, experts=experts)
        for isa in ISAS:
            out = moe_forward(x=x, expert_ids=ids, weights=w, experts=experts, isa=isa)
            assert rel_err(out, ref) < EXACT_RTOL


@pytest.mark.parametrize("isa", ISAS)
def test_thread_count_does_not_change_results(experts, isa):
    x, ids, w = routing(64, 8, seed=5)
    for precision in ("exact", "fast"):
        one = moe_forward(x=x, expert_ids=ids, weights=w, experts=experts, precision=precision, isa=isa, threads=1)
        two = moe_forward(x=x, expert_ids=ids, weights=w, experts=experts, precision=precision, isa=isa, threads=2)
        assert torch.equal(one, two)


def test_bf16_input_int32_ids_and_out_buffer(experts):
    x, ids, w = routing(7, 4, seed=9)
    xb = x.to(torch.bfloat16)
    ref = moe_reference(x=xb, expert_ids=ids, weights=w, experts=experts)
    out = torch.full((7, D), float("nan"))
    got = moe_forward(x=xb, expert_ids=ids.to(torch.int32), weights=w, experts=experts, out=out)
    assert got is out
    assert rel_err(out, ref) < EXACT_RTOL


def test_submit_runs_while_python_continues(experts):
    x, ids, w = routing(130, 8, seed=11)
    expected = moe_forward(x=x, expert_ids=ids, weights=w, experts=experts, precision="fast")
    handle = moe_submit(x=x, expert_ids=ids, weights=w, experts=experts, precision="fast")
    side = torch.randn(64, 64) @ torch.randn(64, 64)   # the device side working meanwhile
    assert side.shape == (64, 64)
    assert torch.equal(handle.wait(), expected)
    assert handle.done()
    handles = [moe_submit(x=x[:t], expert_ids=ids[:t], weights=w[:t], experts=experts) for t in (1, 7, 64)]
    for t, h in zip((1, 7, 64), handles):
        assert rel_err(h.wait(), moe_reference(x=x[:t], expert_ids=ids[:t], weights=w[:t], experts=experts)) < EXACT_RTOL


def test_dropped_handle_finishes_before_its_inputs_go(experts):
    x, ids, w = routing(130, 8, seed=12)
    expected = moe_forward(x=x, expert_ids=ids, weights=w, experts=experts)
    for _ in range(3):
        moe_submit(x=x.clone(), expert_ids=ids.clone(), weights=w.clone(), experts=experts)  # never waited
    assert torch.equal(moe_forward(x=x, expert_ids=ids, weights=w, experts=experts), expected)


def test_empty_batch(experts):
    out = moe_forward(x=torch.zeros(0, D), expert_ids=torch.zeros(0, 8, dtype=torch.int64),
                      weights=torch.zeros(0, 8), experts=experts)
    assert out.shape == (0, D)


@pytest.mark.parametrize("bad, message", [
    (dict(expert_ids=torch.tensor([[E]])), "out of range"),
    (dict(expert_ids=torch.tensor([[-1]])), "out of range"),
    (dict(x=torch.zeros(1, D + 32)), "x must be"),
    (dict(x=torch.zeros(1, D, dtype=torch.float16)), "float32 or bfloat16"),
    (dict(weights=torch.ones(1, 1, dtype=torch.float64)), "weights must be"),
    (dict(expert_ids=torch.tensor([[0.0]])), "int32 or int64"),
    (dict(precision="medium"), "precision"),
    (dict(isa="sse9"), "unknown ISA"),
    (dict(threads=0), "threads"),
])
def test_bad_input_is_a_clear_error(experts, bad, message):
    args = dict(x=torch.zeros(1, D), expert_ids=torch.tensor([[0]]), weights=torch.ones(1, 1), experts=experts)
    args.update(bad)
    with pytest.raises(HybridK2Error, match=message):
        moe_forward(**args)


def test_unloaded_expert_and_missing_isa_are_errors(monkeypatch):
    pe = PackedExperts.empty(num_experts=2, hidden=32, intermediate=32)
    with pytest.raises(HybridK2Error, match="never loaded"):
        moe_forward(x=torch.zeros(1, 32), expert_ids=torch.tensor([[1]]), weights=torch.ones(1, 1), experts=pe)
    missing = [isa for isa in ("avx512", "avx512bf16", "amx", "avx2") if isa not in available_isas()]
    for isa in missing:
        with pytest.raises(HybridK2Error, match="cannot run|not part of this build"):
            moe_forward(x=torch.zeros(1, 32), expert_ids=torch.tensor([[0]]), weights=torch.ones(1, 1),
                        experts=pe, isa=isa)
        monkeypatch.setenv("HYBRID_K2_ISA", isa)
        with pytest.raises(HybridK2Error):
            moe_forward(x=torch.zeros(1, 32), expert_ids=torch.tensor([[0]]), weights=torch.ones(1, 1), experts=pe)
        monkeypatch.delenv("HYBRID_K2_ISA")


def test_packed_experts_round_trip_and_shape_checks():
    pe = random_experts(num_experts=3, hidden=64, intermediate=96, seed=2)
    t = pe.expert_tensors(2)
    assert t["gate_packed"].shape == (96, 8) and t["down_scale"].shape == (64, 3)
    again = PackedExperts.empty(num_experts=1, hidden=64, intermediate=96)
    again.load_expert(0, **t)
    assert all(torch.equal(again.expert_tensors(0)[k], v) for k, v in t.items())
    with pytest.raises(HybridK2Error, match="gate_packed of expert 0"):
        again.load_expert(0, **{**t, "gate_packed": t["gate_packed"][:, :4]})
    with pytest.raises(HybridK2Error, match="layout"):
        PackedExperts.empty(num_experts=1, hidden=64, intermediate=96, layout="amx-tiles")
    with pytest.raises(HybridK2Error, match="multiples of 32"):
        PackedExperts.empty(num_experts=1, hidden=48, intermediate=96)
