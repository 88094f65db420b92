"""Structured output with llguidance over the model's own tiktoken vocabulary.

[NOTE] What is constrained and how
- The llguidance tokenizer is built from the project's Tokenizer: the byte string of every id, with the
  256 K2 specials registered as special tokens under their names, so grammars can say
  `<|tool_call_begin|>` and mean that one control token (never its spelling in plain bytes).
- Grammars are Lark text. Every grammar opens with K2's reasoning part `<think> ... </think>` (free
  text; the thinking budget in constraints.py bounds it; optional before a tool section), then the
  constrained body:
    * json_object / json_schema: one JSON value (`%json {schema}`);
    * tool calls: K2's grammar, `<|tool_calls_section_begin|>` then 1..max_calls of
      `<|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>` JSON `<|tool_call_end|>`,
      then `<|tool_calls_section_end|>`. IDX is the running count of calls in the conversation (the
      convention K2 was trained on, SGLang PR #10612), so it is fixed text here.
  After the body only an end-of-message token (<|im_end|> / [EOS]) is allowed.
- JSON is emitted with K2's training separators (", " and ": ", no other whitespace): the format the
  model saw in tool-call arguments, and no room for a weak model to spin on whitespace.
- Masks are computed on llguidance's own thread (it releases the GIL): `accept(token)` starts the mask
  for the next step, so it overlaps the model's decode step; `apply(logits)` waits for it.
"""
from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from hybrid_k2.errors import HybridK2Error

try:
    import llguidance
    from llguidance import LLMatcher, LLTokenizer, TokenizerWrapper
except ImportError:  # pragma: no cover - llguidance is a runtime dependency
    llguidance = None

# K2's training style for JSON arguments: json.dumps defaults.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(HybridK2Error):
    """A schema or grammar that llguidance cannot compile (a 400 for the client)."""


# --- tokenizer -------------------------------------------------------------------------------------

class _VocabView:
    """The duck type llguidance's TokenizerWrapper reads: bytes per id, specials, and an encoder."""

    def __init__(self, token_bytes: Sequence[bytes], special_ids: Sequence[int], eos_id: int,
                 bos_id: Optional[int], encode_bytes):
        self.tokens = list(token_bytes)
        self.special_token_ids = list(special_ids)
        self.eos_token_id = eos_id
        self.bos_token_id = bos_id
        self._encode = encode_bytes

    def __call__(self, data: bytes) -> list[int]:
        return self._encode(data)


def build_lltokenizer(*, token_bytes: Sequence[bytes], special_ids: Sequence[int], eos_ids: Sequence[int],
                      bos_id: Optional[int], encode_bytes, n_vocab: Optional[int] = None) -> "LLTokenizer":
    """An llguidance tokenizer from raw vocabulary facts.

    token_bytes[i] is the byte string of id i (for specials: their name, e.g. b"<|im_end|>");
    encode_bytes(bytes) -> ids must tokenize plain text (specials NOT parsed).
    """
    if llguidance is None:
        raise GrammarError("structured output needs the llguidance package (pip install llguidance)")
    view = _VocabView(token_bytes, special_ids, eos_ids[0], bos_id, encode_bytes)
    try:
        return LLTokenizer(TokenizerWrapper(view), n_vocab=n_vocab, eos_token=list(eos_ids))
    except BaseException as e:  # noqa: BLE001 - a Rust panic arrives as pyo3's PanicException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise GrammarError(f"llguidance cannot use this vocabulary: {_one_line(str(e))}") from None


def lltokenizer_for(tokenizer, *, n_vocab: Optional[int] = None) -> "LLTokenizer":
    """The llguidance tokenizer for a hybrid_k2.chat Tokenizer: every id's bytes, the 256 specials by
    name, and end-of-message = <|im_end|> (how every K2 message ends)."""
    token_bytes = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
    byte_id = {token_bytes[i]: i for i in range(tokenizer.n_base) if len(token_bytes[i]) == 1}

    def encode_bytes(data: bytes) -> list[int]:
        # llguidance may hand us a cut in the middle of a UTF-8 character: encode the valid part,
        # then the leftover bytes one token each (every single byte is a token in K2's BPE).
        try:
            return tokenizer.encode(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            return tokenizer.encode(data[:e.start].decode("utf-8")) + [byte_id[bytes([b])] for b in data[e.start:]]

    specials = range(tokenizer.n_base, tokenizer.vocab_size)
    return build_lltokenizer(token_bytes=token_bytes, special_ids=specials, eos_ids=[tokenizer.im_end_id],
                             bos_id=None, encode_bytes=encode_bytes, n_vocab=n_vocab)


# --- grammars (Lark text) --------------------------------------------------------------------------

@dataclass(frozen=True)
class ToolSpec:
    name: str
    parameters: Optional[dict[str, Any]]


def _json_directive(schema: Optional[dict[str, Any]]) -> str:
    schema = dict(schema) if schema else {"type": "object"}
    if not schema.get("type") and not any(k in schema for k in ("properties", "anyOf", "oneOf", "allOf",
                                                                 "$ref", "enum", "const", "items")):
        schema["type"] = "object"
    schema["x-guidance"] = {**JSON_STYLE, **(schema.get("x-guidance") or {})}
    return "%json " + json.dumps(schema, ensure_ascii=False)


def _lark_str(text: str) -> str:
    return json.dumps(text)


# K2's parser takes everything before `</think>` as reasoning, unless the tool section starts first
# (kimi-k2-format.md 6.1): so a JSON answer needs `</think>` before it, a tool section does not.
_THINK = "think: <think>? REASONING </think>\nREASONING: /(?s:.*)/\n"


def _json_answer(schema: Optional[dict[str, Any]]) -> list[str]:
    return ["json_answer: " + _json_directive(schema)]


def _tool_section(tools: Sequence[ToolSpec], first_index: int, max_calls: int) -> list[str]:
    if not tools:
        raise GrammarError("tool_choice needs at least one tool")
    lines = ["tool_section: <|tool_calls_section_begin|> call_0 <|tool_calls_section_end|>"]
    for i in range(max_calls):
        idx = first_index + i
        alts = " | ".join(f"{_lark_str(f'functions.{t.name}:{idx}')} <|tool_call_argument_begin|> args_{j}"
                          for j, t in enumerate(tools))
        more = f" call_{i + 1}?" if i + 1 < max_calls else ""
        lines.append(f"call_{i}: <|tool_call_begin|> ({alts}) <|tool_call_end|>{more}")
    for j, t in enumerate(tools):
        lines.append(f"args_{j}: " + _json_directive(t.parameters))
    return lines


def json_grammar(schema: Optional[dict[str, Any]]) -> str:
    """Reasoning, `</think>`, then one JSON value valid for `schema` (None: any JSON object)."""
    return "\n".join(["start: think json_answer", _THINK] + _json_answer(schema)) + "\n"


def tool_calls_grammar(tools: Sequence[ToolSpec], *, first_index: int, max_calls: int) -> str:
    """Reasoning (optional) then a K2 tool-call section with 1..max_calls calls of the given tools."""
    return "\n".join(["start: think? tool_section", _THINK] + _tool_section(tools, first_index, max_calls)) + "\n"


def json_or_tool_calls_grammar(schema: Optional[dict[str, Any]], tools: Sequence[ToolSpec], *,
                               first_index: int, max_calls: int) -> str:
    """tool_choice auto with a response_format: either a JSON answer or a tool-call section."""
    return "\n".join(["start: think json_answer | think? tool_section", _THINK] + _json_answer(schema)
                     + _tool_section(tools, first_index, max_calls)) + "\n"


# --- compiling and running -------------------------------------------------------------------------

class GrammarCompiler:
    """Compiles Lark grammars once (LRU) and hands out fresh matchers; owns the mask thread."""

    def __init__(self, lltokenizer: "LLTokenizer", *, logits_size: int, cache_size: int = 64):
        self.tok = lltokenizer
        self.vocab_size = lltokenizer.vocab_size      # ids the grammar knows
        self.logits_size = logits_size                # model vocab (>= vocab_size; the rest is padding)
        self._cache: OrderedDict[str, LLMatcher] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llguidance-mask")

    def matcher(self, lark: str) -> "LLMatcher":
        with self._lock:
            proto = self._cache.get(lark)
            if proto is not None:
                self._cache.move_to_end(lark)
                return proto.deep_copy()
        grammar = LLMatcher.grammar_from_lark(lark)
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, self.tok)
        if is_error:
            raise GrammarError("cannot compile the output grammar: " + _one_line(messages[0]))
        proto = LLMatcher(self.tok, grammar, log_level=0)
        if proto.is_error():
            raise GrammarError("cannot compile the output grammar: " + _one_line(proto.get_error()))
        with self._lock:
            self._cache[lark] = proto
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return proto.deep_copy()

    def constraint(self, lark: str) -> "GrammarConstraint":
        return GrammarConstraint(self, self.matcher(lark))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


class GrammarConstraint:
    """Per-request logits mask: `allowed(step)` and `apply(logits)` before sampling, `accept(id)` after."""

    def __init__(self, compiler: GrammarCompiler, matcher: "LLMatcher"):
        self.compiler = compiler
        self.matcher = matcher
        self._bitmask = np.zeros((compiler.vocab_size + 31) // 32, dtype=np.int32)  # [ceil(V/32)]
        self._allowed = torch.zeros(compiler.logits_size, dtype=torch.bool)  # [logits_size]; padding stays False
        self._allowed_np = self._allowed.numpy()
        self._pending: Optional[Future] = None
        self.mask_seconds = 0.0      # time spent computing masks (on the mask thread)
        self.wait_seconds = 0.0      # time the decode loop actually waited for a mask
        self.steps = 0
        self._start_mask()

    def _compute(self) -> None:
        t0 = time.perf_counter()
        self.matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
        self.mask_seconds += time.perf_counter() - t0

    def _start_mask(self) -> None:
        self._pending = self.compiler.pool.submit(self._compute)

    def allowed(self) -> torch.Tensor:
        """Bool mask over the model's logits for the next token (a reused buffer). # [logits_size]"""
        t0 = time.perf_counter()
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        else:  # pragma: no cover - accept() always schedules the next mask
            self._compute()
        self.wait_seconds += time.perf_counter() - t0
        self.steps += 1
        return self.allowed_from_bitmask()

    def allowed_from_bitmask(self) -> torch.Tensor:
        V = self.compiler.vocab_size
        self._allowed_np[:V] = np.unpackbits(self._bitmask.view(np.uint8), count=V, bitorder="little")
        return self._allowed

    def accept(self, token_id: int) -> bool:
        """Advance the grammar by the sampled token; False (and the matcher errors) if it was not allowed."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        ok = self.matcher.consume_token(int(token_id))
        if ok and not self.matcher.is_stopped():
            self._start_mask()
        return ok

    def error(self) -> str:
        return self.matcher.get_error()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            try:
                self._pending.result()
            except Exception:  # noqa: BLE001 - cancelled or finished; nothing to report
                pass
            self._pending = None
