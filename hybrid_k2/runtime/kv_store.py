"""The mechanism the prefix cache drives: conversations' caches to host RAM and back, and to files.

[NOTE] `KVStore` wraps kv_tier (device <-> host copies) and kv_file (the file format) for one model:
- `offload(session)` / `restore(snapshot, n)`: see kv_tier. Host copies are pinned on cuda.
- `scan()`: the folder's cache files for this model; a foreign, truncated or malformed one is logged
  as a warning and removed.
- `save_async(snapshot, done)`: one background writer thread, so the model thread never waits for the
  disk; done(FileInfo) after the atomic rename, done(None) after a failed write (full disk...), which
  is logged and leaves nothing behind. The snapshot in RAM is untouched either way.
- `load(info)`: reads and checks a file (sha256 of every byte); a bad one is logged, removed, None.
Which conversation goes where, and when, is serve/prefix_cache.py's decision.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

from hybrid_k2.errors import HybridK2Error
from hybrid_k2.runtime import kv_file
from hybrid_k2.runtime.kv_file import BadCacheFile, FileInfo
from hybrid_k2.runtime.kv_tier import (Snapshot, fingerprint, offload, restore, restore_into, session_nbytes,
                                       snapshot_of)

log = logging.getLogger("hybrid_k2.kv")


class KVStore:
    def __init__(self, model, new_session: Callable[[], object], *, folder: Optional[Path] = None):
        self.new_session = new_session
        self.fingerprint = fingerprint(model)
        self.pin = model.device.type == "cuda"
        self.folder = Path(folder) if folder is not None else None
        self._writer: Optional[ThreadPoolExecutor] = None
        self._pending: list[Future] = []
        if self.folder is not None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise HybridK2Error(f"cannot use {self.folder} as the KV cache folder: {e.strerror or e}") from None
            if not os.access(self.folder, os.W_OK):
                raise HybridK2Error(f"the KV cache folder {self.folder} is not writable")
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="hybrid-k2-kv-writer")

    # -- host RAM ---------------------------------------------------------------------------------
    def offload(self, session) -> Snapshot:
        return offload(session)

    def restore(self, snapshot: Snapshot, n: int):
        return restore(snapshot, n, self.new_session)

    @staticmethod
    def nbytes(item) -> int:
        return item.nbytes if isinstance(item, Snapshot) else session_nbytes(item)

    # -- files ------------------------------------------------------------------------------------
    @property
    def on_disk(self) -> bool:
        return self.folder is not None

    def scan(self) -> list[FileInfo]:
        """This model's cache files, oldest first; bad ones (and leftover temporary files) removed."""
        if self.folder is None:
            return []
        found = []
        for path in sorted(self.folder.glob("*" + kv_file.SUFFIX), key=_mtime):
            if path.name.startswith(".tmp-"):
                self.remove(path)
                continue
            try:
                found.append(kv_file.read_info(path, self.fingerprint))
            except BadCacheFile as e:
                self._bad(path, e)
        return found

    def save_async(self, snapshot: Snapshot, done: Callable[[Optional[FileInfo]], None]) -> None:
        def work():
            try:
                info = kv_file.write(self.folder / kv_file.file_name(self.fingerprint, snapshot.tokens), snapshot,
                                     self.fingerprint)
            except OSError as e:
                log.warning("KV cache: could not save %d tokens to %s (%s); the conversation stays in RAM",
                            len(snapshot), self.folder, e.strerror or e)
                info = None
            done(info)

        if self._writer is None:  # no folder, or closed: the snapshot simply stays in RAM
            done(None)
            return
        self._pending = [f for f in self._pending if not f.done()] + [self._writer.submit(work)]

    def load(self, info: FileInfo) -> Optional[Snapshot]:
        try:
            snap = kv_file.read(info.path, self.fingerprint, pin=self.pin)
        except BadCacheFile as e:
            self._bad(info.path, e)
            return None
        if snap.tokens != info.tokens:  # replaced under our feet by a file of other ids: not ours to use
            log.warning("KV cache: %s changed since it was indexed; ignored", info.path)
            return None
        return snap

    def remove(self, path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("KV cache: cannot remove %s (%s)", path, e.strerror or e)

    def flush(self) -> None:
        """Waits for the files being written."""
        for f in list(self._pending):
            f.result()
        self._pending = []

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def _bad(self, path: Path, e: BadCacheFile) -> None:
        log.warning("KV cache: ignoring %s; removed", e)
        self.remove(path)


def save_session(session, path: Path, model) -> int:
    """Writes the session's cache (all its positions) to `path` (REPL /save); raises OSError."""
    kv_file.write(path, snapshot_of(session), fingerprint(model))
    return len(session)


def load_session(session, path: Path, model) -> int:
    """Replaces the session's contents by the cache saved in `path` (REPL /load); returns the tokens
    restored. Raises BadCacheFile when the file is not this model's, is damaged or does not fit."""
    snap = kv_file.read(path, fingerprint(model), pin=model.device.type == "cuda")
    if len(snap) > session.max_len:
        raise BadCacheFile(f"{path}: {len(snap)} tokens do not fit the session's context of {session.max_len}")
    restore_into(session, snap, len(snap))
    return len(snap)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
