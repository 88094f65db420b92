"""Builds Hugging Face transformers' DeepseekV3ForCausalLM from one of our checkpoints (test-only).

The routed experts are dequantised exactly (fp32) with compressed-tensors' own unpacking, so both sides
compute with the same weights; everything runs in fp32 with eager attention.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open


def read_all(path: Path) -> dict[str, torch.Tensor]:
    index = json.loads((path / "model.safetensors.index.json").read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(path / shard), framework="pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    return out


def ct_dequant(sd: dict, name: str) -> torch.Tensor:
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    shape = torch.Size(sd[f"{name}.weight_shape"].tolist())
    q = unpack_from_int32(sd[f"{name}.weight_packed"], 4, shape)  # [out, in] int8
    scale = sd[f"{name}.weight_scale"].float().repeat_interleave(32, dim=1)
    return q.float() * scale


def hf_model(path: Path):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("quantization_config")
    cfg.pop("auto_map", None)
    cfg["model_type"] = "deepseek_v3"
    config = DeepseekV3Config(**{k: v for k, v in cfg.items() if k != "model_type"})
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(config).float().eval()
    sd = read_all(path)
    new = {}
    E = cfg["n_routed_experts"]
    for k, v in sd.items():
        if ".mlp.experts." in k:
            continue
        new[k] = v.float()
    for L in range(cfg["first_k_dense_replace"], cfg["num_hidden_layers"]):
        p = f"model.layers.{L}.mlp.experts"
        gate = [ct_dequant(sd, f"{p}.{e}.gate_proj") for e in range(E)]
        up = [ct_dequant(sd, f"{p}.{e}.up_proj") for e in range(E)]
        down = [ct_dequant(sd, f"{p}.{e}.down_proj") for e in range(E)]
        new[f"{p}.gate_up_proj"] = torch.stack([torch.cat([g, u]) for g, u in zip(gate, up)])
        new[f"{p}.down_proj"] = torch.stack(down)
    missing, unexpected = model.load_state_dict(new, strict=False)
    assert not unexpected, unexpected
    assert all("rotary" in m for m in missing), missing
    return model
