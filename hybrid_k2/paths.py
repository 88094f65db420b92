"""Where hybrid-k2 keeps what it writes for itself: $XDG_CACHE_HOME/hybrid-k2 (~/.cache/hybrid-k2).

It holds the demo model (demo-v1), the chat history and the cached bandwidth probe; deleting the
folder loses nothing that is not rebuilt on the next run.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hybrid-k2"
