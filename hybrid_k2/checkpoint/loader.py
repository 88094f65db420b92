"""Fills a KimiK2 module tree from the checkpoint: every tensor by its checkpoint name, checked, placed.

Which Linear is INT4 follows compressed-tensors' own rule: with a quantization_config, a Linear is
quantized unless a name in `ignore` matches it (`re:` entries with re.match, others by equality).
Routed experts must be INT4 and go to host RAM, expert by expert, into their store; quantized
GPU-side linears (none in K2) are dequantised once; bf16 tensors are converted to the compute dtype.
Where the embedding goes and which linears are stored as int8 come from an optional placement
(hybrid_k2.runtime.placement.ResolvedPlacement); without one: embedding in host RAM, linears in dtype.
"""
from __future__ import annotations

import re
import sys
from typing import Callable

import torch
from torch import nn

from hybrid_k2.checkpoint.reader import CheckpointReader
from hybrid_k2.config import ModelArgs
from hybrid_k2.errors import CheckpointError
from hybrid_k2.model.experts import PROJECTIONS, Int4ExpertStore
from hybrid_k2.model.linear import Linear
from hybrid_k2.quant.int4 import GROUP, dequantize_int4

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SHAPE_DTYPES = (torch.int32, torch.int64)


def is_quantized(args: ModelArgs, module_name: str) -> bool:
    if args.quant is None:
        return False
    for entry in args.quant.ignore:
        if entry.startswith("re:"):
            if re.match(entry[3:], module_name):
                return False
        elif entry == module_name:
            return False
    return True


def expert_name(layer: int, e: int, proj: str) -> str:
    return f"model.layers.{layer}.mlp.experts.{e}.{proj}"


def read_int4(reader: CheckpointReader, name: str, out_f: int, in_f: int,
              packed_out: torch.Tensor | None = None, scale_out: torch.Tensor | None = None):
    """One compressed-tensors projection: (weight_packed [out, in/8] int32, weight_scale [out, in/32] bf16)."""
    shape = reader.get(f"{name}.weight_shape", shape=(2,), dtype=SHAPE_DTYPES)
    if tuple(shape.tolist()) != (out_f, in_f):
        raise CheckpointError(f"tensor {name}.weight_shape is {shape.tolist()}, expected {[out_f, in_f]}")
    packed = reader.get(f"{name}.weight_packed", shape=(out_f, (in_f + 7) // 8), dtype=torch.int32, out=packed_out)
    scale = reader.get(f"{name}.weight_scale", shape=(out_f, (in_f + GROUP - 1) // GROUP), dtype=torch.bfloat16,
                       out=scale_out)
    return packed, scale


class Loader:
    def __init__(self, reader: CheckpointReader, args: ModelArgs, *, device: torch.device,
                 dtype: torch.dtype, progress: bool | None = None, placement=None):
        self.reader, self.args, self.device, self.dtype = reader, args, torch.device(device), dtype
        self.placement = placement
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.used: set[str] = set()
        self._buffers: dict[str, torch.Tensor] = {}

    # -- experts ----------------------------------------------------------------------------------
    def _scratch(self, key: str, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """One reusable buffer per expert tensor kind: no allocation churn while experts stream in."""
        buf = self._buffers.get(key)
        if buf is None or tuple(buf.shape) != shape:
            buf = self._buffers[key] = torch.empty(shape, dtype=dtype)
        return buf

    def load_experts(self, layer: int, store) -> None:
        D, I = self.args.hidden_size, self.args.moe_intermediate_size
        dims = {"gate_proj": (I, D), "up_proj": (I, D), "down_proj": (D, I)}
        direct = isinstance(store, Int4ExpertStore)
        for e in range(self.args.n_routed_experts):
            parts = {}
            for proj in PROJECTIONS:
                name = expert_name(layer, e, proj)
                if not is_quantized(self.args, name):
                    raise CheckpointError(f"{name}: routed experts must be INT4 (compressed-tensors "
                                          f"pack-quantized); quantization_config leaves them unquantized")
                short = proj.split("_")[0]
                if direct:  # read straight into the store
                    out_p, out_s = getattr(store, f"{short}_packed")[e], getattr(store, f"{short}_scale")[e]
                else:  # read into reused scratch, then the store copies it into its own layout
                    out_p = self._scratch(f"{short}_packed", (dims[proj][0], dims[proj][1] // 8), torch.int32)
                    out_s = self._scratch(f"{short}_scale", (dims[proj][0], dims[proj][1] // GROUP), torch.bfloat16)
                parts[f"{short}_packed"], parts[f"{short}_scale"] = read_int4(self.reader, name, *dims[proj],
                                                                                out_p, out_s)
                self.used.update(f"{name}.{k}" for k in ("weight_packed", "weight_scale", "weight_shape"))
            if not direct:
                store.load_expert(e, **parts)

    # -- everything else --------------------------------------------------------------------------
    def _staging(self, name: str, shape: tuple[int, int]) -> torch.Tensor | None:
        """The destination of a read that is converted and dropped (a weight stored as int8): one buffer,
        grown to the largest such tensor and reused. Reads allocated afresh left holes between the kept
        int8 tensors that later tensors did not fit, so the peak RSS of loading depended on the heap's
        history (up to 1.6x what is kept, on a 70 MB model). None where the checkpoint's entry is not a
        float of that shape: reader.get then says what is wrong."""
        dtype = self.reader.dtype(name)
        if dtype not in FLOAT_DTYPES or self.reader.shape(name) != shape:
            return None
        n = shape[0] * shape[1] * dtype.itemsize
        buf = self._buffers.get("linear_source")
        if buf is None or buf.numel() < n:
            self._buffers.pop("linear_source", None)  # the old one goes before the larger one comes
            buf = self._buffers["linear_source"] = torch.empty(n, dtype=torch.uint8)
        return buf[:n].view(dtype).view(shape)

    def load_linear(self, name: str, module: Linear, net: nn.Module | None = None) -> None:
        out_f, in_f = module.out_features, module.in_features
        if is_quantized(self.args, name):
            packed, scale = read_int4(self.reader, name, out_f, in_f)
            w = dequantize_int4(packed, scale, (out_f, in_f), torch.float32)
            self.used.update(f"{name}.{k}" for k in ("weight_packed", "weight_scale", "weight_shape"))
        else:
            to_int8 = self.placement is not None and net is not None and name in self.placement.int8_linears
            staged = self._staging(f"{name}.weight", (out_f, in_f)) if to_int8 else None
            w = self.reader.get(f"{name}.weight", shape=(out_f, in_f), dtype=FLOAT_DTYPES, out=staged)
            self.used.add(f"{name}.weight")
        if self.placement is not None and net is not None and name in self.placement.int8_linears:
            from hybrid_k2.runtime.int8 import make_int8_linear  # swapped in from outside the model

            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent), child, make_int8_linear(w, device=self.device, dtype=self.dtype))
            return
        module.weight = nn.Parameter(w.to(device=self.device, dtype=self.dtype), requires_grad=False)

    def load_param(self, module: nn.Module, attr: str, name: str, *, device, dtype,
                   allowed=FLOAT_DTYPES) -> None:
        meta = getattr(module, attr)
        t = self.reader.get(name, shape=tuple(meta.shape), dtype=allowed)
        self.used.add(name)
        setattr(module, attr, nn.Parameter(t.to(device=device, dtype=dtype), requires_grad=False))

    def load(self, net: nn.Module, stores: dict[int, object]) -> list[str]:
        """Fills `net` in place; returns findings (unused tensors) for `hybrid-k2 info`."""
        embed_on_device = self.placement is not None and self.placement.embed == "device"
        host = self.device if embed_on_device else torch.device("cpu")
        steps: list[tuple[str, Callable[[], None]]] = []
        for name, module in net.named_modules():
            if isinstance(module, Linear):
                steps.append((name, lambda n=name, m=module: self.load_linear(n, m, net)))
            elif type(module).__name__ == "Embedding":
                # The table stays in host RAM (unless placed on the device); rows are cast after lookup.
                steps.append((name, lambda n=name, m=module: self.load_param(
                    m, "weight", f"{n}.weight", device=host, dtype=torch.bfloat16
                    if self.dtype == torch.bfloat16 else torch.float32)))
            elif type(module).__name__ == "RMSNorm":
                steps.append((name, lambda n=name, m=module: self.load_param(
                    m, "weight", f"{n}.weight", device=self.device, dtype=self.dtype)))
            elif type(module).__name__ == "Router":
                # On the CPU the router's weight is kept in fp32, the dtype it computes in: no per-step
                # conversion of the whole [E, D] matrix (on a GPU the conversion is cheap beside the bytes).
                router_dtype = torch.float32 if self.device.type == "cpu" else self.dtype
                steps.append((name, lambda n=name, m=module, rd=router_dtype: (
                    self.load_param(m, "weight", f"{n}.weight", device=self.device, dtype=rd),
                    self.load_param(m, "e_score_correction_bias", f"{n}.e_score_correction_bias",
                                    device=self.device, dtype=torch.float32))))
        for layer, store in sorted(stores.items()):
            steps.append((f"model.layers.{layer}.mlp.experts", lambda l=layer, s=store: self.load_experts(l, s)))
        self._run(steps)
        self._buffers.clear()  # the scratch of loading goes before the model runs
        return [f"unused tensor in checkpoint: {n}" for n in self.reader.names() if n not in self.used]

    def _run(self, steps) -> None:
        if not self.progress:
            for _, step in steps:
                step()
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("loading {task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeRemainingColumn(), transient=True, console=_stderr_console()) as bar:
            task = bar.add_task("", total=len(steps))
            for name, step in steps:
                bar.update(task, description=name)
                step()
                bar.advance(task)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)
