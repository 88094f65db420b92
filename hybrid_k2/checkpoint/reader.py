"""Reads tensors of a sharded safetensors checkpoint exactly as published, with checks a user can act on.

Every tensor is resolved through `model.safetensors.index.json` (never by guessing which shard holds a
layer). Headers are parsed and checked up front (a truncated or corrupt shard is reported before anything is
loaded); `get` then reads one tensor's bytes straight into its destination buffer with plain reads, so
resident memory stays the size of what the caller keeps (no mmap, no second copy of the experts).
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from hybrid_k2.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class CheckpointReader:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"model folder not found: {self.path}")
        if not self.path.is_dir():
            raise CheckpointError(f"not a directory: {self.path}")
        self._headers: dict[str, dict] = {}
        self._files: dict[str, object] = {}
        self._data_start: dict[str, int] = {}
        self.weight_map = self._read_index()
        for shard in sorted(set(self.weight_map.values())):
            self._headers[shard] = self._read_header(shard)
        for name, shard in self.weight_map.items():
            if name not in self._headers[shard]:
                raise CheckpointError(f"tensor {name} is listed in {INDEX_NAME} under {shard} but missing "
                                      f"from that shard")

    # -- index and headers ------------------------------------------------------------------------
    def _read_index(self) -> dict[str, str]:
        index = self.path / INDEX_NAME
        if not index.exists():
            if (self.path / SINGLE_NAME).exists():
                header = self._read_header(SINGLE_NAME)
                return {name: SINGLE_NAME for name in header}
            raise CheckpointError(f"no {INDEX_NAME} (or {SINGLE_NAME}) in {self.path}")
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{index}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        wmap = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
            raise CheckpointError(f"{index}: expected an object with a 'weight_map' of tensor name -> shard")
        for shard in set(wmap.values()):
            if os.sep in shard or shard.startswith(".."):
                raise CheckpointError(f"{index}: shard name {shard!r} points outside the model folder")
        return wmap

    def _read_header(self, shard: str) -> dict[str, dict]:
        """Parses the safetensors header and checks every tensor's bytes lie inside the file."""
        file = self.path / shard
        if not file.exists():
            raise CheckpointError(f"missing shard {shard} in {self.path}")
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"shard {shard} is truncated ({size} bytes): no safetensors header")
            (n,) = struct.unpack("<Q", head)
            self._data_start[shard] = 8 + n
            if n > size - 8 or n > 100 * 2**20:
                raise CheckpointError(f"shard {shard} is truncated or not a safetensors file "
                                      f"(header of {n} bytes in a file of {size})")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise CheckpointError(f"shard {shard}: corrupt safetensors header") from None
        header.pop("__metadata__", None)
        data_size = size - 8 - n
        for name, info in header.items():
            try:
                begin, end = info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"shard {shard}: corrupt entry for tensor {name}") from None
            if end > data_size:
                raise CheckpointError(f"shard {shard} is truncated: tensor {name} needs bytes up to {end} "
                                      f"but the data section has {data_size}")
        return header

    # -- access -----------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def names(self) -> list[str]:
        return list(self.weight_map)

    def dtype(self, name: str) -> torch.dtype:
        return _DTYPES.get(self._info(name)["dtype"], None)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._info(name)["shape"])

    def nbytes(self, name: str) -> int:
        begin, end = self._info(name)["data_offsets"]
        return end - begin

    def _info(self, name: str) -> dict:
        if name not in self.weight_map:
            raise CheckpointError(f"tensor {name} is missing from the checkpoint in {self.path}")
        return self._headers[self.weight_map[name]][name]

    def get(self, name: str, *, shape: tuple[int, ...] | None = None,
            dtype: torch.dtype | tuple[torch.dtype, ...] | None = None,
            out: torch.Tensor | None = None) -> torch.Tensor:
        """One tensor, checked against the expected shape and dtype(s) before any bytes are read."""
        info = self._info(name)
        shard = self.weight_map[name]
        got_dtype = _DTYPES.get(info["dtype"])
        if dtype is not None:
            allowed = dtype if isinstance(dtype, tuple) else (dtype,)
            if got_dtype not in allowed:
                want = " or ".join(str(d).replace("torch.", "") for d in allowed)
                raise CheckpointError(f"tensor {name} in {shard} has dtype {info['dtype']}, expected {want}")
        if shape is not None and tuple(info["shape"]) != tuple(shape):
            raise CheckpointError(f"tensor {name} in {shard} has shape {list(info['shape'])}, "
                                  f"expected {list(shape)}")
        begin, end = info["data_offsets"]
        n_elems = 1
        for d in info["shape"]:
            n_elems *= d
        if got_dtype is None or n_elems * torch.empty(0, dtype=got_dtype).element_size() != end - begin:
            raise CheckpointError(f"tensor {name} in {shard}: {end - begin} bytes do not fit "
                                  f"{info['dtype']}{list(info['shape'])}")
        if out is None:
            out = torch.empty(tuple(info["shape"]), dtype=got_dtype)
        elif out.shape != tuple(info["shape"]) or out.dtype != got_dtype or not out.is_contiguous():
            raise ValueError(f"destination for {name} must be a contiguous {got_dtype}{list(info['shape'])}")
        # Plain reads into the destination: no mmap, so resident memory is only what the caller keeps.
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.path / shard, "rb")
        f.seek(self._data_start[shard] + begin)
        view = memoryview(out.view(torch.uint8).numpy()).cast("B") if out.numel() else memoryview(b"")
        if f.readinto(view) != end - begin:
            raise CheckpointError(f"shard {shard} is truncated while reading tensor {name}")
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
