"""Schemathesis fuzzing of the server's own OpenAPI schema: whatever arrives, never a 5xx.

Bounded to stay quick on the tiny model: a few dozen examples per operation, and generations capped
at a handful of tokens (the fuzzer would otherwise ask for thousands)."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from serve_helpers import API_KEY, MODEL, STRICT, shared_server

CAP = 3  # max tokens any fuzzed request may generate


@pytest.fixture(scope="module")
def server(tiny_model):
    return shared_server(tiny_model, *STRICT)


def _cap(body):
    """Our model name (else every case stops at 404) and a tiny generation budget."""
    if isinstance(body, dict):
        if "model" in body:
            body["model"] = MODEL
        for key in ("max_tokens", "max_completion_tokens"):
            if not isinstance(body.get(key), int) or body[key] > CAP:
                body[key] = CAP


OPERATIONS = [("/v1/chat/completions", "POST"), ("/v1/completions", "POST"), ("/v1/messages", "POST"),
              ("/v1/messages/count_tokens", "POST"), ("/v1/models", "GET"),
              ("/v1/models/{model_id}", "GET"), ("/health", "GET"), ("/metrics", "GET")]


@pytest.mark.parametrize("path,method", OPERATIONS)
def test_no_server_errors(server, path, method):
    api = schemathesis.openapi.from_dict(server.http().get("/openapi.json").json())
    headers = {"Authorization": f"Bearer {API_KEY}"} if "messages" not in path else {"x-api-key": API_KEY}
    seen = []

    @settings(max_examples=30 if method == "POST" else 8, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=api[path][method].as_strategy())
    def check(case):
        _cap(case.body)
        response = case.call(base_url=server.base, headers=headers, timeout=60)
        seen.append(response.status_code)
        assert response.status_code < 500, f"{response.status_code} {response.text[:300]}"
        if response.status_code >= 400 and path.startswith("/v1/messages"):
            body = response.json()
            assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
        elif response.status_code >= 400:
            err = response.json()["error"]
            assert set(err) == {"message", "type", "param", "code"}

    check()
    assert seen
