"""Moving a conversation's latent KV cache between the device, host RAM and disk (mechanism only).

[NOTE] What moves: for each layer, `LatentCache.state(n)`: the first n rows as stored (data [n, R + P]
and, for fp8, scales [n, 2] fp32), plus the n token ids they hold. Nothing is recomputed or converted,
so a restored prefix gives bit-identical logits to the one that was saved.
- `offload(session)`: copies every layer's rows into host tensors (pinned when the device is cuda, so
  the copy back runs at full PCIe speed) and frees the device cache layer by layer: at most one
  layer's rows exist twice at any moment. On device=cpu this compacts the cache (the session's
  capacity-sized buffer goes, only n rows stay): the same code path, no lasting second copy.
- `restore(snapshot, n, new_session)`: a fresh session with the first n rows loaded.
- Disk files: `kv_file.py` (format, checks); `fingerprint(model)` ties a file to the model.
Which conversation lives where is decided by serve/prefix_cache.py (policy).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

# Files of the checkpoint whose bytes decide the cache's values (besides the runtime's dtype choices).
FINGERPRINT_FILES = ("config.json", "model.safetensors.index.json")
SAMPLE_BYTES = 1 << 16  # read from the start, middle and end of each weights file


@dataclass
class Snapshot:
    """The first len(tokens) positions of a session's cache, in host memory."""
    tokens: tuple[int, ...]
    layers: list[tuple[torch.Tensor, ...]]  # per layer: (data [n, R + P],) or (data, scale [n, 2]) for fp8

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for parts in self.layers for t in parts)

    def __len__(self) -> int:
        return len(self.tokens)


def fingerprint(model) -> str:
    """sha256 of what makes two caches interchangeable: config.json, the weights index, samples of the
    weights files, the precision and each layer's storage dtype. A file with another fingerprint is
    never loaded."""
    h = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        path = Path(model.path) / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"<absent>") + b"\0")
    for shard in sorted(Path(model.path).glob("*.safetensors")):  # same config, other weights (a fine-tune)
        h.update(shard.name.encode() + _sample(shard))
    caches = model.net.new_caches(1, model.kv_dtype)  # unallocated: only their dtypes are read
    h.update(json.dumps({"precision": model.precision, "kv_dtype": model.kv_dtype,
                         "storage": [str(c.storage) for c in caches], "kv_dim": caches[0].kv_dim if caches else 0,
                         "layers": len(caches)}, sort_keys=True).encode())
    return h.hexdigest()


def _sample(path: Path, block: int = SAMPLE_BYTES) -> bytes:
    """The size and three blocks (start, middle, end) of a weights file: reading 594 GB to tell two
    checkpoints apart is not an option, and any retrained tensor changes these bytes."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        out = [str(size).encode()]
        for at in (0, max(0, size // 2 - block // 2), max(0, size - block)):
            f.seek(at)
            out.append(f.read(block))
    return b"".join(out)


def session_nbytes(session) -> int:
    """Bytes the session's valid rows take as stored (what a snapshot of it will hold)."""
    return sum(c.nbytes(len(session)) for c in session.caches)


@torch.inference_mode()
def offload(session) -> Snapshot:
    """Copies the session's len(session) rows per layer to host memory and frees its device caches;
    the session is empty afterwards."""
    n, tokens = len(session), tuple(session.tokens)
    pin = any(c.device.type == "cuda" for c in session.caches) and torch.cuda.is_available()
    layers = []
    for cache in session.caches:  # layer by layer: the device memory goes as the host copy is made
        layers.append(tuple(_host_copy(t, pin) for t in cache.state(n)))
        cache.free()
    session.tokens = []
    return Snapshot(tokens, layers)


def restore(snapshot: Snapshot, n: int, new_session: Callable[[], object]):
    """A new session (from new_session()) holding the snapshot's first n positions."""
    if not 0 < n <= len(snapshot):
        raise ValueError(f"cannot restore {n} positions from a snapshot of {len(snapshot)}")
    return restore_into(new_session(), snapshot, n)


@torch.inference_mode()  # the caches were written under inference mode
def restore_into(session, snapshot: Snapshot, n: int):
    """Replaces the session's contents by the snapshot's first n positions; returns the session."""
    if not 0 < n <= len(snapshot):
        raise ValueError(f"cannot restore {n} positions from a snapshot of {len(snapshot)}")
    if len(session.caches) != len(snapshot.layers):
        raise ValueError(f"snapshot has {len(snapshot.layers)} layers, the session {len(session.caches)}")
    for cache, parts in zip(session.caches, snapshot.layers):
        cache.load_state(tuple(t[:n] for t in parts))
    if any(c.device.type == "cuda" for c in session.caches):
        torch.cuda.synchronize()  # the copies from pinned memory are asynchronous
    session.tokens = list(snapshot.tokens[:n])
    return session


@torch.inference_mode()
def snapshot_of(session, n: int | None = None) -> Snapshot:
    """A host copy of the first n positions (default all) without touching the session (REPL /save)."""
    n = len(session) if n is None else n
    layers = [tuple(_host_copy(t, False) for t in c.state(n)) for c in session.caches]
    return Snapshot(tuple(session.tokens[:n]), layers)


def _host_copy(t: torch.Tensor, pin: bool) -> torch.Tensor:
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=pin)
    out.copy_(t)
    return out


