"""What `hybrid-k2 doctor` says about the machine before any check: CPU, kernel ISA path and why,
cores and NUMA nodes, probed host bandwidth, torch build, and the GPU with its probed bandwidth.

The GPU probe runs here, before any model is loaded (it sizes itself to the free memory and hands it
back), so it never competes with a model's budget."""
from __future__ import annotations

import os

import torch

from hybrid_k2.bench import hardware, probe


def isa_choice() -> dict:
    """The kernel path the routed experts will run on, and why the faster ones were not chosen."""
    try:
        from hybrid_k2 import _C
        from hybrid_k2.kernels.isa import ISA_ENV, resolve_isa

        chosen = resolve_isa()
    except Exception as e:  # kernels not built, or a refused HYBRID_K2_ISA
        return {"chosen": None, "why": f"kernels unavailable: {str(e).splitlines()[0] if str(e) else type(e).__name__}"}
    forced = os.environ.get(ISA_ENV)
    skipped = {}
    for isa in [name for name, automatic, _ in _C.isa_registry() if automatic]:  # the C++ ISA registry
        if isa == chosen:
            break
        reason = _C.isa_unavailable_reason(isa) or ("not part of this build" if isa not in _C.built_isas() else "")
        skipped[isa] = reason or "available"
    why = (f"forced by {ISA_ENV}={forced}" if forced else
           "the fastest path this CPU and OS run (measured, kernels/tuning.py)" + ("" if not skipped else ": " + "; ".join(
               f"{isa}: {reason}" for isa, reason in skipped.items())))
    return {"chosen": chosen, "why": why}


def describe(*, probe_mb: int, threads: int | None = None) -> dict:
    from hybrid_k2.runtime.machine import detect

    m = detect()
    threads = threads or m.default_threads
    bw = probe.measure(threads, size_mb=probe_mb, repeats=3)
    cuda = torch.cuda.is_available()
    info = {
        "cpu_model": hardware.cpu_model(),
        "isa": isa_choice(),
        "physical_cores": m.physical_cores,
        "logical_cpus": m.logical_cpus,
        "numa_nodes": len(m.numa_nodes),
        "ram_bytes": hardware.ram_bytes(),
        "host_bandwidth": {"read_gbps": bw["read_gbps"], "triad_gbps": bw["triad_gbps"], "threads": threads,
                           "method": bw["method"], "size_mb": probe_mb},
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "gpu": None,
    }
    if cuda:
        dev = torch.device("cuda")
        p = torch.cuda.get_device_properties(dev)
        free, total = torch.cuda.mem_get_info(dev)
        info["gpu"] = {"name": p.name, "memory_bytes": int(total), "free_bytes": int(free),
                       "capability": f"{p.major}.{p.minor}", "count": torch.cuda.device_count(),
                       "bandwidth_gbps": probe.gpu_bandwidth(dev, size_mb=probe_mb)}
    return info
