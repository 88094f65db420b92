"""Every ISA path on this machine: the AVX-512 (with and without VNNI), AVX-512-BF16 and AMX kernel
sources compiled a second time on SIMDe + a small AMX tile emulation (csrc/tests/build.py, module
_C_emu) and checked over odd shapes against the torch reference and the scalar C++ path."""
import pytest
import torch
from kernel_build import kernel_build

from hybrid_k2.kernels import moe_forward, moe_reference
from hybrid_k2.kernels.isa import available_isas
from hybrid_k2.kernels.synthetic import random_experts, random_routing

EXACT_RTOL = 1e-5            # as in test_kernels_moe.py
FAST_RTOL = 4e-2             # q8 or bf16 activations vs fp32 torch
FAST_VS_SCALAR_RTOL = 2e-3   # q8 paths vs the scalar q8 path (same integer math)
EMULATED = ["avx512", "avx512vnni", "avx512bf16", "amx"]
E, D, I = 10, 96, 352

@pytest.fixture(scope="module")
def emu():
    return kernel_build("the emulated kernels").load_emu()


@pytest.fixture(scope="module")
def experts(emu):
    return random_experts(num_experts=E, hidden=D, intermediate=I, seed=1, extreme=True, _module=emu)


def test_emulated_paths_are_offered(emu):
    assert set(EMULATED) <= set(available_isas(emu))


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("isa", EMULATED)
@pytest.mark.parametrize("T", [1, 2, 7, 64, 130, 600])
@pytest.mark.parametrize("K", [1, 4, 8])
def test_emulated_path(experts, isa, T, K):
    ids, w = random_routing(tokens=T, top_k=K, num_experts=E, seed=T + K)
    if T > 2:
        ids[1] = ids[1, :1]
        w[2] = 0.0
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(T)) * 2
    ref = moe_reference(x=x, expert_ids=ids, weights=w, experts=experts)
    exact = moe_forward(x=x, expert_ids=ids, weights=w, experts=experts, precision="exact", isa=isa, threads=2)
    assert rel_err(exact, ref) < EXACT_RTOL
    fast = moe_forward(x=x, expert_ids=ids, weights=w, experts=experts, precision="fast", isa=isa, threads=2)
    assert rel_err(fast, ref) < FAST_RTOL
    if isa != "avx512bf16":  # bf16 activations: no q8 twin to compare with
        scalar = moe_forward(x=x, expert_ids=ids, weights=w, experts=experts, precision="fast", isa="scalar")
        assert rel_err(fast, scalar) < FAST_VS_SCALAR_RTOL
    if T > 2:
        assert torch.all(exact[2] == 0) and torch.all(fast[2] == 0)


def test_emulated_module_loads_beside_the_real_one(emu):
    """Both builds bind the same C++ types; they must live side by side in one process."""
    from hybrid_k2 import _C
    from hybrid_k2.kernels import PackedExperts

    assert _C.ExpertStore is not emu.ExpertStore
    real = PackedExperts.empty(num_experts=1, hidden=32, intermediate=32)
    assert real._module is _C


@pytest.mark.parametrize("isa", ["avx512", "avx512vnni", "avx512bf16"])
def test_int8_peak_probe_of_each_avx512_path_runs(emu, isa):
    # bench_moe.py divides a row by the peak of its own ISA; emulated, only that the loop runs is checked
    assert emu.int8_peak_gops(1, isa) > 0


def test_int8_peak_probe_names_what_it_cannot_probe(emu):
    with pytest.raises(Exception, match="no int8 peak probe for ISA path 'amx'"):
        emu.int8_peak_gops(1, "amx")
