"""Weight-only int8 linears: per-output-channel quantisation, blocked forward, the dequantised view."""
from __future__ import annotations

import pytest
import torch

from hybrid_k2.runtime import int8
from hybrid_k2.runtime.int8 import Int8Linear, quantize_int8


@pytest.mark.parametrize("shape", [(1, 32), (7, 33), (300, 96)])
def test_quantisation_error_is_half_a_step_per_channel(shape):
    w = torch.randn(*shape) * torch.logspace(-3, 1, shape[0])[:, None]  # channels of very different scale
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (shape[0],) and int(q.abs().max()) <= 127
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7).all()
    assert torch.equal(q.abs().amax(dim=1), torch.full((shape[0],), 127, dtype=torch.int8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocked_quantisation_equals_one_block(monkeypatch, dtype):
    w = (torch.randn(301, 40) * torch.logspace(-3, 1, 301)[:, None]).to(dtype)
    whole = quantize_int8(w)
    monkeypatch.setattr(int8, "QUANT_BLOCK_BYTES", 4 * 40 * 16)  # 16 rows per block, a ragged end
    blocked = quantize_int8(w)
    assert torch.equal(blocked[0], whole[0]) and torch.equal(blocked[1], whole[1])
    wf = w.float()  # the plain formula
    s = (wf.abs().amax(dim=1) / 127).clamp_min(1e-12)
    assert torch.equal(whole[1], s) and torch.equal(whole[0], torch.round(wf / s[:, None]).to(torch.int8))


def test_zero_rows_and_the_dequantised_view():
    w = torch.zeros(4, 64)
    w[1] = torch.linspace(-1, 1, 64)
    m = Int8Linear.from_weight(w, device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(m.weight[0], torch.zeros(64)) and (m.weight[1] - w[1]).abs().max() <= 1 / 254 + 1e-7
    assert m.nbytes == 4 * 64 + 4 * 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocked_forward_equals_one_block(monkeypatch, dtype):
    w = torch.randn(1000, 96)
    m = Int8Linear.from_weight(w, device=torch.device("cpu"), dtype=dtype)
    x = torch.randn(5, 96).to(dtype)
    whole = m(x)
    monkeypatch.setattr(int8, "BLOCK_BYTES", 96 * x.element_size() * 7)  # 7 rows per block, a ragged end
    blocked = m(x)
    assert blocked.shape == (5, 1000) and blocked.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert (blocked.float() - whole.float()).abs().max().item() <= tol * whole.float().abs().max().item()
    ref = x.float() @ m.weight.float().T
    assert (whole.float() - ref).abs().max().item() <= tol * ref.abs().max().item()
