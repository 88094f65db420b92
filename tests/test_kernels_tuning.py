"""The ISA registry (csrc/cpu_features.cpp) and the choices measured on first use (kernels/tuning.py)."""
from __future__ import annotations

import json

import pytest

from hybrid_k2 import _C
from hybrid_k2.errors import HybridK2Error
from hybrid_k2.kernels import isa as isa_mod
from hybrid_k2.kernels import tuning


def test_python_lists_derive_from_the_cpp_registry():
    reg = _C.isa_registry()
    assert isa_mod.isa_names() == [name for name, _, _ in reg] == _C.isa_names()
    auto = {name for name, automatic, _ in reg if automatic}
    assert set(isa_mod.auto_candidates()) <= auto and set(isa_mod.auto_candidates()) <= set(isa_mod.available_isas())
    assert "avx512bf16" not in auto and {"avx512", "avx512vnni"} <= auto  # VNNI must win a measurement
    with pytest.raises(HybridK2Error, match="choose one of amx, avx512"):
        isa_mod.resolve_isa("avx9000")


def test_forced_path_wins_over_the_measured_choice(monkeypatch):
    monkeypatch.setenv(isa_mod.ISA_ENV, "scalar")
    assert isa_mod.resolve_isa(tokens=1) == isa_mod.resolve_isa(tokens=512) == "scalar"
    monkeypatch.delenv(isa_mod.ISA_ENV)
    assert isa_mod.resolve_isa(tokens=1) in isa_mod.auto_candidates()


@pytest.mark.parametrize("times,expected", [
    ({1: dict(gemv=1, gemm=3), 2: dict(gemv=2, gemm=3), 4: dict(gemv=4, gemm=3), 8: dict(gemv=8, gemm=5)}, 4),
    ({1: dict(gemv=1, gemm=3), 2: dict(gemv=2, gemm=1), 4: dict(gemv=4, gemm=5), 8: dict(gemv=8, gemm=5)}, 8),
    ({1: dict(gemv=1, gemm=3), 8: dict(gemv=8, gemm=9)}, 16),  # GEMV throughout
    ({1: dict(gemv=2, gemm=1), 8: dict(gemv=8, gemm=5)}, 1),
])
def test_crossover_is_where_gemm_wins_from_then_on(times, expected):
    assert tuning.crossover_from(times) == expected


def test_measured_once_then_cached_per_cpu_model(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    tuning.tuning.cache_clear()
    try:
        first = tuning.tuning(1)
        assert first["cached"] is False and first["isa"]["decode"] in isa_mod.auto_candidates()
        assert first["int8_gemm_min_tokens"] >= 1 and set(first["int8_ms"]) == {str(t) for t in tuning.CROSSOVER_TOKENS}
        stored = json.loads((tmp_path / "hybrid-k2" / "tuning.json").read_text())
        (key,) = stored
        assert first["cpu_model"] in key and "threads=1" in key
        tuning.tuning.cache_clear()
        again = tuning.tuning(1)
        assert again["cached"] is True and again["int8_gemm_min_tokens"] == first["int8_gemm_min_tokens"]
    finally:
        tuning.tuning.cache_clear()
