"""Long contexts: the session's context is the plan's, allocated once; prompts over it are refused before
any work; long prefills report progress; the fp8 cache stays close to the compute-dtype cache."""
from __future__ import annotations

import io

import pytest
import torch

import hybrid_k2
from hybrid_k2.chat.display import PrefillProgress, Terminal
from hybrid_k2.errors import HybridK2Error
from hybrid_k2.runtime import RuntimeConfig


def test_session_context_is_the_planned_one(tiny_model):
    m = hybrid_k2.load(tiny_model, runtime=RuntimeConfig(ctx=300, kv_cache_dtype="fp8"))
    assert m.ctx == 300 == m.runtime.prepared.plan.ctx
    s = m.new_session()
    assert s.max_len == 300 and all(c.capacity == 300 and c.kv_dtype == "fp8" for c in s.caches)
    s.prefill([5 + i % 700 for i in range(300)], last_only=True)
    assert len(s) == 300
    with pytest.raises(HybridK2Error, match="context overflow"):
        s.decode(7)
    with pytest.raises(HybridK2Error, match="context must be"):
        m.new_session(10**9)
    m.runtime.close()


def test_without_ctx_the_largest_context_that_fits(tiny_model):
    """No --ctx: the model's maximum when it fits, else the largest the memory holds (not a refusal)."""
    m = hybrid_k2.load(tiny_model)
    assert m.ctx == m.args.max_position_embeddings
    per_token = m.runtime.prepared.plan.kv_bytes_per_token
    fixed = m.runtime.prepared.plan.ram_total - m.runtime.prepared.plan.kv_cache_bytes
    m.runtime.close()
    budget = fixed + per_token * 20000 + 64 * 2**20  # room for ~20K tokens (+ the activations)
    small = hybrid_k2.load(tiny_model, ram=budget)
    assert 4096 <= small.ctx < small.args.max_position_embeddings
    assert small.runtime.prepared.plan.fits
    small.runtime.close()


def test_prefill_reports_progress_per_chunk(tiny_model):
    m = hybrid_k2.load(tiny_model)
    calls = []
    m.new_session().prefill([3 + i % 700 for i in range(1100)], last_only=True, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 1100), (512, 1100), (1024, 1100), (1100, 1100)]
    m.runtime.close()


def test_progress_line_shows_tokens_rate_and_time_left():
    out = io.StringIO()
    bar = PrefillProgress(Terminal(out))
    bar.update(0, 45000, now=100.0)
    bar.update(9000, 45000, now=160.0)
    text = out.getvalue()
    assert "9,000/45,000 tokens" in text and "150.0 tok/s" in text and "240 s left" in text
    bar.end()
    assert out.getvalue().endswith("\r")
    quiet = io.StringIO()
    PrefillProgress(Terminal(quiet)).update(100, 200, now=1.0)  # a short prompt: no bar
    assert quiet.getvalue() == ""


def kl_top1(model_a, model_b, ids: list[int], steps: int) -> tuple[float, float]:
    """Mean KL(a || b) and top-1 agreement over the decode steps after prefilling ids (teacher forcing)."""
    a, b = model_a.new_session(), model_b.new_session()
    a.prefill(ids, last_only=True)
    b.prefill(ids, last_only=True)
    kls, agree = [], 0
    for t in range(steps):
        la, lb = a.decode(ids[t % len(ids)]).float(), b.decode(ids[t % len(ids)]).float()
        pa, pb = torch.log_softmax(la, -1), torch.log_softmax(lb, -1)
        kls.append(torch.sum(pa.exp() * (pa - pb)).item())
        agree += int(la.argmax() == lb.argmax())
    return sum(kls) / len(kls), agree / steps


def test_fp8_cache_accuracy_bound(make_model):
    """fp8 latent cache against the bf16 cache at depth (fast precision), the bound docs/placement.md quotes."""
    path = make_model(seed=5, layers=3, experts=8, top_k=2)
    ref = hybrid_k2.load(path, precision="fast", runtime=RuntimeConfig(kv_cache_dtype="bf16", ctx=2048))
    fp8 = hybrid_k2.load(path, precision="fast", runtime=RuntimeConfig(kv_cache_dtype="fp8", ctx=2048))
    ids = [(i * 7919) % 700 + 10 for i in range(1200)]
    kl, top1 = kl_top1(fp8, ref, ids, 24)
    assert kl <= 0.02 and top1 >= 0.85, (kl, top1)
    ref.runtime.close()
    fp8.runtime.close()
