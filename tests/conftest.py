"""Shared fixtures: tiny checkpoints in the exact on-disk format, made by the project itself."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helpers such as hf_reference.py

try:  # property-based tests draw the same examples on every run (CI and here alike)
    from hypothesis import settings

    settings.register_profile("hybrid-k2", derandomize=True, deadline=None)
    settings.load_profile("hybrid-k2")
except ImportError:
    pass


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """The demo model and benchmark caches go to a per-run folder, inherited by CLI subprocesses."""
    # `python -m hybrid_k2.cli` in a subprocess must import the installed package (with its built _C),
    # not the source folder the tests run from: Python 3.11's PYTHONSAFEPATH keeps cwd off sys.path.
    os.environ["PYTHONSAFEPATH"] = "1"
    if "HYBRID_K2_TEST_KEEP_CACHE" not in os.environ:
        os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Default tiny model: 3 layers (1 dense), 8 experts, top-2, hidden 64, 3 shards."""
    from hybrid_k2.tiny import TinySpec, make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny"), TinySpec(seed=0))


@pytest.fixture(scope="session")
def make_model(tmp_path_factory):
    """Factory for further tiny models, cached per spec for the whole run."""
    from hybrid_k2.tiny import TinySpec, make_tiny

    cache: dict = {}

    def make(**kw) -> Path:
        spec = TinySpec(**kw)
        if spec not in cache:
            cache[spec] = make_tiny(tmp_path_factory.mktemp("tiny"), spec)
        return cache[spec]

    return make


@pytest.fixture(scope="module")
def server(tiny_model):
    """A real `hybrid-k2 serve` on loopback for the module's tests (serve_helpers.shared_server); a module
    that needs other flags defines its own."""
    from serve_helpers import shared_server

    return shared_server(tiny_model)


@pytest.fixture(scope="module")
def client(server):
    """The real `openai` client on `server`."""
    return server.client()
