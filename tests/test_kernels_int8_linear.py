"""The int8 linear kernels (csrc/int8_linear/) against the scalar C++ reference and the torch Int8Linear."""
from __future__ import annotations

import pytest
import torch

from hybrid_k2.errors import HybridK2Error
from hybrid_k2.kernels.int8_linear import int8_linear, int8_linear_reference
from hybrid_k2.kernels.isa import available_isas
from hybrid_k2.runtime.int8 import Int8Linear, quantize_int8

REL_FP32 = 2e-6  # fp32 sums in another order, relative to the largest |y|
GEMV, GEMM = 10**9, 1  # gemm_min_tokens forcing each kernel
SIMD = [isa for isa in available_isas() if isa != "scalar"][:1]


def exact(x, q, s):  # float64 oracle of y = (x @ q^T) * scale
    return (x.double() @ q.double().T * s.double()).float()


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("T,O,I", [(1, 1, 1), (1, 37, 70), (2, 4, 32), (3, 100, 96), (7, 130, 64), (13, 67, 1030),
                                   (20, 131, 600), (64, 70, 513)])
@pytest.mark.parametrize("isa", SIMD + ["scalar"])
def test_both_kernels_match_the_oracle(T, O, I, isa):
    g = torch.Generator().manual_seed(T * 1000 + O)
    q, s = quantize_int8(torch.randn(O, I, generator=g) * torch.logspace(-2, 1, O)[:, None])
    x = torch.randn(T, I, generator=g)
    ref = exact(x, q, s)
    for m in (GEMV, GEMM):
        y = int8_linear(x=x, q=q, scale=s, gemm_min_tokens=m, isa=isa, threads=2)
        assert y.shape == (T, O) and y.dtype == torch.float32
        assert rel(y, ref) <= REL_FP32 * max(1, I / 64), (m, rel(y, ref))


@pytest.mark.skipif(not SIMD, reason="no SIMD path on this CPU")
def test_fast_path_equals_scalar_reference_and_torch_int8linear():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(300, 448, generator=g)
    m = Int8Linear.from_weight(w, device=torch.device("cpu"), dtype=torch.float32)
    for T in (1, 5, 40):
        x = torch.randn(T, 448, generator=g)
        fast = int8_linear(x=x, q=m.weight_int8, scale=m.weight_scale)
        assert rel(fast, int8_linear_reference(x=x, q=m.weight_int8, scale=m.weight_scale)) <= 1e-5
        assert rel(fast, m(x)) <= 1e-5


def test_bf16_input_and_out_buffer():
    g = torch.Generator().manual_seed(4)
    q, s = quantize_int8(torch.randn(50, 96, generator=g))
    x = torch.randn(3, 96, generator=g).bfloat16()
    out = torch.full((3, 50), float("nan"))
    y = int8_linear(x=x, q=q, scale=s, out=out)
    assert y.data_ptr() == out.data_ptr() and rel(y, exact(x.float(), q, s)) <= REL_FP32 * 2


def test_threads_give_the_same_answer():
    g = torch.Generator().manual_seed(5)
    q, s = quantize_int8(torch.randn(1000, 256, generator=g))
    x = torch.randn(9, 256, generator=g)
    for m in (GEMV, GEMM):
        one = int8_linear(x=x, q=q, scale=s, threads=1, gemm_min_tokens=m)
        assert torch.equal(one, int8_linear(x=x, q=q, scale=s, threads=3, gemm_min_tokens=m))


@pytest.mark.parametrize("kw,match", [
    (dict(q=torch.zeros(4, 8)), "q must be a contiguous non-empty int8"),
    (dict(scale=torch.ones(3)), "scale must be contiguous float32"),
    (dict(x=torch.ones(2, 7)), "x must be"),
    (dict(x=torch.ones(2, 8, dtype=torch.float16)), "x must be float32 or bfloat16"),
    (dict(out=torch.empty(2, 3)), "out must be"),
    (dict(threads=0), "threads must be"),
    (dict(gemm_min_tokens=0), "gemm_min_tokens"),
    (dict(isa="avx9000"), "unknown ISA path"),
])
def test_bad_input_is_one_clear_error(kw, match):
    args = dict(x=torch.ones(2, 8), q=torch.ones(4, 8, dtype=torch.int8), scale=torch.ones(4)) | kw
    with pytest.raises(HybridK2Error, match=match):
        int8_linear(**args)
