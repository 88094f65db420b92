"""Per-request sampling settings and the one-token sampler.

[NOTE] Order of the filters (the common one, as in HF's logits warpers): allowed-token mask ->
temperature -> top-k -> top-p (nucleus) -> min-p, then one inverse-CDF draw with a uniform from a
torch.Generator, so a seed reproduces a whole answer. temperature == 0 is greedy.
Everything runs on the logits' device (CPU or the GPU lm_head wrote them on): masks are moved there
and the uniform is drawn on the CPU generator (the seed means the same thing on every device) and then
moved there; only the chosen index comes back. K2-Thinking is meant to run at temperature
1.0 and top_p 1.0 (kimi-k2-format.md 6.4), which are the defaults.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from hybrid_k2.errors import HybridK2Error


@dataclass(frozen=True)
class SamplingParams:
    """Per-request settings. `stop` strings end the answer (matched on content, not on reasoning);
    `thinking_budget` forces `</think>` after that many reasoning tokens (None: no limit)."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int = 4096
    stop: tuple[str, ...] = field(default_factory=tuple)
    thinking_budget: int | None = None

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        checks = [
            (_number(self.temperature) and 0 <= self.temperature <= 100, f"temperature must be in [0, 100], got {self.temperature!r}"),
            (_number(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}"),
            (_int(self.top_k) and self.top_k >= 0, f"top_k must be an integer >= 0, got {self.top_k!r}"),
            (_number(self.min_p) and 0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p!r}"),
            (self.seed is None or _int(self.seed), f"seed must be an integer, got {self.seed!r}"),
            (_int(self.max_tokens) and self.max_tokens >= 1, f"max_tokens must be an integer >= 1, got {self.max_tokens!r}"),
            (all(isinstance(s, str) and s for s in self.stop), "stop must be a list of non-empty strings"),
            (self.thinking_budget is None or (_int(self.thinking_budget) and self.thinking_budget >= 0),
             f"thinking_budget must be an integer >= 0, got {self.thinking_budget!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise HybridK2Error(message)


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with `seed`, or from OS entropy (torch's default seed is a constant)."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
    return gen


def apply_allowed(logits: torch.Tensor, allowed) -> torch.Tensor:
    """Sets disallowed logits to -inf. `allowed`: bool [<= V] (shorter masks disallow the rest)."""
    allowed = torch.as_tensor(allowed, dtype=torch.bool).flatten()  # [A]
    V = logits.shape[-1]
    if allowed.shape[0] >= V:  # the usual case: a vocabulary-sized mask, used as it is
        mask = allowed[:V]
    else:
        mask = torch.zeros(V, dtype=torch.bool, device=allowed.device)  # [V]
        mask[:allowed.shape[0]] = allowed
    if not bool(mask.any()):
        raise HybridK2Error("the output constraint allows no token")
    return logits.masked_fill(~mask.to(logits.device, non_blocking=True), float("-inf"))


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator,
           allowed=None) -> int:
    """Draws one token id from logits [V] (any float dtype)."""
    logits = logits.float()  # [V]
    if allowed is not None:
        logits = apply_allowed(logits, allowed)
    if params.temperature == 0:
        return int(torch.argmax(logits))
    return draw(filtered_probs(logits, params), generator)


def filtered_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """fp32 logits [V] -> probabilities [V] after temperature, top-k, top-p and min-p (zeros for the
    dropped tokens; not renormalised: draw() scales by the total). No full sort unless top_p needs it."""
    logits = logits / params.temperature  # [V]
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, sorted=False).values.min()  # partial selection, no sort
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # [V]
    if params.top_p < 1.0:
        # The nucleus is a prefix of the descending order: take the top k (k x4 until they hold top_p of
        # the mass) instead of sorting all V; a peaked distribution stops at the first k.
        k = min(256, probs.shape[0])
        while True:
            sorted_p, order = torch.topk(probs, k)  # [k] descending
            if k == probs.shape[0] or float(sorted_p.sum()) >= params.top_p:
                break
            k = min(4 * k, probs.shape[0])
        keep = torch.cumsum(sorted_p, 0) - sorted_p < params.top_p  # [k]
        keep[0] = True  # the first token always stays (also for a top_p below fp32's smallest value)
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    if params.min_p > 0:
        probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
    return probs


def draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One index with probability probs[i] / sum(probs), probs [V] >= 0 (inverse CDF).

    [NOTE] torch.multinomial took ~17 ms on a 163,840-token vocabulary (about a K2 decode step);
    one cumulative sum and a binary search take well under a millisecond (bench/bench_sampling.py).
    The sum is fp64 so that a rare token's slice of [0, total) is not lost to rounding after 10^5 terms.
    With right=True the first index whose cumulative mass exceeds u is returned: a zero-probability
    token never is (its cumulative mass equals its predecessor's)."""
    i = int(draw_index(probs, generator))
    if i >= probs.shape[0]:  # u rounded up to the total: the last token with mass
        i = int(torch.nonzero(probs).max())
    return i


def draw_index(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The inverse-CDF draw on probs' device: [1] int64 there (== V when u rounded up to the total)."""
    cdf = torch.cumsum(probs, 0, dtype=torch.float64)  # [V]
    u = torch.rand(1, generator=generator, dtype=torch.float64).to(cdf.device)  # the CPU generator's draw
    return torch.searchsorted(cdf, u * cdf[-1], right=True)  # [1] in [0, V]


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
