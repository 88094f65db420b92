"""device=cpu, precision="fast": the device side's linears as int8 on the CPU kernels (runtime/int8.py).

The torch Int8Linear (the device-int8 path of a GPU) is the reference of CpuInt8Linear; the accuracy of
the whole CPU path is measured against the core model as tests/test_runtime_approx.py does for int8.
"""
from __future__ import annotations

import pytest
import torch
from test_runtime_approx import SPEC, compare, logits

import hybrid_k2
from hybrid_k2.runtime import Placement, RuntimeConfig
from hybrid_k2.runtime.int8 import CpuInt8Linear, Int8Linear

CPU_FAST = dict(kl=0.02, top1=0.8)  # bounds; measured values in docs/placement.md ("Accuracy")


def swapped(model) -> dict[str, type]:
    return {n: type(m) for n, m in model.net.named_modules() if isinstance(m, Int8Linear)}


def test_fast_on_cpu_puts_every_linear_on_the_kernels(tiny_model):
    model = hybrid_k2.load(tiny_model, precision="fast")
    kinds = swapped(model)
    names = {n for n, _ in model.net.named_modules() if n.endswith(("_proj", "lm_head", "_mqa"))}
    assert set(kinds) == names and len(kinds) > 10  # kv_b_proj too: MLA folds its int8 rows as they are
    assert set(kinds.values()) == {CpuInt8Linear}
    m = next(m for m in model.net.modules() if isinstance(m, CpuInt8Linear))
    assert m.threads == model.runtime.threads and m.gemm_min_tokens >= 1  # the experts' pool, measured crossover
    gates = [mod for n, mod in model.net.named_modules() if n.endswith("mlp.gate")]
    assert gates and all(g.weight.dtype == torch.float32 for g in gates)  # no per-step conversion
    model.runtime.close()


@pytest.mark.parametrize("kw", [dict(precision="exact"),
                                dict(precision="fast", runtime=RuntimeConfig(placement=Placement().with_overrides(
                                    ["*=device"])))])
def test_exact_and_an_explicit_device_rule_keep_the_torch_path(tiny_model, kw):
    model = hybrid_k2.load(tiny_model, **kw)
    assert swapped(model) == {}
    model.runtime.close()


def test_cpu_kernels_equal_the_torch_int8_path(make_model):
    path = make_model(**SPEC)
    model = hybrid_k2.load(path, runtime=RuntimeConfig(placement=Placement().with_overrides(["*=device-int8"])))
    assert set(swapped(model).values()) == {CpuInt8Linear}
    ids = torch.randint(0, model.args.vocab_size, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    fast = logits(model, ids)  # prefill through the GEMM, then 8 decode steps through the GEMV
    for m in model.net.modules():
        if isinstance(m, CpuInt8Linear):
            m.__class__ = Int8Linear  # the torch forward on the same int8 weights: the reference
    ref = logits(model, ids)
    assert (fast - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
    model.runtime.close()


def test_cpu_fast_accuracy_against_the_core_model(make_model):
    path = make_model(**SPEC)
    core = hybrid_k2.load(path, runtime=RuntimeConfig.reference())
    ids = torch.randint(0, core.args.vocab_size, (96,), generator=torch.Generator().manual_seed(0)).tolist()
    ref = logits(core, ids)
    fast = hybrid_k2.load(path, precision="fast")
    assert set(swapped(fast).values()) == {CpuInt8Linear}
    kl, top1 = compare(ref, logits(fast, ids))
    print(f"cpu fast (int8 linears, bf16 activations, fast experts): KL {kl:.2e}, top-1 {top1:.3f}")
    assert 0 < kl <= CPU_FAST["kl"] and top1 >= CPU_FAST["top1"]
    fast.runtime.close()
