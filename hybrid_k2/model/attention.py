"""MLA attention over the latent cache in blocks of key positions, with an online softmax (flash-style).

[NOTE] Why blocks. The reference (MLA._reference in mla.py) expands the whole cache through kv_b_proj
and keeps [T, H, S] fp32 scores: at depth 256K one 512-token chunk would need ~120 GB. Here the cache
is read `block` positions at a time and each query keeps a running max m, sum l and weighted sum acc:
    m' = max(m, max_j s_j);  l' = l e^(m - m') + sum_j e^(s_j - m');  acc' = acc e^(m - m') + sum_j e^(s_j - m') v_j
so a chunk's transient memory is bounded by T x H x block, whatever the depth.

Two exact-algebra forms (docs/kimi-k2-format.md 3.3, 3.4), multiply-adds per chunk of T queries over S
positions:
  absorbed  queries folded into the latent space, q_lat = q_nope W_UK [T, H, R]; one shared key row
            [c_kv, k_pe] (R + P) and value row c_kv (R) per position (MQA), output through W_UV:
            T H S (2R + P) + T H R (N + V)
  expanded  each block of c_kv expanded through kv_b_proj into per-head k_nope [B, H, N], v [B, H, V]:
            S R H (N + V) + T H S (N + P + V)
The expansion costs the same for 1 query as for 512, so decode and short chunks over a deep cache absorb
and long chunks expand (`choose_form`; at depth the crossover is T = R (N + V) / (2R + P - N - P - V), 171
tokens for K2, near what bench/bench_attention.py measures on this CPU).
Causal masking only touches blocks that reach past the chunk's first position.
"""
from __future__ import annotations

import threading

import torch

def block_for(device_type: str, T: int) -> int:
    """Key positions per block for a chunk of T queries. CPU: 1024 rows (2.4 MB in fp32, cache-resident while
    every query reads them); CUDA: as large as keeps the [T, H, B] scores near 2^20 x H values (65,536 rows
    for decode: few kernel launches at depth), at least 4096."""
    if device_type == "cpu":
        return 1024
    return max(4096, min(65536, 2**20 // max(T, 1)))


class _Scratch(threading.local):
    """Per-thread reusable buffers for the per-block conversions (one allocation, not one per block)."""

    def __init__(self):
        self.buffers: dict = {}

    def get(self, name: str, rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (name, cols, dtype, device)
        buf = self.buffers.get(key)
        if buf is None or buf.shape[0] < rows:
            with torch.inference_mode(False):  # a normal tensor: writable in and out of inference mode
                buf = self.buffers[key] = torch.empty(rows, cols, dtype=dtype, device=device)
        return buf


SCRATCH = _Scratch()


def choose_form(T: int, S: int, *, rank: int, nope: int, rope: int, v_dim: int, absorbed_speed: float = 1.0) -> str:
    """'absorbed' or 'expanded' for T queries over S positions: whichever takes less time, counted in
    multiply-adds (per head) with the absorbed form's ones run `absorbed_speed` times as fast as the
    expanded form's (1: the same torch matmuls; a faster absorbed implementation says how much faster).

    absorbed also folds W_UK into the queries and W_UV into the output (T R (N + V)), which only matters
    when S is short: a short first prompt expands its few rows instead."""
    absorbed = T * S * (2 * rank + rope) + T * rank * (nope + v_dim)
    expanded = S * rank * (nope + v_dim) + T * S * (nope + rope + v_dim)
    return "absorbed" if absorbed <= expanded * absorbed_speed else "expanded"


class OnlineSoftmax:
    """softmax(scores) @ values accumulated over key blocks; rows (queries) are independent."""

    def __init__(self):
        self.m = self.l = self.acc = None

    def add(self, scores: torch.Tensor, weighted) -> None:
        """scores [..., B] fp32 (consumed); weighted(p [..., B]) -> p @ values [..., Dv] fp32."""
        m_blk = scores.amax(-1)
        m = m_blk if self.m is None else torch.maximum(self.m, m_blk)
        p = scores.sub_(m[..., None]).exp_()
        if self.m is None:
            self.l, self.acc = p.sum(-1), weighted(p)
        else:
            corr = torch.exp(self.m - m)
            self.l = self.l * corr + p.sum(-1)
            self.acc = self.acc * corr[..., None] + weighted(p)
        self.m = m

    def result(self) -> torch.Tensor:
        return self.acc / self.l[..., None]


def causal_mask(start: int, T: int, s0: int, s1: int, device) -> torch.Tensor | None:
    """[T, s1 - s0] True where key position s0 + j lies after query position start + t; None if none does."""
    if s1 - 1 <= start:
        return None
    q_pos = torch.arange(start, start + T, device=device)[:, None]
    return torch.arange(s0, s1, device=device)[None, :] > q_pos


def absorbed(q_lat: torch.Tensor, q_pe: torch.Tensor, cache, start: int | torch.Tensor, scale: float,
             block: int) -> torch.Tensor:
    """q_lat [T, H, R], q_pe [T, H, P] at positions start.. over cache rows [0, start + T) -> o_lat [T, H, R] fp32.

    start may be a device tensor [1] (T = 1, CUDA-graph decode: no Python int may depend on it): then
    every row of the cache's capacity is read and rows after start are masked."""
    T, H, R = q_lat.shape
    static = isinstance(start, torch.Tensor)
    S = cache.capacity if static else start + T
    q = torch.cat((q_lat.float(), q_pe.float()), dim=-1).mul_(scale).reshape(T * H, -1)  # [T H, R + P]
    rows = SCRATCH.get("rows", min(block, S), cache.kv_dim, torch.float32, q.device)
    sm = OnlineSoftmax()
    for s0 in range(0, S, block):
        s1 = min(S, s0 + block)
        kv = cache.read(s0, s1, out=rows)  # [B, R + P] fp32
        scores = q @ kv.T  # [T H, B]
        if static:
            mask = (torch.arange(s0, s1, device=q.device) > start)[None]  # [1, B]
        else:
            mask = causal_mask(start, T, s0, s1, q.device)
        if mask is not None:
            scores.view(T, H, -1).masked_fill_(mask[:, None, :], float("-inf"))
        sm.add(scores, lambda p: p @ kv[:, :R])
    return sm.result().view(T, H, R)


def absorbed_heads(q_nope: torch.Tensor, q_pe: torch.Tensor, w: torch.Tensor, cache, start: int | torch.Tensor,
                   scale: float, block: int, *, w_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The absorbed form whole: q_nope [T, H, N], q_pe [T, H, P] and kv_b_proj's weight w as [H, N + V, R]
    (W_UK = w[:, :N], W_UV = w[:, N:]) -> o [T, H, V] in w's dtype.
    q_lat = q_nope W_UK (fold in), attention in the latent space (`absorbed`), o = o_lat W_UV^T (fold out).

    w int8 with w_scale [H, N + V] (an int8 kv_b_proj, row (h, i) = w[h, i] * w_scale[h, i]): the scales
    of W_UK's rows go onto q_nope's columns and those of W_UV's rows onto the output, and the matrix is
    only cast (exactly) to the dtype it multiplies in: fp32 on the CPU, q_nope's on a GPU. -> o [T, H, V]
    in that dtype."""
    N = q_nope.shape[-1]
    if w_scale is None:
        q_lat = torch.einsum("thn,hnr->thr", q_nope.to(w.dtype), w[:, :N])  # [T, H, R]
        o_lat = absorbed(q_lat, q_pe, cache, start, scale, block)  # [T, H, R] fp32
        return torch.einsum("thr,hvr->thv", o_lat.to(w.dtype), w[:, N:])  # [T, H, V]
    dt = torch.float32 if w.device.type == "cpu" else q_nope.dtype
    q_lat = torch.einsum("thn,hnr->thr", (q_nope.float() * w_scale[:, :N]).to(dt), w[:, :N].to(dt))  # [T, H, R]
    o_lat = absorbed(q_lat, q_pe, cache, start, scale, block)  # [T, H, R] fp32
    return torch.einsum("thr,hvr->thv", o_lat.to(dt), w[:, N:].to(dt)) * w_scale[:, N:].to(dt)  # [T, H, V]


def expanded(q_nope: torch.Tensor, q_pe: torch.Tensor, cache, kv_b_proj, start: int, scale: float,
             block: int, v_dim: int) -> torch.Tensor:
    """q_nope [T, H, N], q_pe [T, H, P] over cache rows [0, start + T), each block's c_kv [B, R] expanded
    by kv_b_proj into [B, H (N + V)] -> o [T, H, V] fp32."""
    T, H, N = q_nope.shape
    S, R, dtype = start + T, cache.rank, q_nope.dtype
    qn = q_nope.float().mul_(scale).transpose(0, 1)  # [H, T, N]
    qp = q_pe.float().mul_(scale).transpose(0, 1)  # [H, T, P]
    rows = SCRATCH.get("rows", min(block, S), cache.kv_dim, dtype, q_nope.device)
    sm = OnlineSoftmax()
    for s0 in range(0, S, block):
        s1 = min(S, s0 + block)
        kv = cache.read(s0, s1, dtype, out=rows)  # [B, R + P]
        kvb = kv_b_proj(kv[:, :R]).view(s1 - s0, H, N + v_dim)  # [B, H, N + V]
        k_nope = kvb[..., :N].float().permute(1, 2, 0)  # [H, N, B]
        v = kvb[..., N:].float().transpose(0, 1)  # [H, B, V]
        scores = torch.baddbmm(qp @ kv[:, R:].float().T, qn, k_nope)  # [H, T, B]
        mask = causal_mask(start, T, s0, s1, qn.device)
        if mask is not None:
            scores.masked_fill_(mask[None], float("-inf"))
        sm.add(scores, lambda p: p @ v)
    return sm.result().transpose(0, 1)  # [T, H, V]
