"""What `hybrid-k2 bench` was asked to measure: options, list and range syntax, the `--project` target.

Lists follow llama-bench: `-d 0,4096,16384`, or a range `first-last+step` / `first-last*factor`
(`-d 0-16384+4096`, `-b 64-512*2`). A bad value raises BenchOptionError, which the CLI prints as one
line with exit code 2 (a usage error, like a flag the parser rejects).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from hybrid_k2.errors import HybridK2Error

OUTPUTS = ("table", "json", "csv", "md")
PRECISIONS = ("fast", "exact")
MAX_LIST = 64  # a range that expands to more runs than this is a typo, not a benchmark


class BenchOptionError(HybridK2Error):
    """A bench option that cannot be used as given (the CLI exits with code 2)."""


def parse_int_list(text: str | int | None, flag: str, *, minimum: int = 0) -> tuple[int, ...]:
    """'0,4096,16384' or '0-16384+4096' or '64-512*2' -> sorted distinct ints (order of first use kept)."""
    if text is None:
        return ()
    values: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+)([+*])(\d+))?", part)
        if not m:
            raise BenchOptionError(f"{flag}: cannot read {part!r} (use a list like 0,4096 or a range like 0-16384+4096)")
        first = int(m.group(1))
        if m.group(2) is None:
            values.append(first)
            continue
        last, op, step = int(m.group(2)), m.group(3), int(m.group(4))
        if last < first or (op == "+" and step < 1) or (op == "*" and (step < 2 or first < 1)):
            raise BenchOptionError(f"{flag}: empty or endless range {part!r}")
        v = first
        while v <= last and len(values) <= MAX_LIST:
            values.append(v)
            v = v + step if op == "+" else v * step
    if len(values) > MAX_LIST:
        raise BenchOptionError(f"{flag}: more than {MAX_LIST} values")
    for v in values:
        if v < minimum:
            raise BenchOptionError(f"{flag}: {v} is below the minimum of {minimum}")
    return tuple(dict.fromkeys(values))


_BW_UNITS = {"b/s": 1e-9, "kb/s": 1e-6, "mb/s": 1e-3, "gb/s": 1.0, "tb/s": 1e3,
             "kib/s": 2**10 / 1e9, "mib/s": 2**20 / 1e9, "gib/s": 2**30 / 1e9, "tib/s": 2**40 / 1e9}


def parse_bandwidth(text: str, key: str) -> float:
    """'307GB/s', '1.0 TB/s', '300 GiB/s' or a bare number (GB/s) -> GB/s (10^9 bytes per second)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z/]*)\s*", text)
    unit = (m.group(2).lower() if m else "") or "gb/s"
    if not m or unit not in _BW_UNITS or float(m.group(1)) <= 0:
        raise BenchOptionError(f"--project {key}: cannot read {text!r} as a bandwidth (e.g. 307GB/s, 1TB/s)")
    return float(m.group(1)) * _BW_UNITS[unit]


@dataclass(frozen=True)
class Target:
    """A machine to project onto: host RAM bandwidth, optional GPU bandwidth, and the model to project."""
    bandwidth_gbps: float
    gpu_bw_gbps: float | None = None
    name: str = "target"
    model: str = "kimi-k2-thinking"  # or a checkpoint/config folder

    @classmethod
    def parse(cls, text: str) -> "Target":
        """'bandwidth=307GB/s,gpu_bw=1008GB/s[,name=W-3400][,model=DIR]'."""
        fields: dict[str, str] = {}
        for item in text.split(","):
            key, sep, value = item.partition("=")
            key = key.strip().lower().replace("-", "_")
            if not sep or not value.strip():
                raise BenchOptionError(f"--project: expected key=value, got {item.strip()!r}")
            if key not in ("bandwidth", "gpu_bw", "name", "model"):
                raise BenchOptionError(f"--project: unknown key {key!r} (keys: bandwidth, gpu_bw, name, model)")
            fields[key] = value.strip()
        if "bandwidth" not in fields:
            raise BenchOptionError("--project needs bandwidth=... (the target's host memory bandwidth)")
        return cls(bandwidth_gbps=parse_bandwidth(fields["bandwidth"], "bandwidth"),
                   gpu_bw_gbps=parse_bandwidth(fields["gpu_bw"], "gpu_bw") if "gpu_bw" in fields else None,
                   name=fields.get("name", "target"), model=fields.get("model", "kimi-k2-thinking"))


FILLS = ("prefill", "synthetic")  # how the cache reaches a depth (BenchOptions.fill)


@dataclass(frozen=True)
class BenchOptions:
    model: Path | None = None  # None: the built-in demo model
    n_prompt: int = 512  # pp: prompt tokens per measurement (0 skips pp)
    n_gen: int = 128  # tg: generated tokens per measurement (0 skips tg)
    repetitions: int = 5
    depths: tuple[int, ...] = (0,)  # tokens already in the cache before the measured part
    batches: tuple[int, ...] = (512,)  # prompt tokens per forward during pp
    threads: tuple[int, ...] = ()  # expert-kernel threads; () : the machine's physical cores
    torch_threads: int | None = None  # torch intra-op threads (device side on a CPU); None: the runtime's policy
    runtime: object = None  # RuntimeConfig from the shared runtime flags (None: the default runtime)
    precision: str = "fast"
    device: str = "cpu"
    output: str = "table"
    plot: Path | None = None
    project: Target | None = None
    seed: int = 0
    warmup: bool = True
    reprobe: bool = False  # re-measure the memory bandwidth even if cached
    progress: bool | None = None  # None: when stderr is a terminal
    fill: str = "prefill"  # how the cache reaches each depth: "prefill" (real tokens) or "synthetic" (random rows)

    def __post_init__(self):
        checks = [
            (self.n_prompt >= 0, "-p must be >= 0"),
            (self.n_gen >= 0, "-n must be >= 0"),
            (self.n_prompt > 0 or self.n_gen > 0, "-p and -n are both 0: nothing to measure"),
            (self.repetitions >= 1, "-r must be >= 1"),
            (len(self.depths) >= 1, "--depth needs at least one value"),
            (len(self.batches) >= 1 and min(self.batches) >= 1, "--batch values must be >= 1"),
            (not self.threads or min(self.threads) >= 1, "--threads values must be >= 1"),
            (self.torch_threads is None or self.torch_threads >= 1, "--torch-threads must be >= 1"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (self.output in OUTPUTS, f"--output must be one of {', '.join(OUTPUTS)}"),
            (self.plot is None or str(self.plot).lower().endswith(".png"), "--plot must name a .png file"),
            (self.fill in FILLS, f"--fill must be one of {', '.join(FILLS)}"),
        ]
        if self.plot is not None:  # before the benchmark runs, not after
            folder = Path(self.plot).absolute().parent
            checks.append((folder.is_dir(), f"--plot: no folder {folder}"))
            checks.append((not folder.is_dir() or os.access(folder, os.W_OK), f"--plot: cannot write to {folder}"))
        for ok, message in checks:
            if not ok:
                raise BenchOptionError(message)
        cpu_threads = getattr(self.runtime, "cpu_threads", None)
        if cpu_threads is not None:  # --cpu-threads N is -t N; both must agree
            if self.threads and self.threads != (cpu_threads,):
                raise BenchOptionError(f"--cpu-threads {cpu_threads} and --threads "
                                       f"{','.join(map(str, self.threads))} disagree (give one)")
            object.__setattr__(self, "threads", (cpu_threads,))
        from hybrid_k2.api import PREFILL_CHUNK

        if max(self.batches) > PREFILL_CHUNK:
            raise BenchOptionError(f"--batch: at most {PREFILL_CHUNK} tokens per forward (the API's prefill chunk)")

    def test_names(self) -> list[str]:
        return ([f"pp{self.n_prompt}"] if self.n_prompt else []) + ([f"tg{self.n_gen}"] if self.n_gen else [])
