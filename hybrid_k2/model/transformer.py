"""The whole network, named exactly like the checkpoint: `model.embed_tokens`, `model.layers.L.*`,
`model.norm`, `lm_head`. Reads top to bottom in the order a token flows.

The embedding table stays in host RAM (a lookup needs no GPU); everything else that is not a routed
expert lives on `device`. Which module runs where is decided by the loader, not here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybrid_k2.config import ModelArgs
from hybrid_k2.model.linear import Linear
from hybrid_k2.model.latent_cache import LatentCache
from hybrid_k2.model.mla import MLA
from hybrid_k2.model.mlp import MLP
from hybrid_k2.model.moe import MoE
from hybrid_k2.model.norm import RMSNorm
from hybrid_k2.model.rope import Rope


class Embedding(nn.Module):
    """`model.embed_tokens`: a [V, D] table; rows are looked up where the table lives (host RAM)."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab, dim, device="meta"), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, D]
        return F.embedding(ids, self.weight)


class Block(nn.Module):
    def __init__(self, args: ModelArgs, layer: int, store=None):
        super().__init__()
        self.layer = layer
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.self_attn = MLA(args)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp = MoE(args, store) if args.is_moe_layer(layer) else MLP(args.hidden_size, args.intermediate_size)

    def attention(self, x, cache: LatentCache, start: int | torch.Tensor, cos, sin) -> torch.Tensor:
        """The residual attention half: x [T, D] -> [T, D] (start: an int, or a [1] tensor for graphs)."""
        return x + self.self_attn(self.input_layernorm(x), cache, start, cos, sin)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The residual MLP half run as one module (dense layers; MoE layers in the reference)."""
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward(self, x, cache: LatentCache, start: int, cos, sin) -> torch.Tensor:  # [T, D] -> [T, D]
        return self.feed_forward(self.attention(x, cache, start, cos, sin))


class Decoder(nn.Module):
    def __init__(self, args: ModelArgs, stores: dict[int, object]):
        super().__init__()
        self.embed_tokens = Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(Block(args, i, stores.get(i)) for i in range(args.num_hidden_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)


class KimiK2(nn.Module):
    """DeepseekV3ForCausalLM's structure. forward: token ids [T] at positions start.. -> logits [T, V] fp32."""

    def __init__(self, args: ModelArgs, stores: dict[int, object], device: torch.device, dtype: torch.dtype):
        super().__init__()
        self.args, self.device, self.dtype = args, torch.device(device), dtype
        self.model = Decoder(args, stores)
        self.lm_head = Linear(args.hidden_size, args.vocab_size)
        self.rope = Rope(args, self.device)

    def new_caches(self, capacity: int, kv_dtype: str = "auto", zero_fill: bool = False) -> list[LatentCache]:
        """One latent cache per layer for `capacity` positions (allocated at the first write)."""
        a = self.args
        return [LatentCache(a.kv_dim, a.kv_lora_rank, capacity=capacity, dtype=self.dtype, device=self.device,
                            kv_dtype=kv_dtype, zero_fill=zero_fill) for _ in range(a.num_hidden_layers)]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] (host) -> [T, D] on the device: looked up where the table lives, then moved."""
        x = self.model.embed_tokens(ids.to(self.model.embed_tokens.weight.device))
        return x.to(device=self.device, dtype=self.dtype)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states [T, D] -> fp32 logits [T, V]."""
        return self.lm_head(h).float()

    def hidden(self, ids: torch.Tensor, caches: list[LatentCache], start: int) -> torch.Tensor:
        """ids [T] (host) -> final-normed hidden states [T, D] on the device."""
        x = self.embed(ids)  # [T, D]
        cos, sin = self.rope.tables(start, ids.shape[0])  # [T, P/2] each
        for layer, cache in zip(self.model.layers, caches):
            x = layer(x, cache, start, cos, sin)
        return self.model.norm(x)

    def forward(self, ids: torch.Tensor, caches: list[LatentCache], start: int) -> torch.Tensor:
        return self.logits(self.hidden(ids, caches, start))  # [T, V]
