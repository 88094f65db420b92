"""RuntimeConfig: how one loaded model runs on this machine (placement, threads, overlap, memory budget).

The architecture is ModelArgs (config.json); this is everything the user chooses at load time. Only
cli.py reads argv: it builds a RuntimeConfig with `RuntimeConfig.from_options(...)`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from hybrid_k2.errors import HybridK2Error
from hybrid_k2.model.latent_cache import KV_DTYPES
from hybrid_k2.runtime.placement import Placement

PREFILL_CHUNK = 512  # prompt tokens per Session forward (the planner's default; the executor may cut finer)

_UNITS = {"b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str | int | None) -> int | None:
    """'24GiB', '1TiB', '500MB', '1e9B' or an int (bytes) -> bytes. A text needs its unit: a bare '24'
    could mean bytes or GiB, so it is refused rather than read as 24 bytes."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if m and not m.group(2):
        raise HybridK2Error(f"size {text!r} needs a unit: {m.group(1)}GiB (2^30 bytes) or {m.group(1)}GB (10^9 bytes)?")
    if not m or m.group(2).lower() not in _UNITS:
        raise HybridK2Error(f"cannot read {text!r} as a size (examples: 24GiB, 1TiB, 512MB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def read_expert_counts(path: str | Path) -> dict[int, list[int]]:
    """A `hybrid-k2 profile-experts` file -> layer -> routing count per expert."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        counts = {int(L): [int(c) for c in v] for L, v in data["counts"].items()}
    except FileNotFoundError:
        raise HybridK2Error(f"expert counts file not found: {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise HybridK2Error(f"{path}: not an expert counts file (write one with hybrid-k2 profile-experts)") from None
    return counts


@dataclass(frozen=True)
class RuntimeConfig:
    placement: Placement = field(default_factory=Placement)
    # How the step runs
    executor: str = "hybrid"  # "hybrid": scheduler + executor; "module": the plain module forward (reference)
    experts_backend: str = "auto"  # "kernel" (C++ INT4 kernels), "reference" (pure torch), "auto"
    overlap: bool = True  # shared expert on the device while the CPU runs the routed experts
    defer_experts: int = 0  # the D lowest-weighted experts of a token are added one layer later
    gpu_experts: int = 0  # keep the N most used experts of each layer on the device (needs expert_counts)
    expert_counts: str | None = None  # file written by `hybrid-k2 profile-experts`
    device_prefill_threshold: int | None = None  # prompts longer than this run their experts on the device
    stream_chunk: int = 16  # experts per streamed chunk (two chunks in flight) for device prefill
    cpu_threads: int | None = None  # None: the machine's physical cores
    # torch intra-op threads, set when the runtime is attached. None: 1 when device = cpu and the C++
    # kernels run the experts (their pool already holds the cores; two torch threads beside it measured
    # 3-25x slower per step on a 2-core machine), else torch's own choice (runtime.torch_threads_for).
    torch_threads: int | None = None
    cuda_graphs: bool = True  # capture the decode step on CUDA
    prefill_chunk: int | None = None  # tokens per prefill forward inside the executor (None: as given)
    # Memory budget checked at load time (None: detected; 0 disables the check)
    gpu_mem: int | None = None
    ram: int | None = None
    ctx: int | None = None  # context of a session, planned and allocated (None: the largest that fits)
    kv_cache_dtype: str = "auto"  # latent cache storage: auto (compute dtype), bf16, fp8 (model/latent_cache.py)

    def __post_init__(self):
        if self.executor not in ("hybrid", "module"):
            raise HybridK2Error(f"executor must be hybrid or module, got {self.executor!r}")
        if self.experts_backend not in ("auto", "kernel", "reference"):
            raise HybridK2Error(f"experts backend must be auto, kernel or reference, got {self.experts_backend!r}")
        for name in ("defer_experts", "gpu_experts"):
            if getattr(self, name) < 0:
                raise HybridK2Error(f"--{name.replace('_', '-')} must be >= 0")
        if self.gpu_experts and not self.expert_counts:
            raise HybridK2Error("--gpu-experts needs --expert-counts FILE (write one with hybrid-k2 profile-experts)")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise HybridK2Error("--cpu-threads must be >= 1")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise HybridK2Error("--torch-threads must be >= 1")
        if self.device_prefill_threshold is not None and self.device_prefill_threshold < 0:
            raise HybridK2Error("--device-prefill-threshold must be >= 0")
        if self.stream_chunk < 1:
            raise HybridK2Error("stream chunk must be >= 1 expert")
        if self.ctx is not None and self.ctx < 2:
            raise HybridK2Error("--ctx must be at least 2 tokens")
        if self.kv_cache_dtype not in KV_DTYPES:
            raise HybridK2Error(f"--kv-cache-dtype must be one of {', '.join(KV_DTYPES)}, got {self.kv_cache_dtype!r}")
        if self.prefill_chunk is not None and self.prefill_chunk < 1:
            raise HybridK2Error("prefill chunk must be >= 1 token")
        object.__setattr__(self, "gpu_mem", parse_bytes(self.gpu_mem))
        object.__setattr__(self, "ram", parse_bytes(self.ram))

    @classmethod
    def reference(cls) -> "RuntimeConfig":
        """The plain module forward with the pure-torch experts: the oracle every placement is tested against."""
        return cls(executor="module", experts_backend="reference")

    @classmethod
    def from_options(cls, *, place: list[str] | None = None, gpu_experts: int = 0, expert_counts=None,
                     cpu_threads: int | None = None, torch_threads: int | None = None, defer_experts: int = 0,
                     device_prefill_threshold: int | None = None, gpu_mem=None, ram=None, ctx=None,
                     kv_cache_dtype: str = "auto", prefill_chunk: int | None = None, **kwargs) -> "RuntimeConfig":
        """What the CLI options (--place, --gpu-experts, --cpu-threads, --defer-experts, ...) build
        (hybrid_k2/runtime/cli_options.py declares them once for every command)."""
        return cls(placement=Placement().with_overrides(place), gpu_experts=gpu_experts,
                   expert_counts=str(expert_counts) if expert_counts else None, cpu_threads=cpu_threads,
                   torch_threads=torch_threads,
                   defer_experts=defer_experts, device_prefill_threshold=device_prefill_threshold,
                   gpu_mem=gpu_mem, ram=ram, ctx=ctx, kv_cache_dtype=kv_cache_dtype, prefill_chunk=prefill_chunk,
                   **kwargs)

    def replace(self, **changes) -> "RuntimeConfig":
        return replace(self, **changes)

    def hot_experts(self, n_layers_experts: dict[int, int]) -> dict[int, tuple[int, ...]]:
        """layer -> the gpu_experts most used experts of that layer, from the counts file."""
        if not self.gpu_experts:
            return {}
        counts = read_expert_counts(self.expert_counts)
        out = {}
        for layer, E in n_layers_experts.items():
            c = counts.get(layer)
            if c is None or len(c) != E:
                raise HybridK2Error(f"{self.expert_counts}: no counts for layer {layer} with {E} experts "
                                    f"(profiled on another model?)")
            order = sorted(range(E), key=lambda e: (-c[e], e))
            out[layer] = tuple(sorted(order[:min(self.gpu_experts, E)]))
        return out
