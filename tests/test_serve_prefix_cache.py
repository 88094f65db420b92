"""The prefix cache over real Sessions of the tiny model: longest-prefix reuse gives the same logits as
a fresh prefill, and memory stays within its token / session budget, least recently used out first."""
from __future__ import annotations

import pytest
import torch

import hybrid_k2
from hybrid_k2.chat.generate import common_prefix_len
from hybrid_k2.serve.prefix_cache import PrefixCache


@pytest.fixture(scope="module")
def model(tiny_model):
    return hybrid_k2.load(tiny_model)


def prompt(seed: int, n: int, prefix: list[int] = ()) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return list(prefix) + torch.randint(0, 500, (n,), generator=g).tolist()


def run(cache: PrefixCache, ids: list[int]) -> tuple[torch.Tensor, int]:
    lease = cache.acquire(ids)
    logits = lease.session.prefill(ids[lease.cached:], last_only=True)[-1]  # [V]
    cache.release(lease)
    return logits, lease.cached


def test_common_prefix_len():
    a = list(range(1000))
    assert common_prefix_len(a, a) == 1000
    assert common_prefix_len(a, a[:300] + [-1]) == 300
    assert common_prefix_len(a, []) == 0
    assert common_prefix_len([1, 2], [1, 3]) == 1


def test_reuse_matches_a_fresh_prefill(model):
    cache = PrefixCache(model.new_session, max_tokens=10_000, min_reuse=4)
    base = prompt(0, 40)
    run(cache, base)
    longer = prompt(1, 7, base)               # the agent's next turn: old history + new tokens
    logits, cached = run(cache, longer)
    assert cached == len(base)
    fresh = model.new_session().prefill(longer, last_only=True)[-1]
    torch.testing.assert_close(logits, fresh, rtol=1e-4, atol=1e-4)
    # The same prompt again: all but the last token come from the cache.
    again, cached = run(cache, longer)
    assert cached == len(longer) - 1
    torch.testing.assert_close(again, fresh, rtol=1e-4, atol=1e-4)
    # A branch off the middle truncates the cached session to the shared part.
    branch = prompt(2, 5, base[:20])
    logits, cached = run(cache, branch)
    assert cached == 20
    torch.testing.assert_close(logits, model.new_session().prefill(branch, last_only=True)[-1], rtol=1e-4, atol=1e-4)


def test_short_common_prefix_takes_a_fresh_session(model):
    cache = PrefixCache(model.new_session, max_tokens=10_000, min_reuse=8)
    a = prompt(3, 30)
    run(cache, a)
    _, cached = run(cache, a[:5] + prompt(4, 20))  # only 5 shared: not worth cutting `a` down
    assert cached == 0
    assert cache.stats().sessions == 2
    _, cached = run(cache, a + [7])
    assert cached == len(a)  # `a` survived intact


def test_lru_eviction_by_tokens_and_sessions(model):
    cache = PrefixCache(model.new_session, max_tokens=100, max_sessions=3, min_reuse=4)
    convs = [prompt(10 + i, 30) for i in range(3)]
    for c in convs:
        run(cache, c)
    assert cache.stats().sessions == 3 and cache.stats().tokens == 90
    run(cache, convs[0] + [1, 2])               # touch conversation 0: now most recent
    run(cache, prompt(20, 30))                  # 32 + 30 + 30 + 30 > 100: evict the LRU (conversation 1)
    st = cache.stats()
    assert st.tokens <= 100 and st.evictions == 1
    assert run(cache, convs[1] + [5])[1] == 0    # gone
    assert run(cache, convs[0] + [1, 2, 3])[1] >= 30  # kept
    for i in range(5):
        run(cache, prompt(30 + i, 10))
    assert cache.stats().sessions <= 3


def test_a_session_is_leased_to_one_request_at_a_time(model):
    cache = PrefixCache(model.new_session, max_tokens=10_000, min_reuse=4)
    p = prompt(40, 20)
    run(cache, p)
    first = cache.acquire(p + [1])
    second = cache.acquire(p + [2])             # the cached session is out: this one starts fresh
    assert first.cached == 20 and second.cached == 0
    assert first.session is not second.session
    cache.release(first)
    cache.release(second, keep=False)           # e.g. failed mid-prefill: never reused
    assert cache.stats().sessions == 1


# --- with a store: one session on the device, the others in host RAM, files on disk ----------------

def tiered(model, folder=None, **kw) -> PrefixCache:
    from hybrid_k2.runtime.kv_store import KVStore

    kw.setdefault("min_reuse", 4)
    return PrefixCache(model.new_session, store=KVStore(model, model.new_session, folder=folder), **kw)


def test_idle_conversations_leave_the_device_and_come_back_from_host_ram(model):
    cache = tiered(model, host_bytes=10**9)
    a, b = prompt(50, 40), prompt(51, 30)
    run(cache, a)
    assert cache.stats().host_entries == 0                 # the last conversation stays on the device
    lease = cache.acquire(b)                              # another conversation takes the device...
    assert lease.cached == 0 and cache.stats().host_entries == 1
    st = cache.stats()                                    # ...a went to host RAM, only its 40 rows
    assert st.host_bytes == sum(c.nbytes(40) for c in model.new_session().caches)
    lease.session.prefill(b, last_only=True)
    cache.release(lease)
    nxt = prompt(52, 6, a)
    lease = cache.acquire(nxt)
    assert (lease.cached, lease.source) == (40, "host")
    logits = lease.session.prefill(nxt[40:], last_only=True)[-1]
    cache.release(lease)
    torch.testing.assert_close(logits, model.new_session().prefill(nxt, last_only=True)[-1], rtol=1e-4, atol=1e-4)
    assert cache.stats().restores == 1 and cache.stats().host_entries == 1  # b is the one in RAM now


def test_host_ram_is_evicted_by_bytes_least_recent_first(model):
    row = sum(c.nbytes(1) for c in model.new_session().caches)
    cache = tiered(model, host_bytes=70 * row)            # room for 70 positions in RAM
    convs = [prompt(60 + i, 30) for i in range(4)]
    for c in convs:
        run(cache, c)                                     # 3 offloaded (90 rows > 70): the oldest goes
    st = cache.stats()
    assert st.host_entries == 2 and st.host_bytes == 60 * row and st.evictions == 1
    assert run(cache, convs[0] + [1])[1] == 0             # evicted
    assert run(cache, convs[2] + [1])[1] == 30            # kept


def test_disk_tier_survives_a_new_cache_and_supersedes_prefixes(model, tmp_path):
    cache = tiered(model, tmp_path, host_bytes=0)         # nothing stays in RAM: disk or nothing
    a = prompt(70, 40)
    run(cache, a)
    run(cache, prompt(71, 20))                            # a leaves the device: written, dropped from RAM
    cache.store.flush()
    assert cache.stats().disk_files == 1 and cache.stats().host_entries == 0
    longer = prompt(72, 5, a)
    _, cached = run(cache, longer)
    assert cached == 40 and cache.stats().restores == 1
    cache.close()                                         # the device sessions are written at close
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2                                 # `longer` superseded `a` (its prefix)
    again = tiered(model, tmp_path)                       # a restart
    assert again.stats().disk_files == 2
    nxt = prompt(73, 3, longer)
    lease = again.acquire(nxt)
    assert (lease.cached, lease.source) == (len(longer), "disk")
    logits = lease.session.prefill(nxt[len(longer):], last_only=True)[-1]
    torch.testing.assert_close(logits, model.new_session().prefill(nxt, last_only=True)[-1], rtol=1e-4, atol=1e-4)
    again.release(lease)
    again.close()


def test_disk_files_are_evicted_by_bytes_least_recent_first(model, tmp_path):
    convs = [prompt(80 + i, 30) for i in range(4)]
    probe = tiered(model, tmp_path / "probe", host_bytes=0)
    run(probe, convs[0])
    probe.close()
    size = next((tmp_path / "probe").iterdir()).stat().st_size  # one 30-token conversation's file
    cache = tiered(model, tmp_path / "kv", host_bytes=0, disk_bytes=int(2.5 * size))
    for c in convs:
        run(cache, c)
    cache.store.flush()                                   # 3 written (the 4th is on the device): 1 too many
    assert cache.stats().disk_files == 2 and cache.stats().disk_bytes <= 2.5 * size
    assert run(cache, convs[0] + [1])[1] == 0             # the least recent file went
    assert run(cache, convs[2] + [1])[1] == 30            # read back from its file
    cache.close()
