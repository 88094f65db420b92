"""Bad checkpoints get one clear line and a non-zero exit; nothing crashes."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import hybrid_k2
from hybrid_k2.errors import CheckpointError, ConfigError, HybridK2Error

EXPERT = "model.layers.1.mlp.experts.0.gate_proj"


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def shard_of(path: Path, name: str) -> Path:
    index = json.loads((path / "model.safetensors.index.json").read_text())
    return path / index["weight_map"][name]


def rewrite_shard(path: Path, name: str, edit) -> None:
    shard = shard_of(path, name)
    tensors = load_file(str(shard))
    edit(tensors)
    save_file(tensors, str(shard), metadata={"format": "pt"})


def missing_shard(p):
    shard_of(p, EXPERT + ".weight_packed").unlink()


def truncated_shard(p):
    shard = shard_of(p, EXPERT + ".weight_packed")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])


def tensor_missing(p):
    rewrite_shard(p, EXPERT + ".weight_scale", lambda t: t.pop(EXPERT + ".weight_scale"))


def shape_mismatch(p):
    name = "model.layers.0.self_attn.kv_b_proj.weight"
    rewrite_shard(p, name, lambda t: t.__setitem__(name, t[name][:-1].clone()))


def wrong_dtype(p):
    name = EXPERT + ".weight_packed"
    rewrite_shard(p, name, lambda t: t.__setitem__(name, t[name].float()))


def wrong_weight_shape(p):
    name = EXPERT + ".weight_shape"
    rewrite_shard(p, name, lambda t: t.__setitem__(name, torch.tensor([1, 2], dtype=torch.int32)))


def unsupported_quant(p):
    cfg = json.loads((p / "config.json").read_text())
    cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = 8
    (p / "config.json").write_text(json.dumps(cfg))


def unsupported_format(p):
    cfg = json.loads((p / "config.json").read_text())
    cfg["quantization_config"]["format"] = "float-quantized"
    (p / "config.json").write_text(json.dumps(cfg))


def malformed_config(p):
    (p / "config.json").write_text('{"model_type": "kimi_k2", "hidden_size": ')


def malformed_index(p):
    (p / "model.safetensors.index.json").write_text("{not json")


def missing_field(p):
    cfg = json.loads((p / "config.json").read_text())
    del cfg["kv_lora_rank"]
    (p / "config.json").write_text(json.dumps(cfg))


def bad_model_type(p):
    cfg = json.loads((p / "config.json").read_text())
    cfg["model_type"] = "llama"
    (p / "config.json").write_text(json.dumps(cfg))


CASES = {
    "missing shard": (missing_shard, CheckpointError, "missing shard model-0000"),
    "truncated shard": (truncated_shard, CheckpointError, "truncated"),
    "tensor missing": (tensor_missing, CheckpointError, "missing from that shard"),
    "shape mismatch": (shape_mismatch, CheckpointError, "has shape"),
    "wrong dtype": (wrong_dtype, CheckpointError, "has dtype F32, expected int32"),
    "weight_shape mismatch": (wrong_weight_shape, CheckpointError, "weight_shape is [1, 2]"),
    "unsupported quantization": (unsupported_quant, ConfigError, "num_bits = 8 is not supported"),
    "unsupported format": (unsupported_format, ConfigError, "format 'float-quantized' is not supported"),
    "malformed config.json": (malformed_config, ConfigError, "malformed JSON"),
    "malformed index": (malformed_index, CheckpointError, "malformed JSON"),
    "missing config field": (missing_field, ConfigError, "missing field 'kv_lora_rank'"),
    "unsupported model_type": (bad_model_type, ConfigError, "model_type 'llama' is not supported"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_load_raises_clear_error(tiny_model, tmp_path, case):
    corrupt, kind, text = CASES[case]
    path = copy_model(tiny_model, tmp_path / "m")
    corrupt(path)
    with pytest.raises(kind) as info:
        hybrid_k2.load(path)
    message = str(info.value)
    assert text in message and "\n" not in message


@pytest.mark.parametrize("case", ["missing shard", "truncated shard", "malformed config.json", "unsupported quantization",
                                  "shape mismatch", "wrong dtype"])
def test_cli_reports_one_line_and_fails(tiny_model, tmp_path, case):
    corrupt, _, text = CASES[case]
    path = copy_model(tiny_model, tmp_path / "m")
    corrupt(path)
    r = subprocess.run(["hybrid-k2", "info", "--model", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    assert text in r.stderr + r.stdout


def test_not_a_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(HybridK2Error, match="not a directory"):
        hybrid_k2.load(f)
    with pytest.raises(HybridK2Error, match="model folder not found"):
        hybrid_k2.load(tmp_path / "nope")
    r = subprocess.run(["hybrid-k2", "info", "--model", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "not a directory" in r.stderr


def test_bad_token_and_empty_prompt(tiny_model):
    s = hybrid_k2.load(tiny_model).new_session(max_len=8)
    with pytest.raises(HybridK2Error, match="outside the vocabulary"):
        s.prefill([10**9])
    with pytest.raises(HybridK2Error, match="at least one token"):
        s.prefill([])
    with pytest.raises(HybridK2Error, match="context overflow"):
        s.prefill(list(range(9)))
    assert s.tokens == []


def test_bad_precision_and_device(tiny_model):
    with pytest.raises(HybridK2Error, match="precision"):
        hybrid_k2.load(tiny_model, precision="fp8")
    with pytest.raises(HybridK2Error):
        hybrid_k2.load(tiny_model, device="tpu")
