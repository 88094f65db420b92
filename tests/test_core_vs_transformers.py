"""precision="exact" against Hugging Face transformers' DeepseekV3ForCausalLM on the same weights."""
from __future__ import annotations

import pytest
import torch

import hybrid_k2
from hf_reference import hf_model

TOL = 2e-3  # max |delta logit|, fp32 both sides

CONFIGS = [
    dict(seed=1),
    dict(seed=2, layers=4, experts=16, top_k=4, n_group=4, topk_group=2),
    dict(seed=3, layers=2, experts=4, top_k=1, hidden=96, moe_intermediate=64, heads=2),
]


@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_prefill_decode_and_greedy_match_transformers(make_model, spec):
    path = make_model(**spec)
    ref = hf_model(path)
    model = hybrid_k2.load(path, precision="exact")
    V = model.args.vocab_size
    g = torch.Generator().manual_seed(spec["seed"])
    prompt = torch.randint(0, V, (12,), generator=g).tolist()

    # prefill: every position
    with torch.no_grad():
        expected = ref(torch.tensor([prompt])).logits[0]
    session = model.new_session()
    got = session.prefill(prompt)
    assert got.shape == (len(prompt), V) and got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= TOL

    # >= 16 greedy decode steps through both KV caches; continuations must be identical
    with torch.no_grad():
        out = ref(torch.tensor([prompt]), use_cache=True)
    cache, ours_next, ref_next = out.past_key_values, int(got[-1].argmax()), int(out.logits[0, -1].argmax())
    ours_seq, ref_seq = [], []
    for _ in range(16):
        ours_seq.append(ours_next)
        ref_seq.append(ref_next)
        logits = session.decode(ours_next)
        with torch.no_grad():
            out = ref(torch.tensor([[ref_next]]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        if ours_seq == ref_seq:
            assert (logits - out.logits[0, -1]).abs().max().item() <= TOL
        ours_next, ref_next = int(logits.argmax()), int(out.logits[0, -1].argmax())
    assert ours_seq == ref_seq


def test_chunked_prefill_and_decode_paths_agree(tiny_model):
    """Naive (prefill) and weight-absorbed (decode) MLA are the same algebra over the latent cache."""
    model = hybrid_k2.load(tiny_model)
    ids = list(range(3, 40))
    whole = model.new_session().prefill(ids)
    s = model.new_session()
    parts = [s.prefill(ids[:10]), s.prefill(ids[10:11])]
    parts += [s.decode(t)[None] for t in ids[11:]]
    assert (torch.cat(parts) - whole).abs().max().item() <= TOL


def test_truncate_then_prefill_equals_fresh(tiny_model):
    model = hybrid_k2.load(tiny_model)
    s = model.new_session()
    s.prefill([5, 6, 7, 8, 9, 10])
    s.truncate(3)
    assert s.tokens == [5, 6, 7] and len(s) == 3
    again = s.prefill([20, 21])
    fresh = model.new_session().prefill([5, 6, 7, 20, 21])
    assert (again - fresh[3:]).abs().max().item() <= 1e-5
