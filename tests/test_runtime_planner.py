"""The memory plan from config.json alone: the real K2 figures by hand, max context, proposals, refusal."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import hybrid_k2
from hybrid_k2.config import ModelArgs
from hybrid_k2.errors import HybridK2Error
from hybrid_k2.runtime import Placement, RuntimeConfig
from hybrid_k2.runtime.planner import PlanOptions, make_plan

# Kimi-K2-Thinking's config.json, the fields of /work/shared/docs/kimi-k2-format.md section 1.
K2 = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "kimi_k2", "vocab_size": 163840,
    "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
    "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_routed_experts": 384, "n_shared_experts": 1,
    "num_experts_per_tok": 8, "num_attention_heads": 64, "num_key_value_heads": 64, "q_lora_rank": 1536,
    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "hidden_act": "silu",
    "rope_theta": 50000.0, "max_position_embeddings": 262144, "rms_norm_eps": 1e-5, "scoring_func": "sigmoid",
    "topk_method": "noaux_tc", "n_group": 1, "topk_group": 1, "routed_scaling_factor": 2.827,
    "norm_topk_prob": True, "bos_token_id": 163584, "eos_token_id": 163586, "tie_word_embeddings": False,
    "rope_scaling": {"type": "yarn", "factor": 64.0, "original_max_position_embeddings": 4096, "beta_fast": 1.0,
                     "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
    "quantization_config": {
        "quant_method": "compressed-tensors", "format": "pack-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
            "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32}}},
        "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*", "re:.*mlp\\.(gate|up|gate_up|down)_proj.*"]},
}
GiB, TiB = 2**30, 2**40


@pytest.fixture(scope="module")
def k2() -> ModelArgs:
    return ModelArgs.from_hf_config(K2)


def hand_arithmetic():
    """Everything written out, independent of hybrid_k2.info."""
    D, L, E, I, V, H = 7168, 61, 384, 2048, 163840, 64
    mla = (D * 1536 + 1536 + 1536 * H * 192) + (D * 576 + 512 + 512 * H * 256) + H * 128 * D  # incl. its 2 norms
    per_layer_norms = 2 * D
    dense = 3 * D * 18432
    shared = 60 * 3 * D * I
    router = 60 * E * D
    gpu_params = L * (mla + per_layer_norms) + dense + shared + router + D + V * D  # + final norm + lm_head
    gpu_bytes = 2 * gpu_params + 4 * 60 * E  # bf16, fp32 router bias
    expert_weights = 60 * E * 3 * D * I
    routed = expert_weights // 2 + 2 * expert_weights // 32  # nibbles + bf16 scales
    return gpu_bytes, routed


def test_k2_figures_match_hand_arithmetic(k2):
    gpu_bytes, routed = hand_arithmetic()
    plan = make_plan(k2, Placement(), PlanOptions(gpu_mem=48 * GiB, ram=TiB, ctx=4096))
    assert plan.gpu_weight_bytes == gpu_bytes
    assert round(plan.gpu_weight_bytes / 1e9, 1) == 21.1  # ~10.55 B params in bf16
    assert plan.cpu_expert_bytes == routed
    assert round(plan.cpu_expert_bytes / 1e9) == 571
    assert plan.kv_bytes_per_token == 70_272 == (512 + 64) * 61 * 2
    assert plan.kv_cache_bytes == 70_272 * 4096
    assert plan.embed_bytes == 163840 * 7168 * 2 and plan.embed_on == "cpu"
    assert plan.fits and plan.ram_total < TiB


def test_k2_int8_halves_gpu_weights(k2):
    p8 = make_plan(k2, Placement().with_overrides(["*=device-int8"]), PlanOptions(ctx=4096))
    assert p8.gpu_int8_linears == 61 * 5 + 3 + 60 * 3 + 1  # MLA x5 per layer, dense MLP, shared experts, lm_head
    D, L, E, I, V, H = 7168, 61, 384, 2048, 163840, 64
    linear = (L * (D * 1536 + 1536 * H * 192 + D * 576 + 512 * H * 256 + H * 128 * D) + 3 * D * 18432
              + 60 * 3 * D * I + V * D)
    channels = L * (1536 + H * 192 + 576 + H * 256 + D) + 2 * 18432 + D + 60 * (2 * I + D) + V
    norms, router = L * (2 * D + 1536 + 512) + D, 60 * E * D
    # 1 B per linear weight + an fp32 scale per output channel; norms and routers stay bf16, bias fp32
    assert p8.gpu_weight_bytes == linear + 4 * channels + 2 * (norms + router) + 4 * 60 * E
    assert round(p8.gpu_weight_bytes / 1e9, 1) == 10.7


def test_max_context_is_the_boundary(k2):
    o = PlanOptions(gpu_mem=32 * GiB, ram=TiB, ctx=4096)
    plan = make_plan(k2, Placement(), o)
    assert 4096 < plan.max_context < k2.max_position_embeddings
    at = make_plan(k2, Placement(), PlanOptions(**{**o.__dict__, "ctx": plan.max_context}))
    over = make_plan(k2, Placement(), PlanOptions(**{**o.__dict__, "ctx": plan.max_context + 1}))
    assert at.fits and not over.fits and at.gpu_total <= 32 * GiB < over.gpu_total


def test_proposes_int8_when_bf16_weights_do_not_fit(k2):
    plan = make_plan(k2, Placement(), PlanOptions(gpu_mem=16 * GiB, ram=TiB, ctx=4096))
    assert not plan.fits and "weights 21.10 GB" in plan.problems[-1]
    assert plan.proposals[0].startswith("--place '*=device-int8'")
    ok = make_plan(k2, Placement().with_overrides(["*=device-int8"]), PlanOptions(gpu_mem=16 * GiB, ram=TiB, ctx=4096))
    assert ok.fits


def test_ram_shortfall_and_cpu_device(k2):
    plan = make_plan(k2, Placement(), PlanOptions(gpu_mem=48 * GiB, ram=512 * GiB, ctx=4096))
    assert not plan.fits and "host RAM" in plan.problems[-1]
    cpu = make_plan(k2, Placement(), PlanOptions(gpu_mem=1, ram=TiB, ctx=4096, device="cpu"))
    assert cpu.fits and cpu.gpu_total == 0 and cpu.ram_total > cpu.cpu_expert_bytes + cpu.gpu_weight_bytes


def test_hot_experts_and_streaming_add_device_bytes(k2):
    base = make_plan(k2, Placement(), PlanOptions(ctx=4096))
    hot = make_plan(k2, Placement().with_overrides(["model.layers.*.mlp.experts.[0-3]=device"]),
                    PlanOptions(ctx=4096, device_prefill=True, stream_chunk=8))
    per_expert = 3 * 7168 * 2048 // 2 + 2 * 3 * 7168 * 2048 // 32
    assert hot.n_gpu_experts == 60 * 4 and hot.gpu_expert_bytes == 240 * per_expert
    assert hot.stream_bytes == 2 * 8 * per_expert
    assert hot.gpu_total > base.gpu_total + hot.gpu_expert_bytes


def test_plan_cli_json_from_config_alone(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(K2))  # no weights, no tokenizer
    r = subprocess.run([sys.executable, "-m", "hybrid_k2.cli", "plan", "--model", str(tmp_path), "--gpu-mem", "24GiB",
                        "--ram", "1TiB", "--ctx", "131072", "--output", "json"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["kv_bytes_per_token"] == 70272 and d["gpu_weight_bytes"] == hand_arithmetic()[0]
    assert d["cpu_expert_bytes"] == hand_arithmetic()[1] and d["ctx"] == 131072
    assert 0 < d["max_context"] < 131072 and d["fits"] is False and d["proposals"]
    t = subprocess.run([sys.executable, "-m", "hybrid_k2.cli", "plan", "--model", str(tmp_path), "--gpu-mem", "80GiB",
                        "--ram", "1TiB", "--ctx", "8192"], capture_output=True, text=True, timeout=300)
    assert t.returncode == 0 and "routed experts" in t.stdout and "largest context" in t.stdout
    bad = subprocess.run([sys.executable, "-m", "hybrid_k2.cli", "plan", "--model", str(tmp_path), "--gpu-mem", "lots"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "size" in bad.stderr


def test_load_refuses_before_reading_weights(tiny_model):
    with pytest.raises(HybridK2Error, match="cannot load: host RAM needs") as e:
        hybrid_k2.load(tiny_model, ram="1MB")
    assert "\n" not in str(e.value)
    with pytest.raises(HybridK2Error, match="exceeds the model's maximum context"):
        hybrid_k2.load(tiny_model, runtime=RuntimeConfig(ctx=10**9))
    m = hybrid_k2.load(tiny_model, runtime=RuntimeConfig(ram="1GB", ctx=64))
    assert m.runtime.prepared.plan.fits and m.runtime.prepared.plan.ram_total < 10**9


@pytest.mark.parametrize("gpu,flags", [("24GiB", ["--place", "*=device-int8", "--kv-cache-dtype", "fp8"]),
                                       ("48GiB", [])])
def test_full_k2_context_fits_one_gpu(tmp_path, gpu, flags):
    """Issue 10: all 262,144 tokens on a 24 GiB GPU (int8 GPU-side weights, fp8 cache) and on 48 GiB (bf16)."""
    (tmp_path / "config.json").write_text(json.dumps(K2))
    r = subprocess.run([sys.executable, "-m", "hybrid_k2.cli", "plan", "--model", str(tmp_path), "--gpu-mem", gpu,
                        "--ram", "1TiB", "--ctx", "262144", "--output", "json", *flags],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["fits"] is True and d["max_context"] == 262_144 == d["ctx"]
    assert d["kv_cache_bytes"] == d["kv_bytes_per_token"] * 262_144
    assert d["kv_bytes_per_token"] == (35_624 if flags else 70_272)  # fp8: 576 B + two fp32 scales per layer
    assert d["reserve_bytes"] > 0 and d["gpu_total"] <= d["gpu_mem"]


def test_activations_do_not_grow_with_the_context(k2):
    """Blockwise attention: the transient set of a 512-token chunk is the same at depth 32K and 256K."""
    plans = [make_plan(k2, Placement(), PlanOptions(ctx=ctx)) for ctx in (32768, 262144)]
    assert plans[0].activation_bytes == plans[1].activation_bytes < 4 * 10**9


def test_every_proposal_names_flags_chat_serve_and_bench_accept(k2):
    import re

    import typer.main

    from hybrid_k2.cli import app

    commands = typer.main.get_command(app).commands
    accepted = {name: {o for p in commands[name].params for o in p.opts} for name in ("chat", "serve", "bench")}
    seen = set()
    for mem in (16, 24, 26, 30):
        for place in ([], ["*=device-int8"]):
            plan = make_plan(k2, Placement().with_overrides(place), PlanOptions(gpu_mem=mem * GiB, ctx=262144))
            for proposal in plan.proposals:
                for flag in re.findall(r"--[a-z][a-z0-9-]+", proposal.split(":")[0]):
                    seen.add(flag)
                    assert all(flag in opts for opts in accepted.values()), (flag, proposal)
    assert {"--place", "--kv-cache-dtype"} <= seen
    for opts in accepted.values():  # one context flag on every command, the old names kept as aliases
        assert {"--ctx", "--max-context", "--max-model-len"} <= opts
