"""The Anthropic Messages API as a translation layer over the OpenAI one.

[NOTE] A Messages request becomes the ChatCompletionRequest that means the same thing, so that planning
(template, tool-call ids, grammar for a forced tool, thinking budget, stops), the scheduler, the
prefix cache and generation are the OpenAI route's own. What comes back (answer.Answer's parts) is
shaped as Anthropic content blocks: reasoning -> `thinking`, content -> `text`, tool calls ->
`tool_use` (id = K2's own `functions.NAME:IDX`, which clients echo back in `tool_result`).
Translation of the request:
- `system` (string or text blocks) -> a system message; a message of role `system` within `messages`
  (text only; Claude Code sends them) -> a system message at its place.
- user blocks: `text` -> a user message; `tool_result` -> a tool message (text content; with
  `is_error` its text is prefixed "Error: ", since K2's format has no error flag).
- assistant blocks: `text` -> content, `thinking` -> reasoning_content, `tool_use` -> tool_calls
  (`input` as JSON arguments), `redacted_thinking` -> dropped (there is nothing to read in it).
- `tools[].input_schema` -> function parameters; `tool_choice` auto/any/tool/none -> auto/required/
  named/none, `disable_parallel_tool_use` -> parallel_tool_calls false.
- `thinking` enabled with `budget_tokens` -> thinking_token_budget; disabled -> a budget of 0 (K2-Thinking
  always opens a reasoning part; it is closed at once). Absent or adaptive: the server's default.
- `output_config.format` (json_schema) -> response_format json_schema (the same grammar engine).
- `temperature`, `top_p`, `top_k` are read as the API defines them (the newest SDK only sends them
  through `extra_body`).
- Usage: `input_tokens` counts the prompt tokens prefilled for this request, `cache_read_input_tokens`
  those reused from the prefix cache (their sum is the prompt); `cache_creation_input_tokens` is 0 (the
  cache needs no `cache_control` marks: every prompt is kept).
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Optional, Union

from pydantic import ValidationError

from hybrid_k2.serve.anthropic_schemas import Block, CountTokensRequest, MessagesRequest
from hybrid_k2.serve.answer import Answer, Part, Piece
from hybrid_k2.serve.errors import bad_request
from hybrid_k2.serve.responses import Outcome
from hybrid_k2.serve.schemas import ChatCompletionRequest

# --- request -------------------------------------------------------------------------------------

_NOT_TEXT = "this model reads text only"


def _texts(blocks: Union[str, list[Block], None], where: str) -> str:
    if blocks is None or isinstance(blocks, str):
        return blocks or ""
    out = []
    for j, b in enumerate(blocks):
        if b.type != "text" or b.text is None:
            raise bad_request(f"{where}.{j}: a block of type '{b.type}' is not supported here ({_NOT_TEXT})",
                              param=f"{where}.{j}")
        out.append(b.text)
    return "".join(out)


def _user(blocks: list[Block], where: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    texts: list[str] = []

    def flush():
        if texts:
            out.append({"role": "user", "content": "".join(texts)})
            texts.clear()

    for j, b in enumerate(blocks):
        if b.type == "text" and b.text is not None:
            texts.append(b.text)
        elif b.type == "tool_result":
            if not b.tool_use_id:
                raise bad_request(f"{where}.{j}: a tool_result block needs tool_use_id", param=f"{where}.{j}")
            flush()
            text = _texts(b.content, f"{where}.{j}.content")
            out.append({"role": "tool", "tool_call_id": b.tool_use_id,
                        "content": f"Error: {text}" if b.is_error else text})
        else:
            raise bad_request(f"{where}.{j}: a user block of type '{b.type}' is not supported ({_NOT_TEXT}; "
                              "blocks: text, tool_result)", param=f"{where}.{j}")
    flush()
    return out or [{"role": "user", "content": ""}]


def _assistant(blocks: list[Block], where: str) -> dict[str, Any]:
    texts, thinking, calls = [], [], []
    for j, b in enumerate(blocks):
        if b.type == "text" and b.text is not None:
            texts.append(b.text)
        elif b.type == "thinking" and b.thinking is not None:
            thinking.append(b.thinking)
        elif b.type == "redacted_thinking":
            continue
        elif b.type == "tool_use":
            if not b.id or not b.name or not (b.input is None or isinstance(b.input, dict)):
                raise bad_request(f"{where}.{j}: a tool_use block needs id, name and an object input",
                                  param=f"{where}.{j}")
            calls.append({"id": b.id, "type": "function",
                          "function": {"name": b.name, "arguments": json.dumps(b.input or {}, ensure_ascii=False)}})
        else:
            raise bad_request(f"{where}.{j}: an assistant block of type '{b.type}' is not supported (blocks: "
                              "text, thinking, redacted_thinking, tool_use)", param=f"{where}.{j}")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if thinking:
        msg["reasoning_content"] = "".join(thinking)
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tools(req: CountTokensRequest) -> Optional[list[dict[str, Any]]]:
    if not req.tools:
        return None
    out = []
    for i, t in enumerate(req.tools):
        if t.type not in (None, "custom") or t.input_schema is None:
            raise bad_request(f"tools.{i}: only custom tools with an input_schema are supported (Anthropic's "
                              f"built-in tool types such as '{t.type}' run on Anthropic's side)", param=f"tools.{i}")
        fn = {"name": t.name, "parameters": t.input_schema}
        if t.description is not None:
            fn["description"] = t.description
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(req: CountTokensRequest) -> dict[str, Any]:
    tc = req.tool_choice
    if tc is None:
        return {}
    out: dict[str, Any] = {}
    if tc.type == "tool":
        if not tc.name:
            raise bad_request("tool_choice of type 'tool' needs a name", param="tool_choice.name")
        out["tool_choice"] = {"type": "function", "function": {"name": tc.name}}
    else:
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[tc.type]
    if tc.disable_parallel_tool_use:
        out["parallel_tool_calls"] = False
    return out


def to_chat_request(req: CountTokensRequest) -> ChatCompletionRequest:
    """The OpenAI request that means the same as this Messages (or count_tokens) request."""
    if req.messages[-1].role == "assistant":
        # Anthropic continues a trailing assistant turn; K2's template would close it and start a new one.
        raise bad_request("a last message from the assistant (prefilling the answer) is not supported: "
                          "end with a user message", param="messages")
    messages: list[dict[str, Any]] = []
    system = _texts(req.system, "system")
    if system:
        messages.append({"role": "system", "content": system})
    for i, m in enumerate(req.messages):
        if m.role == "system":  # where it stands in the conversation, as K2's template renders any system turn
            messages.append({"role": "system", "content": _texts(m.content, f"messages.{i}.content")})
        elif isinstance(m.content, str):
            messages.append({"role": m.role, "content": m.content})
        elif m.role == "user":
            messages += _user(m.content, f"messages.{i}.content")
        else:
            messages.append(_assistant(m.content, f"messages.{i}.content"))
    body: dict[str, Any] = {"model": req.model, "messages": messages, "tools": _tools(req), **_tool_choice(req)}
    if req.thinking is not None and req.thinking.type in ("enabled", "disabled"):
        body["thinking_token_budget"] = 0 if req.thinking.type == "disabled" else req.thinking.budget_tokens
    if isinstance(req, MessagesRequest):
        body.update(max_tokens=req.max_tokens, stop=req.stop_sequences or None, temperature=req.temperature,
                    top_p=req.top_p, top_k=req.top_k)
        if req.output_config is not None and req.output_config.format is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": req.output_config.format.schema_}}
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        raise bad_request(f"invalid request: {first.get('msg', 'invalid value')} at "
                          f"{'.'.join(str(p) for p in first.get('loc', ()))}") from None


# --- response ------------------------------------------------------------------------------------

def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def usage(outcome: Optional[Outcome], prompt_tokens: int = 0, cached_tokens: int = 0) -> dict[str, int]:
    if outcome is None:  # message_start: the prompt and what the cache lookup found (0 while queued)
        return {"input_tokens": prompt_tokens - cached_tokens, "output_tokens": 0, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": cached_tokens}
    return {"input_tokens": outcome.prompt_tokens - outcome.cached_tokens, "output_tokens": outcome.completion_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": outcome.cached_tokens}


def stop_reason(answer: Answer, outcome: Outcome) -> tuple[str, Optional[str]]:
    finish = answer.finish_reason(outcome.finish)
    if finish == "tool_calls":
        return "tool_use", None
    if finish == "length":
        return "max_tokens", None
    seq = outcome.output.stop_sequence if outcome.output is not None else None
    return ("stop_sequence", seq) if seq else ("end_turn", None)


def _input(arguments: str) -> Any:
    try:
        value = json.loads(arguments)
    except ValueError:  # a call cut off by max_tokens
        return {}
    return value if isinstance(value, dict) else {}


def block(part: Part, *, empty: bool = False) -> dict[str, Any]:
    """The content block of a part (`empty`: as content_block_start announces it)."""
    if part.kind == "reasoning":
        return {"type": "thinking", "thinking": "" if empty else part.text, "signature": ""}
    if part.kind == "content":
        return {"type": "text", "text": "" if empty else part.text}
    return {"type": "tool_use", "id": part.id, "name": part.name, "input": {} if empty else _input(part.text)}


def message(mid: str, model: str, answer: Optional[Answer], outcome: Optional[Outcome],
            prompt_tokens: int = 0, cached_tokens: int = 0) -> dict[str, Any]:
    reason, seq = stop_reason(answer, outcome) if outcome is not None else (None, None)
    return {"id": mid, "type": "message", "role": "assistant", "model": model,
            "content": [block(p) for p in answer.parts] if outcome is not None else [],
            "stop_reason": reason, "stop_sequence": seq, "usage": usage(outcome, prompt_tokens, cached_tokens)}


def sse_event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


_DELTA = {"reasoning": ("thinking_delta", "thinking"), "content": ("text_delta", "text"),
          "tool_call": ("input_json_delta", "partial_json")}


class BlockEvents:
    """Answer pieces -> content_block_start / _delta / _stop events (block index = part index)."""

    def __init__(self, answer: Answer):
        self.answer = answer
        self.open: Optional[int] = None

    def pieces(self, pieces: list[Piece]) -> list[str]:
        out = []
        for p in pieces:
            part = self.answer.parts[p.part]
            if p.opens:
                out += self.close()
                out.append(sse_event("content_block_start", {"type": "content_block_start", "index": p.part,
                                                             "content_block": block(part, empty=True)}))
                self.open = p.part
            if p.text:
                kind, field = _DELTA[part.kind]
                out.append(sse_event("content_block_delta", {"type": "content_block_delta", "index": p.part,
                                                             "delta": {"type": kind, field: p.text}}))
        return out

    def close(self) -> list[str]:
        if self.open is None:
            return []
        index, self.open = self.open, None
        return [sse_event("content_block_stop", {"type": "content_block_stop", "index": index})]
