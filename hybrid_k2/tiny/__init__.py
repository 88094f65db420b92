"""make-tiny: small random models in exactly the official Kimi-K2-Thinking on-disk format.

Same config keys (incl. quantization_config), same tensor names and dtypes (bf16 weights, int32
weight_packed, bf16 weight_scale, int32 weight_shape, fp32 e_score_correction_bias), shards named
`model-0000N-of-00000M.safetensors` with a layer split across shards, the index, `tiktoken.model`,
`tokenizer_config.json` and `generation_config.json`. Experts are quantised with compressed-tensors'
own compressor. `--k2-shape` keeps the real K2 dimensions (and top-8) with fewer layers and experts; its
experts are random packed words (every nibble a uniform code in [-8, 7]) and random scales, and its bf16
weights are drawn in bf16: quantising 7168 x 2048 floats would cost ~20x more, for noise anyway.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from hybrid_k2.errors import HybridK2Error
from hybrid_k2.tiny.bpe import train_bpe, write_tiktoken_model

# Offsets of K2's named special tokens from the first special id (163584 in the real model).
SPECIAL_OFFSETS = {
    0: "[BOS]", 1: "[EOS]", 2: "<|im_end|>", 3: "<|im_user|>", 4: "<|im_assistant|>",
    6: "<|start_header_id|>", 7: "<|end_header_id|>", 9: "[EOT]", 10: "<|im_system|>",
    11: "<|tool_calls_section_begin|>", 12: "<|tool_calls_section_end|>", 13: "<|tool_call_begin|>",
    14: "<|tool_call_argument_begin|>", 15: "<|tool_call_end|>", 17: "<|im_middle|>",
    18: "<|media_begin|>", 19: "<|media_content|>", 20: "<|media_end|>", 21: "<|media_pad|>",
    22: "<think>", 23: "</think>", 254: "[UNK]", 255: "[PAD]",
}
ADDITIONAL_SPECIAL = ["<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|start_header_id|>",
                      "<|end_header_id|>", "[EOT]", "<|im_system|>", "<|im_middle|>"]


@dataclass(frozen=True)
class TinySpec:
    seed: int = 0
    layers: int = 3
    experts: int = 8
    top_k: int | None = None  # None: 2, or min(8, experts) with k2_shape (K2's top-8)
    hidden: int = 64
    moe_intermediate: int = 32
    n_group: int = 1
    topk_group: int = 1
    vocab: int = 0  # 0: 256 specials + the trained BPE (512 ranks)
    k2_shape: bool = False
    heads: int = 4
    shards: int = 3


    def __post_init__(self):
        if self.top_k is None:
            object.__setattr__(self, "top_k", min(8, self.experts) if self.k2_shape else 2)


def _dims(spec: TinySpec) -> dict:
    if spec.k2_shape:
        return dict(hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048, num_attention_heads=64,
                    q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
    h = spec.hidden
    return dict(hidden_size=h, intermediate_size=2 * h, moe_intermediate_size=spec.moe_intermediate,
                num_attention_heads=spec.heads, q_lora_rank=h // 2, kv_lora_rank=h // 2, qk_nope_head_dim=16,
                qk_rope_head_dim=8, v_head_dim=16)


def _validate(spec: TinySpec) -> None:
    checks = [
        (spec.layers >= 2, "--layers must be at least 2 (one dense layer, then MoE layers)"),
        (spec.experts >= 1, "--experts must be at least 1"),
        (1 <= spec.top_k <= spec.experts, "--top-k must be between 1 and --experts"),
        (spec.k2_shape or spec.hidden % 32 == 0, "--hidden must be a multiple of 32"),
        (spec.k2_shape or spec.moe_intermediate % 32 == 0, "--moe-intermediate must be a multiple of 32"),
        (spec.experts % spec.n_group == 0, "--n-group must divide --experts"),
        (1 <= spec.topk_group <= spec.n_group, "--topk-group must be between 1 and --n-group"),
        (spec.topk_group * (spec.experts // spec.n_group) >= spec.top_k, "--topk-group keeps too few experts"),
        (spec.vocab == 0 or spec.vocab >= 256 + 256 + 1, "--vocab must be 0 or at least 513"),
    ]
    for ok, message in checks:
        if not ok:
            raise HybridK2Error(message)


def build_config(spec: TinySpec, vocab_size: int, n_base: int) -> dict:
    d = _dims(spec)
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config",
                     "AutoModel": "modeling_deepseek.DeepseekV3Model",
                     "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"},
        "model_type": "kimi_k2",
        "attention_bias": False, "attention_dropout": 0.0, "aux_loss_alpha": 0.001,
        "bos_token_id": n_base, "eos_token_id": n_base + 2,
        "first_k_dense_replace": 1, "hidden_act": "silu", "initializer_range": 0.02,
        **d,
        "max_position_embeddings": 262144, "moe_layer_freq": 1,
        "n_group": spec.n_group, "n_routed_experts": spec.experts, "n_shared_experts": 1,
        "norm_topk_prob": True, "num_experts_per_tok": spec.top_k, "num_hidden_layers": spec.layers,
        "num_key_value_heads": d["num_attention_heads"], "num_nextn_predict_layers": 0, "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"beta_fast": 1.0, "beta_slow": 1.0, "factor": 64.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                         "original_max_position_embeddings": 4096, "type": "yarn"},
        "rope_theta": 50000.0, "routed_scaling_factor": 2.827, "scoring_func": "sigmoid", "seq_aux": True,
        "tie_word_embeddings": False, "topk_group": spec.topk_group, "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16", "transformers_version": "4.57.1", "use_cache": True,
        "vocab_size": vocab_size,
        "quantization_config": {
            "config_groups": {"group_0": {
                "input_activations": None, "output_activations": None, "targets": ["Linear"],
                "weights": {"actorder": None, "block_structure": None, "dynamic": False, "group_size": 32,
                            "num_bits": 4, "observer": "minmax", "observer_kwargs": {}, "strategy": "group",
                            "symmetric": True, "type": "int"}}},
            "format": "pack-quantized",
            "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*",
                       "re:.*mlp\\.(gate|up|gate_up|down)_proj.*"],
            "kv_cache_scheme": None, "quant_method": "compressed-tensors", "quantization_status": "compressed"},
    }


def _int4_compress(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """compressed-tensors' own group-32 symmetric INT4 quantiser and packer."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    qargs = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32)
    groups = w.float().view(w.shape[0], -1, 32)  # [out, in/32, 32]
    scale, zp = calculate_qparams(groups.amin(-1), groups.amax(-1), qargs)  # [out, in/32]
    scale = scale.to(torch.bfloat16)
    state = PackedQuantizationCompressor.compress(
        {"weight": w.to(torch.bfloat16), "weight_scale": scale, "weight_zero_point": zp},
        QuantizationScheme(targets=["Linear"], weights=qargs))
    return {"weight_packed": state["weight_packed"].contiguous(), "weight_scale": scale.contiguous(),
            "weight_shape": state["weight_shape"].to(torch.int32)}  # K2 stores weight_shape as int32


def _int4_random(g: torch.Generator, out_features: int, in_features: int) -> dict[str, torch.Tensor]:
    """Random INT4 weights (--k2-shape) with about the std rand() gives: each random byte is two nibbles
    u = q + 8 of uniform codes q in [-8, 7] (std ~4.6), so the words need no packing step."""
    packed = torch.randint(0, 256, (out_features, in_features // 2), generator=g, dtype=torch.uint8)
    jitter = torch.rand(out_features, in_features // 32, generator=g) * 0.5 + 0.75  # [out, in/32]
    scale = (jitter * (in_features ** -0.5 / 4.6)).to(torch.bfloat16)
    return {"weight_packed": packed.view(torch.int32), "weight_scale": scale,  # [out, in/8], [out, in/32]
            "weight_shape": torch.tensor([out_features, in_features], dtype=torch.int32)}


def build_tensors(spec: TinySpec, cfg: dict):
    """Yields (name, tensor) in checkpoint order, layer by layer."""
    g = torch.Generator().manual_seed(spec.seed)
    D, V = cfg["hidden_size"], cfg["vocab_size"]

    def rand(*shape, std=None):
        std = std if std is not None else shape[-1] ** -0.5
        if spec.k2_shape:  # drawn in bf16: a third faster at K2 sizes
            return torch.randn(*shape, generator=g, dtype=torch.bfloat16).mul_(std)
        return torch.randn(*shape, generator=g).mul_(std).to(torch.bfloat16)

    def norm(n):
        return (1.0 + 0.1 * torch.randn(n, generator=g)).to(torch.bfloat16)

    H, C = cfg["num_attention_heads"], cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
    R, P, Vd = cfg["kv_lora_rank"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    yield "model.embed_tokens.weight", rand(V, D, std=1.0)
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}."
        yield p + "input_layernorm.weight", norm(D)
        yield p + "self_attn.q_a_proj.weight", rand(cfg["q_lora_rank"], D)
        yield p + "self_attn.q_a_layernorm.weight", norm(cfg["q_lora_rank"])
        yield p + "self_attn.q_b_proj.weight", rand(H * C, cfg["q_lora_rank"])
        yield p + "self_attn.kv_a_proj_with_mqa.weight", rand(R + P, D)
        yield p + "self_attn.kv_a_layernorm.weight", norm(R)
        yield p + "self_attn.kv_b_proj.weight", rand(H * (cfg["qk_nope_head_dim"] + Vd), R)
        yield p + "self_attn.o_proj.weight", rand(D, H * Vd)
        yield p + "post_attention_layernorm.weight", norm(D)
        if L < cfg["first_k_dense_replace"]:
            inter = cfg["intermediate_size"]
            yield p + "mlp.gate_proj.weight", rand(inter, D)
            yield p + "mlp.up_proj.weight", rand(inter, D)
            yield p + "mlp.down_proj.weight", rand(D, inter)
            continue
        E, I = cfg["n_routed_experts"], cfg["moe_intermediate_size"]
        yield p + "mlp.gate.weight", rand(E, D)
        yield p + "mlp.gate.e_score_correction_bias", (0.05 * torch.randn(E, generator=g)).float()
        for e in range(E):
            for proj, shape in (("gate_proj", (I, D)), ("up_proj", (I, D)), ("down_proj", (D, I))):
                int4 = _int4_random(g, *shape) if spec.k2_shape else _int4_compress(rand(*shape))
                for key, t in int4.items():
                    yield f"{p}mlp.experts.{e}.{proj}.{key}", t
        for proj, shape in (("gate_proj", (I, D)), ("up_proj", (I, D)), ("down_proj", (D, I))):
            yield f"{p}mlp.shared_experts.{proj}.weight", rand(*shape)
    yield "model.norm.weight", norm(D)
    yield "lm_head.weight", rand(V, D)


def _write_shards(out: Path, tensors, total_bytes: int, n_shards: int) -> None:
    """Cuts the ordered tensor stream into n_shards of about equal size (so layers straddle shards)."""
    target = total_bytes / n_shards
    weight_map, shard, size, index = {}, {}, 0, 1

    def flush():
        name = f"model-{index:05d}-of-{n_shards:06d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})

    for name, t in tensors:
        shard[name] = t
        size += t.numel() * t.element_size()
        if size >= target * index and index < n_shards:
            flush()
            shard, index = {}, index + 1
    flush()
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, indent=2) + "\n")


def _tensor_bytes(spec: TinySpec, cfg: dict) -> int:
    meta = build_config(spec, cfg["vocab_size"], cfg["bos_token_id"])
    from hybrid_k2.config import ModelArgs
    from hybrid_k2.info import checkpoint_bytes

    return checkpoint_bytes(ModelArgs.from_hf_config(meta))


def write_tokenizer(out: Path, n_merges: int) -> int:
    """Writes tiktoken.model + tokenizer_config.json; returns n_base (the number of BPE ranks)."""
    tokens = train_bpe(n_merges)
    write_tiktoken_model(out / "tiktoken.model", tokens)
    n_base = len(tokens)
    decoder = {str(n_base + off): {"content": name, "lstrip": False, "normalized": False, "rstrip": False,
                                   "single_word": False, "special": True}
               for off, name in sorted(SPECIAL_OFFSETS.items())}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": decoder, "additional_special_tokens": ADDITIONAL_SPECIAL,
        "auto_map": {"AutoTokenizer": ["tokenization_kimi.TikTokenTokenizer", None]},
        "bos_token": "[BOS]", "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
        "extra_special_tokens": {}, "model_max_length": 262144, "pad_token": "[PAD]",
        "tokenizer_class": "TikTokenTokenizer", "unk_token": "[UNK]"}, indent=2) + "\n")
    return n_base


def make_tiny(out_dir: str | Path, spec: TinySpec = TinySpec(), *, force: bool = False) -> Path:
    _validate(spec)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise HybridK2Error(f"not a directory: {out}")
    if out.exists() and any(out.iterdir()) and not force:
        raise HybridK2Error(f"{out} is not empty (use --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    n_merges = (spec.vocab - 512) if spec.vocab else 256
    n_base = write_tokenizer(out, n_merges)
    cfg = build_config(spec, n_base + 256, n_base)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": n_base, "eos_token_id": [n_base + 2, n_base + 1], "do_sample": True,
         "temperature": 1.0, "top_p": 1.0, "max_length": 262144}, indent=2) + "\n")
    _write_shards(out, build_tensors(spec, cfg), _tensor_bytes(spec, cfg), spec.shards)
    (out / "hybrid_k2_tiny.json").write_text(json.dumps(asdict(spec)) + "\n")
    return out


# The random-weight demo model every command falls back to without --model (tiny/demo.py).
from hybrid_k2.tiny.demo import DEMO_SPEC, demo_model_path  # noqa: E402
