"""Loads csrc/tests/build.py (the emulated-ISA and sanitizer test builds) for the kernel tests.

Missing tools skip the test on a developer's machine and fail it in CI, where .ci/run installs them.
"""
import importlib.util
import os
import pathlib

import pytest

BUILD = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "tests" / "build.py"


def kernel_build(what: str):
    spec = importlib.util.spec_from_file_location("hk2_kernel_build", BUILD)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    why = build.missing_tools()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"cannot build {what} in CI: {why}")
        pytest.skip(why)
    return build
