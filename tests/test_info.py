"""`hybrid-k2 info`: sizes by placement class, from the config, agree with what the checkpoint holds."""
from __future__ import annotations

import subprocess

import hybrid_k2
from hybrid_k2.config import ModelArgs
from hybrid_k2.info import kv_bytes_per_token, sizes


def test_sizes_match_loaded_model(tiny_model):
    args = ModelArgs.from_hf_config(tiny_model)
    s = sizes(args)
    model = hybrid_k2.load(tiny_model, precision="fast")
    params = {n: p.numel() for n, p in model.net.named_parameters()}
    params |= {n: b.numel() for n, b in model.net.named_buffers() if n.endswith(".weight_int8")}  # int8 on the CPU
    embed = params.pop("model.embed_tokens.weight")
    biases = sum(v for n, v in params.items() if n.endswith("e_score_correction_bias"))
    assert embed == s.embed_params
    assert sum(params.values()) - biases == s.device_params
    stores = [layer.mlp.experts.store for layer in model.net.model.layers if hasattr(layer.mlp, "experts")]
    assert sum(st.nbytes for st in stores) == s.routed_bytes - args.n_moe_layers * args.n_routed_experts * 3 * 2 * 4
    assert kv_bytes_per_token(args) == args.kv_dim * args.num_hidden_layers * 2


def test_info_command(tiny_model):
    r = subprocess.run(["hybrid-k2", "info", "--model", str(tiny_model)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "routed experts" in r.stdout and "KV cache: 240 B per token" in r.stdout
    assert "loader findings: none" in r.stdout
    assert "kernels: routed experts on" in r.stdout and "tuning.json" in r.stdout  # the measured choice
