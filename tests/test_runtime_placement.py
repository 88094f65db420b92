"""Placement rules, their resolution on a model, the machine probe and RuntimeConfig parsing."""
from __future__ import annotations

import json

import pytest

from hybrid_k2.config import ModelArgs
from hybrid_k2.errors import HybridK2Error
from hybrid_k2.runtime import Placement, RuntimeConfig, parse_bytes
from hybrid_k2.runtime.machine import detect, parse_cpulist
from hybrid_k2.runtime.placement import parse_rule, resolve


def test_default_policy():
    p = Placement()
    assert p.target("model.embed_tokens.weight") == "cpu"
    assert p.target("model.layers.5.mlp.experts.17.down_proj.weight_scale") == "cpu"
    assert p.target("model.layers.5.mlp.shared_experts.down_proj.weight") == "device"
    assert p.target("model.layers.5.self_attn.kv_b_proj.weight", linear=True) == "device"
    assert p.target("lm_head.weight", linear=True) == "device"


def test_prefix_match_and_first_rule_wins():
    p = Placement().with_overrides(["model.layers.3.mlp.experts.7=device", "lm_head=device-int8"])
    assert p.target("model.layers.3.mlp.experts.7.up_proj.weight_packed") == "device"
    assert p.target("model.layers.3.mlp.experts.70.up_proj.weight_packed") == "cpu"  # not a dotted prefix
    assert p.target("lm_head.weight", linear=True) == "device-int8"
    # device-int8 concerns linears only: the router weight falls through to the next rule
    q = Placement().with_overrides(["*=device-int8"])
    assert q.target("model.layers.1.mlp.gate.weight") == "device"
    assert q.target("model.layers.1.mlp.experts.0.gate_proj.weight_packed") == "cpu"
    assert q.target("model.layers.1.self_attn.o_proj.weight", linear=True) == "device-int8"


@pytest.mark.parametrize("text", ["lm_head", "=cpu", "lm_head=gpu", "x=device-int4"])
def test_bad_rules(text):
    with pytest.raises(HybridK2Error):
        parse_rule(text)


def test_resolve_on_a_tiny_model(tiny_model):
    a = ModelArgs.from_hf_config(tiny_model)
    r = resolve(a, Placement())
    assert r.embed == "cpu" and not r.int8_linears and r.device_experts == {}
    r = resolve(a, Placement().with_overrides(["model.layers.2.mlp.experts.[0-2]=device", "model.embed_tokens=device",
                                               "model.layers.*.self_attn.*=device-int8"]))
    assert r.embed == "device" and r.device_experts == {2: (0, 1, 2)}
    assert r.int8_linears and all(".self_attn." in n for n in r.int8_linears)
    assert "model.layers.0.self_attn.kv_b_proj" in r.int8_linears
    # hot experts from a counts file join the rule-placed ones
    r = resolve(a, Placement(), {1: (3, 4)})
    assert r.device_experts == {1: (3, 4)} and r.n_device_experts == 2


@pytest.mark.parametrize("rules, message", [
    (["model.layers.1.mlp.experts.0.down_proj=device"], "split between"),
    (["lm_head=cpu"], "cannot be placed on cpu"),
    (["model.norm=cpu"], "cannot be placed on cpu"),
    (["model.embed_tokens=device-int8", "model.embed_tokens=cpu"], None),  # int8 skips the table: next rule
])
def test_unsupported_placements(tiny_model, rules, message):
    a = ModelArgs.from_hf_config(tiny_model)
    if message is None:
        assert resolve(a, Placement().with_overrides(rules)).embed == "cpu"
        return
    with pytest.raises(HybridK2Error, match=message):
        resolve(a, Placement().with_overrides(rules))


def test_parse_bytes():
    assert parse_bytes("24GiB") == 24 * 2**30 and parse_bytes("1TiB") == 2**40
    assert parse_bytes("500MB") == 500 * 10**6 and parse_bytes("1.5g") == 1_500_000_000 and parse_bytes(7) == 7
    for bad in ("", "12 parsecs", "GiB", "-1GB"):
        with pytest.raises(HybridK2Error):
            parse_bytes(bad)


def test_runtime_config_checks(tmp_path):
    with pytest.raises(HybridK2Error, match="expert-counts"):
        RuntimeConfig(gpu_experts=2)
    with pytest.raises(HybridK2Error, match="cpu-threads"):
        RuntimeConfig(cpu_threads=0)
    with pytest.raises(HybridK2Error, match="not found"):
        RuntimeConfig(gpu_experts=1, expert_counts=str(tmp_path / "none.json")).hot_experts({1: 4})
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"counts": {"1": [5, 9, 9, 1]}}))
    assert RuntimeConfig(gpu_experts=2, expert_counts=str(f)).hot_experts({1: 4}) == {1: (1, 2)}
    with pytest.raises(HybridK2Error, match="layer 2"):
        RuntimeConfig(gpu_experts=2, expert_counts=str(f)).hot_experts({1: 4, 2: 4})
    f.write_text("[1, 2]")
    with pytest.raises(HybridK2Error, match="not an expert counts file"):
        RuntimeConfig(gpu_experts=1, expert_counts=str(f)).hot_experts({1: 4})


def _fake_sys(root, topology: dict[int, tuple[int, int]], nodes: dict[int, str]):
    cpu, node = root / "cpu", root / "node"
    for c, (pkg, core) in topology.items():
        d = cpu / f"cpu{c}" / "topology"
        d.mkdir(parents=True)
        (d / "physical_package_id").write_text(f"{pkg}\n")
        (d / "core_id").write_text(f"{core}\n")
    for n, cpus in nodes.items():
        (node / f"node{n}").mkdir(parents=True)
        (node / f"node{n}" / "cpulist").write_text(cpus + "\n")
    return cpu, node


def test_machine_counts_physical_cores_and_numa_nodes(tmp_path, monkeypatch):
    assert parse_cpulist("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11] and parse_cpulist("") == []
    # 2 sockets x 2 cores x 2 hyperthreads: cpus 0-3 on node 0 (siblings 0/2, 1/3), 4-7 on node 1
    topo = {0: (0, 0), 1: (0, 1), 2: (0, 0), 3: (0, 1), 4: (1, 0), 5: (1, 1), 6: (1, 0), 7: (1, 1)}
    cpu, node = _fake_sys(tmp_path, topo, {0: "0-3", 1: "4-7"})
    monkeypatch.setattr("hybrid_k2.runtime.machine._usable_cpus", lambda: list(range(8)))
    m = detect(cpu, node)
    assert (m.logical_cpus, m.physical_cores, m.default_threads) == (8, 4, 4)
    assert [(n.node, n.cpus, n.physical_cores) for n in m.numa_nodes] == [(0, (0, 1, 2, 3), 2), (1, (4, 5, 6, 7), 2)]


def test_machine_on_this_host():
    m = detect()
    assert 1 <= m.physical_cores <= m.logical_cpus and m.numa_nodes
    assert sum(len(n.cpus) for n in m.numa_nodes) == m.logical_cpus
