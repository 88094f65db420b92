"""The executor's order per MoE layer, and the CPU job running while the device-side shared expert runs.

Timestamps come from both sides: the main thread's PhaseTimer spans (to_host, shared_experts, wait) and
the worker's `cpu_experts` spans (taken on the worker thread around the kernel call). To make the
overlap observable on a busy machine without relying on luck, the overlap test holds both sides at a
rendezvous: the shared expert does not start before the CPU job has started, and the CPU job does not
finish before the shared expert has started. An executor that waits for the CPU job before the shared
expert cannot meet there: the rendezvous times out and the intervals come out disjoint, which is what
the overlap=False case checks.
"""
from __future__ import annotations

import threading

import pytest

import hybrid_k2
from hybrid_k2.profiling import PhaseTimer
from hybrid_k2.runtime import RuntimeConfig

MOE_OPS = ["attention", "router", "to_host", "to_host", "shared_experts", "wait", "to_device"]


@pytest.fixture(scope="module")
def path(make_model):
    return make_model(seed=7, layers=4, experts=16, top_k=4)


def layer_groups(events):
    """Main-thread events split per layer: each layer starts with 'attention'."""
    groups = []
    for name, t0, t1 in events:
        if name == "attention":
            groups.append([])
        if groups and name not in ("cpu_experts", "embed", "lm_head"):
            groups[-1].append((name, t0, t1))
    return groups


def test_order_of_submit_shared_and_wait(path):
    model = hybrid_k2.load(path, runtime=RuntimeConfig())
    timer = PhaseTimer()
    timer.trace()
    model.runtime.set_timer(timer)
    s = model.new_session()
    s.prefill([5, 6, 7])
    timer.reset()
    s.decode(8)
    groups = layer_groups(timer.events)
    assert [n for n, *_ in groups[0]] == ["attention", "dense_mlp"]
    jobs = [(t0, t1) for n, t0, t1 in timer.events if n == "cpu_experts"]
    assert len(groups) == 4 and len(jobs) == 3
    for g, (job_start, job_end) in zip(groups[1:], jobs):
        assert [n for n, *_ in g] == MOE_OPS
        submit_end, shared, wait = g[3][2], g[4], g[5]
        assert submit_end <= shared[1] and shared[2] <= wait[1]  # submit, then shared expert, then wait
        assert job_end <= wait[2]  # the wait returns after the job is done
    model.runtime.close()


@pytest.mark.parametrize("overlap", [True, False])
def test_cpu_job_runs_while_the_shared_expert_runs(path, overlap):
    model = hybrid_k2.load(path, runtime=RuntimeConfig(overlap=overlap))
    rt = model.runtime
    timer = PhaseTimer()
    timer.trace()
    rt.set_timer(timer)
    timeout = 20.0 if overlap else 0.5
    job_started, shared_started = threading.Event(), threading.Event()
    real_compute = rt.cpu.compute

    def gated_compute(layer, *args, **kw):  # on the worker thread, inside the cpu_experts span
        if layer == 2:
            job_started.set()
            shared_started.wait(timeout)
        real_compute(layer, *args, **kw)

    def before_shared(module, inputs):  # on the main thread, inside the shared_experts span
        job_started.wait(timeout)
        shared_started.set()

    rt.cpu.compute = gated_compute
    layer = model.net.model.layers[2]
    hook = layer.mlp.shared_experts.register_forward_pre_hook(before_shared)
    try:
        model.new_session().decode(9)
    finally:
        hook.remove()
        rt.cpu.compute = real_compute
    shared = [(t0, t1) for n, t0, t1 in layer_groups(timer.events)[2] if n == "shared_experts"][0]
    job = [(t0, t1) for n, t0, t1 in timer.events if n == "cpu_experts"][1]  # layer 2's job
    intersect = job[0] < shared[1] and shared[0] < job[1]
    assert intersect == overlap, (job, shared)
    rt.close()
