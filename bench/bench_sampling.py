"""What drawing one token costs on a K2-size vocabulary (163,840 logits), per filter setting.

    python bench/bench_sampling.py [--vocab 163840] [--reps 200]

Times chat.sampling.sample (filters + inverse-CDF draw) beside the old draw it replaced, the same
filtered probabilities fed to torch.multinomial, in the same run (the machine is shared: compare the
ratio). Median milliseconds per token.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from hybrid_k2.chat.sampling import SamplingParams, filtered_probs, make_generator, sample

SETTINGS = {
    "default (T=1)": SamplingParams(),
    "T=0.7": SamplingParams(temperature=0.7),
    "top_k=50": SamplingParams(top_k=50),
    "top_p=0.95": SamplingParams(top_p=0.95),
    "min_p=0.05": SamplingParams(min_p=0.05),
}


def median_ms(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=163_840)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)  # what the runtime sets on device = cpu
    logits = torch.randn(args.vocab, generator=torch.Generator().manual_seed(0)) * 3  # [V]
    gen = make_generator(0)
    print(f"vocab {args.vocab}, torch threads {torch.get_num_threads()}, median of {args.reps}")
    print(f"{'setting':<16}{'sample ms':>11}{'old (multinomial) ms':>22}{'ratio':>8}")
    for name, params in SETTINGS.items():
        new = median_ms(lambda: sample(logits, params, gen), args.reps)
        old = median_ms(lambda: int(torch.multinomial(filtered_probs(logits.float(), params), 1, generator=gen)),
                        args.reps)
        print(f"{name:<16}{new:>11.2f}{old:>22.2f}{old / new:>8.1f}x")


if __name__ == "__main__":
    main()
