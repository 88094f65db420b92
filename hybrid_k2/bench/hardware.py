"""What the numbers were measured on: CPU, ISA path of the kernels, cores, RAM, GPU, package and commit.

Everything degrades to "unknown" rather than failing: a benchmark on an odd machine is still useful.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

import torch

import hybrid_k2
from hybrid_k2.version import commit as build_commit


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU brand string (cpuid via the kernels when built, else /proc/cpuinfo)."""
    try:
        from hybrid_k2 import _C

        brand = str(_C.cpu_features().get("brand", "")).strip()
        if brand:
            return " ".join(brand.split())
    except Exception:  # kernels not built: fall through to /proc
        pass
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return " ".join(line.split(":", 1)[1].split())
    return platform.processor() or platform.machine() or "unknown"


def isa_path() -> str:
    """The kernel path the routed experts run on here, or why there is none."""
    try:
        from hybrid_k2.kernels import resolve_isa

        return resolve_isa()
    except Exception:
        return "none (kernels not built)"


def cores() -> tuple[int, int]:
    """(physical cores, logical CPUs) usable by this process."""
    try:
        from hybrid_k2.runtime.machine import detect

        m = detect()
        return m.physical_cores, m.logical_cpus
    except Exception:  # runtime not importable: count logical CPUs only
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return n, n


def ram_bytes() -> int | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def gpu(device: torch.device) -> dict | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(device)
    return {"name": p.name, "memory_bytes": int(p.total_memory), "count": torch.cuda.device_count()}


def describe(device: torch.device) -> dict:
    physical, logical = cores()
    return {
        "cpu_model": cpu_model(),
        "isa": isa_path(),
        "physical_cores": physical,
        "logical_cpus": logical,
        "ram_bytes": ram_bytes(),
        "os": f"{platform.system()} {platform.release()}",
        "gpu": gpu(device),
    }


def provenance() -> dict:
    commit, dirty = build_commit()
    return {
        "version": hybrid_k2.__version__,
        "commit": commit,
        "commit_dirty": dirty,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
