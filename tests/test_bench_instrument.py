"""Phase timing from outside the model: module hooks on the plain forward, executor spans on the hybrid
runtime, and the routed-expert counter. Consistency only, never speed."""
from __future__ import annotations

import time

import hybrid_k2
from hybrid_k2.bench.instrument import Instrument
from hybrid_k2.runtime import RuntimeConfig


def decode_once(model, inst: Instrument) -> float:
    s = model.new_session()
    s.prefill([1, 2, 3])
    inst.timer.reset()
    inst.counter.take()
    inst.counter.recording = True
    t0 = time.perf_counter()
    s.decode(5)
    wall = time.perf_counter() - t0
    inst.counter.recording = False
    return wall


def test_hooks_time_the_plain_forward_in_series(tiny_model):
    model = hybrid_k2.load(tiny_model, runtime=RuntimeConfig.reference(), progress=False)
    a = model.args
    inst = Instrument(model)
    assert inst.mode == "hooks"
    wall = decode_once(model, inst)
    seen = inst.timer.snapshot()
    assert set(seen) == {"embed", "attention", "dense_mlp", "router", "cpu_experts", "shared_experts", "lm_head"}
    assert sum(seen.values()) <= wall  # nothing nested or counted twice
    counts = inst.timer.counts
    L, moe = a.num_hidden_layers, a.n_moe_layers
    assert counts["attention"] == 3 * L  # input_layernorm, self_attn, post_attention_layernorm
    assert (counts["router"], counts["cpu_experts"], counts["shared_experts"]) == (moe, moe, moe)
    assert (counts["embed"], counts["lm_head"]) == (1, 2)  # model.norm + lm_head
    assert inst.concurrent_phases(seen) == ()
    assert inst.counter.distinct(inst.counter.take()) == (moe * a.num_experts_per_tok, 0)
    inst.close()
    decode_once(model, inst)
    assert not inst.timer.snapshot() and not inst.counter.take()  # detached


def test_executor_spans_and_concurrent_cpu_experts(tiny_model):
    model = hybrid_k2.load(tiny_model, progress=False)  # default runtime: the hybrid executor
    assert model.runtime.config.executor == "hybrid"
    inst = Instrument(model)
    assert inst.mode == "executor"
    decode_once(model, inst)
    seen = inst.timer.snapshot()
    assert {"embed", "attention", "router", "cpu_experts", "wait", "lm_head"} <= set(seen)
    assert inst.concurrent_phases(seen) == ("cpu_experts",)  # run by the worker beside the device phases
    a = model.args
    assert inst.counter.distinct(inst.counter.take()) == (a.n_moe_layers * a.num_experts_per_tok, 0)
    inst.close()
    decode_once(model, inst)
    assert not inst.timer.snapshot()
    model.runtime.close()


def test_expert_traffic_is_counted_on_the_cpu_jobs(tiny_model):
    """Under a CUDA graph no router hook fires, but the CPU jobs (host callbacks) still see the ids on the
    host: the counter counts there. The graph's body, run eagerly here, gives the executor's count."""
    import torch

    from hybrid_k2.runtime.cuda_graph import StaticDecode, ensure_allocated

    model = hybrid_k2.load(tiny_model, progress=False)
    inst = Instrument(model)
    s = model.new_session(64)
    s.prefill([1, 2, 3])
    ensure_allocated(s.caches)
    static = StaticDecode(model.runtime, s.caches)
    inst.counter.recording = True
    with torch.inference_mode():
        static.load_inputs(torch.tensor([4]), 3)
        static.body()
    jobs = [c for c in inst.counter.take() if c[0] == "job"]  # what a graph replay leaves
    a = model.args
    assert len(jobs) == a.n_moe_layers
    assert inst.counter.distinct(jobs) == (a.n_moe_layers * a.num_experts_per_tok, 0)
    inst.close()
    assert not model.runtime.cpu.observers
    model.runtime.close()
