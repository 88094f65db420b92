"""profile-experts writes per-layer routing counts; --gpu-experts N keeps each layer's N most used on the device."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import hybrid_k2
from hybrid_k2.errors import HybridK2Error
from hybrid_k2.runtime import RuntimeConfig
from hybrid_k2.runtime.profile import read_prompts

CLI = [sys.executable, "-m", "hybrid_k2.cli"]


@pytest.fixture(scope="module")
def path(make_model):
    return make_model(seed=11, layers=3, experts=16, top_k=4)


def test_profile_then_hot_experts(path, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the quick brown fox\n\n" + json.dumps({"ids": [5, 6, 7, 8, 9]}) + "\n"
                       + json.dumps({"prompt": "jumps over the lazy dog"}) + "\n", encoding="utf-8")
    out = tmp_path / "counts.json"
    r = subprocess.run(CLI + ["profile-experts", "--model", str(path), "--prompts", str(prompts), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    n_tokens = sum(len(ids) for ids in read_prompts(prompts, path))
    assert data["prompts"] == 3 and data["tokens"] == n_tokens and data["top_k"] == 4
    assert sorted(data["counts"]) == ["1", "2"]
    for counts in data["counts"].values():
        assert len(counts) == 16 and sum(counts) == 4 * n_tokens  # every token picks top-k experts

    model = hybrid_k2.load(path, runtime=RuntimeConfig(gpu_experts=3, expert_counts=str(out)))
    for layer, counts in data["counts"].items():
        hot = model.runtime.device_experts.hot[int(layer)]
        assert len(hot) == 3 and min(counts[e] for e in hot) >= max(c for e, c in enumerate(counts) if e not in hot)
    core = hybrid_k2.load(path, runtime=RuntimeConfig.reference())
    ids = list(range(10, 30))
    s, c = model.new_session(), core.new_session()
    got = torch.cat([s.prefill(ids[:-2])] + [s.decode(t)[None] for t in ids[-2:]])
    want = torch.cat([c.prefill(ids[:-2])] + [c.decode(t)[None] for t in ids[-2:]])
    assert (got - want).abs().max().item() <= 2e-3
    model.runtime.close()


def test_bad_prompts(path, tmp_path):
    r = subprocess.run(CLI + ["profile-experts", "--model", str(path), "--prompts", str(tmp_path / "none.txt"),
                              "--out", str(tmp_path / "c.json")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "prompts file not found" in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ids": "nope"}\n')
    with pytest.raises(HybridK2Error, match="bad.jsonl:1"):
        read_prompts(bad, path)
    bad.write_text("\n\n")
    with pytest.raises(HybridK2Error, match="no prompts"):
        read_prompts(bad, path)
