"""`hybrid-k2 doctor`: the CPU list passes here, the GPU list is named as skipped (or runs, on a GPU)."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from hybrid_k2.doctor import run_checks
from hybrid_k2.doctor.checks import CHECKS, Check, CheckFailed


def doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybrid_k2.cli", "doctor", *args], capture_output=True,
                          text=True, timeout=600)


def test_doctor_json_on_this_machine():
    r = doctor("--output", "json", "--probe-mb", "16")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(r.stdout)
    m = report["machine"]
    assert m["physical_cores"] >= 1 and m["host_bandwidth"]["read_gbps"] > 0 and m["torch"] == torch.__version__
    assert m["isa"]["chosen"] in ("avx2", "avx512", "avx512vnni", "amx", "scalar") and m["isa"]["why"]
    rows = {(c["check"], c["device"]): c for c in report["checks"]}
    for check in CHECKS:
        for device in ("cpu", "cuda"):
            if check.where not in ("any", device):
                assert (check.name, device) not in rows
                continue
            row = rows[(check.name, device)]
            if device == "cuda" and not torch.cuda.is_available():
                assert row["status"] == "skip" and row["detail"] == "needs a GPU", row
            else:
                assert row["status"] == "pass" and row["seconds"] > 0 and row["detail"], row
    s = report["summary"]
    assert s["ok"] and s["fail"] == 0 and s["pass"] == sum(c["status"] == "pass" for c in report["checks"])
    if not torch.cuda.is_available():
        assert s["gpu_checks"] == "skipped (no GPU)" and m["gpu"] is None


def test_a_failing_check_is_reported_not_raised():
    def broken(ctx):
        raise CheckFailed("logits differ")

    def fine(ctx):
        return "ok"

    rows = run_checks(lambda device: None, ["cpu"], [Check("broken", broken, "any"), Check("fine", fine, "cpu"),
                                                     Check("gpu thing", fine, "cuda")])
    assert [(r["check"], r["device"], r["status"]) for r in rows] == [
        ("broken", "cpu", "fail"), ("broken", "cuda", "skip"), ("fine", "cpu", "pass"), ("gpu thing", "cuda", "skip")]
    assert rows[0]["detail"] == "CheckFailed: logits differ" and "Traceback" in rows[0]["traceback"]


def test_usage_errors_are_one_line():
    for args, message in ((["--output", "xml"], "error: --output must be table or json, got 'xml'"),
                          (["--check", "no-such-check"], "error: no check matches no-such-check")):
        r = doctor(*args)
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [message], r.stderr
