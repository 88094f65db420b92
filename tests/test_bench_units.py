"""bench building blocks without a model: option syntax, the projection target, statistics, ceilings, and
the breakdown arithmetic."""
from __future__ import annotations

import pytest

from hybrid_k2.bench.options import BenchOptionError, BenchOptions, Target, parse_int_list
from hybrid_k2.bench.result import breakdown_row
from hybrid_k2.bench.roofline import Ceiling, k2_thinking_args
from hybrid_k2.bench.runner import StepProfile
from hybrid_k2.bench.stats import Summary, rates
from hybrid_k2.info import decode_expert_bytes_per_token, kv_bytes_per_token, sizes


@pytest.mark.parametrize("text, values", [
    ("0", (0,)), ("0,4096,16384", (0, 4096, 16384)), ("0-16384+4096", (0, 4096, 8192, 12288, 16384)),
    ("64-512*2", (64, 128, 256, 512)), ("1,1,2", (1, 2)), (" 8 , 16", (8, 16)),
])
def test_int_lists_and_ranges(text, values):
    assert parse_int_list(text, "-d") == values


@pytest.mark.parametrize("text", ["", "a", "1-", "4-1+1", "0-8*2", "1-8*1", "1-8+0", "-3", "0-100000+1"])
def test_bad_lists(text):
    with pytest.raises(BenchOptionError):
        parse_int_list(text, "-d")


def test_minimum_is_enforced():
    with pytest.raises(BenchOptionError, match="--threads: 0 is below"):
        parse_int_list("0,2", "--threads", minimum=1)


def test_target_units():
    t = Target.parse("bandwidth=307GB/s,gpu_bw=1.008TB/s,name=spr")
    assert (t.bandwidth_gbps, t.gpu_bw_gbps, t.name, t.model) == (307.0, pytest.approx(1008.0), "spr", "kimi-k2-thinking")
    assert Target.parse("bandwidth=100").gpu_bw_gbps is None
    assert Target.parse("bandwidth=1GiB/s").bandwidth_gbps == pytest.approx(1.073741824)
    for bad in ("gpu_bw=1TB/s", "bandwidth=fast", "bandwidth=0GB/s", "bandwidth", "speed=3"):
        with pytest.raises(BenchOptionError):
            Target.parse(bad)


def test_options_validate():
    BenchOptions()
    for kw in (dict(repetitions=0), dict(n_prompt=0, n_gen=0), dict(precision="half"), dict(output="xml"),
               dict(plot="x.jpg"), dict(batches=(0,)), dict(depths=())):
        with pytest.raises(BenchOptionError):
            BenchOptions(**kw)


def test_summary_is_llama_bench_style():
    s = Summary.of([10.0, 12.0, 14.0])
    assert (s.mean, s.std, s.median, s.min, s.max) == (12.0, 2.0, 12.0, 10.0, 14.0)  # sample std (n - 1)
    assert Summary.of([5.0]).std == 0.0
    assert s.format() == "12.00 ± 2.00"
    assert rates(128, [2.0, 4.0]) == [64.0, 32.0]
    with pytest.raises(ValueError):
        rates(1, [0.0])


def test_k2_figures_match_the_performance_notes():
    """docs/performance.md: 11.9 GB of routed experts and ~21.1 GB of bf16 device weights per token,
    70,272 B of KV per token; 307 GB/s gives a 25.8 tok/s CPU-side ceiling."""
    a = k2_thinking_args()
    assert (a.num_hidden_layers, a.n_routed_experts, a.num_experts_per_tok, a.vocab_size) == (61, 384, 8, 163840)
    assert decode_expert_bytes_per_token(a) / 1e9 == pytest.approx(11.9, abs=0.01)
    assert sizes(a).device_bytes / 1e9 == pytest.approx(21.1, abs=0.05)
    assert kv_bytes_per_token(a) == 70272
    c = Ceiling(cpu_bytes=decode_expert_bytes_per_token(a), device_bytes=sizes(a).device_bytes, cpu_gbps=307,
                device_gbps=1008, device_reads_host_memory=False)
    assert c.overlap_tok_s == pytest.approx(25.8, abs=0.05)
    assert c.serial_tok_s == pytest.approx(1e3 / (c.cpu_ms + c.device_ms))
    same_bus = Ceiling(cpu_bytes=1e9, device_bytes=1e9, cpu_gbps=10, device_gbps=10, device_reads_host_memory=True)
    assert same_bus.overlap_tok_s == same_bus.serial_tok_s == pytest.approx(5.0)


def test_python_overhead_is_the_remainder_and_shows_double_counting():
    tg = {"mean": 10.0}
    p = StepProfile(depth=0, threads=1, mode="executor", steps=10, wall_s=1.0,
                    phases_s={"attention": 0.5, "wait": 0.2, "cpu_experts": 0.4, "sampling": 0.01},
                    concurrent=("cpu_experts",))
    b = breakdown_row(p, tg)
    ph = {x["name"]: x for x in b["phases"]}
    assert ph["python"]["ms"] == pytest.approx(29.0)  # (1.0 - 0.71) s over 10 steps
    assert ph["cpu_experts"]["concurrent"] and b["sum_ms"] == pytest.approx(100.0) == b["step_ms"]
    # the same phases with cpu_experts wrongly treated as serial add up to more than the step
    p.concurrent = ()
    assert {x["name"]: x for x in breakdown_row(p, tg)["phases"]}["python"]["ms"] < 0


def test_gpu_probe_fits_what_is_free():
    """The GPU bandwidth probe takes at most a quarter of the free device memory (two buffers of an
    eighth each), so it never pushes a model out of its budget."""
    from hybrid_k2.bench.probe import gpu_probe_bytes

    assert gpu_probe_bytes(1024, 80 * 10**9) == 1024 * 10**6  # plenty free: the full 1 GB
    assert gpu_probe_bytes(1024, 2 * 10**9) == 250 * 10**6  # a full device: an eighth of what is left
    assert gpu_probe_bytes(1024, 0) == 0


def test_device_phases_get_bytes_and_gbps():
    p = StepProfile(depth=0, threads=1, mode="executor", steps=10, wall_s=1.0,
                    phases_s={"attention": 0.5, "wait": 0.2, "cpu_experts": 0.4}, concurrent=("cpu_experts",))
    ph = {x["name"]: x for x in breakdown_row(p, {"mean": 10.0}, {"attention": 2e8, "lm_head": 1e6})["phases"]}
    assert ph["attention"]["bytes"] == 2e8 and ph["attention"]["gbps"] == pytest.approx(4.0)  # 2 GB in 0.5 s
    assert "gbps" not in ph["wait"] and "lm_head" not in ph  # only phases that ran and read weights


def test_phase_bytes_cover_every_device_weight(tiny_model):
    import hybrid_k2
    from hybrid_k2.bench.roofline import device_weight_bytes, phase_weight_bytes

    model = hybrid_k2.load(tiny_model, precision="fast")
    pb = phase_weight_bytes(model.net)
    assert set(pb) == {"attention", "dense_mlp", "router", "shared_experts", "lm_head"}
    assert sum(pb.values()) == device_weight_bytes(model.net)  # int8 linears counted as loaded
    model.runtime.close()
