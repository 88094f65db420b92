"""make-tiny writes exactly the official on-disk format."""
from __future__ import annotations

import json
import re
import subprocess

import tiktoken
import torch
from tiktoken.load import load_tiktoken_bpe

from hybrid_k2.checkpoint.reader import CheckpointReader
from hybrid_k2.config import ModelArgs
from hybrid_k2.info import checkpoint_bytes

REAL_KEYS = {"architectures", "model_type", "hidden_size", "intermediate_size", "moe_intermediate_size",
             "num_hidden_layers", "first_k_dense_replace", "n_routed_experts", "n_shared_experts",
             "num_experts_per_tok", "num_attention_heads", "num_key_value_heads", "q_lora_rank", "kv_lora_rank",
             "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "rope_theta", "rope_scaling",
             "max_position_embeddings", "rms_norm_eps", "scoring_func", "topk_method", "n_group", "topk_group",
             "routed_scaling_factor", "norm_topk_prob", "vocab_size", "bos_token_id", "eos_token_id",
             "tie_word_embeddings", "quantization_config", "torch_dtype"}


def test_layout_names_and_dtypes(tiny_model):
    cfg = json.loads((tiny_model / "config.json").read_text())
    assert REAL_KEYS <= set(cfg)
    q = cfg["quantization_config"]
    assert q["format"] == "pack-quantized" and q["quant_method"] == "compressed-tensors"
    index = json.loads((tiny_model / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2
    assert all(re.fullmatch(r"model-\d{5}-of-\d{6}\.safetensors", s) for s in shards)
    assert shards[-1].endswith(f"-of-{len(shards):06d}.safetensors")
    # at least one layer's tensors straddle two shards
    by_layer: dict = {}
    for name, shard in index["weight_map"].items():
        m = re.match(r"model\.layers\.(\d+)\.", name)
        if m:
            by_layer.setdefault(int(m.group(1)), set()).add(shard)
    assert any(len(s) > 1 for s in by_layer.values())

    reader = CheckpointReader(tiny_model)
    assert reader.dtype("model.layers.1.mlp.experts.0.up_proj.weight_packed") == torch.int32
    assert reader.dtype("model.layers.1.mlp.experts.0.up_proj.weight_scale") == torch.bfloat16
    assert reader.dtype("model.layers.1.mlp.experts.0.up_proj.weight_shape") == torch.int32
    assert reader.dtype("model.layers.1.mlp.gate.e_score_correction_bias") == torch.float32
    assert reader.dtype("model.layers.1.mlp.shared_experts.down_proj.weight") == torch.bfloat16
    assert reader.dtype("lm_head.weight") == torch.bfloat16
    assert sum(reader.nbytes(n) for n in reader.names()) == checkpoint_bytes(ModelArgs.from_hf_config(tiny_model))
    assert index["metadata"]["total_size"] == checkpoint_bytes(ModelArgs.from_hf_config(tiny_model))


def test_tokenizer_files(tiny_model):
    ranks = load_tiktoken_bpe(str(tiny_model / "tiktoken.model"))
    n_base = len(ranks)
    assert sorted(ranks.values()) == list(range(n_base))
    tok = json.loads((tiny_model / "tokenizer_config.json").read_text())
    names = {int(i): v["content"] for i, v in tok["added_tokens_decoder"].items()}
    assert names[n_base] == "[BOS]" and names[n_base + 2] == "<|im_end|>" and names[n_base + 22] == "<think>"
    cfg = json.loads((tiny_model / "config.json").read_text())
    assert cfg["vocab_size"] == n_base + 256 and cfg["eos_token_id"] == n_base + 2
    enc = tiktoken.Encoding("t", pat_str=r"\w+|\s+|[^\w\s]+", mergeable_ranks=ranks, special_tokens={})
    text = "The weather in Beijing is sunny."
    ids = enc.encode(text)
    assert enc.decode(ids) == text and len(ids) < len(text.encode())  # merges were learned


def test_same_seed_same_bytes(tmp_path):
    for d in ("a", "b"):
        r = subprocess.run(["hybrid-k2", "make-tiny", str(tmp_path / d), "--seed", "7", "--layers", "2",
                            "--experts", "4"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    for f in sorted((tmp_path / "a").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name


def test_bad_options_fail_cleanly(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    for args, text in ((["--top-k", "9", "--experts", "4"], "--top-k"), (["--hidden", "50"], "multiple of 32"),
                       ([], "not empty")):
        target = tmp_path / "full" if text == "not empty" else tmp_path / "new"
        r = subprocess.run(["hybrid-k2", "make-tiny", str(target), *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and text in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "full" / "x").read_text() == "keep me"
