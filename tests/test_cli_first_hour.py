"""What a new user meets first: -h / --version, flags checked before any work (plan, bench, info from
config.json alone), the plot's depth axis, the demo model's first run, and nothing left in the temp
folder by the test helpers."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hybrid_k2 import __version__
from hybrid_k2.version import commit, describe, git_commit

CLI = [sys.executable, "-m", "hybrid_k2.cli"]
ROOT = Path(__file__).resolve().parents[1]


def cli(*args, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def run(monkeypatch, capsys):
    """The `hybrid-k2` entry point in-process (a subprocess costs seconds of imports): (code, out, err)."""
    from hybrid_k2.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["hybrid-k2", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code or 0
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def one_line_error(r: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and text in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout


@pytest.fixture(scope="module")
def config_only(tiny_model, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("config-only")
    shutil.copy(tiny_model / "config.json", d / "config.json")
    return d


def test_short_help_and_version(run):
    h = cli("-h")  # the installed entry point itself, once
    assert h.returncode == 0 and "Usage: " in h.stdout and "chat" in h.stdout
    sub = run("plan", "-h")
    assert sub.returncode == 0 and "--gpu-mem" in sub.stdout
    assert "<bool>" not in sub.stdout  # flags take no value: no type shown for --help, --output json...
    assert re.search(r"--help\s+-h\s+Show this message", sub.stdout)
    v = run("--version")
    assert v.returncode == 0 and v.stdout == f"hybrid-k2 {describe()}\n" and __version__ in v.stdout


def test_commit_live_or_recorded_at_build(tmp_path):
    live = git_commit(ROOT)
    if live is not None:  # tests run from a checkout: its HEAD
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert live[0] == head.strip()
    pkg = tmp_path / "site-packages" / "hybrid_k2"  # an installed copy: no .git, the build's record
    pkg.mkdir(parents=True)
    assert commit(pkg) == ("unknown", None)
    (pkg / "_build_info.json").write_text(json.dumps({"commit": "0123456789abcdef" * 2 + "01234567",
                                                      "dirty": False}))
    assert commit(pkg) == ("0123456789abcdef" * 2 + "01234567", False)


def test_plan_refuses_bad_flags_in_one_line(run, config_only, tmp_path):
    one_line_error(run("plan", "--model", str(tmp_path / "nonexistent")), 1,
                   f"model folder not found: {tmp_path / 'nonexistent'}")
    one_line_error(run("plan", "--model", str(config_only), "--device", "tpu"), 2, "--device must be auto, cpu")
    one_line_error(run("plan", "--model", str(config_only), "--gpu-mem", "24"), 1,
                   "size '24' needs a unit: 24GiB (2^30 bytes) or 24GB (10^9 bytes)?")


def test_plan_without_budgets_says_so(run, config_only):
    r = run("plan", "--model", str(config_only), "--device", "cuda")
    assert r.returncode == 0, r.stderr
    assert "GPU total" in r.stdout and "(no --gpu-mem budget given)" in r.stdout and " of -" not in r.stdout
    assert "not checked: no --gpu-mem or --ram given" in r.stdout
    assert "fits" not in r.stdout.replace("that fits", "")  # no bare "fits" when nothing was checked
    given = run("plan", "--model", str(config_only), "--device", "cuda", "--gpu-mem", "24GiB", "--ram", "1TiB")
    assert given.returncode == 0 and given.stdout.rstrip().endswith("fits")
    # --device auto plans for a GPU when a GPU budget is given, even on a machine without one
    auto = run("plan", "--model", str(config_only), "--gpu-mem", "24GiB", "--output", "json")
    assert json.loads(auto.stdout)["device"] == "cuda"


def test_info_from_config_alone(run, config_only):
    for model in (config_only, config_only / "config.json"):
        r = run("info", "--model", str(model))
        assert r.returncode == 0, r.stderr
        assert "KV cache: 240 B per token" in r.stdout and "routed experts" in r.stdout
        assert "loader findings: not checked: no weights in" in " ".join(r.stdout.split())


def test_bench_checks_the_plot_path_before_any_work(run, tmp_path):
    # The missing model would be the error if the benchmark started: the plot path is checked first.
    r = run("bench", "--model", str(tmp_path / "nope"), "--plot", str(tmp_path / "no" / "dir" / "x.png"))
    one_line_error(r, 2, f"--plot: no folder {tmp_path / 'no' / 'dir'}")


def test_single_depth_axis_is_the_depth():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hybrid_k2.bench.plot import depth_axis

    fig, ax = plt.subplots()
    try:
        ax.plot([0], [5.0], marker="o")
        depth_axis(ax, [0])
        assert list(ax.get_xticks()) == [0] and ax.get_xlim()[1] - ax.get_xlim()[0] >= 2  # not 0 ± 0.04
        ax.plot([0, 4096], [5.0, 4.0])
        depth_axis(ax, [0, 1024, 4096])
        assert list(ax.get_xticks()) == [0, 1024, 4096]
    finally:
        plt.close(fig)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_demo_model_first_run(tmp_path, monkeypatch, capsys):
    from hybrid_k2.tiny.demo import DEMO_NAME, PARTIAL, demo_model_path

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "hybrid-k2"
    cache.mkdir()
    stale = cache / f"{PARTIAL}{_dead_pid()}-abc"
    live = cache / f"{PARTIAL}{os.getpid()}-def"  # a writer still at work: left alone
    legacy = cache / "demo-x1y2z3"  # the old tempfile name, an hour old
    for d in (stale, live, legacy):
        d.mkdir()
        (d / "config.json").write_text("{")
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))
    path = demo_model_path()
    err = capsys.readouterr().err
    assert path == cache / DEMO_NAME and (path / "model.safetensors.index.json").exists()
    assert f"first run: writing the demo model to {path}" in err
    assert not stale.exists() and not legacy.exists() and live.exists()
    assert sorted(p.name for p in cache.iterdir()) == sorted([DEMO_NAME, live.name])
    assert demo_model_path() == path and "writing" not in capsys.readouterr().err  # written once


def test_demo_model_killed_mid_write_is_cleaned_up(tmp_path, monkeypatch):
    from hybrid_k2.tiny.demo import DEMO_NAME, PARTIAL, demo_model_path

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    cache = tmp_path / "hybrid-k2"
    proc = subprocess.Popen([sys.executable, "-c", "from hybrid_k2.tiny import demo_model_path; demo_model_path()"],
                            env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(cache.glob(f"{PARTIAL}*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, "the writer finished before it could be interrupted"
        proc.send_signal(signal.SIGKILL)  # no cleanup can run: the worst interruption
    finally:
        proc.wait()
    assert list(cache.glob(f"{PARTIAL}*")) and not (cache / DEMO_NAME).exists()  # partial, never the real name
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = demo_model_path(quiet=True)
    assert (path / "model.safetensors.index.json").exists() and [p.name for p in cache.iterdir()] == [DEMO_NAME]


def test_shared_server_leaves_no_temp_folder(tiny_model, tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from serve_helpers import shared_server; "
            "s = shared_server(__import__('pathlib').Path(sys.argv[2])); print(s.log.parent)")
    r = subprocess.run([sys.executable, "-c", code, str(ROOT / "tests"), str(tiny_model)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    log_dir = Path(r.stdout.strip())
    assert log_dir.parent == tmp_path and log_dir.name.startswith("hk2-serve-")
    assert not log_dir.exists() and not list(tmp_path.glob("hk2-serve-*"))
