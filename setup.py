"""Builds hybrid_k2._C, the CPU expert kernels, from csrc/.

One build runs on any x86-64 CPU: every ISA path lives in its own translation unit compiled with
its own -m flags (never -march=native), and the path is chosen at runtime from cpuid. The flags
of a source file follow from its name: *_avx2.cpp, *_avx512.cpp, *_avx512bf16.cpp, *_amx.cpp.
"""
import glob
import json
import os
import platform
import subprocess

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")

ISA_FLAGS = {
    "_avx2.cpp": ["-mavx2", "-mfma", "-mf16c"],
    # no -mavx512vnni: the file builds a plain and a VNNI variant (the latter via a target pragma)
    "_avx512.cpp": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl",
                    "-mavx512dq"],
    "_avx512bf16.cpp": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl",
                        "-mavx512dq", "-mavx512vnni", "-mavx512bf16"],
    "_amx.cpp": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl",
                 "-mavx512dq", "-mavx512vnni", "-mavx512bf16", "-mamx-tile", "-mamx-int8",
                 "-mamx-bf16"],
}


def isa_flags(src: str) -> list[str]:
    if not IS_X86:
        return []
    for suffix, flags in ISA_FLAGS.items():
        if src.endswith(suffix):
            return flags
    return []


class BuildExt(build_ext):
    """Adds per-file ISA flags; everything else is the stock pybind11 build."""

    def build_extensions(self):
        compile_one = self.compiler._compile

        def _compile(obj, src, ext, cc_args, extra_postargs, pp_opts):
            return compile_one(obj, src, ext, cc_args, list(extra_postargs) + isa_flags(src), pp_opts)

        self.compiler._compile = _compile
        super().build_extensions()


def source_commit() -> dict | None:
    """The commit of the git checkout being built (and whether tracked files differ), else None."""
    here = os.path.dirname(os.path.abspath(__file__))
    if not os.path.exists(os.path.join(here, ".git")):
        return None
    try:
        git = ["git", "-C", here]
        head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.strip(), "dirty": bool(dirty.strip())}


class BuildPy(build_py):
    """Records the commit in hybrid_k2/_build_info.json: an installed copy has no .git to ask."""

    def run(self):
        super().run()
        info = source_commit()
        if info is not None and not self.dry_run:
            target = os.path.join(self.build_lib, "hybrid_k2", "_build_info.json")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w", encoding="utf-8") as f:
                json.dump(info, f)


# Compile the translation units in parallel (HYBRID_K2_BUILD_JOBS, default: all CPUs).
ParallelCompile("HYBRID_K2_BUILD_JOBS", default=0).install()

sources = sorted(
    s for s in glob.glob("csrc/**/*.cpp", recursive=True)
    if not s.startswith(os.path.join("csrc", "tests"))
    and (IS_X86 or not any(s.endswith(k) for k in ISA_FLAGS))
)

ext = Pybind11Extension(
    "hybrid_k2._C",
    sources,
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3", "-fno-math-errno", "-Wall"],
    extra_link_args=["-pthread"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt, "build_py": BuildPy})
