"""`hybrid-k2 doctor`: is this machine set up right, and what will it do?

Prints the machine (hybrid_k2/doctor/machine.py), then runs the check list (hybrid_k2/doctor/checks.py)
on a tiny model made on the fly: each check on `cpu`, and again on `cuda` when a GPU is present, each
against the CPU reference, each with pass/fail and its time. On a machine without a GPU the GPU checks
are listed as skipped ("needs a GPU"). Exit status 1 when any check fails; `--output json` for machines.
For us it is the script the first GPU runs: one command, everything that is wrong.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

SCHEMA = "hybrid-k2-doctor/1"


def run_checks(ctx_for, devices: list[str], checks, *, only: set[str] | None = None,
               progress=None) -> list[dict]:
    """Runs every check on every device it applies to -> result rows (status pass | fail | skip)."""
    rows = []
    for check in checks:
        for device in ("cpu", "cuda"):
            if check.where not in ("any", device):
                continue
            row = {"check": check.name, "device": device, "status": "skip", "seconds": 0.0, "detail": ""}
            rows.append(row)
            if device not in devices:
                row["detail"] = "needs a GPU" if device == "cuda" else "not requested"
                continue
            if only is not None and check.name not in only:
                row["detail"] = "not selected"
                continue
            if progress is not None:
                progress(f"{check.name} [{device}]")
            t0 = time.perf_counter()
            try:
                row["detail"] = check.fn(ctx_for(device))
                row["status"] = "pass"
            except Exception as e:  # noqa: BLE001 - a failed check is a result, never a crash
                row["status"] = "fail"
                row["detail"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                row["traceback"] = traceback.format_exc(limit=6)
            finally:
                if device == "cuda":
                    torch.cuda.synchronize()
                row["seconds"] = round(time.perf_counter() - t0, 3)
    return rows


def doctor(*, probe_mb: int = 1024, devices: list[str] | None = None, only: set[str] | None = None,
           progress=None) -> dict:
    """The whole report as a dict (what --output json prints)."""
    import hybrid_k2
    from hybrid_k2.doctor import machine
    from hybrid_k2.doctor.checks import CHECKS, Ctx
    from hybrid_k2.runtime import RuntimeConfig
    from hybrid_k2.tiny import TinySpec, make_tiny

    t0 = time.perf_counter()
    if progress is not None:
        progress("machine (bandwidth probes)")
    info = machine.describe(probe_mb=probe_mb)
    devices = devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    with tempfile.TemporaryDirectory(prefix="hk2-doctor-") as tmp:
        work = Path(tmp)
        path = make_tiny(work / "model", TinySpec(seed=7, layers=4, experts=16, top_k=8))
        reference = hybrid_k2.load(path, device="cpu", precision="exact", runtime=RuntimeConfig.reference())
        shared = {}  # one reference cache for both devices

        def ctx_for(device: str) -> Ctx:
            ctx = Ctx(path=path, device=torch.device(device), work=work, reference=reference)
            ctx._ref_cache = shared
            return ctx

        rows = run_checks(ctx_for, devices, CHECKS, only=only, progress=progress)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("pass", "fail", "skip")}
    gpu_rows = [r for r in rows if r["device"] == "cuda"]
    return {"schema": SCHEMA, "machine": info, "checks": rows, "summary": {
        **counts, "ok": counts["fail"] == 0,
        "gpu_checks": "run" if "cuda" in devices else "skipped (no GPU)",
        "gpu_seconds": round(sum(r["seconds"] for r in gpu_rows), 1),
        "seconds": round(time.perf_counter() - t0, 1)}}


def _gb(n) -> str:
    return "?" if n is None else f"{n / 1e9:.1f} GB"


def render_text(report: dict) -> str:
    m = report["machine"]
    bw = m["host_bandwidth"]
    lines = [
        f"CPU      {m['cpu_model']}: {m['physical_cores']} physical cores, {m['logical_cpus']} logical, "
        f"{m['numa_nodes']} NUMA node(s), RAM {_gb(m['ram_bytes'])}",
        f"kernels  ISA path {m['isa']['chosen'] or 'none'} ({m['isa']['why']})",
        f"memory   {bw['read_gbps']:.1f} GB/s read, {bw['triad_gbps']:.1f} GB/s triad "
        f"({bw['threads']} threads, {bw['method']} probe, {bw['size_mb']} MB)",
        f"torch    {m['torch']} (CUDA {m['torch_cuda'] or 'none'}; CUDA available: {m['cuda_available']})",
    ]
    g = m["gpu"]
    if g:
        lines.append(f"GPU      {g['name']} (sm {g['capability']}), {_gb(g['memory_bytes'])} "
                     f"({_gb(g['free_bytes'])} free), {g['bandwidth_gbps'] or 0:.0f} GB/s probed")
    else:
        lines.append("GPU      none: the GPU checks are skipped")
    lines.append("")
    width = max(len(f"{r['check']} [{r['device']}]") for r in report["checks"])
    for r in report["checks"]:
        name = f"{r['check']} [{r['device']}]"
        lines.append(f"{r['status'].upper():4}  {name:<{width}}  {r['seconds']:7.2f} s  {r['detail']}")
    s = report["summary"]
    lines.append("")
    lines.append(f"{s['pass']} passed, {s['fail']} failed, {s['skip']} skipped in {s['seconds']:.0f} s "
                 f"(GPU checks: {s['gpu_checks']})")
    return "\n".join(lines)


def run_doctor(*, output: str = "table", probe_mb: int = 1024, devices: list[str] | None = None,
               only: set[str] | None = None) -> int:
    """What the CLI runs: prints the report, returns the exit status (1 when a check failed)."""
    quiet = output == "json"
    progress = None if quiet else (lambda what: print(f"... {what}", file=sys.stderr, flush=True))
    report = doctor(probe_mb=probe_mb, devices=devices, only=only, progress=progress)
    if output == "json":
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report))
        for r in report["checks"]:
            if r["status"] == "fail" and "traceback" in r:
                print(f"\n--- {r['check']} [{r['device']}]\n{r['traceback']}", file=sys.stderr)
    return 0 if report["summary"]["ok"] else 1
