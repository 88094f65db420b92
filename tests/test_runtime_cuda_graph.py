"""The CUDA-graph decode step: its static body runs eagerly on CPU against the model; capture needs CUDA."""
from __future__ import annotations

import pytest
import torch

import hybrid_k2
from hybrid_k2.runtime import RuntimeConfig
from hybrid_k2.runtime.cuda_graph import MIN_CAPACITY, StaticDecode, ensure_capacity

TOL = 2e-3


@pytest.fixture(scope="module")
def path(make_model):
    return make_model(seed=13, layers=3, experts=16, top_k=4)


def test_static_body_matches_decode(path):
    """Static shapes (full-capacity cache, index_copy_ at pos, masked rows) give the model's decode logits."""
    model = hybrid_k2.load(path)
    core = hybrid_k2.load(path, runtime=RuntimeConfig.reference())
    ids = list(range(20, 36))
    s, c = model.new_session(), core.new_session()
    s.prefill(ids[:12])
    c.prefill(ids[:12])
    cap = ensure_capacity(s.caches, len(s) + 1)
    assert cap == MIN_CAPACITY and all(x.data.shape[0] == cap for x in s.caches)
    assert all(x.data[len(s):].abs().sum() == 0 for x in s.caches)  # a zero tail: masked rows stay finite
    static = StaticDecode(model.runtime, s.caches)
    for t in ids[12:]:
        start = len(s)
        with torch.inference_mode():
            static.load_inputs(torch.tensor([t]), start)
            static.body()
        for x in s.caches:
            x.length = start + 1
        s.tokens.append(t)
        assert static.error is None
        assert (static.logits[0] - c.decode(t)).abs().max().item() <= TOL
    # the eager executor continues from the caches the static step wrote
    assert (s.decode(40) - c.decode(40)).abs().max().item() <= TOL
    model.runtime.close()


def test_capacity_grows_by_powers_of_two(path):
    model = hybrid_k2.load(path)
    s = model.new_session()
    s.prefill([1, 2, 3])
    before = [x.data[:3].clone() for x in s.caches]
    assert ensure_capacity(s.caches, 4) == MIN_CAPACITY
    assert ensure_capacity(s.caches, MIN_CAPACITY + 1) == 2 * MIN_CAPACITY
    assert all(torch.equal(x.data[:3], b) for x, b in zip(s.caches, before))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_graph_decode_matches_eager_on_cuda(path):
    graph = hybrid_k2.load(path, device="cuda")
    eager = hybrid_k2.load(path, device="cuda", runtime=RuntimeConfig(cuda_graphs=False))
    assert graph.runtime.graphs is not None
    a, b = graph.new_session(), eager.new_session()
    a.prefill([3, 4, 5])
    b.prefill([3, 4, 5])
    for t in (6, 7, 8, 9):
        assert (a.decode(t) - b.decode(t)).abs().max().item() <= TOL
