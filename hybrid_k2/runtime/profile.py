"""`hybrid-k2 profile-experts`: how often each routed expert is picked, per layer, over a set of prompts.

The counts file is what `--gpu-experts N` reads to keep each layer's N most used experts on the device:
  {"model": ..., "tokens": n, "prompts": p, "num_experts": E, "top_k": K,
   "counts": {"<layer>": [count of expert 0, 1, ... E-1], ...}}
Counts come from forward hooks on the routers (`model.layers.L.mlp.gate`), so they see exactly the
experts the runtime computes, whichever executor runs the model.

Prompts file: plain text, one prompt per line; or JSON lines, each {"prompt": str} / {"text": str}
(tokenized as text), {"messages": [...]} (rendered with K2's chat template), or {"ids": [int, ...]}.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from hybrid_k2.errors import HybridK2Error


def read_prompts(path: str | Path, tokenizer_dir: Path) -> list[list[int]]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise HybridK2Error(f"prompts file not found: {path}") from None
    except UnicodeDecodeError:
        raise HybridK2Error(f"{path}: not UTF-8 text") from None
    tokenizer = None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        item: object = line
        if line.lstrip().startswith("{"):
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise HybridK2Error(f"{path}:{n}: malformed JSON line ({e.msg})") from None
        if isinstance(item, dict) and "ids" in item:
            ids = item["ids"]
            if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
                raise HybridK2Error(f"{path}:{n}: 'ids' must be a non-empty list of token ids")
            out.append(ids)
            continue
        if tokenizer is None:
            from hybrid_k2.chat.tokenizer import Tokenizer

            tokenizer = Tokenizer.from_dir(tokenizer_dir)
        if isinstance(item, dict) and "messages" in item:
            from hybrid_k2 import apply_chat_template

            out.append(tokenizer.encode(apply_chat_template(item["messages"]), allow_special=True))
        elif isinstance(item, dict) and isinstance(item.get("prompt", item.get("text")), str):
            out.append(tokenizer.encode(item.get("prompt", item.get("text"))))
        elif isinstance(item, str):
            out.append(tokenizer.encode(item))
        else:
            raise HybridK2Error(f"{path}:{n}: expected text, or a JSON object with prompt, text, messages or ids")
    if not out:
        raise HybridK2Error(f"{path}: no prompts")
    return [ids for ids in out if ids]


class RoutingCounter:
    """Forward hooks on every router: counts[layer][e] += times expert e was picked."""

    def __init__(self, net):
        self.counts: dict[int, torch.Tensor] = {}
        self.tokens = 0
        self._handles = []
        for block in net.model.layers:
            gate = getattr(block.mlp, "gate", None)
            if gate is None or not hasattr(gate, "e_score_correction_bias"):
                continue
            E = gate.e_score_correction_bias.shape[0]
            self.counts[block.layer] = torch.zeros(E, dtype=torch.long)
            self._handles.append(gate.register_forward_hook(self._hook(block.layer)))

    def _hook(self, layer: int):
        def hook(module, inputs, output):
            ids = output[0]  # [T, K]
            self.counts[layer] += torch.bincount(ids.flatten().cpu(), minlength=self.counts[layer].numel())
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def to_json(self, **meta) -> dict:
        return {**meta, "counts": {str(L): c.tolist() for L, c in sorted(self.counts.items())}}


def profile_experts(model_dir: str | Path, prompts: str | Path, out: str | Path, *, device: str = "cpu",
                    precision: str = "exact", max_tokens: int | None = None, runtime=None) -> dict:
    import hybrid_k2

    batches = read_prompts(prompts, Path(model_dir))  # bad prompts fail before the weights are read
    model = hybrid_k2.load(model_dir, device=device, precision=precision, progress=False, runtime=runtime)
    counter = RoutingCounter(model.net)
    tokens = 0
    try:
        for ids in batches:
            ids = ids[:max_tokens] if max_tokens else ids
            session = model.new_session()
            session.prefill(ids, last_only=True)
            tokens += len(ids)
    finally:
        counter.remove()
        if model.runtime is not None:
            model.runtime.close()
    a = model.args
    data = counter.to_json(model=str(Path(model_dir)), tokens=tokens, prompts=len(batches),
                           num_experts=a.n_routed_experts, top_k=a.num_experts_per_tok)
    Path(out).write_text(json.dumps(data) + "\n", encoding="utf-8")
    return data
