"""The approximate paths stay within documented bounds (docs/placement.md, "Accuracy"): deferral, int8
linears, and precision="fast" (bf16 on the device, the kernels' fast mode) end to end.

Measured over the tiny models' logits against the core model (exact, fp32): mean KL(core || approx) per
position in nats, and top-1 agreement. The tiny models have random weights and flat next-token
distributions (logit std ~1, median top-2 gap ~0.13), so top-1 agreement is a harsh measure here.
"""
from __future__ import annotations

import pytest
import torch

import hybrid_k2
from hybrid_k2.doctor.common import logit_agreement as compare
from hybrid_k2.errors import HybridK2Error
from hybrid_k2.runtime import Placement, RuntimeConfig

# Bounds (see docs/placement.md for the measured values over 3 seeds):
DEFER_1 = dict(kl=0.03, top1=0.6)  # measured: KL 0.011-0.013, top-1 0.72-0.83
DEFER_2 = dict(kl=0.05, top1=0.5)  # measured: KL 0.022-0.024, top-1 0.62-0.75
INT8 = dict(kl=0.01, top1=0.85)  # measured: KL 0.0011-0.0030, top-1 0.91-0.97
FAST = dict(kl=0.01, top1=0.85)  # measured: KL 0.0008-0.0036, top-1 0.90-0.97 (seeds 0-2)
SPEC = dict(layers=4, experts=16, top_k=8)  # K2's top-8 routing at a small scale


def logits(model, ids: list[int]) -> torch.Tensor:
    s = model.new_session()
    rows = [s.prefill(ids[:-8])] + [s.decode(t)[None] for t in ids[-8:]]
    return torch.cat(rows)  # [len(ids), V]: prefill rows, then 8 decode steps


@pytest.fixture(scope="module", params=[0])
def case(request, make_model):
    path = make_model(seed=request.param, **SPEC)
    core = hybrid_k2.load(path, runtime=RuntimeConfig.reference())
    g = torch.Generator().manual_seed(request.param)
    ids = torch.randint(0, core.args.vocab_size, (96,), generator=g).tolist()
    return path, ids, logits(core, ids)


def test_deferral_bounds(case):
    path, ids, ref = case
    errors = {}
    for d in (0, 1, 2):
        model = hybrid_k2.load(path, runtime=RuntimeConfig(defer_experts=d))
        got = logits(model, ids)
        errors[d] = compare(ref, got)
        if d == 0:
            assert (got - ref).abs().max().item() <= 2e-3  # D = 0 is exact
        model.runtime.close()
    print("deferral (KL, top-1):", errors)
    assert errors[1][0] <= DEFER_1["kl"] and errors[1][1] >= DEFER_1["top1"]
    assert errors[2][0] <= DEFER_2["kl"] and errors[2][1] >= DEFER_2["top1"]
    assert 0 < errors[1][0] < errors[2][0]  # deferring more experts costs more


def test_int8_bounds(case):
    path, ids, ref = case
    model = hybrid_k2.load(path, runtime=RuntimeConfig(placement=Placement().with_overrides(["*=device-int8"])))
    kl, top1 = compare(ref, logits(model, ids))
    print(f"int8: KL {kl:.2e}, top-1 {top1:.3f}")
    assert 0 < kl <= INT8["kl"] and top1 >= INT8["top1"]
    model.runtime.close()


def test_fast_precision_bounds(case):
    """bf16 weights and activations end to end (prefill and decode) against the exact fp32 core."""
    path, ids, ref = case
    model = hybrid_k2.load(path, device="cpu", precision="fast")
    got = logits(model, ids)
    kl, top1 = compare(ref, got)
    print(f"fast: KL {kl:.2e}, top-1 {top1:.3f}")
    assert got.dtype == torch.float32
    assert 0 < kl <= FAST["kl"] and top1 >= FAST["top1"]
    model.runtime.close()


def test_deferral_rejects_d_at_or_above_top_k(tiny_model):
    with pytest.raises(HybridK2Error, match="must be below the model's top-k"):
        hybrid_k2.load(tiny_model, runtime=RuntimeConfig(defer_experts=2))  # tiny model: top-2
