"""Sizes of a model by placement class, from config.json alone, and `hybrid-k2 info`.

Placement classes: `device` (attention, dense MLP, router, shared experts, norms, lm_head: bf16 on the
GPU), `host_embed` (the embedding table: a lookup, kept in host RAM), `routed` (INT4 experts in host RAM:
half a byte per weight plus one bf16 scale per 32).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hybrid_k2.config import ModelArgs
from hybrid_k2.errors import CheckpointError


@dataclass(frozen=True)
class Sizes:
    attention_params: int  # all layers
    dense_mlp_params: int
    router_params: int
    shared_expert_params: int
    norm_params: int
    lm_head_params: int
    embed_params: int
    routed_params: int  # INT4 weights, all MoE layers
    routed_bytes: int  # nibbles + bf16 scales + weight_shape entries
    router_bias_bytes: int

    @property
    def device_params(self) -> int:
        return (self.attention_params + self.dense_mlp_params + self.router_params + self.shared_expert_params
                + self.norm_params + self.lm_head_params)

    @property
    def device_bytes(self) -> int:
        return 2 * self.device_params + self.router_bias_bytes

    @property
    def embed_bytes(self) -> int:
        return 2 * self.embed_params


def attention_params_per_layer(a: ModelArgs) -> int:
    D, H = a.hidden_size, a.num_attention_heads
    q = (D * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * H * a.qk_head_dim) if a.q_lora_rank \
        else D * H * a.qk_head_dim
    kv = D * a.kv_dim + a.kv_lora_rank + a.kv_lora_rank * H * (a.qk_nope_head_dim + a.v_head_dim)
    return q + kv + H * a.v_head_dim * D


def expert_bytes(hidden: int, intermediate: int, group_size: int = 32) -> int:
    """Nibbles and bf16 scales of one expert's gate, up and down projections (what decode reads)."""
    weights = 3 * hidden * intermediate
    return weights // 2 + 2 * (weights // group_size)


def routed_bytes_per_expert(a: ModelArgs) -> int:
    return expert_bytes(a.hidden_size, a.moe_intermediate_size, a.group_size)


def sizes(a: ModelArgs) -> Sizes:
    D, L, E, I = a.hidden_size, a.num_hidden_layers, a.n_routed_experts, a.moe_intermediate_size
    n_moe, n_dense = a.n_moe_layers, a.first_k_dense_replace
    return Sizes(
        attention_params=L * attention_params_per_layer(a),
        dense_mlp_params=n_dense * 3 * D * a.intermediate_size,
        router_params=n_moe * E * D,
        shared_expert_params=n_moe * 3 * D * I * a.n_shared_experts,
        norm_params=L * 2 * D + D,
        lm_head_params=a.vocab_size * D,
        embed_params=a.vocab_size * D,
        routed_params=n_moe * E * 3 * D * I,
        routed_bytes=n_moe * E * (routed_bytes_per_expert(a) + 3 * 2 * 4),
        router_bias_bytes=n_moe * E * 4,
    )


def kv_bytes_per_token(a: ModelArgs, dtype_bytes: int = 2, kv_dtype: str = "auto") -> int:
    """Latent cache bytes per position over all layers (kv_dtype "auto": the compute dtype's dtype_bytes)."""
    from hybrid_k2.model.latent_cache import row_bytes

    return row_bytes(a.kv_dim, kv_dtype, dtype_bytes) * a.num_hidden_layers


def checkpoint_bytes(a: ModelArgs) -> int:
    s = sizes(a)
    return s.device_bytes + s.embed_bytes + s.routed_bytes


def decode_expert_bytes_per_token(a: ModelArgs) -> int:
    """Routed-expert bytes one decoded token must read: top-k experts in every MoE layer."""
    return a.n_moe_layers * a.num_experts_per_tok * routed_bytes_per_expert(a)


def _gb(n: int) -> str:
    """Decimal units, the largest that keeps the figure >= 1 (K2 in GB, tiny models in kB or MB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n} B"


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:,.3f} {unit}"
    return str(n)


def config_only(path: Path) -> bool:
    """config.json alone (the file, or a folder with no index and no shard): `info` then reports what the
    config tells and says what it cannot check. Anything else goes to the checkpoint reader's checks."""
    if path.is_file():
        return path.suffix == ".json"
    return path.is_dir() and not (path / "model.safetensors.index.json").exists() and \
        not any(path.glob("*.safetensors"))


def print_info(model: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from hybrid_k2.checkpoint.reader import CheckpointReader
    from hybrid_k2.tiny import demo_model_path

    path = Path(model) if model is not None else demo_model_path()
    reader = None if config_only(path) else CheckpointReader(path)  # checks the folder and every shard's header first
    a = ModelArgs.from_hf_config(path)
    s = sizes(a)
    console = Console()
    console.print(f"[bold]{path}[/bold]  model_type={a.model_type}")
    arch = Table(title="architecture", show_header=False)
    for k, v in [("layers", f"{a.num_hidden_layers} ({a.first_k_dense_replace} dense, {a.n_moe_layers} MoE)"),
                 ("hidden / heads", f"{a.hidden_size} / {a.num_attention_heads}"),
                 ("MLA q_lora / kv_lora / nope / rope / v",
                  f"{a.q_lora_rank} / {a.kv_lora_rank} / {a.qk_nope_head_dim} / {a.qk_rope_head_dim} / {a.v_head_dim}"),
                 ("experts", f"{a.n_routed_experts} routed (top-{a.num_experts_per_tok}, width "
                             f"{a.moe_intermediate_size}) + {a.n_shared_experts} shared"),
                 ("router", f"{a.scoring_func}, {a.topk_method}, groups {a.n_group}/{a.topk_group}, "
                            f"scale {a.routed_scaling_factor}"),
                 ("context", f"{a.max_position_embeddings:,} (rope {a.rope_type}, factor {a.rope_factor:g})"),
                 ("vocab", f"{a.vocab_size:,}"),
                 ("quantization", "INT4 pack-quantized, group 32, symmetric" if a.quant else "none")]:
        arch.add_row(k, v)
    console.print(arch)
    t = Table(title="parameters by placement")
    t.add_column("class")
    t.add_column("where")
    t.add_column("params", justify="right")
    t.add_column("bytes", justify="right")
    t.add_row("attention + norms + dense + router + shared + lm_head", "GPU (bf16)",
              _count(s.device_params), _gb(s.device_bytes))
    t.add_row("embedding table", "host RAM (bf16)", _count(s.embed_params), _gb(s.embed_bytes))
    t.add_row("routed experts", "host RAM (INT4 + bf16 scales)", _count(s.routed_params),
              _gb(s.routed_bytes))
    console.print(t)
    console.print(f"KV cache: {kv_bytes_per_token(a):,} B per token (bf16 latent, {a.kv_dim} values x "
                  f"{a.num_hidden_layers} layers)")
    console.print(f"decode reads {_gb(decode_expert_bytes_per_token(a))} of routed experts per token")
    try:
        from hybrid_k2.kernels.tuning import describe

        for line in describe():
            console.print(line, highlight=False)
    except ImportError:  # kernels not built: the torch reference runs the experts
        console.print("kernels: not built (the pure-torch reference runs the routed experts)")
    if reader is None:
        console.print(f"loader findings: not checked: no weights in {path} (sizes above are from config.json; "
                      "whether every tensor is present with the right shape and dtype needs the safetensors "
                      "shards and model.safetensors.index.json)")
        return
    problems, notes = _findings(reader, a)
    for note in notes:
        console.print(f"note: {note}")
    if problems:
        console.print("[red]loader findings:[/red]")
        for p in problems:
            console.print(f"  - {p}")
        raise CheckpointError(f"the checkpoint cannot be loaded: {len(problems)} problem(s), first: {problems[0]}")
    console.print("loader findings: none (every expected tensor is present with the right shape and dtype)")


def _findings(reader, a: ModelArgs) -> tuple[list[str], list[str]]:
    """Compares the checkpoint's headers with the tensors the model expects, without loading anything."""
    from hybrid_k2.checkpoint.expected import expected_tensors

    problems = []
    expected = expected_tensors(a)
    for name, (shape, dtypes) in expected.items():
        if name not in reader:
            problems.append(f"tensor {name} is missing from the checkpoint")
            continue
        if reader.shape(name) != shape:
            problems.append(f"tensor {name} has shape {list(reader.shape(name))}, expected {list(shape)}")
        if reader.dtype(name) not in dtypes:
            want = " or ".join(str(d).replace("torch.", "") for d in dtypes)
            problems.append(f"tensor {name} has dtype {reader._info(name)['dtype']}, expected {want}")
        if len(problems) > 20:
            problems.append("... (more)")
            break
    extra = [n for n in reader.names() if n not in expected]
    notes = [f"{len(extra)} tensors the model does not use, e.g. {extra[0]}"] if extra else []
    return problems, notes
