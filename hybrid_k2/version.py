"""The package version and the commit it was built from, for `--version` and the benchmark's provenance.

A git checkout (an editable install, or the tests run from the tree) reports its live HEAD and whether
tracked files are modified; `pip install .` records the commit at build time in _build_info.json
(setup.py writes it into the wheel), since the installed copy has no .git beside it.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
BUILD_INFO = "_build_info.json"  # written by setup.py (BuildPy)


def version() -> str:
    from hybrid_k2 import __version__

    return __version__


def git_commit(root: Path) -> tuple[str, bool | None] | None:
    """(HEAD, tracked files modified?) of the git checkout at root, None when it is not one."""
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head, bool(dirty)) if head else None


def commit(package: Path = PACKAGE) -> tuple[str, bool | None]:
    """(commit, modified?) the package folder runs from: the live checkout, else the one recorded at build
    time, else ("unknown", None)."""
    live = git_commit(package.parent)
    if live is not None:
        return live
    try:
        info = json.loads((package / BUILD_INFO).read_text(encoding="utf-8"))
        return str(info["commit"]), info.get("dirty")
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown", None


def describe() -> str:
    """'0.1.0 (commit 1234abcd5678, modified)' or '0.1.0' when the commit is unknown."""
    sha, dirty = commit()
    if sha == "unknown":
        return version()
    return f"{version()} (commit {sha[:12]}{', modified' if dirty else ''})"
