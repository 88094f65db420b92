"""The Python API everything else builds on: load a checkpoint, open sessions, get logits.

    model = hybrid_k2.load("/models/Kimi-K2-Thinking", device="cuda", precision="fast")
    s = model.new_session()
    logits = s.prefill(prompt_ids)      # [T, V] fp32, one row per prompt position
    logits = s.decode(next_id)          # [V] fp32

precision="exact": fp32 activations and weights, INT4 dequantised exactly, no TF32: for checking
numerics against other implementations. precision="fast": bf16 on the device, the kernels' fast mode
for the routed experts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from hybrid_k2.checkpoint.loader import Loader
from hybrid_k2.checkpoint.reader import CheckpointReader
from hybrid_k2.config import ModelArgs
from hybrid_k2.errors import HybridK2Error
from hybrid_k2.model.experts import Int4ExpertStore
from hybrid_k2.model.transformer import KimiK2
from hybrid_k2.token_ids import token_list, token_scalar
from hybrid_k2.runtime.config import PREFILL_CHUNK  # bounds the [T, H, S] attention scores

PRECISIONS = {"exact": torch.float32, "fast": torch.bfloat16}


class Model:
    def __init__(self, args: ModelArgs, net: KimiK2, path: Path, precision: str, findings: list[str]):
        self.args, self.net, self.path, self.precision = args, net, path, precision
        self.findings = findings
        self.device = net.device
        # What runs a step: the hybrid runtime (scheduler + executor, hybrid_k2.runtime) or the plain
        # module forward; both take (ids, caches, start) and offer hidden / lm_head.
        self.runtime = None
        self.runner = net
        self.ctx = args.max_position_embeddings  # a session's context: the plan's (set by load)
        self.kv_dtype = "auto"  # latent cache storage (hybrid_k2/model/latent_cache.py)

    def new_session(self, max_len: int | None = None) -> "Session":
        """A session whose cache holds max_len positions (default: the planned context)."""
        max_len = max_len or self.ctx
        if not 1 <= max_len <= self.args.max_position_embeddings:
            raise HybridK2Error(f"a session's context must be 1..{self.args.max_position_embeddings:,} tokens, "
                                f"got {max_len:,}")
        return Session(self, max_len)

    @property
    def tokenizer_dir(self) -> Path:
        return self.path


class Session:
    """One sequence: its latent KV cache and the token ids it holds."""

    def __init__(self, model: Model, max_len: int):
        self.model, self.max_len = model, max_len
        # One latent cache per layer for max_len positions, allocated at the first write; a CUDA graph
        # reads every row, so on CUDA unused rows start at zero (never NaN from recycled memory).
        self.caches = model.net.new_caches(max_len, model.kv_dtype, zero_fill=model.device.type == "cuda")
        self.tokens: list[int] = []

    def __len__(self) -> int:
        return len(self.tokens)

    def truncate(self, n: int) -> None:
        """Forgets positions >= n (their cache rows are overwritten by the next prefill)."""
        if not 0 <= n <= len(self.tokens):
            raise HybridK2Error(f"cannot truncate a session of {len(self.tokens)} tokens to {n}")
        del self.tokens[n:]
        for c in self.caches:
            c.length = n

    def _check(self, ids: Sequence[int]) -> None:
        V = self.model.args.vocab_size
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < V:
                raise HybridK2Error(f"token id {t!r} is outside the vocabulary (0..{V - 1})")
        if len(self.tokens) + len(ids) > self.max_len:
            raise HybridK2Error(f"context overflow: {len(self.tokens)} cached + {len(ids)} new tokens exceed "
                                f"the context of {self.max_len}")

    @torch.inference_mode()
    def prefill(self, token_ids: Sequence[int] | torch.Tensor, *, last_only: bool = False,
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Appends token_ids (ints, or a 1-D integer tensor / numpy array); returns fp32 logits [T, V] for
        every position ([1, V] with last_only).

        progress(done, total) is called after each chunk of PREFILL_CHUNK tokens (and once at 0)."""
        ids = token_list(token_ids)
        if not ids:
            raise HybridK2Error("prefill needs at least one token")
        self._check(ids)
        out = []
        if progress is not None:
            progress(0, len(ids))
        for i in range(0, len(ids), PREFILL_CHUNK):
            chunk = ids[i:i + PREFILL_CHUNK]
            start = len(self.tokens)
            t = torch.tensor(chunk, dtype=torch.long)
            if last_only:
                h = self.model.runner.hidden(t, self.caches, start)[-1:]
                logits = self.model.runner.lm_head(h).float()
            else:
                logits = self.model.runner(t, self.caches, start)
            self.tokens.extend(chunk)
            out.append(logits)
            if progress is not None:
                progress(i + len(chunk), len(ids))
        return out[-1] if last_only else torch.cat(out)

    @torch.inference_mode()
    def decode(self, token_id: int) -> torch.Tensor:
        """Appends one token (an int, or a one-element integer tensor / array); returns fp32 logits [V] for
        the next position."""
        token_id = token_scalar(token_id)
        self._check([token_id])
        start = len(self.tokens)
        logits = self.model.runner(torch.tensor([token_id], dtype=torch.long), self.caches, start)
        self.tokens.append(token_id)
        return logits[0]


def load(path: str | Path, *, device: str | torch.device = "cpu", precision: str = "exact",
         progress: bool | None = None,
         expert_store: Callable[[int, int, int, int], object] | None = None,
         runtime: "RuntimeConfig | None" = None, gpu_mem: int | str | None = None,
         ram: int | str | None = None) -> Model:
    """Reads config.json and the weights (tokenizer files are optional) and builds a Model.

    expert_store(layer, num_experts, hidden, intermediate) makes the container one layer's routed
    experts are loaded into (default: the runtime's choice: the C++ kernels' PackedExperts when built,
    else the checkpoint layout run by the pure-torch reference).
    runtime: placement, threads, overlap, deferral... (hybrid_k2.runtime.RuntimeConfig; default: the
    hybrid executor with the K2 placement). gpu_mem / ram: memory budget (e.g. "24GiB"; default:
    what is free); the memory plan is checked before any weight is read.
    """
    if precision not in PRECISIONS:
        raise HybridK2Error(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    path = Path(path)
    reader = CheckpointReader(path)  # checks the folder exists and every shard is whole
    args = ModelArgs.from_hf_config(path)
    try:
        device = torch.device(device)
    except RuntimeError:
        raise HybridK2Error(f"unknown device {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HybridK2Error("device cuda requested but no CUDA GPU is available")
    dtype = PRECISIONS[precision]
    if precision == "exact" and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    from hybrid_k2.runtime import RuntimeConfig
    from hybrid_k2.runtime.runtime import prepare

    config = runtime or RuntimeConfig()
    if gpu_mem is not None or ram is not None:
        config = config.replace(gpu_mem=gpu_mem if gpu_mem is not None else config.gpu_mem,
                                ram=ram if ram is not None else config.ram)
    prepared = prepare(args, config, device=device, precision=precision)  # refuses a plan that does not fit
    make_store = expert_store or prepared.store_factory()
    stores = {layer: make_store(layer, args.n_routed_experts, args.hidden_size, args.moe_intermediate_size)
              for layer in range(args.num_hidden_layers) if args.is_moe_layer(layer)}
    if expert_store is not None:  # the caller's stores decide which backend can run them
        prepared.backend = ("reference" if all(isinstance(s, Int4ExpertStore) for s in stores.values())
                            else "kernel")
    net = KimiK2(args, stores, device, dtype)
    try:
        findings = Loader(reader, args, device=device, dtype=dtype, progress=progress,
                          placement=prepared.placement).load(net, stores)
    finally:
        reader.close()
    net.eval()
    model = Model(args, net, path, precision, findings)
    model.ctx, model.kv_dtype = prepared.plan.ctx, prepared.config.kv_cache_dtype
    model.runtime = prepared.attach(net, stores)
    model.runner = model.runtime
    return model
