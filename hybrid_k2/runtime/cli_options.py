"""The runtime flags of every command that loads or plans a model, declared once.

    @app.command("chat")
    @runtime_options
    def chat_cmd(..., runtime: RuntimeConfig) -> None:
        ... hybrid_k2.load(path, runtime=runtime)

`runtime_options` appends --place, --gpu-experts, --expert-counts, --cpu-threads, --torch-threads,
--defer-experts, --device-prefill-threshold, --ctx (aliases --max-context, --max-model-len),
--kv-cache-dtype, --prefill-chunk and --cuda-graphs/--no-cuda-graphs to the command's signature (typer
reads the signature), and calls the command with `runtime=` the RuntimeConfig they build. A value RuntimeConfig refuses is a
usage error: one line on stderr, exit code 2 (what typer does for a flag it cannot parse). What only the
model can check (--defer-experts below its top-k, the counts file) is refused at load: exit code 1.
"""
from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Callable, Optional

import typer

from hybrid_k2.errors import HybridK2Error
from hybrid_k2.runtime.config import RuntimeConfig

# name -> (annotation, typer option): the one definition every command shares
OPTIONS: dict[str, tuple[object, object]] = {
    "place": (Optional[list[str]], typer.Option(
        None, "--place", help="PATTERN=cpu|device|device-int8 placement override (repeatable, first match wins).")),
    "gpu_experts": (int, typer.Option(0, "--gpu-experts", help="Hot experts per layer kept on the device.")),
    "expert_counts": (Optional[Path], typer.Option(
        None, "--expert-counts", help="Routing counts file from profile-experts (for --gpu-experts).")),
    "cpu_threads": (Optional[int], typer.Option(
        None, "--cpu-threads", help="Expert-kernel threads (default: physical cores).")),
    "torch_threads": (Optional[int], typer.Option(
        None, "--torch-threads", help="torch threads of the device side (default: 1 on cpu with the kernels).")),
    "defer_experts": (int, typer.Option(
        0, "--defer-experts", help="Add each token's D lowest-weighted experts one layer later.")),
    "device_prefill_threshold": (Optional[int], typer.Option(
        None, "--device-prefill-threshold", help="Stream experts to the device for prompts above T tokens.")),
    "ctx": (Optional[int], typer.Option(
        None, "--ctx", "--max-context", "--max-model-len",
        help="Context of a session in tokens, planned and allocated (default: the largest that fits).")),
    "kv_cache_dtype": (str, typer.Option(
        "auto", "--kv-cache-dtype", help="Latent KV cache storage: auto (compute dtype), bf16 or fp8.")),
    "prefill_chunk": (Optional[int], typer.Option(
        None, "--prefill-chunk", help="Prompt tokens per forward (default 512; smaller needs less memory).")),
    "cuda_graphs": (bool, typer.Option(
        True, "--cuda-graphs/--no-cuda-graphs", help="Capture the decode step in a CUDA graph (CUDA only).")),
}


class RuntimeOptionError(HybridK2Error):
    """A runtime flag whose value cannot be used (the CLI exits with code 2)."""


def runtime_config(**values) -> RuntimeConfig:
    """The RuntimeConfig the flags describe; a refused value raises RuntimeOptionError (one line)."""
    unknown = set(values) - set(OPTIONS)
    if unknown:
        raise TypeError(f"not runtime options: {sorted(unknown)}")
    try:
        return RuntimeConfig.from_options(**values)
    except HybridK2Error as e:
        raise RuntimeOptionError(str(e).splitlines()[0]) from None


def runtime_options(command: Callable) -> Callable:
    """Decorator: the command gets the runtime flags and is called with `runtime=RuntimeConfig(...)`."""
    own = inspect.signature(command, eval_str=True)
    if "runtime" not in own.parameters:
        raise TypeError(f"{command.__name__} needs a `runtime` parameter")
    params = [p for name, p in own.parameters.items() if name != "runtime"]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
               for name, (annotation, option) in OPTIONS.items()]

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        values = {name: kwargs.pop(name) for name in OPTIONS if name in kwargs}
        try:
            config = runtime_config(**values)
        except RuntimeOptionError as e:
            typer.echo(f"error: {e}", err=True)
            raise SystemExit(2)
        return command(*args, runtime=config, **kwargs)

    wrapper.__signature__ = own.replace(parameters=params)
    wrapper.__annotations__ = {**{p.name: p.annotation for p in params}, "return": own.return_annotation}
    del wrapper.__wrapped__  # typer must read the new signature, not the command's own
    return wrapper
