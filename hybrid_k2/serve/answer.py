"""Parser deltas -> one answer as an ordered list of parts, streamed the same way to every API.

[NOTE] The OpenAI and the Anthropic routes both read a generation through this class: it turns the chat
parser's Deltas (hybrid_k2.chat.parser) into Pieces, each a bit of text appended to one Part
(reasoning, content, or a tool call), and keeps the Parts. A stream sends the Pieces as they come; a
non-streamed answer is the Parts at the end: the two are one computation and cannot differ.
Policy:
- A tool call is streamed as soon as its header is complete (id, name), then its JSON arguments
  fragment by fragment (OpenAI `tool_calls[].function.arguments` deltas, Anthropic `input_json_delta`).
  Leading whitespace of the arguments is dropped and trailing whitespace held back until more text
  follows, so the fragments add up to exactly what the parser reports (it strips them); a call that
  wrote no arguments gets "{}" when it ends.
- Content that is only whitespace is held back until real text follows; it is dropped when the answer
  makes tool calls (the parser's rule: content is None then).
- Control tokens are never shown (Delta.raw): neither stray ones in reasoning or content (as vLLM
  skips special tokens) nor the text of a tool section the parser abandons (malformed, or cut by
  max_tokens): K2's markers (`<|tool_calls_section_begin|>` ...) never reach a client. Calls already
  streamed stay as streamed; cut by max_tokens, the answer ends with finish "length".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hybrid_k2.chat.parser import Delta


@dataclass
class Part:
    kind: str                 # "reasoning" | "content" | "tool_call"
    text: str = ""            # the text, or a call's JSON arguments
    id: str = ""              # tool_call: K2's id, functions.NAME:IDX
    name: str = ""
    call_index: int = -1      # tool_call: 0, 1, ... within this answer


@dataclass(frozen=True)
class Piece:
    part: int                 # index into Answer.parts
    text: str
    opens: bool = False       # the first piece of its part (a tool call's opens with text "")


class Answer:
    def __init__(self) -> None:
        self.parts: list[Part] = []
        self._ws = ""           # whitespace-only content held back
        self._args_ws = ""      # trailing whitespace of the open call's arguments

    # --- streaming ---------------------------------------------------------------------------
    def push(self, deltas: list[Delta]) -> list[Piece]:
        out: list[Piece] = []
        for d in deltas:
            if d.kind == "reasoning" and d.text and not d.raw:
                out += self._close_call() + self._append("reasoning", d.text)
            elif d.kind == "content" and d.text and not d.raw:
                out += self._content(d.text)
            elif d.kind == "tool_call":
                out += self._close_call()
                self._ws = ""
                self.parts.append(Part("tool_call", id=d.id, name=d.name, call_index=len(self.calls)))
                out.append(Piece(len(self.parts) - 1, "", opens=True))
            elif d.kind == "tool_args" and d.text and self._open_call() is not None:
                out += self._args(d.text)
        return out

    def finish(self) -> list[Piece]:
        """The last pieces: "{}" for an open call without arguments, or held-back whitespace content."""
        out = self._close_call()
        if self._ws and not self.calls:
            ws, self._ws = self._ws, ""
            out += self._append("content", ws)
        return out

    # --- the answer --------------------------------------------------------------------------
    @property
    def reasoning(self) -> Optional[str]:
        return "".join(p.text for p in self.parts if p.kind == "reasoning") or None

    @property
    def content(self) -> Optional[str]:
        return "".join(p.text for p in self.parts if p.kind == "content") or None

    @property
    def calls(self) -> list[Part]:
        return [p for p in self.parts if p.kind == "tool_call"]

    def finish_reason(self, finish: str) -> str:
        """The generation's finish ("stop" | "length" | "tool_calls" | "cancelled") for this answer."""
        if finish in ("length", "cancelled"):
            return finish
        return "tool_calls" if self.calls else "stop"

    # --- helpers -----------------------------------------------------------------------------
    def _append(self, kind: str, text: str) -> list[Piece]:
        if self.parts and self.parts[-1].kind == kind:
            self.parts[-1].text += text
            return [Piece(len(self.parts) - 1, text)]
        self.parts.append(Part(kind, text))
        return [Piece(len(self.parts) - 1, text, opens=True)]

    def _content(self, text: str) -> list[Piece]:
        text, self._ws = self._ws + text, ""
        if text.isspace() and (not self.parts or self.parts[-1].kind != "content"):
            self._ws = text
            return []
        return self._close_call() + self._append("content", text)

    def _open_call(self) -> Optional[Part]:
        return self.parts[-1] if self.parts and self.parts[-1].kind == "tool_call" else None

    def _args(self, text: str) -> list[Piece]:
        call = self._open_call()
        text = self._args_ws + text
        if not call.text:
            text = text.lstrip()
        body = text.rstrip()
        self._args_ws = text[len(body):]
        if not body:
            return []
        call.text += body
        return [Piece(len(self.parts) - 1, body)]

    def _close_call(self) -> list[Piece]:
        call, self._args_ws = self._open_call(), ""
        if call is None or call.text:
            return []
        call.text = "{}"
        return [Piece(len(self.parts) - 1, "{}")]
