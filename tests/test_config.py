"""ModelArgs from config.json: the real K2 values, and clear errors naming the field."""
from __future__ import annotations

import copy
import math

import pytest

from hybrid_k2.config import ModelArgs
from hybrid_k2.errors import ConfigError
from hybrid_k2.model.rope import inv_frequencies
from hybrid_k2.tiny import TinySpec, build_config

K2 = build_config(TinySpec(k2_shape=True, layers=61, experts=384, top_k=8), vocab_size=163840, n_base=163584)


def test_real_k2_values():
    a = ModelArgs.from_hf_config(K2)
    assert a.qk_head_dim == 192 and a.kv_dim == 576 and a.n_moe_layers == 60
    assert math.isclose(a.softmax_scale, 0.1446796, rel_tol=1e-6)
    inv_freq, attention_factor = inv_frequencies(a)
    base = 1.0 / (50000.0 ** (2 * 19 / 64))
    assert attention_factor == 1.0
    assert math.isclose(inv_freq[19].item(), base, rel_tol=1e-6)  # pairs 0..19 keep their frequency
    assert math.isclose(inv_freq[20].item(), 1.0 / (50000.0 ** (40 / 64)) / 64, rel_tol=1e-6)  # 20.. divided by 64


def test_deepseek_v3_model_type_accepted():
    cfg = dict(K2, model_type="deepseek_v3")
    assert ModelArgs.from_hf_config(cfg).model_type == "deepseek_v3"


@pytest.mark.parametrize("edit,text", [
    (lambda c: c.pop("hidden_size"), "missing field 'hidden_size'"),
    (lambda c: c.update(hidden_size="big"), "field 'hidden_size' must be int"),
    (lambda c: c.update(num_experts_per_tok=500), "num_experts_per_tok"),
    (lambda c: c.update(n_group=5), "field 'n_group'"),
    (lambda c: c.update(hidden_act="gelu"), "hidden_act"),
    (lambda c: c["rope_scaling"].update(type="dynamic"), "rope_scaling.type"),
    (lambda c: c["rope_scaling"].pop("factor"), "rope_scaling.factor"),
    (lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(group_size=128), "group_size"),
    (lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(symmetric=False), "symmetric"),
    (lambda c: c["quantization_config"].update(quant_method="gptq"), "quant_method"),
])
def test_rejects_with_field_name(edit, text):
    cfg = copy.deepcopy(K2)
    edit(cfg)
    with pytest.raises(ConfigError, match=None) as e:
        ModelArgs.from_hf_config(cfg)
    assert text in str(e.value)
