"""What this machine offers: physical cores, NUMA nodes, free host RAM and GPU memory.

Read from /sys and /proc (Linux); anything missing falls back to os.cpu_count() and "unknown". Thread
defaults count physical cores, not hyperthreads: the INT4 kernels are bandwidth-bound and two threads
on one core only fight for the same load ports.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SYS_CPU = Path("/sys/devices/system/cpu")
SYS_NODE = Path("/sys/devices/system/node")


def parse_cpulist(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11]."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


@dataclass(frozen=True)
class NumaNode:
    node: int
    cpus: tuple[int, ...]
    physical_cores: int


@dataclass(frozen=True)
class Machine:
    logical_cpus: int
    physical_cores: int
    numa_nodes: tuple[NumaNode, ...]

    @property
    def default_threads(self) -> int:
        return max(1, self.physical_cores)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _usable_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _core_key(cpu: int, sys_cpu: Path) -> tuple[str, str] | None:
    topo = sys_cpu / f"cpu{cpu}" / "topology"
    core, pkg = _read(topo / "core_id"), _read(topo / "physical_package_id")
    return None if core is None or pkg is None else (pkg.strip(), core.strip())


def detect(sys_cpu: Path = SYS_CPU, sys_node: Path = SYS_NODE) -> Machine:
    cpus = _usable_cpus()
    keys = {c: _core_key(c, sys_cpu) for c in cpus}
    known = {k for k in keys.values() if k is not None}
    physical = len(known) + sum(1 for k in keys.values() if k is None)
    nodes = []
    for d in sorted(sys_node.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        listed = _read(d / "cpulist")
        if listed is None:
            continue
        node_cpus = tuple(c for c in parse_cpulist(listed) if c in keys)
        if node_cpus:
            cores = {keys[c] or ("cpu", str(c)) for c in node_cpus}
            nodes.append(NumaNode(int(d.name[4:]), node_cpus, len(cores)))
    if not nodes:
        nodes = [NumaNode(0, tuple(cpus), physical)]
    return Machine(len(cpus), physical, tuple(nodes))


def available_ram() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (what can be allocated without swapping)."""
    text = _read(Path("/proc/meminfo"))
    for line in (text or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def available_gpu_memory(device) -> int | None:
    import torch

    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return free


DEVICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str, *, gpu_wanted: bool = False) -> str:
    """POLICY: the device a command runs its GPU-side modules on. "auto" is cuda when torch sees a GPU
    (or when the caller plans for one: `plan --gpu-mem`), else cpu. Other names are checked here, before
    any work, so `--device tpu` fails in one line instead of deep in torch."""
    import torch

    if name == "auto":
        return "cuda" if gpu_wanted or torch.cuda.is_available() else "cpu"
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        from hybrid_k2.errors import HybridK2Error

        raise HybridK2Error(f"--device must be {DEVICES}, got {name!r}")
    return name
