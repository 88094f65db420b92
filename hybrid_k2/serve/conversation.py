"""OpenAI request messages -> the dicts K2's chat template reads.

What changes on the way (kimi-k2-format.md 5 and 6.3):
- `developer` messages are system messages; list content must be text parts (the model reads text).
- `reasoning` (newer vLLM clients) is the same thing as `reasoning_content` (what the template reads);
  a null reasoning is left out, since the template would print the string "None".
- Tool-call ids: K2 was trained on its own `functions.NAME:IDX` ids with IDX the running count of calls
  in the conversation, and degrades on foreign ids like `call_abc123`. Foreign ids are rewritten to
  that form, consistently in the assistant's `tool_calls` and in the `tool` messages answering them.
  Ids already in K2's form are kept.
- A tool message without `name` gets the function name of the call it answers (the template uses it
  as the message's role name, as K2's tool-call guide does).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from hybrid_k2.serve.errors import bad_request
from hybrid_k2.serve.schemas import ChatMessage, Tool

K2_CALL_ID = re.compile(r"^functions\.[^\s:<>]+:\d+$")


@dataclass
class Conversation:
    messages: list[dict[str, Any]]
    tools: Optional[list[dict[str, Any]]]
    calls_so_far: int          # IDX of the next tool call the model makes
    id_map: dict[str, str]     # foreign id -> K2 id


def _text_content(message: ChatMessage, i: int) -> Optional[str]:
    content = message.content
    if content is None or isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type not in ("text", "input_text") or part.text is None:
            raise bad_request(f"messages[{i}]: content part of type '{part.type}' is not supported "
                              "(this model reads text only)", param=f"messages.{i}.content")
        texts.append(part.text)
    return "".join(texts)


def tool_dicts(tools: Optional[list[Tool]]) -> Optional[list[dict[str, Any]]]:
    """Tool declarations as the model sees them: no null fields, no `strict` (not part of K2's format)."""
    if not tools:
        return None
    names = [t.function.name for t in tools]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise bad_request(f"tool names must be unique (repeated: {', '.join(sorted(dup))})", param="tools")
    return [t.model_dump(exclude_none=True, exclude={"function": {"strict"}}, by_alias=True) for t in tools]


def build_conversation(messages: list[ChatMessage], tools: Optional[list[Tool]]) -> Conversation:
    id_map: dict[str, str] = {}
    call_names: dict[str, str] = {}   # K2 id -> function name
    count = 0
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        msg: dict[str, Any] = {"role": role, "content": _text_content(m, i)}
        if m.name is not None:
            msg["name"] = m.name
        if role == "assistant":
            reasoning = m.reasoning_content if m.reasoning_content is not None else m.reasoning
            if reasoning is not None:
                msg["reasoning_content"] = reasoning
            if m.tool_calls:
                calls = []
                for call in m.tool_calls:
                    old = call.id or f"call_{count}"
                    new = old if K2_CALL_ID.match(old) else f"functions.{call.function.name}:{count}"
                    if old in id_map and id_map[old] != new:
                        raise bad_request(f"messages[{i}]: tool call id {old!r} is used twice", param=f"messages.{i}.tool_calls")
                    id_map[old] = new
                    call_names[new] = call.function.name
                    args = call.function.arguments
                    calls.append({"id": new, "type": "function",
                                  "function": {"name": call.function.name,
                                               "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}})
                    count += 1
                msg["tool_calls"] = calls
        elif role == "tool":
            if m.tool_call_id is None:
                raise bad_request(f"messages[{i}]: a tool message needs tool_call_id", param=f"messages.{i}.tool_call_id")
            new = id_map.get(m.tool_call_id, m.tool_call_id)
            msg["tool_call_id"] = new
            if m.name is None and new in call_names:
                msg["name"] = call_names[new]
        out.append(msg)
    return Conversation(messages=out, tools=tool_dicts(tools), calls_so_far=count, id_map=id_map)
