"""The decode loop: prefix-reusing prefill, sampling, stops, thinking budget, cancellation, constraints.

[NOTE] One generation on one Session (a KV cache + the ids it holds):
1. Prefix reuse: the longest common prefix of `session.tokens` and the new prompt stays cached;
   `session.truncate(common)` drops the rest and only the remainder is prefilled. At least the last
   prompt token is always prefilled, because its logits start the answer.
2. Each step: cancelled? -> at max_tokens? -> feed the previous token -> pick the next one (forced
   `</think>` when the thinking budget is spent, else constraint mask + sampler) -> constraint.accept
   -> parser. A stop token (`<|im_end|>`, `[EOS]`) or a stop string ends the answer.
   The last sampled token is never fed to the cache (nothing would read its logits), so afterwards
   `session.tokens` = prompt + answer minus its last token: the next turn's prefix reuse expects that.
3. Everything the caller needs comes out as GenerationEvents: the token id, its text piece (UTF-8
   safe, specials as their names), the parser's deltas; the last event has the stats and the parse.
Constraint hook (structured output): any object with `mask(generated_ids) -> bool [V] or None`
(True = allowed; None = no restriction this step) and `accept(token_id)`, called for every generated
token including a forced `</think>`. The server plugs its grammar engine in here.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Protocol, Sequence

import torch

from hybrid_k2.chat.parser import Delta, OutputParser, ParsedOutput
from hybrid_k2.chat.sampling import SamplingParams, make_generator, sample
from hybrid_k2.chat.tokenizer import StreamDecoder, Tokenizer
from hybrid_k2.errors import HybridK2Error


class TokenConstraint(Protocol):
    """Restricts which tokens may come next (e.g. a grammar engine such as llguidance)."""

    def mask(self, generated_ids: Sequence[int]) -> Optional[torch.Tensor]:
        """Allowed tokens for the next step as a bool tensor/array over the vocabulary (shorter
        masks disallow the ids past their end), or None for no restriction."""

    def accept(self, token_id: int) -> object:
        """Told every generated token, in order (the return value is ignored)."""


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the session's cache (not prefilled)
    completion_tokens: int = 0  # generated tokens, the stop token included
    reasoning_tokens: int = 0  # generated while reasoning, the `<think>` marker excluded
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    finish_reason: str = ""  # "stop" | "length" | "tool_calls" | "cancelled"
    dropped_tool_outputs: int = 0  # old tool results replaced to fit the context (engine.py)

    @property
    def prefilled_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefilled_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.completion_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclass
class GenerationEvent:
    token_id: int | None  # None on the final event
    text: str = ""  # detokenised piece (specials kept as their names)
    deltas: list[Delta] = field(default_factory=list)
    stats: GenerationStats | None = None  # final event only
    output: ParsedOutput | None = None  # final event only

    @property
    def done(self) -> bool:
        return self.stats is not None


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    # Compare in blocks first: agent prompts share tens of thousands of tokens.
    block = 256
    while i + block <= n and list(a[i:i + block]) == list(b[i:i + block]):
        i += block
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prefill_with_reuse(session, prompt_ids: Sequence[int], *,
                       progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, int]:
    """Prefills only what the session's cache does not already hold. Returns (logits [V] of the
    last prompt position, number of prompt tokens reused from the cache). progress(done, total) is
    called as the new tokens are prefilled (Session.prefill)."""
    prompt_ids = list(prompt_ids)
    if not prompt_ids:
        raise HybridK2Error("the prompt is empty")
    common = min(common_prefix_len(session.tokens, prompt_ids), len(prompt_ids) - 1)
    session.truncate(common)
    logits = session.prefill(prompt_ids[common:], last_only=True, progress=progress)  # [1, V]
    return logits[-1], common


def generate(session, tokenizer: Tokenizer, prompt_ids: Sequence[int], params: SamplingParams = SamplingParams(), *,
             cancel: threading.Event | None = None, constraint: TokenConstraint | None = None,
             thinking: bool = True, stop_ids: Sequence[int] | None = None,
             progress: Callable[[int, int], None] | None = None) -> Iterator[GenerationEvent]:
    """Generates one answer to `prompt_ids` on `session`, streaming GenerationEvents.

    cancel: set it from any thread to end the answer (finish_reason "cancelled").
    constraint: see TokenConstraint. thinking: the answer starts in reasoning (K2-Thinking).
    stop_ids: stop tokens (default: tokenizer.stop_ids). progress(done, total): prefill progress.
    """
    stops = frozenset(stop_ids if stop_ids is not None else tokenizer.stop_ids)
    stats = GenerationStats(prompt_tokens=len(prompt_ids))
    t0 = time.perf_counter()
    logits, stats.cached_tokens = prefill_with_reuse(session, prompt_ids, progress=progress)
    t1 = time.perf_counter()
    stats.prefill_seconds = t1 - t0

    vocab = min(tokenizer.vocab_size, logits.shape[-1])  # ids the tokenizer can print
    max_new = min(params.max_tokens, session.max_len - len(prompt_ids))
    generator = make_generator(params.seed)
    parser = OutputParser(tokenizer, thinking=thinking, stop=params.stop)
    text_decoder = StreamDecoder(tokenizer)
    generated: list[int] = []
    pending: int | None = None  # sampled, not yet fed to the cache
    finish = "length"
    while True:
        if cancel is not None and cancel.is_set():
            finish = "cancelled"
            break
        if len(generated) >= max_new:
            break
        if pending is not None:
            logits = session.decode(pending)  # [V]
            pending = None
        if params.thinking_budget is not None and parser.in_reasoning and \
                stats.reasoning_tokens >= params.thinking_budget:
            token = tokenizer.think_end_id
        else:
            allowed = constraint.mask(generated) if constraint is not None else None
            token = sample(logits[:vocab], params, generator, allowed)
        if constraint is not None:
            constraint.accept(token)
        generated.append(token)
        was_reasoning = parser.in_reasoning
        deltas = parser.feed_ids([token])
        if was_reasoning and parser.in_reasoning and token != tokenizer.think_id:
            stats.reasoning_tokens += 1  # neither the markers nor a stop token count
        if token in stops:
            yield GenerationEvent(token, "", deltas)
            finish = "stop"
            break
        yield GenerationEvent(token, text_decoder.push(token), deltas)
        if parser.stopped:
            finish = "stop"
            break
        pending = token

    deltas, output = parser.finish()
    stats.completion_tokens = len(generated)
    stats.decode_seconds = time.perf_counter() - t1
    stats.finish_reason = "tool_calls" if output.tool_calls and finish != "cancelled" else finish
    yield GenerationEvent(None, text_decoder.flush(), deltas, stats=stats, output=output)
