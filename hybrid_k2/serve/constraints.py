"""Per-request logits constraints, composed: the llguidance grammar and K2's thinking budget.

Each constraint answers `allowed()` (a bool mask over the logits, or None for "anything") before a
token is sampled and is told the sampled token by `accept(id)`. `Constraints` ANDs them; when the AND
is empty the grammar wins (the budget is a preference, the grammar a promise).
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence

import torch


class Constraint(Protocol):
    def allowed(self) -> Optional[torch.Tensor]: ...  # [V] bool, or None

    def accept(self, token_id: int) -> bool: ...


class ThinkingBudget:
    """Forces `</think>` once the reasoning part has used `budget` tokens.

    K2 thinks first: its reply opens with `<think>` (or goes straight into reasoning text), and the
    reasoning ends at `</think>` or at `<|tool_calls_section_begin|>` (kimi-k2-format.md 6.1). The
    opening `<think>` does not count against the budget.
    """

    def __init__(self, budget: int, *, think_id: int, think_end_id: int, section_begin_id: int, logits_size: int):
        self.budget = budget
        self.think_id, self.think_end_id, self.section_begin_id = think_id, think_end_id, section_begin_id
        self.logits_size = logits_size
        self.used = 0
        self.in_reasoning = True

    def allowed(self) -> Optional[torch.Tensor]:
        if not self.in_reasoning or self.used < self.budget:
            return None
        mask = torch.zeros(self.logits_size, dtype=torch.bool)
        mask[self.think_end_id] = True
        return mask

    def accept(self, token_id: int) -> bool:
        if not self.in_reasoning:
            return True
        if token_id in (self.think_end_id, self.section_begin_id):
            self.in_reasoning = False
        elif token_id != self.think_id:
            self.used += 1
        return True


class Constraints:
    """Grammar first, then preferences; `mask_(logits)` applies the combined mask in place."""

    def __init__(self, grammar=None, preferences: Sequence[Constraint] = ()):
        self.grammar = grammar
        self.preferences = list(preferences)

    def __bool__(self) -> bool:
        return self.grammar is not None or bool(self.preferences)

    def allowed(self) -> Optional[torch.Tensor]:
        base = self.grammar.allowed() if self.grammar is not None else None
        for pref in self.preferences:
            extra = pref.allowed()
            if extra is None:
                continue
            combined = extra if base is None else base & extra
            if bool(combined.any()):
                base = combined
        return base

    def mask_(self, logits: torch.Tensor) -> torch.Tensor:  # [V] float32, in place
        allowed = self.allowed()
        if allowed is not None:
            n = min(allowed.shape[0], logits.shape[-1])
            logits[..., n:] = float("-inf")
            logits[..., :n].masked_fill_(~allowed[:n], float("-inf"))
        return logits

    def accept(self, token_id: int) -> bool:
        ok = True
        if self.grammar is not None:
            ok = self.grammar.accept(token_id)
        for pref in self.preferences:
            pref.accept(token_id)
        return ok

    def close(self) -> None:
        if self.grammar is not None:
            self.grammar.close()
