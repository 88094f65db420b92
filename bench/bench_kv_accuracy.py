"""What an fp8 latent cache costs in accuracy: mean KL(bf16 cache || fp8 cache) per token and top-1 agreement
of the next-token distributions, over decode steps at a depth (teacher-forced: both sessions are fed the
same tokens), at fast precision (bf16 compute).

    python bench/bench_kv_accuracy.py                              # tiny random-weight models, depth 1024
    python bench/bench_kv_accuracy.py --model /work/k2s2 --depth 1024 --steps 32 --copy

--copy prefills the depth once (bf16 cache) and stores the same rows into the fp8 cache (quantised as
LatentCache.write does), then decodes both: on a large model this halves the (CPU: minutes-long) prefill;
the prefix's later layers then saw bf16 rather than fp8 rows, so it measures the storage of the prefix
plus fp8 during decode. Without --copy both sessions run everything with their own cache.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

import hybrid_k2
from hybrid_k2.runtime import RuntimeConfig


def tokens(n: int, vocab: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab, (n,), generator=g).tolist()


def measure(model, depth: int, steps: int, copy: bool, seed: int) -> dict:
    ids = tokens(depth + steps, model.args.vocab_size, seed)
    model.kv_dtype = "bf16"
    ref = model.new_session(depth + steps + 1)
    model.kv_dtype = "fp8"
    fp8 = model.new_session(depth + steps + 1)
    t0 = time.perf_counter()
    with torch.inference_mode():
        ref.prefill(ids[:depth], last_only=True)
        if copy:
            for src, dst in zip(ref.caches, fp8.caches):
                dst.write(0, src.read(0, depth, src.dtype))
            fp8.tokens.extend(ids[:depth])
        else:
            fp8.prefill(ids[:depth], last_only=True)
        kls, agree = [], 0
        for t in ids[depth:]:
            a, b = ref.decode(t).float(), fp8.decode(t).float()
            la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
            kls.append(torch.sum(la.exp() * (la - lb)).item())
            agree += int(a.argmax() == b.argmax())
    return {"kl_mean": sum(kls) / len(kls), "kl_max": max(kls), "top1": agree / steps,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint folder (default: three tiny models made on the fly)")
    ap.add_argument("--depth", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--copy", action="store_true", help="prefill once, store the same rows in fp8 (see above)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.model:
        models = [a.model]
    else:
        import tempfile

        from hybrid_k2.tiny import TinySpec, make_tiny

        tmp = tempfile.mkdtemp(prefix="hk2-kvacc-")
        models = [make_tiny(f"{tmp}/m{seed}", TinySpec(seed=seed, layers=3, experts=8)) for seed in (1, 2, 3)]
    print(f"# fp8 vs bf16 latent cache, fast precision, depth {a.depth}, {a.steps} decode steps, "
          f"{'copied prefix' if a.copy else 'independent runs'}")
    print(f"{'model':<40} {'KL mean':>10} {'KL max':>10} {'top-1':>7} {'s':>7}")
    for path in models:
        model = hybrid_k2.load(path, precision="fast", runtime=RuntimeConfig(ctx=a.depth + a.steps + 1))
        r = measure(model, a.depth, a.steps, a.copy, a.seed)
        print(f"{str(path)[-40:]:<40} {r['kl_mean']:>10.2e} {r['kl_max']:>10.2e} {r['top1']:>7.1%} "
              f"{r['seconds']:>7.1f}", flush=True)
        model.runtime.close()
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
