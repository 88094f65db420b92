"""Builds the test-only binaries of the CPU kernels; used by tests/test_kernels_emulated.py and
tests/test_kernels_sanitizers.py, or by hand: `python csrc/tests/build.py emu|asan`.

  emu:  the extension's sources again, with the AVX-512, AVX-512-BF16 and AMX files compiled on
        SIMDe (Debian libsimde-dev) + csrc/tests/emu/amx_emu.h, as the module `_C_emu`: every ISA
        path runs (slowly) on any AVX2 machine and is checked against the references.
  asan: csrc/tests/test_int4_moe.cpp with the kernel sources (emulated paths included), built with
        AddressSanitizer + UndefinedBehaviorSanitizer; prints "N passed, M failed".
  switch: csrc/tests/bench_gemv_gemm.cpp, the GEMV/GEMM crossover of the AVX2 kernels (run it:
        `$(python csrc/tests/build.py switch) fast|exact`).

Outputs are cached in build/kernel-tests/<hash of sources and flags>/ so that a second run of the
tests does not compile again. Nothing here is part of `pip install .`.
"""
from __future__ import annotations

import concurrent.futures
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
EMULATED = ("_avx512.cpp", "_avx512bf16.cpp", "_amx.cpp")
HOST_SIMD = ["-mavx2", "-mfma", "-mf16c"]  # SIMDe maps the AVX-512 intrinsics onto AVX2


class BuildError(RuntimeError):
    pass


def missing_tools() -> str | None:
    """Why the test binaries cannot be built here, or None."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        return "no C++ compiler (g++)"
    if not os.path.exists("/usr/include/simde/x86/avx512.h"):
        return "SIMDe headers missing (apt-get install libsimde-dev)"
    return None


def _kernel_sources() -> list[str]:
    srcs = [s for d in ("int4_moe", "int8_linear", "mla_attention") for s in glob.glob(os.path.join(CSRC, d, "*.cpp"))] \
        + [os.path.join(CSRC, "thread_pool.cpp"), os.path.join(CSRC, "cpu_features.cpp")]
    return sorted(s for s in srcs if not s.endswith("_py.cpp"))


def _file_flags(src: str) -> list[str]:
    if src.endswith("_avx2.cpp") or src.endswith(EMULATED):
        return HOST_SIMD
    return []


def _build(kind: str, sources: list[str], common: list[str], link: list[str], output: str) -> str:
    cxx = os.environ.get("CXX", "g++")
    headers = sorted(glob.glob(os.path.join(CSRC, "**", "*.h"), recursive=True)
                     + glob.glob(os.path.join(CSRC, "**", "*.inl"), recursive=True))
    h = hashlib.sha256()
    for path in sources + headers + [__file__]:
        h.update(path.encode())
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(" ".join([cxx] + common + link).encode())
    out_dir = os.path.join(ROOT, "build", "kernel-tests", f"{kind}-{h.hexdigest()[:16]}")
    target = os.path.join(out_dir, output)
    if os.path.exists(target):
        return target
    os.makedirs(out_dir, exist_ok=True)

    def compile_one(src):
        obj = os.path.join(out_dir, os.path.relpath(src, CSRC).replace(os.sep, "_") + ".o")
        cmd = [cxx, *common, *_file_flags(src), "-c", src, "-o", obj]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"compiling {os.path.relpath(src, ROOT)} failed:\n{r.stderr[-4000:]}")
        return obj

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as ex:
        objs = list(ex.map(compile_one, sources))
    tmp = target + ".tmp"
    r = subprocess.run([cxx, *common, *objs, "-o", tmp, *link], capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"linking {output} failed:\n{r.stderr[-4000:]}")
    os.replace(tmp, target)
    return target


def build_emu() -> str:
    """Path of the `_C_emu` extension module (compiled on first use)."""
    import pybind11

    srcs = _kernel_sources() + [os.path.join(CSRC, "int4_moe", "int4_moe_py.cpp"),
                                os.path.join(CSRC, "int8_linear", "int8_linear_py.cpp"),
                                os.path.join(CSRC, "mla_attention", "mla_attention_py.cpp"), os.path.join(CSRC, "bindings.cpp")] \
        + sorted(glob.glob(os.path.join(CSRC, "bench", "*.cpp")))
    common = ["-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-DHK2_EMULATE", "-DHK2_MODULE_NAME=_C_emu",
              f"-I{CSRC}", f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]
    return _build("emu", srcs, common, ["-shared", "-pthread"], "_C_emu" + sysconfig.get_config_var("EXT_SUFFIX"))


def load_emu():
    """Builds (if needed) and imports `_C_emu`; it can live beside hybrid_k2._C in one process."""
    import importlib.machinery
    import importlib.util

    path = build_emu()
    loader = importlib.machinery.ExtensionFileLoader("_C_emu", path)
    spec = importlib.util.spec_from_file_location("_C_emu", path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def build_asan() -> str:
    """Path of the sanitizer test executable (compiled on first use)."""
    srcs = _kernel_sources() + [os.path.join(CSRC, "tests", "test_int4_moe.cpp")]
    common = ["-std=c++17", "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
              "-fno-sanitize-recover=undefined", "-DHK2_EMULATE", f"-I{CSRC}"]
    return _build("asan", srcs, common, ["-pthread"], "test_int4_moe")


def build_switch() -> str:
    """Path of the GEMV/GEMM crossover benchmark (AVX2 kernels, -O3 as in setup.py)."""
    srcs = [os.path.join(CSRC, "int4_moe", n) for n in ("int4_moe_avx2.cpp", "int4_moe_ref.cpp")] \
        + [os.path.join(CSRC, "tests", "bench_gemv_gemm.cpp")]
    return _build("switch", srcs, ["-std=c++17", "-O3", f"-I{CSRC}"], [], "bench_gemv_gemm")


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "emu"
    print({"emu": build_emu, "asan": build_asan, "switch": build_switch}[which]())
