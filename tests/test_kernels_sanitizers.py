"""The C++ kernel test (csrc/tests/test_int4_moe.cpp: every ISA table, emulated where the CPU lacks
it, against the scalar reference) under AddressSanitizer + UndefinedBehaviorSanitizer."""
import os
import re
import subprocess

from kernel_build import kernel_build

def test_kernels_under_asan_and_ubsan():
    exe = kernel_build("the sanitizer test").build_asan()
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    r = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    m = re.search(r"(\d+) passed, (\d+) failed", r.stdout)
    assert m and int(m.group(1)) >= 150 and m.group(2) == "0", r.stdout[-2000:]
    assert "runtime error" not in r.stderr and "AddressSanitizer" not in r.stderr, r.stderr[-5000:]
