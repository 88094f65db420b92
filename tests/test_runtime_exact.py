"""Every exact placement of the hybrid runtime gives the core model's logits (max |delta logit| <= 2e-3).

The core model is the plain module forward with the pure-torch experts (RuntimeConfig.reference()),
itself checked against Hugging Face transformers in test_core_vs_transformers.py; one case here also
goes to transformers directly.
"""
from __future__ import annotations

import pytest
import torch

import hybrid_k2
from hybrid_k2.runtime import Placement, RuntimeConfig
from hybrid_k2.runtime.cpu_experts import compact_slots, kernels_available

TOL = 2e-3  # max |delta logit|, fp32 both sides: the core issue's tolerance
SPEC = dict(seed=5, layers=4, experts=16, top_k=4)
BACKENDS = ["reference"] + (["kernel"] if kernels_available() else [])

PLACEMENTS = {
    "all-experts-cpu": dict(),
    "no-overlap": dict(overlap=False),
    "defer-0": dict(defer_experts=0),
    "some-experts-on-device": dict(placement=Placement().with_overrides(
        ["model.layers.1.mlp.experts.[0-5]=device", "model.layers.3.mlp.experts.1[0-5]=device"])),
    "every-expert-on-device": dict(placement=Placement().with_overrides(["model.layers.*.mlp.experts.*=device"])),
    "embedding-on-device": dict(placement=Placement().with_overrides(["model.embed_tokens=device"])),
    "device-prefill": dict(device_prefill_threshold=8, stream_chunk=3),
    "prefill-chunks": dict(prefill_chunk=5),
}


def run(model, ids: list[int], n_decode: int = 4) -> torch.Tensor:
    """Logits [len(ids), V]: a prefill of all but n_decode tokens, then n_decode decode steps."""
    s = model.new_session()
    rows = [s.prefill(ids[:-n_decode])] + [s.decode(t)[None] for t in ids[-n_decode:]]
    return torch.cat(rows)


@pytest.fixture(scope="module")
def case(make_model):
    path = make_model(**SPEC)
    core = hybrid_k2.load(path, runtime=RuntimeConfig.reference())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, core.args.vocab_size, (24,), generator=g).tolist()
    return path, ids, run(core, ids)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(PLACEMENTS))
def test_placement_matches_core(case, name, backend):
    path, ids, expected = case
    model = hybrid_k2.load(path, runtime=RuntimeConfig(experts_backend=backend, **PLACEMENTS[name]))
    assert model.runner is model.runtime and model.runtime.backend == backend
    got = run(model, ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOL
    model.runtime.close()


def test_int8_executor_matches_int8_module_forward(case):
    """device-int8 changes the weights, not the math: the executor equals the module forward on them."""
    path, ids, _ = case
    int8 = Placement().with_overrides(["*=device-int8"])
    module = hybrid_k2.load(path, runtime=RuntimeConfig(placement=int8, executor="module"))
    hybrid = hybrid_k2.load(path, runtime=RuntimeConfig(placement=int8, defer_experts=0))
    from hybrid_k2.runtime.int8 import Int8Linear

    assert isinstance(hybrid.net.model.layers[1].self_attn.kv_b_proj, Int8Linear)
    assert isinstance(hybrid.net.lm_head, Int8Linear)
    assert (run(hybrid, ids) - run(module, ids)).abs().max().item() <= TOL


def test_hybrid_with_device_experts_matches_transformers(case):
    from hf_reference import hf_model

    path, ids, _ = case
    model = hybrid_k2.load(path, runtime=RuntimeConfig(**PLACEMENTS["some-experts-on-device"]))
    with torch.no_grad():
        expected = hf_model(path)(torch.tensor([ids])).logits[0]
    assert (model.new_session().prefill(ids) - expected).abs().max().item() <= TOL


def test_compact_slots():
    ids = torch.tensor([[3, -1, 5], [-1, -1, -1], [-1, 7, -1]], dtype=torch.int32)
    w = torch.tensor([[0.5, 0.25, 0.75], [0.25, 0.25, 0.5], [0.125, 0.5, 0.25]])
    ids_c, w_c = compact_slots(ids, w)
    assert ids_c.tolist() == [[3, 5], [3, 3], [7, 7]]  # a row without slots borrows an expert of the job
    assert w_c.tolist() == [[0.5, 0.75], [0.0, 0.0], [0.5, 0.0]]
    assert compact_slots(torch.full((2, 2), -1), torch.ones(2, 2)) is None
    full = torch.tensor([[1, 2]])
    assert compact_slots(full, torch.ones(1, 2))[0] is full


def test_fast_precision_executor_matches_module_forward(case):
    """precision="fast" (bf16 device side, the kernels' fast mode): same ops, same order, same logits."""
    path, ids, _ = case
    module = hybrid_k2.load(path, precision="fast", runtime=RuntimeConfig(executor="module"))
    hybrid = hybrid_k2.load(path, precision="fast")
    assert hybrid.net.dtype == torch.bfloat16
    assert (run(hybrid, ids) - run(module, ids)).abs().max().item() <= TOL
