"""Every tensor a K2 checkpoint must hold for a given config: name -> (shape, allowed dtypes).

Used to report problems from the headers alone (`hybrid-k2 info`), before anything is loaded.
"""
from __future__ import annotations

import torch

from hybrid_k2.config import ModelArgs

BF16 = (torch.bfloat16, torch.float16, torch.float32)
INT4 = {"weight_packed": (torch.int32,), "weight_scale": (torch.bfloat16,), "weight_shape": (torch.int32, torch.int64)}


def _linear(out: dict, name: str, out_f: int, in_f: int, quantized: bool) -> None:
    if quantized:
        out[f"{name}.weight_packed"] = ((out_f, in_f // 8), INT4["weight_packed"])
        out[f"{name}.weight_scale"] = ((out_f, in_f // 32), INT4["weight_scale"])
        out[f"{name}.weight_shape"] = ((2,), INT4["weight_shape"])
    else:
        out[f"{name}.weight"] = ((out_f, in_f), BF16)


def expected_tensors(a: ModelArgs) -> dict[str, tuple[tuple[int, ...], tuple[torch.dtype, ...]]]:
    from hybrid_k2.checkpoint.loader import is_quantized

    D, H, R, P = a.hidden_size, a.num_attention_heads, a.kv_lora_rank, a.qk_rope_head_dim
    out: dict = {"model.embed_tokens.weight": ((a.vocab_size, D), BF16)}

    def lin(name, o, i):
        _linear(out, name, o, i, is_quantized(a, name))

    for L in range(a.num_hidden_layers):
        p = f"model.layers.{L}."
        out[p + "input_layernorm.weight"] = ((D,), BF16)
        out[p + "post_attention_layernorm.weight"] = ((D,), BF16)
        if a.q_lora_rank:
            lin(p + "self_attn.q_a_proj", a.q_lora_rank, D)
            out[p + "self_attn.q_a_layernorm.weight"] = ((a.q_lora_rank,), BF16)
            lin(p + "self_attn.q_b_proj", H * a.qk_head_dim, a.q_lora_rank)
        else:
            lin(p + "self_attn.q_proj", H * a.qk_head_dim, D)
        lin(p + "self_attn.kv_a_proj_with_mqa", R + P, D)
        out[p + "self_attn.kv_a_layernorm.weight"] = ((R,), BF16)
        lin(p + "self_attn.kv_b_proj", H * (a.qk_nope_head_dim + a.v_head_dim), R)
        lin(p + "self_attn.o_proj", D, H * a.v_head_dim)
        if not a.is_moe_layer(L):
            for proj, (o, i) in (("gate_proj", (a.intermediate_size, D)), ("up_proj", (a.intermediate_size, D)),
                                 ("down_proj", (D, a.intermediate_size))):
                lin(f"{p}mlp.{proj}", o, i)
            continue
        E, I = a.n_routed_experts, a.moe_intermediate_size
        out[p + "mlp.gate.weight"] = ((E, D), BF16)
        out[p + "mlp.gate.e_score_correction_bias"] = ((E,), BF16)
        dims = (("gate_proj", (I, D)), ("up_proj", (I, D)), ("down_proj", (D, I)))
        for e in range(E):
            for proj, (o, i) in dims:
                _linear(out, f"{p}mlp.experts.{e}.{proj}", o, i, True)
        if a.n_shared_experts:
            Is = I * a.n_shared_experts
            for proj, (o, i) in (("gate_proj", (Is, D)), ("up_proj", (Is, D)), ("down_proj", (D, Is))):
                lin(f"{p}mlp.shared_experts.{proj}", o, i)
    out["model.norm.weight"] = ((D,), BF16)
    out["lm_head.weight"] = ((a.vocab_size, D), BF16)
    return out
