"""Parser deltas from the model thread -> OpenAI response objects: chat deltas, message, usage, chunks.

The chat package's OutputParser runs inside `generate` on the model thread; its Deltas (reasoning /
content text, tool-call starts and argument fragments) and its final ParsedOutput arrive here, on
the request side, to be shaped as OpenAI objects. The answer itself (what is shown, tool calls
streamed incrementally, abandoned tool sections hidden) is answer.Answer's, shared with the
Anthropic route: streamed and non-streamed answers are always the same.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

from hybrid_k2.chat.parser import Delta, ParsedOutput
from hybrid_k2.serve.answer import Answer, Piece


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass
class Started:
    """What the model thread reports once the prompt's prefix was looked up in the cache (before prefill)."""
    cached_tokens: int


@dataclass
class Outcome:
    """What the model thread reports when a generation ends."""
    finish: str                  # "stop" | "length" | "tool_calls" | "cancelled"
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    mask_s: float = 0.0
    output: Optional[ParsedOutput] = None


def usage(outcome: Outcome, *, reasoning: bool = True) -> dict[str, Any]:
    u: dict[str, Any] = {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": outcome.cached_tokens},
    }
    if reasoning:
        u["completion_tokens_details"] = {"reasoning_tokens": outcome.reasoning_tokens}
    return u


class ChatAssembler:
    """An Answer (answer.py) as OpenAI chat deltas and the final assistant message."""

    def __init__(self, *, reasoning_field: str = "reasoning_content"):
        self.fields = ("reasoning_content", "reasoning") if reasoning_field == "both" else (reasoning_field,)
        self.answer = Answer()

    def push(self, deltas: list[Delta]) -> list[dict[str, Any]]:
        """Parser deltas -> the `delta` objects to stream."""
        return [self._delta(p) for p in self.answer.push(deltas)]

    def finish(self, outcome: Outcome) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
        """The last deltas, the complete assistant message, and the finish_reason."""
        deltas = [self._delta(p) for p in self.answer.finish()]
        a = self.answer
        message: dict[str, Any] = {"role": "assistant", "content": a.content}
        for f in self.fields:
            message[f] = a.reasoning
        if a.calls:
            message["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.text}}
                                     for c in a.calls]
        finish = a.finish_reason(outcome.finish)
        return deltas, message, "stop" if finish == "cancelled" else finish

    def _delta(self, piece: Piece) -> dict[str, Any]:
        part = self.answer.parts[piece.part]
        if part.kind == "reasoning":
            return {f: piece.text for f in self.fields}
        if part.kind == "content":
            return {"content": piece.text}
        call: dict[str, Any] = {"index": part.call_index}
        if piece.opens:
            call.update(id=part.id, type="function", function={"name": part.name, "arguments": ""})
        else:
            call["function"] = {"arguments": piece.text}
        return {"tool_calls": [call]}


class TextAssembler:
    """/v1/completions: the raw text K2 wrote (specials by name), cut at a stop string.

    The parser runs with thinking=False, so all text is content; a tool section, which the parser
    takes apart, is written back in K2's markup from the parsed calls at the end."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def push(self, deltas: list[Delta]) -> str:
        text = "".join(d.text for d in deltas if d.kind == "content")
        self.parts.append(text)
        return text

    def finish(self, outcome: Outcome) -> str:
        calls = outcome.output.tool_calls if outcome.output else []
        tail = ""
        if calls:
            tail = ("<|tool_calls_section_begin|>" + "".join(
                f"<|tool_call_begin|>{c.id}<|tool_call_argument_begin|>{c.arguments}<|tool_call_end|>" for c in calls)
                + "<|tool_calls_section_end|>")
        self.parts.append(tail)
        return tail

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _chunk(kind: str, rid: str, created: int, model: str, choice: Optional[dict], usage_obj: Optional[dict],
           include_usage_field: bool) -> dict[str, Any]:
    chunk: dict[str, Any] = {"id": rid, "object": kind, "created": created, "model": model,
                             "system_fingerprint": None, "choices": [choice] if choice is not None else []}
    if include_usage_field:  # stream_options.include_usage: null on every chunk but the last
        chunk["usage"] = usage_obj
    return chunk


def chat_chunk(rid: str, created: int, model: str, delta: Optional[dict], finish_reason: Optional[str] = None,
               usage_obj: Optional[dict] = None, include_usage_field: bool = False) -> dict[str, Any]:
    choice = None if delta is None else {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return _chunk("chat.completion.chunk", rid, created, model, choice, usage_obj, include_usage_field)


def completion_chunk(rid: str, created: int, model: str, text: Optional[str], finish_reason: Optional[str] = None,
                     usage_obj: Optional[dict] = None, include_usage_field: bool = False) -> dict[str, Any]:
    choice = None if text is None else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return _chunk("text_completion", rid, created, model, choice, usage_obj, include_usage_field)


def now() -> int:
    return int(time.time())
