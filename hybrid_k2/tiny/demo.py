"""The random-weight demo model: what every command loads without --model.

It lives in $XDG_CACHE_HOME/hybrid-k2/demo-v1 (~/.cache/hybrid-k2/demo-v1 by default, a few MB) and is
written on first use: into a partial folder named after the writing process, then renamed in one step,
so an interrupted first run never leaves a folder that looks complete. Partial folders whose process is
gone (killed mid-write) are removed by the next run. `rm -rf ~/.cache/hybrid-k2` deletes it all.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from hybrid_k2.paths import cache_dir
from hybrid_k2.tiny import TinySpec, make_tiny

DEMO_SPEC = TinySpec(seed=0, layers=3, experts=16, top_k=4, hidden=128, moe_intermediate=64)
DEMO_NAME = "demo-v1"
PARTIAL = f".{DEMO_NAME}.partial-"  # + writer pid + "-" + random
LEGACY_PARTIAL_AGE_S = 3600  # tempfile's old "demo-XXXX" folders carry no pid: removed when this old


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_partials(cache: Path) -> list[Path]:
    """Removes partial demo folders whose writer is gone; returns them."""
    removed = []
    for p in cache.glob(f"{PARTIAL}*") if cache.is_dir() else []:
        pid = p.name[len(PARTIAL):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for p in cache.glob("demo-*") if cache.is_dir() else []:
        if p.name != DEMO_NAME and p.is_dir() and time.time() - p.stat().st_mtime > LEGACY_PARTIAL_AGE_S:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def demo_model_path(*, quiet: bool = False) -> Path:
    """The demo model's folder, written on first use (and said so on stderr)."""
    cache = cache_dir()
    path = cache / DEMO_NAME
    if not quiet:
        print("note: no --model given; using the built-in random-weight demo model (its answers are noise)",
              file=sys.stderr)
    remove_stale_partials(cache)
    if (path / "model.safetensors.index.json").exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    print(f"note: first run: writing the demo model to {path} (a few seconds, once)", file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{PARTIAL}{os.getpid()}-", dir=cache))
    try:
        make_tiny(tmp, DEMO_SPEC, force=True)
        try:
            os.rename(tmp, path)  # atomic: a concurrent creator either wins or finds it done
        except OSError:
            if not (path / "model.safetensors.index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
