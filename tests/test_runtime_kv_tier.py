"""Conversations' latent caches moved to host RAM and to files and back, on the real tiny model: the
restored cache continues bit-identically; a file is checked (fingerprint, size, sha256) and a bad one
is refused, then removed by the store; writes are atomic."""
from __future__ import annotations

import logging

import pytest
import torch

import hybrid_k2
from hybrid_k2.runtime import kv_file
from hybrid_k2.runtime.config import RuntimeConfig
from hybrid_k2.runtime.kv_file import BadCacheFile
from hybrid_k2.runtime.kv_store import KVStore, load_session, save_session
from hybrid_k2.runtime.kv_tier import fingerprint, offload, restore, snapshot_of


@pytest.fixture(scope="module", params=["auto", "bf16", "fp8"])
def model(request, tiny_model):
    return hybrid_k2.load(tiny_model, runtime=RuntimeConfig(kv_cache_dtype=request.param))


def ids(seed: int, n: int) -> list[int]:
    return torch.randint(0, 500, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_offload_restore_continues_bit_identically(model):
    prompt = ids(0, 37)
    s = model.new_session()
    s.prefill(prompt)
    expected = s.decode(7)                      # what the next step gives on the untouched cache
    s.truncate(len(prompt))
    snap = offload(s)
    assert len(s) == 0 and all(not c.allocated for c in s.caches)  # the device copy is gone
    assert snap.tokens == tuple(prompt) and snap.nbytes == sum(c.nbytes(37) for c in model.new_session().caches)
    back = restore(snap, len(prompt), model.new_session)
    assert back.tokens == prompt
    assert torch.equal(back.decode(7), expected)
    # A shorter prefix of the same snapshot: same logits as that prefix prefilled in the same chunks.
    part = restore(snap, 20, model.new_session)
    ref = model.new_session()
    ref.prefill(prompt)
    ref.truncate(20)
    assert torch.equal(part.decode(3), ref.decode(3))
    with pytest.raises(ValueError):
        restore(snap, 38, model.new_session)


def test_file_round_trip_and_every_kind_of_bad_file(model, tmp_path, caplog):
    fp = fingerprint(model)
    s = model.new_session()
    s.prefill(ids(1, 25))
    snap = snapshot_of(s)
    path = tmp_path / kv_file.file_name(fp, snap.tokens)
    info = kv_file.write(path, snap, fp)
    assert info.tokens == snap.tokens and info.nbytes == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == [path.name]     # no temporary file left
    back = kv_file.read(path, fp)
    assert back.tokens == snap.tokens
    for a, b in zip(back.layers, snap.layers):
        assert all(torch.equal(x.view(torch.uint8), y.view(torch.uint8)) for x, y in zip(a, b))
    assert kv_file.read_info(path, fp).tokens == snap.tokens

    data = path.read_bytes()
    bad = {"corrupt": data[:-5] + bytes([data[-5] ^ 1]) + data[-4:],   # one bit of the payload
           "truncated": data[:-100], "junk": b"not a cache file at all", "empty": b"",
           "header": data[:16] + b"{" * (len(data) - 16)}
    for name, content in bad.items():
        (tmp_path / f"{name}{kv_file.SUFFIX}").write_bytes(content)
    kv_file.write(tmp_path / f"foreign{kv_file.SUFFIX}", snap, "another model")
    for name in ["truncated", "junk", "empty", "header", "foreign"]:
        with pytest.raises(BadCacheFile):
            kv_file.read_info(tmp_path / f"{name}{kv_file.SUFFIX}", fp)
    assert kv_file.read_info(tmp_path / f"corrupt{kv_file.SUFFIX}", fp).tokens == snap.tokens  # header fine...
    with pytest.raises(BadCacheFile, match="checksum"):
        kv_file.read(tmp_path / f"corrupt{kv_file.SUFFIX}", fp)                                # ...bytes not

    # The store: bad files are warned about and removed, never used; the good one is indexed.
    with caplog.at_level(logging.WARNING, logger="hybrid_k2.kv"):
        store = KVStore(model, model.new_session, folder=tmp_path)
        found = store.scan()
        assert sorted(f.path.name for f in found) == sorted([path.name, f"corrupt{kv_file.SUFFIX}"])
        corrupt = next(f for f in found if f.path.name.startswith("corrupt"))
        assert store.load(corrupt) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert caplog.text.count("removed") == 6 and "checksum" in caplog.text and "another model" in caplog.text
    store.close()


def test_session_save_load_and_wrong_model(model, make_model, tmp_path):
    s = model.new_session()
    s.prefill(ids(2, 30))
    expected = s.decode(9)
    s.truncate(30)
    path = tmp_path / "conv.json.kv"
    assert save_session(s, path, model) == 30
    other = model.new_session()
    other.prefill(ids(3, 5))                    # whatever it held is replaced
    assert load_session(other, path, model) == 30 and other.tokens == s.tokens
    assert torch.equal(other.decode(9), expected)
    small = model.new_session(16)
    with pytest.raises(BadCacheFile, match="do not fit"):
        load_session(small, path, model)
    different = hybrid_k2.load(make_model(seed=1), runtime=RuntimeConfig(kv_cache_dtype=model.kv_dtype))
    with pytest.raises(BadCacheFile, match="another model"):
        load_session(different.new_session(), path, different)


def test_unusable_folder_is_one_clear_error(model, tmp_path):
    from hybrid_k2.errors import HybridK2Error

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(HybridK2Error, match="cannot use .* as the KV cache folder"):
        KVStore(model, model.new_session, folder=tmp_path / "a_file" / "kv")
