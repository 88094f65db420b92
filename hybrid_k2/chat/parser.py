"""Splits K2 output into reasoning, content and tool calls, token by token or all at once.

[NOTE] Grammar of a thinking model's answer (kimi-k2-format.md section 6):
    [<think>] REASONING </think> CONTENT
    [<|tool_calls_section_begin|>
        (<|tool_call_begin|> functions.NAME:IDX <|tool_call_argument_begin|> JSON <|tool_call_end|>)+
     <|tool_calls_section_end|>] <|im_end|>
Reasoning also ends where the tool section begins; the leading `<think>` may be missing.
The parser is one state machine fed with markers (control tokens) and plain text, so the streaming
deltas and the final result can never disagree. Text that merely looks like a marker (the model
spelling "<think>" with ordinary tokens) stays text when fed by ids; `feed_text` is for output that
was already detokenised with specials kept, and recognises the marker strings in it.
Malformed output never raises: an unclosed section, a bad call header, arguments that are not a JSON
object, or output cut by max_tokens turn the whole tool section back into content, raw text kept.
Text after `<|tool_calls_section_end|>` is dropped (as vLLM does).
Stop strings (SamplingParams.stop) are matched on the content only: content that could be the start
of a stop string is held back until it is decided, and a match ends the answer before the string.
Raw text (stray control tokens, an abandoned tool section; Delta.raw) is not matched and does not
interrupt a match: the server does not show it, and stops apply to the words a client sees.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Iterable, Literal

from hybrid_k2.chat.tokenizer import (
    EOS, IM_END, THINK, THINK_END, TOOL_CALL_ARGUMENT_BEGIN, TOOL_CALL_BEGIN, TOOL_CALL_END,
    TOOL_CALLS_SECTION_BEGIN, TOOL_CALLS_SECTION_END, StreamDecoder, Tokenizer)

MARKERS = (THINK, THINK_END, TOOL_CALLS_SECTION_BEGIN, TOOL_CALLS_SECTION_END, TOOL_CALL_BEGIN,
           TOOL_CALL_ARGUMENT_BEGIN, TOOL_CALL_END, IM_END, EOS)
_MARKER_RE = re.compile("|".join(re.escape(m) for m in MARKERS))
_CALL_ID_RE = re.compile(r"^\s*(?P<id>(?:functions\.)?(?P<name>[^\s:<>]+?):(?P<index>\d+))\s*$")

State = Literal["reasoning", "content", "section", "call_id", "call_args", "after", "done"]


@dataclass(frozen=True)
class Delta:
    """One streaming event. kind: "reasoning" | "content" (text), "tool_call" (a call starts: index,
    id, name), "tool_args" (a fragment of the call's JSON arguments: index, text). `raw` marks text that
    is K2 control tokens rather than words: a stray marker, or the text of an abandoned tool section
    (markers included). The REPL shows it; the server does not (as vLLM skips special tokens)."""
    kind: str
    text: str = ""
    index: int = -1
    id: str = ""
    name: str = ""
    raw: bool = False


@dataclass
class ToolCall:
    id: str  # the model's own id, `functions.NAME:IDX`
    name: str
    arguments: str  # JSON object text, exactly as the model wrote it ("{}" if empty)

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ParsedOutput:
    reasoning: str | None = None
    content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    malformed: str | None = None  # why a tool section was turned back into content
    stop_sequence: str | None = None  # the stop string that ended the answer, if one did

    def to_message(self) -> dict:
        """The assistant message to append to the conversation (OpenAI shape + reasoning_content)."""
        message = {"role": "assistant", "content": self.content or ""}
        if self.reasoning is not None:
            message["reasoning_content"] = self.reasoning
        if self.tool_calls:
            message["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        return message


class OutputParser:
    """Streaming parser. `feed_ids` / `feed_text` / `feed_marker` / `feed_plain` return the new deltas;
    `finish()` returns the last deltas and the ParsedOutput (the concatenation of what was streamed,
    except that a malformed tool section comes back as content and whitespace-only content is None)."""

    def __init__(self, tokenizer: Tokenizer | None = None, *, thinking: bool = True, stop: Iterable[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.stopped = False  # a stop string matched: the answer is over
        self.stop_hit: str | None = None  # which one
        self._held = ""  # content that may be the start of a stop string
        self.state: State = "reasoning" if thinking else "content"
        self._decoder = StreamDecoder(tokenizer) if tokenizer is not None else None
        self._pending_text = ""  # feed_text: tail that may be the start of a marker
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self._seen_reasoning_text = False
        # tool section bookkeeping
        self._section_raw: list[str] = []  # raw text of the section, markers included
        self._calls: list[ToolCall] = []
        self._call_id_buf = ""
        self._args: list[str] = []
        self._malformed: str | None = None

    # ---- input -------------------------------------------------------------------------------
    def feed_ids(self, ids: Iterable[int]) -> list[Delta]:
        """Generated token ids: specials are markers, everything else text (UTF-8-safe streaming)."""
        if self.tokenizer is None:
            raise ValueError("feed_ids needs a tokenizer")
        out: list[Delta] = []
        for token_id in ids:
            if self.tokenizer.is_special(token_id):
                name = self.tokenizer.token_bytes(token_id).decode()  # out-of-vocabulary ids raise here
                out += self.feed_plain(self._decoder.flush())
                out += self.feed_marker(name)
            else:
                out += self.feed_plain(self._decoder.push(token_id))
        return out

    def feed_text(self, text: str) -> list[Delta]:
        """Text detokenised with specials kept: marker strings are recognised (a marker split across
        calls is held back until it is complete)."""
        text = self._pending_text + text
        out: list[Delta] = []
        pos = 0
        for m in _MARKER_RE.finditer(text):
            out += self.feed_plain(text[pos:m.start()])
            out += self.feed_marker(m.group(0))
            pos = m.end()
        rest = text[pos:]
        keep = _partial_marker_len(rest)
        self._pending_text = rest[len(rest) - keep:] if keep else ""
        out += self.feed_plain(rest[:len(rest) - keep])
        return out

    def feed_marker(self, name: str) -> list[Delta]:
        """One control token, by name. Markers that do not fit the grammar here stay in the text."""
        s = self.state
        if s == "done":
            return []
        pre = self._release_held() if s == "content" and name in (IM_END, EOS, TOOL_CALLS_SECTION_BEGIN) else []
        return pre + self._marker(name)

    def _marker(self, name: str) -> list[Delta]:
        s = self.state
        if s == "done":
            return []
        if name in (IM_END, EOS):
            out = self._close_section("the tool section was not closed") if s in ("section", "call_id", "call_args") else []
            out += self._release_held()
            self.state = "done"
            return out
        if s == "reasoning":
            if name == THINK and not self._seen_reasoning_text:
                return []
            if name == THINK_END:
                self.state = "content"
                return []
            if name == TOOL_CALLS_SECTION_BEGIN:
                return self._open_section(name)
            return self._emit("reasoning", name, raw=True)
        if s == "content":
            if name == TOOL_CALLS_SECTION_BEGIN:
                return self._open_section(name)
            return self._emit("content", name, raw=True)
        if s == "after":
            return []
        self._section_raw.append(name)
        if s == "section":
            if name == TOOL_CALL_BEGIN:
                self.state, self._call_id_buf = "call_id", ""
                return []
            if name == TOOL_CALLS_SECTION_END:
                return self._close_section(None)
            return self._fail(f"unexpected {name} between tool calls")
        if s == "call_id":
            if name != TOOL_CALL_ARGUMENT_BEGIN:
                return self._fail(f"unexpected {name} in a tool call header")
            m = _CALL_ID_RE.match(self._call_id_buf)
            if not m:
                return self._fail(f"bad tool call id {self._call_id_buf.strip()!r}")
            name_ = m.group("name").removeprefix("functions.").split(".")[-1]
            call = ToolCall(id=m.group("id"), name=name_, arguments="")
            self._calls.append(call)
            self._args, self.state = [], "call_args"
            return [Delta("tool_call", index=len(self._calls) - 1, id=call.id, name=call.name)]
        # s == "call_args"
        if name != TOOL_CALL_END:
            return self._fail(f"unexpected {name} in tool call arguments")
        call = self._calls[-1]
        call.arguments = "".join(self._args).strip() or "{}"
        try:
            ok = isinstance(json.loads(call.arguments), dict)
        except ValueError:
            ok = False
        if not ok:
            return self._fail(f"arguments of {call.id} are not a JSON object")
        self.state = "section"
        return []

    def feed_plain(self, text: str) -> list[Delta]:
        """Plain text (never markers)."""
        if not text:
            return []
        s = self.state
        if s == "reasoning":
            self._seen_reasoning_text = True
            return self._emit("reasoning", text)
        if s == "content":
            return self._emit("content", text)
        if s in ("after", "done"):
            return []
        self._section_raw.append(text)
        if s == "section":
            return [] if text.isspace() else self._fail("text between tool calls")
        if s == "call_id":
            self._call_id_buf += text
            return []
        self._args.append(text)  # call_args
        return [Delta("tool_args", text=text, index=len(self._calls) - 1)]

    def finish(self) -> tuple[list[Delta], ParsedOutput]:
        """Ends the stream (also on max_tokens or cancellation): flushes held-back text and closes an
        unfinished tool section as content."""
        out: list[Delta] = []
        if self._decoder is not None:
            out += self.feed_plain(self._decoder.flush())
        if self._pending_text:
            pending, self._pending_text = self._pending_text, ""
            out += self.feed_plain(pending)
        if self.state in ("section", "call_id", "call_args"):
            out += self._close_section("the output ended inside the tool section")
        out += self._release_held()
        self.state = "done"
        return out, self.result()

    def result(self) -> ParsedOutput:
        reasoning = "".join(self._reasoning) or None
        content = "".join(self._content)
        if not content or (content.isspace() and self._calls):
            content = None
        return ParsedOutput(reasoning=reasoning, content=content, tool_calls=list(self._calls),
                            malformed=self._malformed, stop_sequence=self.stop_hit)

    @property
    def in_reasoning(self) -> bool:
        return self.state == "reasoning"

    # ---- helpers -----------------------------------------------------------------------------
    def _emit(self, kind: str, text: str, *, raw: bool = False) -> list[Delta]:
        if kind == "content" and self.stop and not raw:  # stops match the words a client sees
            text = self._check_stop(text)
            if not text:
                return []
        (self._reasoning if kind == "reasoning" else self._content).append(text)
        return [Delta(kind, text=text, raw=raw)]

    def _check_stop(self, text: str) -> str:
        """Returns the content that is safe to emit; holds back a possible stop-string start."""
        buf = self._held + text
        hits = [(i, s) for s, i in ((s, buf.find(s)) for s in self.stop) if i >= 0]
        if hits:
            at, self.stop_hit = min(hits)
            self._held, self.stopped, self.state = "", True, "done"
            return buf[:at]
        keep = max((n for s in self.stop for n in range(min(len(s) - 1, len(buf)), 0, -1)
                    if s.startswith(buf[len(buf) - n:])), default=0)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep]

    def _release_held(self) -> list[Delta]:
        held, self._held = self._held, ""
        if not held:
            return []
        self._content.append(held)
        return [Delta("content", text=held)]

    def _open_section(self, marker: str) -> list[Delta]:
        self.state = "section"
        self._section_raw = [marker]
        return []

    def _close_section(self, problem: str | None) -> list[Delta]:
        if problem is None and self._calls:
            self.state = "after"
            return []
        return self._fail(problem or "empty tool section")

    def _fail(self, problem: str) -> list[Delta]:
        """Malformed section: no tool calls; its raw text (markers included) becomes content."""
        self._malformed = self._malformed or problem
        self._calls = []
        raw = "".join(self._section_raw)
        self._section_raw = []
        self.state = "content"
        return self._emit("content", raw, raw=True) if raw else []


def parse_output(output: str | Iterable[int], tokenizer: Tokenizer | None = None, *,
                 thinking: bool = True, stop: Iterable[str] = ()) -> ParsedOutput:
    """Non-streaming parse of a whole answer: token ids (needs `tokenizer`) or text decoded with
    special tokens kept. Never raises on malformed output."""
    parser = OutputParser(tokenizer, thinking=thinking, stop=stop)
    if isinstance(output, str):
        parser.feed_text(output)
    else:
        parser.feed_ids(output)
    return parser.finish()[1]


def _partial_marker_len(text: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a marker."""
    for n in range(min(len(text), max(map(len, MARKERS)) - 1), 0, -1):
        tail = text[-n:]
        if any(m.startswith(tail) for m in MARKERS):
            return n
    return 0
