"""Multi-head Latent Attention over a latent KV cache.

Glossary: T new tokens, S cached + new positions, H heads, R kv_lora_rank (512), P rope dims (64),
N nope dims (128), V value dims (128), C = qk head dim = N + P.

Per token and layer the cache keeps only c_kv = RMSNorm(kv_a[:R]) and the roped shared key k_pe: R + P
values (576 for K2; hybrid_k2/model/latent_cache.py). Two exact-algebra forms read it
(docs/kimi-k2-format.md 3.3 and 3.4):
  naive     expand c_kv through kv_b_proj into per-head keys and values;
  absorbed  fold W_UK into the query and W_UV into the output, attend in latent space.
`forward` runs them block by block over the cache with an online softmax (hybrid_k2/model/attention.py):
decode and short chunks absorbed, long chunks expanded, memory bounded by the block, not the depth.
`impl = "reference"` runs the plain whole-cache versions kept below (_naive for T > 1, _absorbed for
T == 1): the readable oracle the blockwise path is tested against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybrid_k2.config import ModelArgs
from hybrid_k2.model import attention
from hybrid_k2.model.latent_cache import LatentCache
from hybrid_k2.model.linear import Linear
from hybrid_k2.model.norm import RMSNorm
from hybrid_k2.model.rope import apply_rope

IMPLS = ("auto", "absorbed", "expanded", "reference")


class MLA(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        D, H = args.hidden_size, args.num_attention_heads
        self.n_heads, self.kv_lora_rank = H, args.kv_lora_rank
        self.nope, self.rope, self.v_dim = args.qk_nope_head_dim, args.qk_rope_head_dim, args.v_head_dim
        self.scale = args.softmax_scale
        if args.q_lora_rank:
            self.q_a_proj = Linear(D, args.q_lora_rank)
            self.q_a_layernorm = RMSNorm(args.q_lora_rank, args.rms_norm_eps)
            self.q_b_proj = Linear(args.q_lora_rank, H * args.qk_head_dim)
        else:
            self.q_proj = Linear(D, H * args.qk_head_dim)
        self.kv_a_proj_with_mqa = Linear(D, args.kv_lora_rank + args.qk_rope_head_dim)
        self.kv_a_layernorm = RMSNorm(args.kv_lora_rank, args.rms_norm_eps)
        self.kv_b_proj = Linear(args.kv_lora_rank, H * (args.qk_nope_head_dim + args.v_head_dim))
        self.o_proj = Linear(H * args.v_head_dim, D)
        self.impl = "auto"  # IMPLS: the blockwise forms (chosen per chunk, or forced) or the reference
        self.block: int | None = None  # key positions per block (None: attention.block_for)
        self._weight_f32: tuple[torch.Tensor, torch.Tensor] | None = None  # (source, fp32 copy) on the CPU
        # attention.absorbed_heads or a drop-in with its signature, set from outside (the runtime puts the
        # CPU kernels' version here on device = cpu: runtime/cpu_attention.py)
        self.absorbed_attention = attention.absorbed_heads

    def forward(self, x: torch.Tensor, cache: LatentCache, start: int | torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [T, D] at positions start..start+T-1 -> [T, D]; writes T rows to the cache.

        start may be a device tensor [1] (T = 1): the static form a CUDA graph captures (the row is written
        at that position, every cache row is read and the ones after it masked; cache.length is the
        caller's to set)."""
        T, H, R = x.shape[0], self.n_heads, self.kv_lora_rank
        if hasattr(self, "q_a_proj"):
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        else:
            q = self.q_proj(x)
        q = q.view(T, H, self.nope + self.rope)
        q_nope, q_pe = q[..., :self.nope], apply_rope(q[..., self.nope:], cos, sin)  # [T, H, N], [T, H, P]

        kv = self.kv_a_proj_with_mqa(x)  # [T, R + P]
        c_kv = self.kv_a_layernorm(kv[:, :R])  # [T, R]
        k_pe = apply_rope(kv[:, None, R:], cos, sin)[:, 0]  # [T, P]
        rows = torch.cat((c_kv, k_pe), dim=-1)  # [T, R + P]
        if isinstance(start, torch.Tensor):
            cache.write_at(start, rows)
            form = "absorbed"
        else:
            cache.write(start, rows)  # positions start..start+T-1
            form = self.impl
        if form == "auto":
            speed = getattr(self.absorbed_attention, "speed", 1.0)  # a faster drop-in says how much faster
            form = attention.choose_form(T, start + T, rank=R, nope=self.nope, rope=self.rope, v_dim=self.v_dim,
                                         absorbed_speed=speed)
        if form == "reference":
            latent = cache.read(0, start + T, x.dtype)  # [S, R + P]
            c_all, pe_all = latent[:, :R], latent[:, R:]  # [S, R], [S, P]
            o = (self._absorbed if T == 1 else self._naive)(q_nope, q_pe, c_all, pe_all, start)
        else:
            block = self.block or attention.block_for(x.device.type, T)
            w, w_scale = self.attention_weight()  # [H (N + V), R], [H (N + V)] or None
            if form == "absorbed":
                w_heads = w.view(H, self.nope + self.v_dim, R)  # [H, N + V, R]: W_UK rows, then W_UV rows
                s_heads = None if w_scale is None else w_scale.view(H, self.nope + self.v_dim)  # [H, N + V]
                o = self.absorbed_attention(q_nope, q_pe, w_heads, cache, start, self.scale, block,
                                            w_scale=s_heads)  # [T, H, V]
            else:
                if w_scale is not None and x.device.type == "cpu":
                    # the int8 linear itself, in fp32 (the CPU kernels read the int8 rows as they are)
                    expand = lambda c: self.kv_b_proj(c.float())  # noqa: E731
                else:
                    if w_scale is not None:  # dequantised once per call, not once per block of keys
                        w = self.kv_b_proj.weight  # [H (N + V), R] in the compute dtype
                    expand = lambda c: F.linear(c.to(w.dtype), w)  # noqa: E731
                o = attention.expanded(q_nope, q_pe, cache, expand, start, self.scale, block, self.v_dim)  # [T, H, V]
        return self.o_proj(o.to(x.dtype).reshape(T, H * self.v_dim))

    def attention_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """kv_b_proj's weight [H (N + V), R] as the blockwise attention multiplies it, and its per-row scale:
        - an int8 kv_b_proj (swapped in from outside, runtime/int8.py: `weight_int8`, `weight_scale`): the
          int8 matrix and its scale [H (N + V)], folded as they are (no dequantised copy per step);
        - otherwise the weight in the compute dtype and None, except bf16 on the CPU, whose matmuls run at a
          few GFLOP/s without AVX-512-BF16: there an fp32 copy is kept (32 MB per K2 layer, counted by the
          planner), made once."""
        q8 = getattr(self.kv_b_proj, "weight_int8", None)
        if q8 is not None:
            return q8, self.kv_b_proj.weight_scale
        w = self.kv_b_proj.weight
        if w.device.type != "cpu" or w.dtype == torch.float32:
            return w, None
        if self._weight_f32 is None or self._weight_f32[0] is not w:
            self._weight_f32 = (w, w.float())
        return self._weight_f32[1], None

    def absorb_weights(self, w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_b_proj's weight split into W_UK [H, N, R] and W_UV [H, V, R] (views)."""
        w = (self.kv_b_proj.weight if w is None else w).view(self.n_heads, self.nope + self.v_dim, self.kv_lora_rank)
        return w[:, :self.nope], w[:, self.nope:]

    def _mask_softmax(self, scores: torch.Tensor, start: int) -> torch.Tensor:
        """scores [T, H, S] fp32; query t sits at position start + t and sees positions <= it."""
        T, S = scores.shape[0], scores.shape[-1]
        if T > 1:
            q_pos = torch.arange(start, start + T, device=scores.device)[:, None]
            future = torch.arange(S, device=scores.device)[None, :] > q_pos  # [T, S]
            scores = scores.masked_fill(future[:, None, :], float("-inf"))
        return torch.softmax(scores * self.scale, dim=-1)

    def _naive(self, q_nope, q_pe, c_all, pe_all, start):
        S, H = c_all.shape[0], self.n_heads
        kvb = self.kv_b_proj(c_all).view(S, H, self.nope + self.v_dim)  # [S, H, N + V]
        k_nope, v = kvb[..., :self.nope], kvb[..., self.nope:]
        scores = torch.einsum("thn,shn->ths", q_nope.float(), k_nope.float())
        scores = scores + torch.einsum("thp,sp->ths", q_pe.float(), pe_all.float())  # [T, H, S]
        p = self._mask_softmax(scores, start)
        return torch.einsum("ths,shv->thv", p.to(v.dtype), v)  # [T, H, V]

    def _absorbed(self, q_nope, q_pe, c_all, pe_all, start):
        w_uk, w_uv = self.absorb_weights()  # [H, N, R], [H, V, R]
        q_lat = torch.einsum("thn,hnr->thr", q_nope, w_uk)  # [T, H, R]
        scores = torch.einsum("thr,sr->ths", q_lat.float(), c_all.float())
        scores = scores + torch.einsum("thp,sp->ths", q_pe.float(), pe_all.float())  # [T, H, S]
        p = self._mask_softmax(scores, start)
        o_lat = torch.einsum("ths,sr->thr", p.to(c_all.dtype), c_all)  # [T, H, R]
        return torch.einsum("thr,hvr->thv", o_lat, w_uv)  # [T, H, V]
