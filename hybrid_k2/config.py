"""ModelArgs: the architecture, read from the checkpoint's config.json and checked field by field.

Field names are the Hugging Face config's own, so a reader can hold this file beside config.json.
Anything the math needs but the file lacks or gets wrong raises ConfigError naming the field.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid_k2.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("kimi_k2", "deepseek_v3")


@dataclass(frozen=True)
class QuantArgs:
    """compressed-tensors pack-quantized INT4, symmetric, group-wise along the input dim."""

    num_bits: int = 4
    group_size: int = 32
    symmetric: bool = True
    ignore: tuple[str, ...] = ()  # module names / "re:" patterns that stay bf16


@dataclass(frozen=True)
class ModelArgs:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    rms_norm_eps: float
    # dense MLP (layers < first_k_dense_replace)
    intermediate_size: int
    first_k_dense_replace: int
    # moe
    moe_intermediate_size: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    routed_scaling_factor: float
    norm_topk_prob: bool
    scoring_func: str
    topk_method: str
    # mla
    num_attention_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    # yarn
    rope_theta: float
    max_position_embeddings: int
    rope_factor: float = 1.0
    original_max_position_embeddings: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0
    rope_type: str = "default"
    # tokens
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    model_type: str = "kimi_k2"
    tie_word_embeddings: bool = False
    quant: QuantArgs | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    # -- derived ----------------------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def kv_dim(self) -> int:
        """Values cached per token per layer: the normalised latent plus the roped shared key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def n_moe_layers(self) -> int:
        return self.num_hidden_layers - self.first_k_dense_replace

    @property
    def group_size(self) -> int:
        return self.quant.group_size if self.quant else 32

    @property
    def softmax_scale(self) -> float:
        scale = self.qk_head_dim ** -0.5
        if self.rope_type == "yarn" and self.rope_factor > 1.0:
            m = yarn_mscale(self.rope_factor, self.mscale_all_dim)
            scale = scale * m * m
        return scale

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.first_k_dense_replace

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, source: str | Path | dict) -> "ModelArgs":
        """From a checkpoint folder, a config.json path, or an already parsed dict."""
        cfg = _read_config(source) if not isinstance(source, dict) else source
        return _parse(cfg)


def yarn_mscale(scale: float, mscale: float) -> float:
    if scale <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def _read_config(source: str | Path) -> dict:
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if not path.exists() and path.suffix != ".json":  # a folder that is not there, not a missing config.json
        raise ConfigError(f"model folder not found: {path}")
    if not path.exists():
        parent = path.parent
        if not parent.exists():
            raise ConfigError(f"model folder not found: {parent}")
        if not parent.is_dir():
            raise ConfigError(f"not a directory: {parent}")
        raise ConfigError(f"no config.json in {parent}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    return cfg


def _get(cfg: dict, key: str, kind: type | tuple, default: Any = ..., *, positive: bool = False) -> Any:
    if key not in cfg or cfg[key] is None:
        if default is ...:
            raise ConfigError(f"config.json: missing field '{key}'")
        return default
    value = cfg[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"config.json: field '{key}' must be {kinds[0].__name__}, got {value!r}")
    if not isinstance(value, kinds):
        raise ConfigError(f"config.json: field '{key}' must be {kinds[0].__name__}, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"config.json: field '{key}' must be positive, got {value!r}")
    return value


def _parse(cfg: dict) -> ModelArgs:
    model_type = _get(cfg, "model_type", str)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"config.json: model_type '{model_type}' is not supported (expected one of "
                          f"{', '.join(SUPPORTED_MODEL_TYPES)})")
    hidden = _get(cfg, "hidden_size", int, positive=True)
    layers = _get(cfg, "num_hidden_layers", int, positive=True)
    n_routed = _get(cfg, "n_routed_experts", int, positive=True)
    top_k = _get(cfg, "num_experts_per_tok", int, positive=True)
    n_group = _get(cfg, "n_group", int, 1, positive=True)
    topk_group = _get(cfg, "topk_group", int, 1, positive=True)
    first_dense = _get(cfg, "first_k_dense_replace", int, 0)
    if not 0 <= first_dense <= layers:
        raise ConfigError(f"config.json: field 'first_k_dense_replace' must be in 0..{layers}, got {first_dense}")
    if _get(cfg, "moe_layer_freq", int, 1) != 1:
        raise ConfigError("config.json: field 'moe_layer_freq' other than 1 is not supported")
    if top_k > n_routed:
        raise ConfigError(f"config.json: field 'num_experts_per_tok' ({top_k}) exceeds n_routed_experts ({n_routed})")
    if n_routed % n_group:
        raise ConfigError(f"config.json: field 'n_group' ({n_group}) must divide n_routed_experts ({n_routed})")
    if topk_group > n_group:
        raise ConfigError(f"config.json: field 'topk_group' ({topk_group}) exceeds n_group ({n_group})")
    if n_group > 1 and topk_group * (n_routed // n_group) < top_k:
        raise ConfigError("config.json: field 'topk_group' keeps fewer experts than num_experts_per_tok")
    scoring = _get(cfg, "scoring_func", str, "sigmoid")
    if scoring not in ("sigmoid", "softmax"):
        raise ConfigError(f"config.json: field 'scoring_func' '{scoring}' is not supported (sigmoid, softmax)")
    topk_method = _get(cfg, "topk_method", str, "noaux_tc")
    if topk_method not in ("noaux_tc", "greedy", "group_limited_greedy"):
        raise ConfigError(f"config.json: field 'topk_method' '{topk_method}' is not supported")
    if _get(cfg, "hidden_act", str, "silu") != "silu":
        raise ConfigError(f"config.json: field 'hidden_act' '{cfg['hidden_act']}' is not supported (silu)")
    if _get(cfg, "attention_bias", bool, False):
        raise ConfigError("config.json: field 'attention_bias' true is not supported")
    if _get(cfg, "num_nextn_predict_layers", int, 0) not in (0,):
        pass  # MTP layers, if present, are simply not used.

    rope = cfg.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ConfigError("config.json: field 'rope_scaling' must be an object or null")
    rope_type = rope.get("type", rope.get("rope_type", "default")) if rope else "default"
    if rope_type not in ("yarn", "default"):
        raise ConfigError(f"config.json: field 'rope_scaling.type' '{rope_type}' is not supported (yarn)")
    yarn = {}
    if rope_type == "yarn":
        for key, default in (("factor", ...), ("original_max_position_embeddings", ...),
                             ("beta_fast", 32.0), ("beta_slow", 1.0), ("mscale", 1.0), ("mscale_all_dim", 0.0)):
            kind = int if key == "original_max_position_embeddings" else float
            try:
                yarn[key] = _get(rope, key, kind, default)
            except ConfigError as e:
                raise ConfigError(str(e).replace("'" + key + "'", "'rope_scaling." + key + "'")) from None

    qk_rope = _get(cfg, "qk_rope_head_dim", int, positive=True)
    if qk_rope % 2:
        raise ConfigError(f"config.json: field 'qk_rope_head_dim' must be even, got {qk_rope}")
    eos = cfg.get("eos_token_id")
    if isinstance(eos, list):
        eos = tuple(int(e) for e in eos)

    args = ModelArgs(
        vocab_size=_get(cfg, "vocab_size", int, positive=True),
        hidden_size=hidden,
        num_hidden_layers=layers,
        rms_norm_eps=_get(cfg, "rms_norm_eps", float, 1e-6, positive=True),
        intermediate_size=_get(cfg, "intermediate_size", int, positive=True) if first_dense else
        _get(cfg, "intermediate_size", int, 0),
        first_k_dense_replace=first_dense,
        moe_intermediate_size=_get(cfg, "moe_intermediate_size", int, positive=True),
        n_routed_experts=n_routed,
        n_shared_experts=_get(cfg, "n_shared_experts", int, 0),
        num_experts_per_tok=top_k,
        n_group=n_group,
        topk_group=topk_group,
        routed_scaling_factor=_get(cfg, "routed_scaling_factor", float, 1.0),
        norm_topk_prob=_get(cfg, "norm_topk_prob", bool, True),
        scoring_func=scoring,
        topk_method=topk_method,
        num_attention_heads=_get(cfg, "num_attention_heads", int, positive=True),
        q_lora_rank=_get(cfg, "q_lora_rank", int, None),
        kv_lora_rank=_get(cfg, "kv_lora_rank", int, positive=True),
        qk_nope_head_dim=_get(cfg, "qk_nope_head_dim", int, positive=True),
        qk_rope_head_dim=qk_rope,
        v_head_dim=_get(cfg, "v_head_dim", int, positive=True),
        rope_theta=_get(cfg, "rope_theta", float, 10000.0, positive=True),
        max_position_embeddings=_get(cfg, "max_position_embeddings", int, positive=True),
        rope_factor=yarn.get("factor", 1.0),
        original_max_position_embeddings=yarn.get("original_max_position_embeddings", 4096),
        beta_fast=yarn.get("beta_fast", 32.0),
        beta_slow=yarn.get("beta_slow", 1.0),
        mscale=yarn.get("mscale", 1.0),
        mscale_all_dim=yarn.get("mscale_all_dim", 0.0),
        rope_type=rope_type,
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=eos,
        model_type=model_type,
        tie_word_embeddings=_get(cfg, "tie_word_embeddings", bool, False),
        quant=_parse_quant(cfg.get("quantization_config")),
        raw=cfg,
    )
    if args.q_lora_rank is not None and args.q_lora_rank <= 0:
        raise ConfigError(f"config.json: field 'q_lora_rank' must be positive or null, got {args.q_lora_rank}")
    return args


def _parse_quant(q: Any) -> QuantArgs | None:
    """Accepts exactly what K2-Thinking ships: compressed-tensors pack-quantized INT4 W4A16."""
    if q is None:
        return None
    where = "config.json: quantization_config"
    if not isinstance(q, dict):
        raise ConfigError(f"{where} must be an object")
    method = q.get("quant_method")
    if method != "compressed-tensors":
        raise ConfigError(f"{where}.quant_method '{method}' is not supported (compressed-tensors)")
    fmt = q.get("format")
    if fmt != "pack-quantized":
        raise ConfigError(f"{where}.format '{fmt}' is not supported (pack-quantized)")
    groups = q.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise ConfigError(f"{where}.config_groups is missing")
    if len(groups) != 1:
        raise ConfigError(f"{where}.config_groups: exactly one group is supported, found {len(groups)}")
    name, group = next(iter(groups.items()))
    w = group.get("weights") if isinstance(group, dict) else None
    if not isinstance(w, dict):
        raise ConfigError(f"{where}.config_groups.{name}.weights is missing")
    checks = (("num_bits", 4), ("type", "int"), ("symmetric", True), ("strategy", "group"))
    for key, want in checks:
        if w.get(key) != want:
            raise ConfigError(f"{where}.config_groups.{name}.weights.{key} = {w.get(key)!r} is not supported "
                              f"(only {want!r}: INT4 group-wise symmetric)")
    gs = w.get("group_size")
    if gs != 32:
        raise ConfigError(f"{where}.config_groups.{name}.weights.group_size = {gs!r} is not supported (32)")
    if w.get("actorder") not in (None, False):
        raise ConfigError(f"{where}.config_groups.{name}.weights.actorder is not supported")
    if group.get("input_activations") not in (None,):
        raise ConfigError(f"{where}.config_groups.{name}.input_activations: activation quantization is not supported")
    ignore = q.get("ignore") or []
    if not isinstance(ignore, list) or not all(isinstance(s, str) for s in ignore):
        raise ConfigError(f"{where}.ignore must be a list of strings")
    return QuantArgs(num_bits=4, group_size=32, symmetric=True, ignore=tuple(ignore))
