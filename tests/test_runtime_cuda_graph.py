"""The CUDA-graph decode step: its static body runs eagerly on CPU against the model; capture needs CUDA."""
from __future__ import annotations

import ctypes
import gc

import pytest
import torch

import hybrid_k2
from hybrid_k2.errors import HybridK2Error
from hybrid_k2.runtime import RuntimeConfig
from hybrid_k2.runtime.cuda_graph import GraphCache, StaticDecode, ensure_allocated, host_func_launcher, loaded_library

TOL = 2e-3


@pytest.fixture(scope="module")
def path(make_model):
    return make_model(seed=13, layers=3, experts=16, top_k=4)


def test_static_body_matches_decode(path):
    """Static shapes (full-capacity cache, index_copy_ at pos, masked rows) give the model's decode logits."""
    model = hybrid_k2.load(path)
    core = hybrid_k2.load(path, runtime=RuntimeConfig.reference())
    ids = list(range(20, 36))
    s, c = model.new_session(3000), core.new_session()
    for x in s.caches:
        x.zero_fill = True  # as Session does on CUDA
    s.prefill(ids[:12])
    c.prefill(ids[:12])
    assert ensure_allocated(s.caches) == 3000 and all(x.data.shape[0] == 3000 for x in s.caches)
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


def test_unused_rows_must_be_finite(path):
    """The static step reads every row: NaN left in unused memory poisons the logits unless the cache
    starts zero-filled (what Session does on CUDA; recycled CUDA memory is not zero)."""
    model = hybrid_k2.load(path)
    for zero_fill, finite in ((False, False), (True, True)):
        s = model.new_session(2100)  # more than one attention block of rows
        for x in s.caches:
            x.zero_fill = zero_fill
        s.prefill([1, 2, 3])
        if not zero_fill:
            with torch.inference_mode():
                for x in s.caches:
                    x.data[3:] = float("nan")  # what recycled memory may hold
        static = StaticDecode(model.runtime, s.caches)
        with torch.inference_mode():
            static.load_inputs(torch.tensor([4]), 3)
            static.body()
        assert bool(torch.isfinite(static.logits).all()) is finite
    model.runtime.close()


def test_graph_key_is_released_with_its_session_and_evicted_lru(path):
    """A graph must not keep a dropped session's caches alive (they hold the whole context on the GPU),
    and a session in use is not evicted before one that is not."""
    model = hybrid_k2.load(path)
    made = []
    graphs = GraphCache(lambda caches: made.append(StaticDecode(model.runtime, caches)) or made[-1], size=2)
    sessions = [model.new_session(64) for _ in range(3)]
    a, b, c = sessions
    for x in (a, b, c):
        ensure_allocated(x.caches)
    del x
    first = graphs.get(a.caches)
    graphs.get(b.caches)
    assert graphs.get(a.caches) is first and len(made) == 2  # a hit: no new capture
    graphs.get(c.caches)  # evicts b, the least recently used (FIFO would evict a)
    assert graphs.get(a.caches) is first and len(made) == 3
    del sessions, a, b
    made.clear()
    first = None
    gc.collect()
    assert len(graphs) == 1  # a's entry went with a's caches; c's stays
    del c
    gc.collect()
    assert len(graphs) == 0
    model.runtime.close()


def test_host_function_comes_from_the_driver_or_torchs_own_runtime():
    """Never a libcudart found on the library path (another CUDA version than torch's)."""
    assert loaded_library("libtorch_cpu").rsplit("/", 1)[-1].startswith("libtorch_cpu.so")  # what torch loaded
    maps = ("7f00-7f01 r-xp 00000000 08:01 42 /opt/a/libcudart.so.12.4.127\n"
            "7f02-7f03 r-xp 00000000 08:01 43 /opt/b/libcudart_static_helper.so\n")
    assert loaded_library("libcudart", maps) == "/opt/a/libcudart.so.12.4.127"
    assert loaded_library("libcudart", "7f00-7f01 rw-p 00000000 00:00 0\n") is None
    try:
        ctypes.CDLL("libcuda.so.1")
        has_driver = True
    except OSError:
        has_driver = False
    if has_driver or loaded_library("libcudart"):
        assert callable(host_func_launcher())
    else:
        with pytest.raises(HybridK2Error, match="--no-cuda-graphs"):
            host_func_launcher()


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
