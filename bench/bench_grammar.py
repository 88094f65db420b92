"""What structured output costs per token: llguidance mask time vs the model's decode step.

    python bench/bench_grammar.py                 # tiny vocabulary + a K2-size (163,840) vocabulary
    python bench/bench_grammar.py --vocab tiny    # only the tiny model's

For each grammar the server builds (json_schema, json_object, a 5-tool K2 tool-call section) it walks
a realistic answer (`<think>` reasoning `</think>` + body, tokenised by the vocabulary) and times per
token: the mask computation (llguidance, on its thread), turning the bitmask into a bool mask over the
logits, and sampling under that mask (chat.sampling.sample, as generate() does). Then it runs the real
decode loop (chat.generate) on the tiny model with and without the tool-call grammar and reports the
difference per token, which is what a client sees (the mask overlaps the model's step).

The K2-size vocabulary is synthetic (the real tiktoken.model is not on this machine): the 256 bytes
plus the 163,328 most frequent pre-tokenizer pieces of the text and code installed here, with the 256
K2 special slots on top: a trie of the same size and a similar shape as K2's. Decode steps of the real
model are not measurable here; docs/performance.md puts the CPU-side ceiling of a K2 decode step at
19-39 ms (52-26 tok/s) on workstation platforms, which the mask cost is compared against.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

from hybrid_k2.chat.sampling import SamplingParams, make_generator, sample
from hybrid_k2.chat.tokenizer import Tokenizer, special_token_names
from hybrid_k2.serve.constraints import Constraints
from hybrid_k2.serve.grammar import (GrammarCompiler, ToolSpec, json_grammar, lltokenizer_for,
                                     tool_calls_grammar)

K2_BPE_RANKS = 163_584
# docs/performance.md: CPU-side decode ceilings, 51.7 tok/s (EPYC Turin) to 25.8 tok/s (Xeon SPR).
K2_STEP_MS = (19.3, 38.8)
REASONING = ("The user wants the current weather in Paris, in celsius, and the time there. I should call "
             "get_weather with the city and the unit, then get_time for Europe/Paris, and answer briefly. "
             "Nothing else is needed; no search is required for this question.")
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
           "properties": {"city": {"type": "string", "description": "City name"},
                          "unit": {"enum": ["celsius", "fahrenheit"]},
                          "days": {"type": "integer", "minimum": 1, "maximum": 14}}}
TOOLS = [ToolSpec("get_weather", WEATHER),
         ToolSpec("get_time", {"type": "object", "required": ["tz"], "properties": {"tz": {"type": "string"}}}),
         ToolSpec("search", {"type": "object", "required": ["query"],
                             "properties": {"query": {"type": "string"}, "top_k": {"type": "integer"}}}),
         ToolSpec("read_file", {"type": "object", "required": ["path"],
                                "properties": {"path": {"type": "string"}, "offset": {"type": "integer"}}}),
         ToolSpec("run", {"type": "object", "required": ["cmd"],
                          "properties": {"cmd": {"type": "array", "items": {"type": "string"}},
                                         "timeout": {"type": "number"}}})]
ARGS = {"city": "Paris", "unit": "celsius", "days": 3}


def tiny_tokenizer(tmp: Path) -> Tokenizer:
    from hybrid_k2.tiny import write_tokenizer

    tmp.mkdir(parents=True, exist_ok=True)
    write_tokenizer(tmp, 256)
    return Tokenizer.from_dir(tmp)


def k2_size_tokenizer() -> Tokenizer:
    """256 bytes + the most frequent pre-tokenizer pieces of local text/code, K2's 256 specials on top."""
    pieces: collections.Counter = collections.Counter()
    split = re.compile(r" ?[A-Za-z\u00c0-\uffff]+| ?\d{1,3}| ?[^\sA-Za-z\d]+|\s+")
    roots = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]}
    budget = 120_000_000  # bytes of text to read
    for root in sorted(roots):
        for dirpath, _, files in os.walk(root):
            for f in files:
                if budget <= 0 or not f.endswith((".py", ".md", ".rst", ".txt", ".json", ".html")):
                    continue
                try:
                    text = Path(dirpath, f).read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                budget -= len(text)
                pieces.update(p for p in split.findall(text) if 1 < len(p) <= 24)  # BPE-like lengths
    ranks = {bytes([b]): b for b in range(256)}
    for piece, _ in pieces.most_common():
        b = piece.encode("utf-8")
        if len(ranks) == K2_BPE_RANKS:
            break
        if b not in ranks:
            ranks[b] = len(ranks)
    if len(ranks) < K2_BPE_RANKS:
        print(f"note: only {len(ranks)} distinct pieces found locally", file=sys.stderr)
    offsets = {0: "[BOS]", 1: "[EOS]", 2: "<|im_end|>", 3: "<|im_user|>", 4: "<|im_assistant|>", 10: "<|im_system|>",
               11: "<|tool_calls_section_begin|>", 12: "<|tool_calls_section_end|>", 13: "<|tool_call_begin|>",
               14: "<|tool_call_argument_begin|>", 15: "<|tool_call_end|>", 17: "<|im_middle|>", 22: "<think>",
               23: "</think>", 254: "[UNK]", 255: "[PAD]"}
    n = len(ranks)
    specials = special_token_names(n, {str(n + o): {"content": name} for o, name in offsets.items()})
    return Tokenizer(ranks, specials)


def answer_ids(tok: Tokenizer, body: str) -> list[int]:
    """`<think>` reasoning `</think>` + body, ids as the model would write them."""
    ids = [tok.think_id] + tok.encode(REASONING) + [tok.think_end_id]
    if body == "tools":
        ids += [tok.tool_calls_section_begin_id, tok.tool_call_begin_id] + tok.encode("functions.get_weather:0") + \
            [tok.tool_call_argument_begin_id] + tok.encode(json.dumps(ARGS)) + \
            [tok.tool_call_end_id, tok.tool_calls_section_end_id]
    else:
        ids += tok.encode(json.dumps(ARGS))
    return ids + [tok.im_end_id]


def walk(compiler: GrammarCompiler, lark: str, ids: list[int], tok: Tokenizer) -> dict[str, list[float]]:
    """Per-token times (ms) along `ids`: mask compute (synchronous), bitmask -> bool, masked sampling."""
    g = compiler.constraint(lark)
    g.allowed()  # the first mask, computed at construction; its time is not a decode step
    out: dict[str, list[float]] = {"mask_reasoning": [], "mask_body": [], "to_bool": [], "sample": [],
                                   "sample_plain": []}
    logits = torch.randn(compiler.logits_size)  # [V]
    params, gen = SamplingParams(), make_generator(0)
    in_reasoning = True
    for t in ids[:-1]:
        assert g.accept(t), g.error()
        if g._pending is None:  # the grammar is complete: only <|im_end|> is left
            break
        g._pending.result()  # the mask was started by accept(); re-time it synchronously below
        in_reasoning = in_reasoning and t != tok.think_end_id
        t0 = time.perf_counter()
        g._compute()
        t1 = time.perf_counter()
        g._pending = None
        allowed = g.allowed_from_bitmask()
        t2 = time.perf_counter()
        sample(logits, params, gen, allowed)
        t3 = time.perf_counter()
        sample(logits, params, gen)
        t4 = time.perf_counter()
        out["mask_reasoning" if in_reasoning else "mask_body"].append((t1 - t0) * 1e3)
        out["to_bool"].append((t2 - t1) * 1e3)
        out["sample"].append((t3 - t2) * 1e3)
        out["sample_plain"].append((t4 - t3) * 1e3)
    g.close()
    return out


def fmt(xs: list[float]) -> str:
    if not xs:
        return "-"
    xs = sorted(xs)
    return f"{statistics.mean(xs):7.3f} / {xs[len(xs) // 2]:7.3f} / {xs[int(len(xs) * 0.99)]:7.3f}"


def bench_vocab(name: str, tok: Tokenizer) -> None:
    t0 = time.perf_counter()
    compiler = GrammarCompiler(lltokenizer_for(tok), logits_size=tok.vocab_size)
    build = time.perf_counter() - t0
    print(f"\n## {name}: {tok.vocab_size:,} ids (llguidance tokenizer built in {build:.2f} s)")
    grammars = {"json_schema": (json_grammar(WEATHER), "json"), "json_object": (json_grammar(None), "json"),
                "tool_calls (5 tools)": (tool_calls_grammar(TOOLS, first_index=0, max_calls=8), "tools")}
    cols = ["mask ms, reasoning", "mask ms, body", "bits->bool ms", "masked sample ms", "unmasked sample ms"]
    print(f"{'grammar':22} {'compile ms':>10} {'tokens':>6}  " + "  ".join(f"{c:>26}" for c in cols))
    print(f"{'':22} {'':>10} {'':>6}  " + "  ".join(f"{'mean / p50 / p99':>26}" for _ in cols))
    for gname, (lark, body) in grammars.items():
        t0 = time.perf_counter()
        compiler.constraint(lark).close()
        compile_ms = (time.perf_counter() - t0) * 1e3
        ids = answer_ids(tok, body)
        r = walk(compiler, lark, ids, tok)
        print(f"{gname:22} {compile_ms:10.1f} {len(ids):6d}  {fmt(r['mask_reasoning']):>26}  {fmt(r['mask_body']):>26}  "
              f"{fmt(r['to_bool']):>26}  {fmt(r['sample']):>26}  {fmt(r['sample_plain']):>26}")
    compiler.close()


def bench_decode(model_dir: Path, tokens: int) -> None:
    """The real loop on the tiny model: per-token time with and without the tool-call grammar."""
    import hybrid_k2
    from hybrid_k2.chat.generate import generate
    from hybrid_k2.chat.template import ChatTemplate

    model = hybrid_k2.load(model_dir)
    tok = Tokenizer.from_dir(model_dir)
    prompt = ChatTemplate.from_dir(model_dir).render_ids(tok, [{"role": "user", "content": "Weather in Paris?"}])
    compiler = GrammarCompiler(lltokenizer_for(tok), logits_size=model.args.vocab_size)
    # json_object never ends for a random model: every step of the run is a constrained step
    lark = json_grammar(None)

    def run(constrained: bool) -> tuple[float, int, float]:
        cons = Constraints(compiler.constraint(lark)) if constrained else None
        s = model.new_session()
        params = SamplingParams(max_tokens=tokens, seed=0, temperature=1.0)
        n, t0 = 0, None
        for ev in generate(s, tok, prompt, params, constraint=cons):
            if t0 is None:
                t0 = time.perf_counter()  # after prefill and the first token
            n += ev.token_id is not None
        dt = time.perf_counter() - t0
        waited = cons.grammar.wait_seconds if cons else 0.0
        if cons:
            cons.close()
        return dt * 1e3 / max(1, n - 1), n, waited * 1e3 / max(1, n)

    run(False)  # warm up
    plain_runs, cons_runs = [], []
    for _ in range(5):  # interleaved: the machine is shared, so drift hits both alike
        plain_runs.append(run(False))
        cons_runs.append(run(True))
    plain = statistics.median(r[0] for r in plain_runs)
    constrained = statistics.median(r[0] for r in cons_runs)
    wait = statistics.median(r[2] for r in cons_runs)
    print(f"\n## decode loop on the tiny model ({model.args.vocab_size} ids, torch threads {torch.get_num_threads()}, "
          f"median of 5 interleaved runs of <= {tokens} tokens)")
    print(f"plain:       {plain:7.3f} ms/token")
    print(f"json_object: {constrained:7.3f} ms/token; the loop waited {wait:.3f} ms/token for masks")
    print(f"grammar overhead: {constrained - plain:+.3f} ms/token ({(constrained / plain - 1) * 100:+.1f}%)")
    compiler.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", choices=["tiny", "k2", "both"], default="both")
    ap.add_argument("--model", type=Path, help="tiny model for the decode-loop part (default: make one)")
    ap.add_argument("--tokens", type=int, default=128, help="tokens per decode-loop run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if a.vocab in ("tiny", "both"):
            bench_vocab("tiny model vocabulary", tiny_tokenizer(Path(tmp) / "tok") if not a.model
                        else Tokenizer.from_dir(a.model))
        if a.vocab in ("k2", "both"):
            t0 = time.perf_counter()
            tok = k2_size_tokenizer()
            print(f"\n(synthetic K2-size vocabulary built in {time.perf_counter() - t0:.1f} s)")
            bench_vocab("K2-size vocabulary", tok)
            print(f"K2 decode step at the CPU ceiling (docs/performance.md): {K2_STEP_MS[0]}-{K2_STEP_MS[1]} ms")
        model_dir = a.model
        if model_dir is None:
            from hybrid_k2.tiny import TinySpec, make_tiny
            model_dir = make_tiny(Path(tmp) / "model", TinySpec(seed=0))
        bench_decode(model_dir, a.tokens)


if __name__ == "__main__":
    main()
