"""A loaded model together with its tokenizer and chat template: messages in, streamed answer out.

Used by the REPL; the server has its own scheduler but the same pieces (render_ids, fit_prompt,
generate). One Session per conversation: successive turns reuse its KV cache through the common
prefix (generate.prefill_with_reuse), so a new turn prefills only what changed.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from hybrid_k2.chat.context import FittedPrompt, answer_reserve, fit_prompt
from hybrid_k2.chat.generate import GenerationEvent, TokenConstraint, generate
from hybrid_k2.chat.sampling import SamplingParams
from hybrid_k2.chat.template import ChatTemplate
from hybrid_k2.chat.tokenizer import Tokenizer, read_json


class ChatEngine:
    """`ChatEngine.load(model_dir)`, then `chat(session, messages, tools, params)` per turn."""

    def __init__(self, model, tokenizer: Tokenizer | None = None, template: ChatTemplate | None = None):
        self.model = model
        self.tokenizer = tokenizer or Tokenizer.from_dir(model.path)
        self.template = template or ChatTemplate.from_dir(model.path)
        self.stop_ids = self.tokenizer.stop_ids | generation_config_eos(model.path, self.tokenizer.vocab_size)

    @classmethod
    def load(cls, path: str | Path, **load_kwargs) -> "ChatEngine":
        """Loads the checkpoint (hybrid_k2.load kwargs: device, precision, ...) and its tokenizer files.
        The tokenizer is read first: it is small, and a broken one should fail before the weights load."""
        from hybrid_k2.api import load

        tokenizer = Tokenizer.from_dir(path)
        template = ChatTemplate.from_dir(path)
        return cls(load(path, **load_kwargs), tokenizer, template)

    def new_session(self, max_len: int | None = None):
        return self.model.new_session(max_len)

    def prompt(self, messages: Sequence[Mapping], tools=None, *, max_len: int, reserve: int) -> FittedPrompt:
        """Token ids of the conversation + generation prompt, fitted to the context (context.py)."""
        def render(msgs):
            return self.template.render_ids(self.tokenizer, msgs, tools)

        return fit_prompt(render, messages, max_len=max_len, reserve=reserve)

    def chat(self, session, messages: Sequence[Mapping], tools=None, params: SamplingParams = SamplingParams(), *,
             cancel: threading.Event | None = None, constraint: TokenConstraint | None = None,
             thinking: bool = True, progress=None) -> Iterator[GenerationEvent]:
        """Streams the assistant's answer to `messages` (see generate.generate for the events and progress)."""
        fitted = self.prompt(messages, tools, max_len=session.max_len,
                             reserve=answer_reserve(params.max_tokens, session.max_len))
        for event in generate(session, self.tokenizer, fitted.ids, params, cancel=cancel, constraint=constraint,
                              thinking=thinking, stop_ids=self.stop_ids, progress=progress):
            if event.stats is not None:
                event.stats.dropped_tool_outputs = fitted.dropped_tool_outputs
            yield event


def generation_config_eos(model_dir: str | Path, vocab_size: int) -> frozenset[int]:
    """eos_token_id(s) from generation_config.json, if the file is there and sane."""
    config = read_json(Path(model_dir) / "generation_config.json", "generation config", missing_ok=True)
    return eos_ids(config, vocab_size)


def eos_ids(config, vocab_size: int) -> frozenset[int]:
    """eos_token_id(s) of a parsed generation_config.json (an int or a list), the sane ones."""
    eos = config.get("eos_token_id") if isinstance(config, dict) else None
    ids = eos if isinstance(eos, list) else [eos]
    return frozenset(i for i in ids if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size)
