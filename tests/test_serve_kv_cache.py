"""The server's conversation tiers end to end (real server, real openai client): a conversation moved
off the device to host RAM, or written to --kv-cache-dir and read back after a restart, is reused
(cached_tokens = the restored prefix) and answers exactly as when it was prefilled; bad files are
ignored with a warning and removed; a disk that refuses writes costs nothing already served."""
from __future__ import annotations

import resource

import pytest

from hybrid_k2.runtime import kv_file
from serve_helpers import MODEL, render_prompt_ids, run_server

A = [{"role": "system", "content": "You are a careful assistant."},
     {"role": "user", "content": "Here is a long description of the project we are working on, " * 6}]
B = [{"role": "user", "content": "An unrelated conversation about something else entirely, " * 4}]


def ask(server, messages):
    r = server.client().chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0)
    return r.choices[0].message.content, r.choices[0].message.model_extra.get("reasoning_content"), \
        r.usage.prompt_tokens_details.cached_tokens


@pytest.fixture(scope="module")
def n_prompt(tiny_model):
    return len(render_prompt_ids(tiny_model, A))


def test_host_ram_and_restart_from_disk(tiny_model, tmp_path, n_prompt):
    folder = tmp_path / "kv"
    with run_server(tiny_model, tmp_path, "--kv-cache-dir", str(folder), "--log-level", "info") as server:
        first = ask(server, A)
        assert first[2] == 0
        assert ask(server, B)[2] == 0                       # A leaves the device for host RAM
        again = ask(server, A)
        assert again == first[:2] + (n_prompt - 1,)        # restored from RAM: same answer, all but 1 cached
        m = server.metrics()
        assert m["hybrid_k2_prefix_cache_restores_total"] == 1 and m["hybrid_k2_prefix_cache_host_bytes"] > 0
        long = server.client().completions.create(model=MODEL, prompt=[i % 500 for i in range(2400)], max_tokens=2)
        assert long.usage.prompt_tokens == 2400
        log = server.log_text()
    # Each request's start and end, and progress lines while a long prompt prefills (every 2,048 tokens).
    assert "request 4: prefill 2048/2399 tokens (85%)" in log and "ETA" in log
    assert "request 3: %d prompt tokens, %d cached (from host in " % (n_prompt, n_prompt - 1) in log
    assert "request 3 stop: " in log or "request 3 length: " in log
    assert "tok/s" in log
    files = sorted(folder.glob("*" + kv_file.SUFFIX))
    assert len(files) == 3                                  # written at shutdown: A, B and the long one

    # Damage B's file (the smaller), add files that are not caches of this model: ignored and removed.
    smaller = min(files, key=lambda f: f.stat().st_size)
    data = bytearray(smaller.read_bytes())
    data[-3] ^= 0x55
    smaller.write_bytes(bytes(data))
    (folder / f"truncated{kv_file.SUFFIX}").write_bytes(data[:len(data) // 2])
    (folder / f"junk{kv_file.SUFFIX}").write_bytes(b"\x00" * 100)
    with run_server(tiny_model, tmp_path, "--kv-cache-dir", str(folder), "--log-level", "info") as server:
        assert ask(server, A) == first[:2] + (n_prompt - 1,)  # after a restart: from the file
        assert ask(server, B)[2] == 0                       # its file is corrupt: not trusted, prefilled again
        log = server.log_text()
    assert "cached (from disk in " in log
    assert log.count("WARNING") == 3 and "checksum mismatch" in log and "truncated" in log
    assert log.count("; removed") == 3 and smaller.read_bytes() != data  # B's was written anew at shutdown
    assert not (folder / f"truncated{kv_file.SUFFIX}").exists() and not (folder / f"junk{kv_file.SUFFIX}").exists()


def _limit_file_size():
    # Every file this server writes fails past 16 KB, as on a full disk (EFBIG instead of ENOSPC;
    # Python ignores SIGXFSZ, so the write raises). The server log stays below it.
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))


def test_a_disk_that_refuses_writes_loses_nothing_served(tiny_model, tmp_path, n_prompt):
    folder = tmp_path / "kv"
    with run_server(tiny_model, tmp_path, "--kv-cache-dir", str(folder), preexec_fn=_limit_file_size) as server:
        first = ask(server, A)
        assert ask(server, B)[2] == 0                       # A to host RAM; its file cannot be written
        assert ask(server, A) == first[:2] + (n_prompt - 1,)  # still served from RAM, same answer
        assert server.metrics()["hybrid_k2_prefix_cache_disk_files"] == 0
    assert "could not save" in server.log_text() and "stays in RAM" in server.log_text()
    assert list(folder.iterdir()) == []                      # no partial or temporary file left
    assert server.proc.returncode == 0
