"""`hybrid-k2 bench` on a K2-shaped slice (real K2 dimensions, 2 layers, 8 experts, top-8): the decode
breakdown adds up to the measured step time, and the routed-expert phase reports its GB/s against the
bandwidth probe. Structure and consistency only, never speed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid_k2.config import ModelArgs
from hybrid_k2.info import routed_bytes_per_expert


@pytest.fixture(scope="module")
def k2_slice(tmp_path_factory) -> Path:
    """~1.5 GB on disk; made once per module (about 20 s)."""
    from hybrid_k2.tiny import TinySpec, make_tiny

    return make_tiny(tmp_path_factory.mktemp("k2slice"), TinySpec(k2_shape=True, layers=2, experts=8))


@pytest.fixture(scope="module")
def doc(k2_slice) -> dict:
    # exact (fp32 device weights) runs the device side faster than bf16 on a CPU without bf16 units
    r = subprocess.run([sys.executable, "-m", "hybrid_k2.cli", "bench", "--model", str(k2_slice), "-p", "8", "-n",
                        "4", "-r", "2", "-t", "1", "--precision", "exact", "-o", "json", "--no-progress"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_slice_has_k2_dimensions(k2_slice):
    a = ModelArgs.from_hf_config(k2_slice)
    assert (a.hidden_size, a.moe_intermediate_size, a.num_attention_heads, a.num_experts_per_tok) == (7168, 2048, 64, 8)
    assert (a.q_lora_rank, a.kv_lora_rank, a.qk_nope_head_dim, a.qk_rope_head_dim) == (1536, 512, 128, 64)


def test_breakdown_adds_up_to_step_time(doc):
    (b,) = doc["breakdown"]
    assert b["steps"] == 8  # -n 4 x -r 2
    phases = {p["name"]: p for p in b["phases"]}
    for name in ("attention", "router", "shared_experts", "cpu_experts", "lm_head", "sampling", "python"):
        assert name in phases, name
    serial = [p for p in b["phases"] if not p["concurrent"]]
    assert all(p["ms"] >= 0 for p in serial if p["name"] != "python")
    # Python overhead is the remainder: negative would mean phases counted twice
    assert phases["python"]["ms"] >= -0.01 * b["step_ms"]
    assert phases["python"]["ms"] < 0.5 * b["step_ms"]  # the named phases explain the step
    total = sum(p["ms"] for p in serial)
    assert total == pytest.approx(b["sum_ms"])
    # the breakdown's step vs the step implied by tg tok/s (whole-repetition wall times)
    assert total == pytest.approx(b["tg_step_ms"], rel=0.10)
    assert b["tg_step_ms"] == pytest.approx(1e3 / doc["tg"]["mean"])


def test_cpu_experts_gbps_against_probe(doc):
    (e,) = doc["experts"]
    a = doc["model"]
    assert e["experts_per_token"] == a["moe_layers"] * a["top_k"] == 8  # decode: top-8 distinct in 1 MoE layer
    assert e["bytes_per_expert"] == routed_bytes_per_expert(ModelArgs.from_hf_config(a["path"]))
    assert e["bytes_per_token"] == 8 * e["bytes_per_expert"] == a["routed_bytes_per_token"]
    assert e["gbps"] == pytest.approx(e["bytes_per_token"] / (e["cpu_experts_ms"] / 1e3) / 1e9)
    (bw,) = doc["hardware"]["memory_bandwidth"]
    assert e["bandwidth_read_gbps"] == bw["read_gbps"]
    assert e["fraction_of_bandwidth"] == pytest.approx(e["gbps"] / bw["read_gbps"])
    assert doc["settings"]["warmup_experts_touched"] == 8  # every expert of the one MoE layer


def test_probe_is_cached_per_cpu_and_threads(doc):
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "hybrid-k2" / "bandwidth.json"
    entries = json.loads(cache.read_text())
    (bw,) = doc["hardware"]["memory_bandwidth"]
    key = f"{doc['hardware']['cpu_model']} | {bw['method']} | 1 threads"
    assert entries[key]["read_gbps"] == bw["read_gbps"]
