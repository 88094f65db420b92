"""The per-request logits constraint handed to hybrid_k2.chat.generate: grammar AND banned ids, then
the thinking budget as a preference.

generate() asks `mask(generated_ids)` for the allowed tokens before each sample and tells
`accept(id)` every generated token. With a grammar active the server enforces the thinking budget
here rather than through SamplingParams.thinking_budget: generate forces `</think>` the moment the
budget is spent, which can be in the middle of a UTF-8 character (a byte-level BPE token ends
mid-character), where no grammar engine can accept it (llguidance only matches valid UTF-8). Here
the budget is ANDed with the grammar's mask and yields while the AND is empty, so `</think>` comes
one or two tokens later, on the character boundary (llama.cpp's reasoning budget waits the same way).
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence

import torch


class Preference(Protocol):
    def allowed(self) -> Optional[torch.Tensor]: ...  # [V] bool, or None

    def accept(self, token_id: int) -> None: ...


class ThinkingBudget:
    """Asks for `</think>` once the reasoning part has used `budget` tokens.

    Counted like hybrid_k2.chat.generate counts reasoning_tokens: tokens generated while the answer is
    in reasoning, the opening `<think>` excluded; reasoning ends at `</think>` or where the tool section
    begins (kimi-k2-format.md 6.1)."""

    def __init__(self, budget: int, *, think_id: int, think_end_id: int, section_begin_id: int, logits_size: int):
        self.budget = budget
        self.think_id, self.think_end_id, self.section_begin_id = think_id, think_end_id, section_begin_id
        self.logits_size = logits_size
        self.used = 0
        self.in_reasoning = True

    def allowed(self) -> Optional[torch.Tensor]:
        if not self.in_reasoning or self.used < self.budget:
            return None
        mask = torch.zeros(self.logits_size, dtype=torch.bool)  # [V]
        mask[self.think_end_id] = True
        return mask

    def accept(self, token_id: int) -> None:
        if not self.in_reasoning:
            return
        if token_id in (self.think_end_id, self.section_begin_id):
            self.in_reasoning = False
        elif token_id != self.think_id:
            self.used += 1


class Constraints:
    def __init__(self, grammar=None, preferences: Sequence[Preference] = (), *, banned: Sequence[int] = (),
                 logits_size: int = 0):
        self.grammar = grammar  # a grammar.GrammarConstraint or None
        self.preferences = list(preferences)
        self._ban = None
        if banned:
            self._ban = torch.ones(logits_size, dtype=torch.bool)  # [V]
            self._ban[list(banned)] = False

    def __bool__(self) -> bool:
        return self.grammar is not None or self._ban is not None or bool(self.preferences)

    def mask(self, generated_ids: Sequence[int] = ()) -> Optional[torch.Tensor]:
        """Allowed next tokens, bool [V], or None for no restriction."""
        allowed = self.grammar.allowed() if self.grammar is not None else None
        if self._ban is not None:
            allowed = self._ban if allowed is None else allowed & self._ban
        for pref in self.preferences:
            extra = pref.allowed()
            if extra is None:
                continue
            combined = extra if allowed is None else allowed & extra
            if bool(combined.any()):  # else the grammar cannot take it yet: it waits
                allowed = combined
        return allowed

    def accept(self, token_id: int) -> bool:
        ok = self.grammar.accept(token_id) if self.grammar is not None else True
        for pref in self.preferences:
            pref.accept(token_id)
        return ok

    def close(self) -> None:
        if self.grammar is not None:
            self.grammar.close()
