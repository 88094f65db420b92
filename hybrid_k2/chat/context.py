"""What to do when a conversation no longer fits the context window (policy only, no model).

The K2-Thinking model card's strategy for long agentic runs: hide old tool outputs. So the oldest
tool results are replaced by a short placeholder, one at a time, until the prompt plus the room kept
for the answer fits; if it still does not fit, refuse with the numbers instead of cutting silently.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from hybrid_k2.errors import HybridK2Error

TOOL_OUTPUT_PLACEHOLDER = "[tool output removed to fit the context window]"
DEFAULT_ANSWER_RESERVE = 1024  # tokens kept free for the answer when the prompt is fitted


@dataclass
class FittedPrompt:
    ids: list[int]
    messages: list[Mapping]  # the messages actually rendered
    dropped_tool_outputs: int = 0


def answer_reserve(max_tokens: int, max_len: int) -> int:
    """Room kept for the answer: max_tokens, capped so that long max_tokens do not refuse prompts
    that fit (the answer then ends with finish_reason "length")."""
    return max(1, min(max_tokens, DEFAULT_ANSWER_RESERVE, max_len // 4))


def fit_prompt(render: Callable[[Sequence[Mapping]], list[int]], messages: Sequence[Mapping], *,
               max_len: int, reserve: int) -> FittedPrompt:
    """Renders `messages` to ids with `render`, dropping old tool outputs until
    len(ids) + reserve <= max_len. Raises HybridK2Error when even that is not enough."""
    messages = list(messages)
    ids = render(messages)
    if len(ids) + reserve <= max_len:
        return FittedPrompt(ids, messages)
    tool_positions = [i for i, m in enumerate(messages) if m.get("role") == "tool"
                      and m.get("content") != TOOL_OUTPUT_PLACEHOLDER]
    for dropped, i in enumerate(tool_positions, 1):  # oldest first
        messages[i] = {**messages[i], "content": TOOL_OUTPUT_PLACEHOLDER}
        ids = render(messages)
        if len(ids) + reserve <= max_len:
            return FittedPrompt(ids, messages, dropped)
    after = f" after removing {len(tool_positions)} old tool outputs" if tool_positions else ""
    raise HybridK2Error(f"the conversation is {len(ids)} tokens{after}; with {reserve} kept for the answer it "
                        f"exceeds the context of {max_len} tokens (start a new conversation or shorten it)")
