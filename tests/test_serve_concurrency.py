"""Fair queueing on one model: concurrent streams come out whole and identical to one-by-one runs;
a client that hangs up frees the model at once. (A full queue's 429: test_serve_errors.py.)"""
from __future__ import annotations

import threading
import time

import pytest

from serve_helpers import MODEL


def stream_text(client, i: int) -> tuple[str, str]:
    parts, finish = [], None
    for chunk in client.chat.completions.create(
            model=MODEL, stream=True, max_tokens=16, seed=100 + i, temperature=1.0,
            messages=[{"role": "user", "content": f"Client {i} asks question number {i * 7}."}]):
        for c in chunk.choices:
            extra = c.delta.model_extra or {}
            parts.append((extra.get("reasoning_content") or "") + (c.delta.content or ""))
            finish = c.finish_reason or finish
    return "".join(parts), finish


def test_eight_concurrent_streams_match_sequential(server):
    client = server.client()
    results: dict[int, tuple[str, str]] = {}
    errors = []

    def run(i):
        try:
            results[i] = stream_text(client, i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted(results) == list(range(8))
    for i in range(8):
        assert results[i][1] in ("stop", "length")
        assert stream_text(client, i) == results[i], f"client {i} differs from its one-by-one run"
    # The 8 answers are not all the same text (no cross-talk collapsing them).
    assert len({text for text, _ in results.values()}) > 1


def test_disconnect_frees_the_slot(server):
    http = server.http()
    before = server.metrics()
    body = {"model": MODEL, "stream": True, "max_tokens": 5000, "seed": 1,
            "messages": [{"role": "user", "content": "Talk for a long time."}]}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = 0
        for line in lines:
            if line.startswith("data: "):
                got += 1
            if got >= 3:
                break
    # The client is gone: the model must be free for the next request well before 5000 tokens.
    t0 = time.monotonic()
    r2 = server.client().chat.completions.create(model=MODEL, max_tokens=2,
                                                 messages=[{"role": "user", "content": "next"}])
    assert r2.choices[0].finish_reason in ("stop", "length")
    assert time.monotonic() - t0 < 20
    deadline = time.monotonic() + 10
    while True:
        after = server.metrics()
        if after["hybrid_k2_requests_cancelled_total"] >= before["hybrid_k2_requests_cancelled_total"] + 1:
            break
        assert time.monotonic() < deadline, "the cancelled generation was never recorded"
        time.sleep(0.1)
    generated = after["hybrid_k2_completion_tokens_total"] - before["hybrid_k2_completion_tokens_total"]
    assert generated < 1000, f"{generated} tokens generated: the disconnect did not stop the model"
    assert after["hybrid_k2_queue_depth"] == 0
    assert after["hybrid_k2_requests_running"] == 0
