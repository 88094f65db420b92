"""What every doctor check shares: the context (tiny model, device, CPU reference), running a model over
the standard sequence, and the tolerances.

Tolerances: EXACT_TOL for paths that are exact algebra (the hybrid runtime, hot experts, streamed
prefill, graphs: max |Δ logits|, as the test suite); KL / top-1 bounds for the approximate ones (as
tests/test_runtime_approx.py: deferral, int8, bf16).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import hybrid_k2
from hybrid_k2.runtime import RuntimeConfig

EXACT_TOL = 2e-3
DEFER_1 = dict(kl=0.05, top1=0.5)
INT8 = dict(kl=0.02, top1=0.8)
FAST = dict(kl=0.02, top1=0.8)
PROMPT, DECODE = 40, 4  # tokens of the standard sequence: a prompt, then decode steps
CTX = 8192  # the sessions' context: holds the >4,096-token prompt of the graph check
DELAY_S = 0.03  # controlled delay on each side of the overlap check


class CheckFailed(AssertionError):
    pass


def expect(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


def logit_agreement(ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    """(mean KL(ref || got) per row in nats, top-1 agreement) of logits [N, V]."""
    lp, lq = F.log_softmax(ref.float(), -1), F.log_softmax(got.float(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    return kl, (ref.argmax(-1) == got.argmax(-1)).float().mean().item()


@dataclass
class Ctx:
    path: Path  # the tiny model
    device: torch.device
    work: Path  # scratch folder (counts files)
    reference: object = None  # the CPU reference Model
    _ref_cache: dict = field(default_factory=dict)

    def load(self, precision: str = "exact", **runtime) -> "hybrid_k2.api.Model":
        config = RuntimeConfig(ctx=CTX, **runtime)
        return hybrid_k2.load(self.path, device=self.device, precision=precision, runtime=config)

    def tokens(self, n: int, seed: int = 0) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, self.reference.args.vocab_size, (n,), generator=g).tolist()

    def ref(self, ids: list[int], n_decode: int = DECODE) -> torch.Tensor:
        key = (tuple(ids), n_decode)
        if key not in self._ref_cache:
            self._ref_cache[key] = run(self.reference, ids, n_decode)
        return self._ref_cache[key]


def run(model, ids: list[int], n_decode: int = DECODE, session=None) -> torch.Tensor:
    """Prefill ids[:-n_decode], then decode the rest one by one -> logits [len(ids), V] fp32 on the CPU."""
    s = session or model.new_session(min(CTX, model.args.max_position_embeddings))
    rows = [s.prefill(ids[:len(ids) - n_decode])] + [s.decode(t)[None] for t in ids[len(ids) - n_decode:]]
    return torch.cat(rows).float().cpu()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def closed(model):
    """Context manager: the model's CPU worker is shut down when the check ends (pass or fail)."""
    class _Close:
        def __enter__(self):
            return model

        def __exit__(self, *exc):
            if getattr(model, "runtime", None) is not None:
                model.runtime.close()
    return _Close()


def exact_against_reference(ctx: Ctx, model, what: str, ids: list[int] | None = None) -> str:
    ids = ids or ctx.tokens(PROMPT + DECODE)
    got, ref = run(model, ids), ctx.ref(ids)
    expect(bool(torch.isfinite(got).all()), f"{what}: non-finite logits")
    d = max_diff(got, ref)
    expect(d <= EXACT_TOL, f"{what}: max |Δ logits| {d:.2e} > {EXACT_TOL:g} against the CPU reference")
    return f"max |Δ logits| {d:.1e} over {len(ids)} positions (prefill + {DECODE} decodes)"


def bounded_against_reference(ctx: Ctx, model, what: str, bound: dict) -> str:
    ids = ctx.tokens(PROMPT + DECODE)
    kl, top1 = logit_agreement(ctx.ref(ids), run(model, ids))
    expect(math.isfinite(kl) and kl <= bound["kl"] and top1 >= bound["top1"],
           f"{what}: KL {kl:.2e} (bound {bound['kl']}), top-1 {top1:.2f} (bound {bound['top1']})")
    return f"KL {kl:.1e} nats, top-1 {top1:.2f} against the CPU reference"
