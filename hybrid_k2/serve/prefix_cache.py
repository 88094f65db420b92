"""Prefix reuse across requests: an agent resends the whole conversation every turn, so keep the KV
caches (Sessions) of recent conversations and prefill only the tokens after the longest common prefix.

[NOTE] Policy only: no tensors here. A Session is anything with `.tokens` (ids in its KV cache),
`truncate(n)` and `len()`; `new_session()` makes an empty one.
- `acquire(prompt)` takes the cached session sharing the longest token prefix with `prompt` OUT of the
  cache (a session serves one request at a time), truncates it to that prefix and says how many tokens
  are reused. At least one prompt token is always left to prefill: the next token's logits come from
  the last prompt position, and a Session only returns logits for what it runs.
- `release(session)` puts it back as most recently used; then sessions are evicted, least recently
  used first, until the cached tokens fit `max_tokens` and the count fits `max_sessions`.
- A prefix shorter than `min_reuse` tokens (say, only the default system prompt) does not claim a
  session: a fresh one is used instead, so unrelated conversations do not keep truncating each other's
  caches. (Such a short prefix is cheap to prefill again.)
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from hybrid_k2.chat.generate import common_prefix_len


class SessionLike(Protocol):
    tokens: list

    def truncate(self, n: int) -> None: ...

    def __len__(self) -> int: ...


@dataclass
class Lease:
    """A session checked out for one request; `cached` prompt tokens are already in its KV cache."""
    session: SessionLike
    cached: int
    key: int


@dataclass
class CacheStats:
    sessions: int
    tokens: int
    hits: int
    misses: int
    evictions: int
    reused_tokens: int


class PrefixCache:
    def __init__(self, new_session: Callable[[], SessionLike], *, max_tokens: int, max_sessions: int = 16,
                 min_reuse: int = 1):
        if max_tokens < 1 or max_sessions < 1:
            raise ValueError("prefix cache needs max_tokens >= 1 and max_sessions >= 1")
        self._new_session = new_session
        self.max_tokens = max_tokens
        self.max_sessions = max_sessions
        self.min_reuse = max(1, min_reuse)
        self._idle: OrderedDict[int, SessionLike] = OrderedDict()  # key -> session, LRU first
        self._next_key = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = self.reused_tokens = 0

    def acquire(self, prompt: Sequence[int]) -> Lease:
        with self._lock:
            best_key, best_len = None, 0
            for key, session in self._idle.items():
                n = common_prefix_len(session.tokens, prompt)
                if n > best_len:
                    best_key, best_len = key, n
            # Leave at least one prompt token to run: its logits pick the first new token.
            reuse = min(best_len, len(prompt) - 1)
            if best_key is not None and reuse >= self.min_reuse:
                session = self._idle.pop(best_key)
                self.hits += 1
                self.reused_tokens += reuse
                key = best_key
            else:
                session, reuse, key = None, 0, self._next_key
                self._next_key += 1
                self.misses += 1
        if session is None:
            session = self._new_session()
        else:
            session.truncate(reuse)
        return Lease(session=session, cached=reuse, key=key)

    def release(self, lease: Lease, *, keep: bool = True) -> None:
        """Returns a session to the cache (keep=False drops it, e.g. after an error mid-prefill)."""
        with self._lock:
            if keep and len(lease.session) > 0:
                self._idle[lease.key] = lease.session
                self._idle.move_to_end(lease.key)
            self._evict()

    def _evict(self) -> None:
        total = sum(len(s) for s in self._idle.values())
        while self._idle and (total > self.max_tokens or len(self._idle) > self.max_sessions):
            _, session = self._idle.popitem(last=False)
            total -= len(session)
            self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(sessions=len(self._idle), tokens=sum(len(s) for s in self._idle.values()),
                              hits=self.hits, misses=self.misses, evictions=self.evictions,
                              reused_tokens=self.reused_tokens)
