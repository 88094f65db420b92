"""Prefix reuse across requests: an agent resends the whole conversation every turn, so keep the KV
caches of recent conversations and prefill only the tokens after the longest common prefix.

[NOTE] Policy only: the copies are a store's (runtime/kv_store.py). Three tiers:
- device: idle Sessions whose cache is still on the device. A GPU holds one session's context (the
  plan sizes the cache for one), so with a store at most `device_sessions` (1) stay there, counting
  the one leased: before another conversation gets the device, the idle one moves to host RAM.
- host: Snapshots (the valid rows, pinned on cuda) under a byte budget `host_bytes`, least recently
  used out first. Restoring one is a copy, not a prefill.
- disk (the store has a folder): every snapshot is also written to a file in the background
  (write-through), so a conversation survives eviction from RAM and a restart; files under
  `disk_bytes`, least recently used removed first; a file whose ids are a prefix of a newer one's is
  redundant and removed. At close, the device sessions are written too.
Without a store, idle Sessions simply stay as they are (the CPU-only behaviour of old).
- `acquire(prompt)` takes the entry sharing the longest token prefix with `prompt` (a session serves
  one request at a time; a file can be read again) and says how many tokens are reused. At least
  one prompt token is always left to prefill: its logits pick the first new token.
- A prefix shorter than `min_reuse` tokens (say, only the default system prompt) does not claim an
  entry: a fresh session is used, so unrelated conversations do not truncate each other's caches.
- `max_tokens` / `max_sessions` cap the device + host entries (LRU out first).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

from hybrid_k2.chat.generate import common_prefix_len


class SessionLike(Protocol):
    tokens: list

    def truncate(self, n: int) -> None: ...

    def __len__(self) -> int: ...


@dataclass
class Lease:
    """A session checked out for one request; `cached` prompt tokens are already in its KV cache,
    taken from `source` ("device", "host", "disk"; None when nothing was reused)."""
    session: SessionLike
    cached: int
    key: int
    source: Optional[str] = None


@dataclass
class CacheStats:
    sessions: int
    tokens: int
    hits: int
    misses: int
    evictions: int
    reused_tokens: int
    host_entries: int = 0
    host_bytes: int = 0
    disk_files: int = 0
    disk_bytes: int = 0
    restores: int = 0  # hits served from host RAM or disk


@dataclass
class _Entry:
    tier: str  # "device" (item: a Session) | "host" (item: a store Snapshot)
    item: Any
    nbytes: int = 0

    @property
    def tokens(self) -> Sequence[int]:
        return self.item.tokens


class PrefixCache:
    def __init__(self, new_session: Callable[[], SessionLike], *, max_tokens: Optional[int] = None,
                 max_sessions: int = 16, min_reuse: int = 1, store=None, host_bytes: Optional[int] = None,
                 disk_bytes: Optional[int] = None, device_sessions: int = 1):
        if (max_tokens is not None and max_tokens < 1) or max_sessions < 1 or device_sessions < 1:
            raise ValueError("prefix cache needs max_tokens >= 1, max_sessions >= 1 and device_sessions >= 1")
        self._new_session = new_session
        self.max_tokens, self.max_sessions = max_tokens, max_sessions
        self.min_reuse = max(1, min_reuse)
        self.store, self.host_bytes, self.disk_bytes = store, host_bytes, disk_bytes
        self.device_sessions = device_sessions if store is not None else max_sessions
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # key -> entry, LRU first
        self._files: OrderedDict[str, Any] = OrderedDict()        # path -> store FileInfo, LRU first
        self._next_key = 0
        self._lock = threading.RLock()
        self.hits = self.misses = self.evictions = self.reused_tokens = self.restores = 0
        if store is not None and store.on_disk:
            for info in store.scan():
                self._files[str(info.path)] = info
            self._evict()

    def acquire(self, prompt: Sequence[int]) -> Lease:
        with self._lock:
            best, best_len = None, 0
            for key, entry in self._entries.items():
                n = common_prefix_len(entry.tokens, prompt)
                if n > best_len:
                    best, best_len = ("mem", key), n
            for path, info in self._files.items():  # memory wins ties: no read needed
                n = common_prefix_len(info.tokens, prompt)
                if n > best_len:
                    best, best_len = ("disk", path), n
            # Leave at least one prompt token to run: its logits pick the first new token.
            reuse = min(best_len, len(prompt) - 1)
            if best is None or reuse < self.min_reuse:
                best, reuse = None, 0
            entry = self._entries.pop(best[1]) if best and best[0] == "mem" else None
            self._make_room(keep=0)  # the device is for the session leased now
            session, source = None, None
            if entry is not None and entry.tier == "device":
                session, source = entry.item, "device"
                session.truncate(reuse)
            elif entry is not None:
                session, source = self.store.restore(entry.item, reuse), "host"
            elif best is not None:
                info = self._files[best[1]]
                snapshot = self.store.load(info)
                if snapshot is None:   # bad file: logged and removed by the store
                    self._files.pop(best[1], None)
                    reuse = 0
                else:
                    self._files.move_to_end(best[1])
                    session, source = self.store.restore(snapshot, reuse), "disk"
            if session is None:
                session, reuse = self._new_session(), 0
                self.misses += 1
            else:
                self.hits += 1
                self.reused_tokens += reuse
                self.restores += source != "device"
            key, self._next_key = self._next_key, self._next_key + 1
            self._evict()
            return Lease(session=session, cached=reuse, key=key, source=source)

    def release(self, lease: Lease, *, keep: bool = True) -> None:
        """Returns a session to the cache (keep=False drops it, e.g. after an error mid-prefill)."""
        with self._lock:
            if keep and len(lease.session) > 0:
                self._entries[lease.key] = _Entry("device", lease.session)
            self._make_room(keep=self.device_sessions)
            self._evict()

    def close(self) -> None:
        """Writes what is only on the device to disk (if there is a folder), then forgets everything."""
        with self._lock:
            if self.store is not None and self.store.on_disk:
                self._make_room(keep=0)
        if self.store is not None:
            self.store.close()  # waits for the writes (outside the lock: they report back under it)
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    # -- policy details ---------------------------------------------------------------------------
    def _make_room(self, keep: int) -> None:
        """Moves device sessions to host RAM, least recent first, until at most `keep` are left."""
        if self.store is None:
            return
        device = [k for k, e in self._entries.items() if e.tier == "device"]
        for key in device[:max(0, len(device) - keep)]:
            entry = self._entries[key]
            snapshot = self.store.offload(entry.item)
            entry.tier, entry.item, entry.nbytes = "host", snapshot, snapshot.nbytes
            if self.store.on_disk and not any(tuple(f.tokens) == snapshot.tokens for f in self._files.values()):
                self.store.save_async(snapshot, self._saved)

    def _saved(self, info) -> None:
        """A file was written (info) or could not be (None): index it, drop the files it supersedes."""
        if info is None:
            return
        with self._lock:
            for path, old in list(self._files.items()):
                if path != str(info.path) and len(old.tokens) <= len(info.tokens) \
                        and tuple(info.tokens[:len(old.tokens)]) == tuple(old.tokens):
                    self.store.remove(old.path)
                    del self._files[path]
            self._files[str(info.path)] = info
            self._files.move_to_end(str(info.path))
            self._evict()

    def _evict(self) -> None:
        while self._entries:
            tokens = sum(len(e.tokens) for e in self._entries.values())
            host = sum(e.nbytes for e in self._entries.values() if e.tier == "host")
            if len(self._entries) > self.max_sessions or (self.max_tokens is not None and tokens > self.max_tokens):
                victim = next(iter(self._entries))
            elif self.host_bytes is not None and host > self.host_bytes:
                victim = next(k for k, e in self._entries.items() if e.tier == "host")
            else:
                break
            del self._entries[victim]
            self.evictions += 1
        while self._files and self.disk_bytes is not None and \
                sum(f.nbytes for f in self._files.values()) > self.disk_bytes:
            _, info = self._files.popitem(last=False)
            self.store.remove(info.path)

    def stats(self) -> CacheStats:
        with self._lock:
            entries = list(self._entries.values())
            host = [e for e in entries if e.tier == "host"]
            return CacheStats(sessions=len(entries), tokens=sum(len(e.tokens) for e in entries),
                              hits=self.hits, misses=self.misses, evictions=self.evictions,
                              reused_tokens=self.reused_tokens, host_entries=len(host),
                              host_bytes=sum(e.nbytes for e in host), disk_files=len(self._files),
                              disk_bytes=sum(f.nbytes for f in self._files.values()), restores=self.restores)
