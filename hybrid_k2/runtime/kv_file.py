"""One conversation prefix's latent cache in a file: format, atomic write, checked read (mechanism).

[NOTE] Layout (little endian):
    magic    8 bytes  b"HK2KVC01"
    hlen     u64      length of the header
    header   hlen bytes of JSON: {"fingerprint": model fingerprint (kv_tier.fingerprint),
             "tokens": n, "parts": tensors per layer, "tensors": [[dtype, [shape]], ...] layer-major,
             "payload": bytes after the header, "sha256": of the payload}
    payload  the n token ids as int64, then each tensor's bytes in order
A file is never trusted: the header is checked against the model's fingerprint, the file size against
the header, every shape against n; the sha256 of the payload is checked before any row is used. A
file that fails is reported (BadCacheFile) and the caller removes it. Writes go to a temporary file in
the same folder, fsync'ed, then renamed over the final name: a reader sees a whole file or none, and
a failed write (full disk) leaves only the temporary file, which is removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from hybrid_k2.runtime.kv_tier import Snapshot

MAGIC = b"HK2KVC01"
SUFFIX = ".hk2kv"
MAX_HEADER = 1 << 20
DTYPES = {str(d).removeprefix("torch."): d for d in
          (torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn)}
READ_BLOCK = 64 << 20


class BadCacheFile(Exception):
    """The file does not hold a usable cache for this model (the message says why)."""


@dataclass
class FileInfo:
    path: Path
    tokens: tuple[int, ...]
    nbytes: int  # file size


def file_name(fp: str, tokens) -> str:
    """One file per (model, token ids): the name is a hash of both."""
    h = hashlib.sha256(fp.encode())
    h.update(torch.tensor(list(tokens), dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()[:40] + SUFFIX


def write(final: Path, snapshot: Snapshot, fp: str) -> FileInfo:
    """Writes the snapshot atomically to the path `final`; raises OSError (the folder is left as it was)."""
    tensors = [t.contiguous() for parts in snapshot.layers for t in parts]
    ids = torch.tensor(snapshot.tokens, dtype=torch.int64)
    blobs = [_bytes(ids)] + [_bytes(t) for t in tensors]
    digest = hashlib.sha256()
    for b in blobs:
        digest.update(b)
    header = json.dumps({"fingerprint": fp, "tokens": len(snapshot.tokens),
                         "parts": len(snapshot.layers[0]) if snapshot.layers else 0,
                         "tensors": [[_dtype_name(t.dtype), list(t.shape)] for t in tensors],
                         "payload": sum(len(b) for b in blobs), "sha256": digest.hexdigest()}).encode()
    final = Path(final)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-", suffix=SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(header)) + header)
            for b in blobs:
                f.write(b)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return FileInfo(final, tuple(snapshot.tokens), final.stat().st_size)


def read_info(path: Path, fp: str) -> FileInfo:
    """Header and token ids of a cache file, checked for this model; raises BadCacheFile."""
    with _open(path) as f:
        header, start = _header(f, path, fp)
        n = header["tokens"]
        ids = _read_tensor(f, torch.int64, [n], path)
        return FileInfo(Path(path), tuple(ids.tolist()), start + header["payload"])


def read(path: Path, fp: str, *, pin: bool = False) -> Snapshot:
    """The whole snapshot, every byte checked against the header's sha256; raises BadCacheFile."""
    with _open(path) as f:
        header, _ = _header(f, path, fp)
        n, parts = header["tokens"], header["parts"]
        ids = _read_tensor(f, torch.int64, [n], path)
        digest = hashlib.sha256(_bytes(ids))
        tensors = []
        for dtype, shape in header["tensors"]:
            t = _read_tensor(f, DTYPES[dtype], shape, path, pin=pin)
            digest.update(_bytes(t))
            tensors.append(t)
    if digest.hexdigest() != header["sha256"]:
        raise BadCacheFile(f"{path}: checksum mismatch (corrupt)")
    layers = [tuple(tensors[i:i + parts]) for i in range(0, len(tensors), parts)] if parts else []
    return Snapshot(tuple(ids.tolist()), layers)


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise BadCacheFile(f"{path}: cannot open ({e.strerror or e})") from None


def _header(f, path: Path, fp: str) -> tuple[dict, int]:
    head = f.read(16)
    if len(head) < 16 or head[:8] != MAGIC:
        raise BadCacheFile(f"{path}: not a hybrid-k2 cache file")
    (hlen,) = struct.unpack("<Q", head[8:])
    if hlen > MAX_HEADER:
        raise BadCacheFile(f"{path}: header of {hlen} bytes is implausible")
    try:
        header = json.loads(f.read(hlen))
        n, parts, tensors = header["tokens"], header["parts"], header["tensors"]
        ok = (isinstance(n, int) and n > 0 and isinstance(parts, int) and parts >= 1
              and isinstance(tensors, list) and len(tensors) % parts == 0
              and all(d in DTYPES and isinstance(s, list) and s and s[0] == n
                      and all(isinstance(x, int) and x >= 0 for x in s) for d, s in tensors)
              and isinstance(header["payload"], int) and isinstance(header["sha256"], str))
    except (ValueError, KeyError, TypeError):
        raise BadCacheFile(f"{path}: malformed header") from None
    if not ok:
        raise BadCacheFile(f"{path}: malformed header")
    if header.get("fingerprint") != fp:
        raise BadCacheFile(f"{path}: made by another model, precision or cache dtype")
    payload = 8 * n + sum(_numel(s) * DTYPES[d].itemsize for d, s in tensors)
    start = 16 + hlen
    size = os.fstat(f.fileno()).st_size
    if payload != header["payload"] or size != start + payload:
        raise BadCacheFile(f"{path}: {size} bytes, the header describes {start + payload} (truncated?)")
    return header, start


def _read_tensor(f, dtype: torch.dtype, shape, path: Path, *, pin: bool = False) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, pin_memory=pin)
    view = memoryview(_bytes(t))
    done = 0
    while done < len(view):
        got = f.readinto(view[done:done + READ_BLOCK])
        if not got:
            raise BadCacheFile(f"{path}: truncated")
        done += got
    return t


def _bytes(t: torch.Tensor):
    """The tensor's storage as a writable uint8 numpy array (any dtype; no copy)."""
    return t.reshape(-1).view(torch.uint8).numpy()


def _numel(shape) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"cannot store a {dtype} cache")
    return name
