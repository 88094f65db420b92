"""YaRN rotary embedding on the rope part of each head, interleaved pairs (2i, 2i+1) as K2 stores them.

Frequency pair i uses inv_freq[i]; pairs below the YaRN ramp keep the original frequency, pairs above it
are divided by the scaling factor, and the ramp is computed from the ORIGINAL context length (4096 for
K2). With mscale == mscale_all_dim the cos/sin multiplier is 1 (K2); the attention-side mscale^2 lives in
ModelArgs.softmax_scale.
"""
from __future__ import annotations

import math

import torch

from hybrid_k2.config import ModelArgs, yarn_mscale


def _correction_dim(n_rot: float, dim: int, base: float, max_pos: int) -> float:
    return dim * math.log(max_pos / (n_rot * 2 * math.pi)) / (2 * math.log(base))


def inv_frequencies(args: ModelArgs) -> tuple[torch.Tensor, float]:
    """([rope_dim / 2] fp32 inverse frequencies, cos/sin multiplier)."""
    dim, base = args.qk_rope_head_dim, args.rope_theta
    f_ext = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))  # [dim/2]
    if args.rope_type != "yarn":
        return f_ext, 1.0
    factor = args.rope_factor
    f_int = f_ext / factor
    orig = args.original_max_position_embeddings
    low = max(math.floor(_correction_dim(args.beta_fast, dim, base, orig)), 0)
    high = min(math.ceil(_correction_dim(args.beta_slow, dim, base, orig)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # [dim/2]
    extrapolation = 1 - ramp  # 1: keep the original frequency, 0: interpolate (divide by factor)
    inv_freq = f_int * (1 - extrapolation) + f_ext * extrapolation
    if args.mscale and args.mscale_all_dim:
        attention_factor = yarn_mscale(factor, args.mscale) / yarn_mscale(factor, args.mscale_all_dim)
    else:
        attention_factor = yarn_mscale(factor, 1.0)
    return inv_freq, attention_factor


class Rope:
    """cos/sin for a run of positions, computed in fp32 the same way every time."""

    def __init__(self, args: ModelArgs, device: torch.device):
        inv_freq, self.attention_factor = inv_frequencies(args)
        self.inv_freq = inv_freq.to(device)

    def tables(self, start: int | torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [length, rope/2] at positions start..; start may be a device tensor [1] (graphs)."""
        pos = torch.arange(length, device=self.inv_freq.device, dtype=torch.float32)  # [T]
        pos = pos + (start.to(torch.float32) if isinstance(start, torch.Tensor) else start)
        angles = pos[:, None] * self.inv_freq[None, :]  # [T, rope/2]
        return angles.cos() * self.attention_factor, angles.sin() * self.attention_factor


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, ..., rope] with interleaved pairs; cos/sin [T, rope/2]."""
    shape = x.shape
    pairs = x.float().reshape(shape[0], -1, shape[-1] // 2, 2)  # [T, *, rope/2, 2]
    a, b = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]
    out = torch.stack((a * c - b * s, b * c + a * s), dim=-1)
    return out.reshape(shape).to(x.dtype)
