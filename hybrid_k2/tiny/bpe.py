"""A small byte-level BPE vocabulary for tiny models, written as a `tiktoken.model` file.

Ranks 0..255 are the single bytes; every later rank is the concatenation of two earlier tokens, so
tiktoken's rank-ordered merging reproduces it. Trained on a fixed built-in text so the file is the same
on every machine.
"""
from __future__ import annotations

import base64
import re
from collections import Counter

CORPUS = """
The quick brown fox jumps over the lazy dog. You are Kimi, an AI assistant created by Moonshot AI.
What is the weather in Beijing today? It is sunny. Let me think step by step about the question.
The user wants the weather; call get_weather. Hello! How can I help you today? What is 2+2? 2+2 = 4.
def main():\n    return 0\nimport json\nprint(json.dumps({"city": "Beijing", "unit": "celsius"}))
{"type": "object", "properties": {"name": {"type": "string"}, "count": {"type": "integer"}}}
functions.get_weather:0 functions.search:1 arguments result error true false null 0123456789
你好，世界。今天天气很好。我们一起学习。 Bonjour, ça va? Grüße aus München. Привет, мир!
The model reads the checkpoint, runs attention on the GPU and the experts on the CPU, and answers.
"""


def _pieces(text: str) -> list[bytes]:
    return [m.encode("utf-8") for m in re.findall(r" ?\w+| ?[^\w\s]+|\s+", text)]


def train_bpe(n_merges: int, corpus: str = CORPUS) -> list[bytes]:
    """Returns the token byte strings in rank order: 256 bytes, then up to n_merges merges."""
    vocab = [bytes([b]) for b in range(256)]
    known = set(vocab)
    words = Counter(tuple(bytes([b]) for b in p) for p in _pieces(corpus * 3))
    while len(vocab) < 256 + n_merges:
        pairs: Counter = Counter()
        for word, count in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += count
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merged = a + b
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
        new_words: Counter = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += count
        words = new_words
    return vocab


def write_tiktoken_model(path, tokens: list[bytes]) -> None:
    with open(path, "w", encoding="ascii") as f:
        for rank, tok in enumerate(tokens):
            f.write(f"{base64.b64encode(tok).decode('ascii')} {rank}\n")
