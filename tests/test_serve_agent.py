"""A 50-turn agent loop on one conversation: every turn resends the whole history, and the prefix
cache must make each turn prefill only what is new (usage.prompt_tokens_details.cached_tokens)."""
from __future__ import annotations

import json

import jsonschema

from serve_helpers import MODEL, shared_server

SEARCH = {"type": "object", "additionalProperties": False, "required": ["query"],
          "properties": {"query": {"type": "string", "maxLength": 6}}}
TOOLS = [{"type": "function", "function": {"name": "search", "description": "Search the notes",
                                           "parameters": SEARCH}}]
TURNS = 50


def test_fifty_turn_agent_loop_prefills_only_new_tokens(tiny_model):
    server = shared_server(tiny_model)
    before = server.metrics()
    client = server.client()
    messages = [{"role": "system", "content": "You are a research agent. Use the search tool."},
                {"role": "user", "content": "Find everything about the project."}]
    prev_prompt = None
    for turn in range(TURNS):
        r = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=40, seed=turn,
                                           extra_body={"thinking_token_budget": 3})
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", f"turn {turn}: {choice}"
        (call,) = choice.message.tool_calls
        assert call.id == f"functions.search:{turn}"  # running index across the conversation
        jsonschema.validate(json.loads(call.function.arguments), SEARCH)
        u = r.usage
        cached = u.prompt_tokens_details.cached_tokens
        if prev_prompt is not None:
            new = u.prompt_tokens - prev_prompt
            # Everything the previous turn sent is reused; only the new messages are prefilled.
            assert cached >= prev_prompt, f"turn {turn}: cached {cached} < previous prompt {prev_prompt}"
            assert u.prompt_tokens - cached <= new
        prev_prompt = u.prompt_tokens
        messages.append(choice.message.model_dump(exclude_none=True))
        for c in choice.message.tool_calls:
            messages.append({"role": "tool", "tool_call_id": c.id, "name": "search",
                             "content": f"result {turn}: nothing new"})
    m = server.metrics()
    assert m["hybrid_k2_prefix_cache_hits_total"] - before["hybrid_k2_prefix_cache_hits_total"] >= TURNS - 1
    # Prefill ran about as many tokens as the conversation holds, not 50 times its length.
    prefilled = m["hybrid_k2_prefill_tokens_total"] - before["hybrid_k2_prefill_tokens_total"]
    assert prefilled <= prev_prompt + TURNS
