"""Every refusal is an OpenAI-shaped JSON error with the right status; nothing leaks a stack trace."""
from __future__ import annotations

import time

import httpx
import openai
import pytest

from serve_helpers import API_KEY, MODEL, STRICT, close_streams, shared_server

CTX = int(STRICT[STRICT.index("--max-model-len") + 1])  # small: a too-long prompt is cheap to build


@pytest.fixture(scope="module")
def server(tiny_model):
    return shared_server(tiny_model, *STRICT)  # 400-token context, 64 KiB bodies, queue of 1


def check_error(r: httpx.Response, status: int, *, param=None, contains: str = "") -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in err["message"] and "File \"" not in err["message"]
    if param is not None:
        assert err["param"] == param
    assert contains in err["message"]
    return err


def chat_body(**kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, **kw}


def test_malformed_json(server):
    r = server.http().post("/v1/chat/completions", content=b'{"model": "kimi", "messages": [',
                           headers={"content-type": "application/json"})
    err = check_error(r, 400)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("body,param", [
    ({"model": MODEL, "messages": "hello"}, "messages"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages.0.content.str"),
    (chat_body(max_tokens="many"), "max_tokens"),
    (chat_body(temperature=9), "temperature"),
    (chat_body(max_tokens=0), "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ([1, 2, 3], None),
])
def test_wrong_types_are_400(server, body, param):
    err = check_error(server.http().post("/v1/chat/completions", json=body), 400)
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param


def test_unknown_model_is_404(server):
    with pytest.raises(openai.NotFoundError) as e:
        server.client().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    check_error(server.http().get("/v1/models/gpt-4o"), 404)
    check_error(server.http().post("/v1/completions", json={"model": "nope", "prompt": "x"}), 404)


def test_unknown_route_and_method(server):
    check_error(server.http().get("/v1/nothing"), 404)
    check_error(server.http().get("/v1/chat/completions"), 405)


def test_head_of_the_page_and_health(server):
    # clients probe with HEAD before their first request (Claude Code: HEAD /); no key needed, no body
    for path in ("/", "/health"):
        r = server.http().head(path)
        assert r.status_code == 200 and r.content == b"", (path, r.status_code)


def test_too_long_prompt_names_the_numbers(server):
    r = server.http().post("/v1/chat/completions", json=chat_body(messages=[{"role": "user", "content": "word " * 400}]))
    err = check_error(r, 400, contains=str(CTX))
    assert err["code"] == "context_length_exceeded"
    n = int(err["message"].split("resulted in ")[1].split()[0])
    assert n > CTX
    with pytest.raises(openai.BadRequestError):
        server.client().completions.create(model=MODEL, prompt="word " * 400)


def test_max_tokens_beyond_the_context(server):
    err = check_error(server.http().post("/v1/chat/completions", json=chat_body(max_tokens=CTX)), 400)
    assert err["param"] == "max_tokens" and str(CTX) in err["message"]


@pytest.mark.parametrize("body,param", [
    (chat_body(n=2), "n"),
    (chat_body(logprobs=True), "logprobs"),
    (chat_body(presence_penalty=0.5), "presence_penalty"),
    (chat_body(tool_choice="required"), "tool_choice"),
    (chat_body(tools=[{"type": "function", "function": {"name": "f"}}],
               tool_choice={"type": "function", "function": {"name": "g"}}), "tool_choice"),
    (chat_body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}),
     "response_format"),
    (chat_body(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), "response_format"),
    (chat_body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]),
     "messages.0.content"),
    (chat_body(messages=[{"role": "tool", "content": "x"}]), "messages.0.tool_call_id"),
    (chat_body(stop=[""]), "stop"),
])
def test_unsupported_or_inconsistent_is_400(server, body, param):
    check_error(server.http().post("/v1/chat/completions", json=body), 400, param=param)


def test_completion_token_ids_out_of_vocabulary(server):
    check_error(server.http().post("/v1/completions", json={"model": MODEL, "prompt": [1, 10**9]}), 400, param="prompt")


def test_api_key_missing_or_wrong(server):
    body = chat_body()
    check_error(httpx.post(server.base + "/v1/chat/completions", json=body), 401)
    check_error(httpx.get(server.base + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    check_error(httpx.get(server.base + "/metrics", headers={"Authorization": API_KEY}), 401)  # no scheme
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(server.base + "/health").status_code == 200  # open for load balancers


def test_body_too_large_is_413(server):
    big = chat_body(messages=[{"role": "user", "content": "x" * 70000}])
    check_error(server.http().post("/v1/chat/completions", json=big), 413)
    # Without a Content-Length (chunked upload) the limit holds too.
    def chunks():
        data = httpx.Request("POST", "/", json=big).content
        for i in range(0, len(data), 4096):
            yield data[i:i + 4096]
    check_error(server.http().post("/v1/chat/completions", content=chunks(),
                                   headers={"content-type": "application/json"}), 413)


def test_queue_full_is_429(server):
    # The strict server admits 1 running + 1 waiting request.
    body = {"model": MODEL, "stream": True, "max_tokens": 300, "seed": 1,
            "messages": [{"role": "user", "content": "long"}]}
    rejected = server.metrics()["hybrid_k2_requests_rejected_total"]
    http = [server.http() for _ in range(2)]
    streams = [h.stream("POST", "/v1/chat/completions", json=body) for h in http]
    try:
        first = streams[0].__enter__()   # running
        lines = first.iter_lines()       # keep the iterator: dropping it closes the response
        next(lines)
        second = streams[1].__enter__()  # waiting (headers come only after it is admitted)
        assert second.status_code == 200
        with pytest.raises(openai.RateLimitError) as e:
            server.client().chat.completions.create(model=MODEL, max_tokens=1,
                                                    messages=[{"role": "user", "content": "x"}])
        assert e.value.body["code"] == "queue_full"
        assert server.metrics()["hybrid_k2_requests_rejected_total"] == rejected + 1
    finally:
        close_streams(streams)
    # Both hung up: the queue drains and the server takes work again.
    deadline = time.monotonic() + 20
    while True:
        m = server.metrics()
        if m["hybrid_k2_queue_depth"] == 0 and m["hybrid_k2_requests_running"] == 0:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = server.client().chat.completions.create(model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "x"}])
    assert r.usage.completion_tokens == 1


def test_server_still_healthy_after_the_errors(server):
    assert server.proc.poll() is None  # the server survived everything above
    assert server.http().get("/health").status_code == 200
