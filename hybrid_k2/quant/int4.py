"""compressed-tensors `pack-quantized` INT4: the readable reference for decoding expert weights.

Layout of one projection with `out` rows and `in` columns (see docs/kimi-k2-format.md section 2.3):
  weight_packed [out, in/8] int32: column k lives in word k // 8, bits 4*(k % 8) .. +3, low nibble first;
                                    the stored nibble is u = q + 8 (offset binary), q in [-8, 7]
  weight_scale  [out, in/32] bf16:  one scale per group of 32 columns; W[o, k] = q * scale[o, k // 32]
  weight_shape  [2] int32|int64:    (out, in)

These functions are the oracle the C++ kernels are tested against; they are not a fast path.
"""
from __future__ import annotations

import torch

GROUP = 32
PACK = 8  # nibbles per int32 word


def unpack_int4(packed: torch.Tensor, in_features: int, dtype: torch.dtype = torch.int8) -> torch.Tensor:
    """[out, in/8] int32 -> q [out, in] with values in [-8, 7], as `dtype` (int8, or a float dtype: exact).

    Written straight into the result (temporaries: half a byte per value), so that decoding one K2
    expert matrix in bf16 costs its 2 bytes per weight and little more."""
    assert packed.dtype == torch.int32, packed.dtype
    out_features = packed.shape[0]
    # little-endian: byte b of a word holds columns 2b (low nibble) and 2b+1 (high nibble)
    as_bytes = packed.contiguous().view(torch.uint8).view(out_features, -1)  # [out, in/2]
    q = torch.empty(out_features, as_bytes.shape[1], 2, dtype=dtype, device=packed.device)  # [out, in/2, 2]
    q[..., 0] = as_bytes & 0xF
    q[..., 1] = as_bytes >> 4
    return q.view(out_features, -1)[:, :in_features].sub_(8)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[out, in] int8 in [-8, 7] -> [out, in/8] int32 (the inverse of unpack_int4)."""
    assert q.dtype == torch.int8 and q.shape[1] % PACK == 0, (q.dtype, q.shape)
    u = (q.to(torch.int16) + 8).to(torch.uint8)  # [out, in]
    pairs = u.view(q.shape[0], -1, 2)
    as_bytes = (pairs[..., 0] | (pairs[..., 1] << 4)).contiguous()  # [out, in/2]
    return as_bytes.view(torch.int32)


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, shape: tuple[int, int],
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[out, in/8] int32 + [out, in/32] bf16 -> W [out, in] in `dtype`, on packed's device.

    The ONE INT4 decoder (the reference experts, hot and streamed experts on the device, the loader's
    checks and the kernels' tests all call it). W = q * scale, formed directly in `dtype`: for fp32 the
    product is exact (a 4-bit integer times a bf16); for bf16 it is that exact product rounded once,
    bit-equal to forming it in fp32 and casting, without the fp32 temporaries (an fp32 K2 expert is
    176 MB, a bf16 one 88 MB). compressed-tensors forms the product in bf16 too; `precision="exact"`
    asks for fp32, the unrounded value.
    """
    out_features, in_features = shape
    q = unpack_int4(packed, in_features, dtype)  # [out, in], exact in any float dtype
    s = scale.to(dtype)  # [out, in/32]
    if in_features % GROUP == 0:  # in place: no second [out, in] tensor
        q.view(out_features, -1, GROUP).mul_(s[:, :, None])
        return q
    return q * s.repeat_interleave(GROUP, dim=1)[:, :in_features]


def quantize_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric min-max group quantisation (the scheme K2's QAT targets), for tests and benches.

    Returns (q [out, in] int8, scale [out, in/32] bf16). make-tiny uses compressed-tensors' own quantiser.
    """
    out_features, in_features = w.shape
    groups = w.float().view(out_features, in_features // GROUP, GROUP)
    scale = (groups.abs().amax(dim=-1) / 7.5).clamp_min(1e-8).to(torch.bfloat16)  # [out, in/32]
    q = torch.round(groups / scale.float().unsqueeze(-1)).clamp(-8, 7).to(torch.int8)
    return q.view(out_features, in_features), scale
