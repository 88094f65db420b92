"""The scheduler is policy only: op orders per layer, checked without a model, a GPU or tensors."""
from __future__ import annotations

import pytest

from hybrid_k2.runtime.scheduler import Scheduler, SchedulerConfig


def sched(**kw) -> Scheduler:
    base = dict(num_layers=4, first_moe_layer=1, top_k=8)
    return Scheduler(SchedulerConfig(**{**base, **kw}))


def test_overlap_order_per_moe_layer():
    plan = sched().plan(1)
    assert plan.phase == "decode" and len(plan.layers) == 4
    assert plan.layers[0].ops == ("attention", "dense_mlp") and not plan.layers[0].moe
    for lp in plan.layers[1:]:
        ops = list(lp.ops)
        assert ops == ["attention", "router", "to_host", "submit", "shared_experts", "wait", "to_device", "combine"]
        # the shared expert is issued after the CPU job is submitted and before anyone waits for it
        assert ops.index("submit") < ops.index("shared_experts") < ops.index("wait")


def test_serial_order_without_overlap():
    for lp in sched(overlap=False).plan(7).layers[1:]:
        ops = list(lp.ops)
        assert ops.index("wait") < ops.index("shared_experts")
        assert ops.index("to_device") < ops.index("shared_experts")


def test_deferral_skips_the_last_moe_layer_and_is_added_one_layer_later():
    plan = sched(defer_experts=2).plan(1)
    moe = [lp for lp in plan.layers if lp.moe]
    assert [lp.defer for lp in moe] == [2, 2, 0]
    assert [lp.add_deferred for lp in moe] == [False, True, True]
    assert sched(defer_experts=0).plan(1).layers[2].add_deferred is False


@pytest.mark.parametrize("d", [-1, 8, 9])
def test_deferral_out_of_range(d):
    with pytest.raises(ValueError, match="defer_experts"):
        sched(defer_experts=d)


def test_hot_experts_add_a_device_op_only_where_present():
    plan = sched(device_experts={2: (0, 5)}).plan(3)
    assert "device_experts" not in plan.layers[1].ops
    ops = list(plan.layers[2].ops)
    assert plan.layers[2].device_experts == (0, 5)
    assert ops.index("submit") < ops.index("device_experts") < ops.index("wait")


def test_device_prefill_threshold():
    s = sched(device_prefill_threshold=16)
    assert all(lp.experts == "cpu" for lp in s.plan(16).layers[1:])
    long = s.plan(17)
    assert all(lp.experts == "device-stream" for lp in long.layers[1:])
    assert all("submit" not in lp.ops and "stream_experts" in lp.ops for lp in long.layers[1:])
    assert s.plan(1).layers[1].experts == "cpu"  # decode never streams
    assert s.plan(17).tokens == 17 and s.plan(40).tokens == 40  # cached plans keep their own token count


def test_all_dense_and_all_moe_models():
    assert all(not lp.moe for lp in Scheduler(SchedulerConfig(2, 2, 2)).plan(1).layers)
    plan = Scheduler(SchedulerConfig(2, 0, 2, defer_experts=1)).plan(1)
    assert [lp.defer for lp in plan.layers] == [1, 0] and plan.ops()[0] == (0, "attention")
