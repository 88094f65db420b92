"""The Anthropic Messages API through the real `anthropic` client against a real server on the tiny model."""
from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import pytest

from serve_helpers import API_KEY, MODEL, STRICT, close_streams, render_prompt_ids, shared_server

READ = {"type": "object", "additionalProperties": False, "required": ["path"],
        "properties": {"path": {"enum": ["main.py", "README.md"]}}}
LIST = {"type": "object", "additionalProperties": False, "required": ["dir"], "properties": {"dir": {"enum": [".", "src"]}}}
TOOLS = [{"name": "read_file", "description": "Read a file", "input_schema": READ},
         {"name": "list_dir", "description": "List a folder", "input_schema": LIST}]
OPENAI_TOOLS = [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                                 "parameters": t["input_schema"]}} for t in TOOLS]
USER = [{"role": "user", "content": "What does main.py do?"}]
FAST = {"type": "enabled", "budget_tokens": 4}  # the random model never ends its reasoning by itself
GREEDY = {"extra_body": {"temperature": 0}}     # the SDK has no sampling arguments any more; the API does


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.base, api_key=API_KEY, max_retries=0, timeout=120)


def _prompt_len(model_dir, messages, tools=None):
    return len(render_prompt_ids(model_dir, messages, tools))


def test_plain_message_and_usage(client, tiny_model):
    r = client.messages.create(model=MODEL, max_tokens=12, messages=USER, system="Be brief.")
    assert r.type == "message" and r.role == "assistant" and r.model == MODEL and r.id.startswith("msg_")
    assert r.stop_reason in ("end_turn", "max_tokens")
    u = r.usage
    assert u.input_tokens + u.cache_read_input_tokens == _prompt_len(
        tiny_model, [{"role": "system", "content": "Be brief."}, *USER])
    assert 1 <= u.output_tokens <= 12
    # Nothing ended the reasoning: it all comes back as one thinking block, never as text.
    assert [b.type for b in r.content] in (["thinking"], ["thinking", "text"], ["text"], [])
    if r.stop_reason == "max_tokens":
        assert u.output_tokens == 12


def test_system_blocks_and_string_content_are_the_same_prompt(client):
    a = client.messages.count_tokens(model=MODEL, system="Be brief.", messages=USER)
    b = client.messages.count_tokens(model=MODEL, system=[{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
                                     messages=[{"role": "user", "content": [{"type": "text", "text": USER[0]["content"]}]}])
    assert a.input_tokens == b.input_tokens > 0


def test_system_messages_within_the_conversation_stand_at_their_place(client, tiny_model):
    # Claude Code (2.1.x, beta mid-conversation-system-2026-04-07) sends messages of role "system"
    msgs = [*USER, {"role": "assistant", "content": "It prints."},
            {"role": "system", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Why?"}]
    n = client.messages.count_tokens(model=MODEL, system="Be brief.", messages=msgs).input_tokens
    plain = [*msgs[:2], {"role": "system", "content": "Answer in French."}, msgs[3]]
    assert n == _prompt_len(tiny_model, [{"role": "system", "content": "Be brief."}, *plain])
    r = client.messages.create(model=MODEL, max_tokens=3, messages=msgs, thinking={"type": "adaptive"})
    assert r.usage.input_tokens + r.usage.cache_read_input_tokens == _prompt_len(tiny_model, plain)


def test_message_start_reports_the_cache_hit_as_the_final_usage_does(client, tiny_model):
    """As Anthropic streams it: message_start already splits the prompt into input and cache-read tokens."""
    msgs = [{"role": "user", "content": "Tell me about the cache in message_start, twice."}]
    starts, finals = [], []
    for _ in range(2):
        with client.messages.stream(model=MODEL, max_tokens=2, messages=msgs) as stream:
            starts += [e.message.usage for e in stream if e.type == "message_start"]
            finals.append(stream.get_final_message().usage)
    n = _prompt_len(tiny_model, msgs)
    assert len(starts) == 2 and all(u.input_tokens + u.cache_read_input_tokens == n for u in starts)
    assert starts[1].cache_read_input_tokens > 0  # the second time the prompt's prefix is cached
    assert [(u.input_tokens, u.cache_read_input_tokens) for u in starts] == [
        (u.input_tokens, u.cache_read_input_tokens) for u in finals]


def test_count_tokens_is_the_template_prompt(client, tiny_model):
    n = client.messages.count_tokens(model=MODEL, messages=USER, tools=TOOLS).input_tokens
    assert n == _prompt_len(tiny_model, USER, OPENAI_TOOLS)


def _collect_stream(client, **kw):
    events = []
    with client.messages.stream(**kw) as stream:
        for event in stream:
            events.append(event.type)
        final = stream.get_final_message()
    return final, events


@pytest.mark.parametrize("extra", [{}, {"tools": TOOLS, "tool_choice": {"type": "any"}}])
def test_streaming_equals_non_streaming(client, extra):
    kw = dict(model=MODEL, messages=USER, max_tokens=40, **GREEDY, thinking=FAST, **extra)
    full = client.messages.create(**kw)
    streamed, events = _collect_stream(client, **kw)
    assert [b.model_dump() for b in streamed.content] == [b.model_dump() for b in full.content]
    assert (streamed.stop_reason, streamed.stop_sequence) == (full.stop_reason, full.stop_sequence)
    assert streamed.usage.output_tokens == full.usage.output_tokens
    assert (streamed.usage.input_tokens + streamed.usage.cache_read_input_tokens
            == full.usage.input_tokens + full.usage.cache_read_input_tokens)
    assert events[0] == "message_start" and events[-1] == "message_stop" and "message_delta" in events
    assert events.count("content_block_start") == events.count("content_block_stop") == len(full.content)
    if extra:  # forced: a call comes (cut short by max_tokens if the model makes many)
        assert any(b.type == "tool_use" for b in full.content)


def test_tool_inputs_stream_incrementally(server):
    """input_json_delta arrives in several pieces, not as one blob at the end."""
    body = {"model": MODEL, "max_tokens": 60, "temperature": 0, "thinking": FAST, "stream": True, "messages": USER,
            "tools": TOOLS, "tool_choice": {"type": "tool", "name": "read_file"}}
    with server.http().stream("POST", "/v1/messages", json=body) as r:
        assert r.status_code == 200
        lines = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    parts = [e["delta"]["partial_json"] for e in lines if e["type"] == "content_block_delta"
             and e["delta"]["type"] == "input_json_delta"]
    assert len(parts) >= 3
    assert json.loads("".join(parts))["path"] in ("main.py", "README.md")


def test_agent_tool_loop(client, tiny_model):
    """A coding-agent loop: forced parallel calls, results (one an error), then the model answers;
    the prompt is exactly K2's template of the equivalent OpenAI history, and the prefix cache is reported."""
    messages = list(USER)
    r1 = client.messages.create(model=MODEL, max_tokens=200, messages=messages, tools=TOOLS, thinking=FAST,
                                tool_choice={"type": "any"}, **GREEDY)
    assert r1.stop_reason == "tool_use"
    uses = [b for b in r1.content if b.type == "tool_use"]
    assert uses and r1.content[-1].type == "tool_use"
    thinking = [b.thinking for b in r1.content if b.type == "thinking"]
    assert all("<|" not in t for t in thinking)
    for i, use in enumerate(uses):
        assert use.id == f"functions.{use.name}:{i}"
        jsonschema.validate(use.input, READ if use.name == "read_file" else LIST)
    messages.append({"role": "assistant", "content": [b.model_dump() for b in r1.content]})
    results = [{"type": "tool_result", "tool_use_id": u.id, "content": f"result {i}", "is_error": i == 0}
               for i, u in enumerate(uses)]
    messages.append({"role": "user", "content": results + [{"type": "text", "text": "Go on."}]})

    r2 = client.messages.create(model=MODEL, max_tokens=8, messages=messages, tools=TOOLS, thinking=FAST, **GREEDY)
    openai_history = [*USER, {"role": "assistant", "content": "".join(b.text for b in r1.content if b.type == "text"),
                              **({"reasoning_content": "".join(thinking)} if thinking else {}),
                              "tool_calls": [{"id": u.id, "type": "function",
                                              "function": {"name": u.name, "arguments": json.dumps(u.input)}}
                                             for u in uses]},
                      *[{"role": "tool", "tool_call_id": u.id, "name": u.name,
                         "content": ("Error: " if i == 0 else "") + f"result {i}"} for i, u in enumerate(uses)],
                      {"role": "user", "content": "Go on."}]
    total = r2.usage.input_tokens + r2.usage.cache_read_input_tokens
    assert total == _prompt_len(tiny_model, openai_history, OPENAI_TOOLS)
    assert r2.usage.cache_read_input_tokens >= r1.usage.input_tokens + r1.usage.cache_read_input_tokens - 1
    assert r2.stop_reason in ("end_turn", "max_tokens", "tool_use")

    # A named tool: exactly one call of it, its index continuing the conversation's count.
    messages.append({"role": "assistant", "content": [b.model_dump() for b in r2.content] or [{"type": "text", "text": "ok"}]})
    messages.append({"role": "user", "content": "List the folder."})
    r3 = client.messages.create(model=MODEL, max_tokens=60, messages=messages, tools=TOOLS, thinking=FAST,
                                tool_choice={"type": "tool", "name": "list_dir"}, **GREEDY)
    (use,) = [b for b in r3.content if b.type == "tool_use"]
    n_before = len(uses) + sum(b.type == "tool_use" for b in r2.content)
    assert use.name == "list_dir" and use.id == f"functions.list_dir:{n_before}"


def test_forced_tool_fits_in_max_tokens_without_a_thinking_budget(client):
    """The random model never ends its reasoning: the server ends it early enough for the call."""
    r = client.messages.create(model=MODEL, max_tokens=100, messages=USER, tools=TOOLS, **GREEDY,
                               tool_choice={"type": "tool", "name": "read_file"})
    assert r.stop_reason == "tool_use"
    assert [b.name for b in r.content if b.type == "tool_use"] == ["read_file"]
    assert r.usage.output_tokens <= 100


def test_tool_choice_none_and_disabled_thinking(client):
    r = client.messages.create(model=MODEL, max_tokens=6, messages=USER, tools=TOOLS, tool_choice={"type": "none"},
                               thinking={"type": "disabled"})
    assert not any(b.type in ("tool_use", "thinking") for b in r.content)


def test_stop_sequence_is_reported(client):
    probe = client.messages.create(model=MODEL, max_tokens=30, messages=USER, **GREEDY, thinking={"type": "disabled"})
    text = "".join(b.text for b in probe.content if b.type == "text")
    if len(text) < 4:
        pytest.skip("the tiny model wrote too little text to cut")
    stop = text[2:4]
    r = client.messages.create(model=MODEL, max_tokens=30, messages=USER, **GREEDY, thinking={"type": "disabled"},
                               stop_sequences=["zzzz-never", stop])
    assert (r.stop_reason, r.stop_sequence) == ("stop_sequence", stop)
    assert "".join(b.text for b in r.content if b.type == "text") == text[:text.index(stop)]


# --- errors -----------------------------------------------------------------------------------------

def _check(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind and body["error"]["message"]
    return body["error"]["message"]


def test_auth(server):
    body = {"model": MODEL, "max_tokens": 1, "messages": USER}
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.base, api_key="wrong", max_retries=0).messages.create(**body)
    _check(httpx.post(server.base + "/v1/messages", json=body), 401, "authentication_error")
    ok = httpx.post(server.base + "/v1/messages", json=body, headers={"x-api-key": API_KEY}, timeout=60)
    assert ok.status_code == 200
    bearer = anthropic.Anthropic(base_url=server.base, auth_token=API_KEY, api_key=None, max_retries=0)
    assert bearer.messages.count_tokens(model=MODEL, messages=USER).input_tokens > 0


@pytest.mark.parametrize("body,status,kind,needle", [
    ({"max_tokens": 5, "messages": USER}, 400, "invalid_request_error", "model"),
    ({"model": MODEL, "messages": USER}, 400, "invalid_request_error", "max_tokens"),
    ({"model": MODEL, "max_tokens": 5, "messages": USER, "temperature": 1.5}, 400, "invalid_request_error", "temperature"),
    ({"model": MODEL, "max_tokens": 5, "messages": []}, 400, "invalid_request_error", "messages"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}, 400, "invalid_request_error", "role"),
    ({"model": MODEL, "max_tokens": 5, "messages": [*USER, {"role": "system", "content": [
        {"type": "tool_use", "id": "t1", "name": "read_file", "input": {}}]}]}, 400, "invalid_request_error", "text only"),
    ({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": USER}, 404, "not_found_error", "kimi-k2-thinking"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]},
     400, "invalid_request_error", "text only"),
    ({"model": MODEL, "max_tokens": 5, "messages": USER, "tools": TOOLS,
      "tool_choice": {"type": "tool", "name": "nope"}}, 400, "invalid_request_error", "nope"),
    ({"model": MODEL, "max_tokens": 5, "messages": USER, "tool_choice": {"type": "any"}}, 400, "invalid_request_error", "tools"),
    ({"model": MODEL, "max_tokens": 5, "messages": USER, "tools": [{"type": "bash_20250124", "name": "bash"}]},
     400, "invalid_request_error", "custom tools"),
    ({"model": MODEL, "max_tokens": 5, "messages": USER, "tools": TOOLS * 2}, 400, "invalid_request_error", "unique"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
     400, "invalid_request_error", "tool_use_id"),
    ({"model": MODEL, "max_tokens": 5, "messages": [*USER, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "name": "read_file", "input": [1]}]}, *USER]}, 400, "invalid_request_error", "input"),
    ({"model": MODEL, "max_tokens": 10**7, "messages": USER}, 400, "invalid_request_error", "context length"),
    ({"model": MODEL, "max_tokens": 5, "messages": [*USER, {"role": "assistant", "content": "Sure"}]},
     400, "invalid_request_error", "prefilling"),
])
def test_errors_have_anthropic_shape(server, body, status, kind, needle):
    message = _check(server.http().post("/v1/messages", json=body), status, kind)
    assert needle in message


def test_sdk_error_classes(client):
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=MODEL, max_tokens=5, messages=USER, extra_body={"top_p": 0})
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-haiku", max_tokens=5, messages=USER)


def test_invalid_json_and_body_limit(tiny_model):
    strict = shared_server(tiny_model, *STRICT)
    r = strict.http().post("/v1/messages", content=b"{not json", headers={"content-type": "application/json"})
    _check(r, 400, "invalid_request_error")
    big = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "x" * 70000}]}
    _check(strict.http().post("/v1/messages", json=big), 413, "request_too_large")
    _check(strict.http().post("/v1/messages/count_tokens", json={"model": MODEL}), 400, "invalid_request_error")


def test_queue_full_is_529_and_hanging_up_frees_the_model(tiny_model):
    strict = shared_server(tiny_model, *STRICT)  # admits 1 running + 1 waiting request
    body = {"model": MODEL, "stream": True, "max_tokens": 300, "messages": [{"role": "user", "content": "long"}]}
    http = [strict.http() for _ in range(2)]
    streams = [h.stream("POST", "/v1/messages", json=body) for h in http]
    try:
        first = streams[0].__enter__()   # running
        lines = first.iter_lines()       # keep the iterator: dropping it closes the response
        assert next(lines) == "event: message_start"
        assert streams[1].__enter__().status_code == 200  # waiting
        client = anthropic.Anthropic(base_url=strict.base, api_key=API_KEY, max_retries=0, timeout=60)
        with pytest.raises(anthropic.OverloadedError) as e:
            client.messages.create(model=MODEL, max_tokens=1, messages=USER)
        assert e.value.body["error"]["type"] == "overloaded_error"
    finally:
        close_streams(streams)
    # Both hung up: the generations are cancelled and the server takes work again.
    client = anthropic.Anthropic(base_url=strict.base, api_key=API_KEY, max_retries=5, timeout=60)
    assert client.messages.create(model=MODEL, max_tokens=1, messages=USER).usage.output_tokens == 1
