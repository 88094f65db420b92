"""OpenAI behaviour to the letter, through the real `openai` client: the deviations a new user would meet."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import openai
import pytest

from serve_helpers import MODEL, render_prompt_ids, run_server

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city"],
           "properties": {"city": {"enum": ["Paris", "Berlin", "Rome"]}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "additionalProperties": False,
                                                                               "properties": {}}}}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
USER = [{"role": "user", "content": "What's the weather in Paris?"}]
FAST = {"thinking_token_budget": 4}


@pytest.mark.parametrize("kw", [{"temperature": 5}, {"max_tokens": 0}, {"messages": [{"role": "wizard", "content": "x"}]},
                                {"tool_choice": "sometimes"}])
def test_invalid_parameters_are_bad_request(client, kw):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**{"model": MODEL, "messages": USER, "max_tokens": 2, **kw})
    assert e.value.status_code == 400 and e.value.body["type"] == "invalid_request_error"


def _stream_tool_deltas(client, **kw):
    deltas, finish = [], None
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            deltas += c.delta.tool_calls or []
            finish = c.finish_reason or finish
    return deltas, finish


def test_tool_call_arguments_stream_incrementally(client):
    kw = dict(model=MODEL, messages=USER, tools=TOOLS, tool_choice=NAMED, max_tokens=60, temperature=0, extra_body=FAST)
    deltas, finish = _stream_tool_deltas(client, **kw)
    full = client.chat.completions.create(**kw)
    (call,) = full.choices[0].message.tool_calls
    assert finish == full.choices[0].finish_reason == "tool_calls"
    head, *rest = deltas
    assert (head.index, head.id, head.type, head.function.name, head.function.arguments) == \
        (0, call.id, "function", "get_weather", "")
    assert len(rest) >= 3 and all(d.id is None and d.function.name is None for d in rest)
    assert "".join(d.function.arguments for d in rest) == call.function.arguments
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Berlin", "Rome")


@pytest.mark.parametrize("choice,extra", [(NAMED, {}), ("required", {"parallel_tool_calls": False})])
def test_forced_call_fits_even_when_the_model_would_think_on(client, choice, extra):
    """No thinking budget: the random model never ends its reasoning, the server ends it in time."""
    r = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, tool_choice=choice, max_tokens=100,
                                       temperature=0, **extra)
    assert r.choices[0].finish_reason == "tool_calls"
    assert len(r.choices[0].message.tool_calls) == 1
    assert r.usage.completion_tokens <= 100


@pytest.mark.parametrize("max_tokens", [8, 11, 14, 17])
def test_cut_off_tool_call_never_leaks_markers(client, max_tokens):
    kw = dict(model=MODEL, messages=USER, tools=TOOLS, tool_choice=NAMED, max_tokens=max_tokens, temperature=0,
              extra_body=FAST)
    r = client.chat.completions.create(**kw)
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "length"
    assert "<|" not in (m.content or "") and "<|" not in (m.model_extra.get("reasoning_content") or "")
    streamed = []
    for chunk in client.chat.completions.create(stream=True, **kw):
        streamed += [c.delta.content for c in chunk.choices if c.delta.content]
    assert ("".join(streamed) or None) == m.content


def test_eos_token_id_from_generation_config(tiny_model, tmp_path):
    """An id listed as eos_token_id in generation_config.json ends the answer, as in the REPL."""
    import hybrid_k2
    from hybrid_k2.chat.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(tiny_model)
    ids = render_prompt_ids(tiny_model, USER)
    logits = hybrid_k2.load(tiny_model).new_session().prefill(ids, last_only=True)[-1][:tok.vocab_size].clone()  # [V]
    logits[tok.tool_calls_section_begin_id] = float("-inf")   # banned without tools
    first = int(logits.argmax())                              # what greedy decoding writes first
    assert first not in tok.stop_ids
    model = tmp_path / "eos-model"
    shutil.copytree(tiny_model, model)
    gen = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": [first]}))
    kw = dict(model=MODEL, messages=USER, max_tokens=5, temperature=0)
    with run_server(model, tmp_path) as eos_server:
        r = eos_server.client().chat.completions.create(**kw)
    assert (r.choices[0].finish_reason, r.usage.completion_tokens) == ("stop", 1)


def _serve(*args):
    return subprocess.run([sys.executable, "-m", "hybrid_k2.cli", "serve", *args], capture_output=True, text=True,
                          timeout=120)


def test_busy_port_fails_before_the_model_loads(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # A folder that is not a model: had it been loaded first, that would be the error.
        r = _serve("--model", str(tmp_path / "not-a-model"), "--port", str(port))
    assert r.returncode != 0
    assert "cannot listen on 127.0.0.1:" in r.stderr and "not-a-model" not in r.stderr
    assert "Traceback" not in r.stderr


def test_log_level_is_validated(tmp_path):
    r = _serve("--model", str(tmp_path), "--log-level", "loud")
    assert r.returncode != 0 and "--log-level must be one of" in r.stderr and "Traceback" not in r.stderr
