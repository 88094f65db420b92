"""Sampling runs on the logits' device: host masks and the CPU generator's uniform are moved there.

The `meta` device stands in for a GPU: any op that mixes a CPU tensor (other than a scalar) with a
meta tensor raises, as a CPU mask applied to CUDA logits does."""
from __future__ import annotations

import pytest
import torch

from hybrid_k2.chat.sampling import (SamplingParams, apply_allowed, draw, draw_index, filtered_probs,
                                     make_generator, sample)

V = 96


@pytest.mark.parametrize("mask_len", [V, V + 7, 40])  # vocabulary-sized, longer, shorter
def test_mask_and_draw_stay_on_the_logits_device(mask_len):
    allowed = torch.zeros(mask_len, dtype=torch.bool)
    allowed[:30] = True  # a host mask, as grammars and bans make
    logits = torch.empty(V, device="meta")
    masked = apply_allowed(logits, allowed)
    assert masked.device.type == "meta"
    probs = filtered_probs(masked, SamplingParams(temperature=0.7, top_k=10, min_p=0.05))
    assert probs.device.type == "meta"
    assert draw_index(probs, make_generator(0)).device.type == "meta"


def test_the_draw_is_the_same_as_before():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(V, generator=g) * 3
    allowed = torch.rand(V, generator=g) > 0.3
    params = SamplingParams(temperature=0.9, top_p=0.8, top_k=40, seed=1)
    for seed in range(20):
        probs = filtered_probs(apply_allowed(logits, allowed), params)
        cdf = torch.cumsum(probs, 0, dtype=torch.float64)  # the inverse-CDF draw written out
        u = torch.rand(1, generator=make_generator(seed), dtype=torch.float64) * cdf[-1]
        expected = int(torch.searchsorted(cdf, u, right=True))
        assert draw(probs, make_generator(seed)) == expected == sample(logits, params, make_generator(seed), allowed)
        assert bool(allowed[expected])
