"""`hybrid-k2 bench` end to end on the embedded demo model: the table, the JSON document and its schema,
the plot, the projection, and one-line usage errors. Structure and consistency only, never speed."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import jsonschema
import pytest

# small runs: the acceptance run (`hybrid-k2 bench`, pp512/tg128 x 5) is the same code with bigger numbers
SMALL = ["-p", "32", "-n", "8", "-r", "2", "-t", "1", "--no-progress"]


def bench(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "hybrid_k2.cli", "bench", *args], capture_output=True, text=True,
                       timeout=600)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def schema() -> dict:
    return json.loads(resources.files("hybrid_k2.bench").joinpath("schema.json").read_text())


@pytest.fixture(scope="module")
def demo_json(tmp_path_factory):
    png = tmp_path_factory.mktemp("plot") / "bench.png"
    r = bench(*SMALL, "-d", "0,40", "-o", "json", "--plot", str(png),
              "--project", "bandwidth=307GB/s,gpu_bw=1008GB/s,name=W-3400")
    return json.loads(r.stdout), png, r.stderr


def test_table_prints_pp_and_tg_with_std():
    r = bench(*SMALL)
    assert "demo model" in r.stderr  # says it runs the built-in model
    lines = r.stdout.splitlines()
    for test in ("pp32", "tg8"):
        row = next(line for line in lines if f" {test} " in line)
        assert "±" in row
    assert "python overhead" in r.stdout and "roofline" in r.stdout


def test_json_validates_and_has_pp_tg(demo_json):
    doc, _, _ = demo_json
    jsonschema.validate(doc, schema())
    for kind in ("pp", "tg"):
        assert doc[kind]["unit"] == "tokens/s"
        assert doc[kind]["mean"] > 0 and doc[kind]["std"] >= 0
    assert doc["model"]["demo"] is True
    assert [(r["kind"], r["depth"]) for r in doc["results"]] == [("pp", 0), ("tg", 0), ("pp", 40), ("tg", 40)]
    per_row = {m["depth"]: m for m in doc["memory"]}  # peak memory of the process at each depth
    assert sorted(per_row) == [0, 40] and all(m["peak_rss_bytes"] > 0 for m in per_row.values())
    kv = doc["model"]["kv_bytes_per_token"]
    assert per_row[40]["kv_cache_bytes"] == kv * (40 + max(doc["settings"]["n_prompt"], doc["settings"]["n_gen"]))
    for r in doc["results"]:
        assert len(r["samples"]) == len(r["seconds"]) == 2
        assert r["mean"] == pytest.approx(sum(r["samples"]) / 2)
        assert r["samples"][0] == pytest.approx(r["tokens"] / r["seconds"][0])


def test_json_carries_hardware_and_provenance(demo_json):
    doc, _, _ = demo_json
    h, p = doc["hardware"], doc["provenance"]
    assert h["cpu_model"] and h["physical_cores"] >= 1 and h["gpu"] is None
    assert [b["threads"] for b in h["memory_bandwidth"]] == doc["settings"]["threads"] == [1]
    assert doc["settings"]["torch_threads"] == 1  # auto on device = cpu
    assert p["version"] and p["date"]
    assert p["commit"] == "unknown" or len(p["commit"]) == 40


def test_roofline_and_projection_are_consistent(demo_json):
    doc, _, _ = demo_json
    for roof, tg in zip(doc["roofline"], [r for r in doc["results"] if r["kind"] == "tg"]):
        c = roof["ceiling"]
        assert c["device_reads_host_memory"] is True  # device = cpu
        assert c["cpu_gbps"] == c["device_gbps"] == doc["hardware"]["memory_bandwidth"][0]["read_gbps"]
        assert c["serial_tok_s"] == pytest.approx(1e3 / (c["cpu_ms"] + c["device_ms"]))
        assert roof["fraction_of_ceiling"] == pytest.approx(tg["mean"] / c["serial_tok_s"])
        assert roof["context"] == pytest.approx(tg["depth"] + (tg["tokens"] + 1) / 2)
    d0, d40 = doc["roofline"]
    assert d40["ceiling"]["device_bytes"] > d0["ceiling"]["device_bytes"]  # more KV to read deeper in
    proj = doc["projection"]
    assert proj["name"] == "W-3400" and proj["model"] == "Kimi-K2-Thinking"
    assert proj["ceiling"]["cpu_bytes"] / 1e9 == pytest.approx(11.89, abs=0.01)
    assert proj["ceiling"]["overlap_tok_s"] == pytest.approx(25.8, abs=0.1)  # 307 GB/s / 11.9 GB
    assert any("1008 GB/s" in a for a in proj["assumptions"])


def test_plot_is_a_png(demo_json):
    _, png, stderr = demo_json
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000
    assert f"wrote {png}" in stderr


def test_csv_pp_only():
    r = bench("-p", "16", "-n", "0", "-r", "1", "-t", "1", "--no-progress", "-o", "csv", "--no-warmup")
    header, *rows = r.stdout.strip().splitlines()
    assert header.startswith("test,kind,depth,batch,threads") and len(rows) == 1 and rows[0].startswith("pp16,pp,0,")


def test_markdown_rendering(demo_json):
    from hybrid_k2.bench.render import to_csv, to_markdown

    doc, _, _ = demo_json
    md = to_markdown(doc)
    assert "| model | threads | batch | test | t/s |" in md and "| tg8 @ d40 |" in md and "python overhead" in md
    assert len(to_csv(doc).strip().splitlines()) == 1 + len(doc["results"])


@pytest.mark.parametrize("args, message", [
    (["--depth", "5-1+2"], "--depth"),
    (["-p", "abc"], "--n-prompt"),
    (["-o", "xml"], "--output"),
    (["--project", "bw=3"], "--project"),
    (["--batch", "4096"], "--batch"),
    (["-p", "0", "-n", "0"], "nothing to measure"),
    (["--bogus"], "--bogus"),
    (["-t", "0"], "--threads"),
    (["--fill", "random"], "--fill"),
])
def test_bad_flags_one_line_exit_2(args, message):
    r = bench(*args, "--no-progress", check=False)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_synthetic_fill_reaches_the_depth_without_prefill():
    """--fill synthetic writes random latent rows: the cache holds the depth, the fill takes no forward."""
    r = bench("-p", "8", "-n", "4", "-r", "1", "-t", "1", "--no-progress", "--no-warmup", "-d", "0,3000",
              "--fill", "synthetic", "--kv-cache-dtype", "fp8", "-o", "json")
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, schema())
    assert doc["settings"]["fill"] == "synthetic"
    deep = next(m for m in doc["memory"] if m["depth"] == 3000)
    assert deep["kv_cache_bytes"] == doc["model"]["kv_bytes_per_token"] * 3008 and deep["fill_seconds"] > 0
    assert {(x["kind"], x["depth"]) for x in doc["results"]} == {("pp", 0), ("tg", 0), ("pp", 3000), ("tg", 3000)}


def test_runtime_flags_reach_the_loaded_runtime():
    """The shared runtime flags (hybrid_k2/runtime/cli_options.py) go through hybrid_k2.load."""
    r = bench(*SMALL, "--cpu-threads", "1", "--defer-experts", "1", "--torch-threads", "2", "-o", "json")
    doc = json.loads(r.stdout)
    assert "defer=1" in doc["model"]["runtime"] and "threads=1 " in doc["model"]["runtime"]
    assert doc["settings"]["torch_threads"] == 2 and doc["settings"]["threads"] == [1]


@pytest.mark.parametrize("args, message", [
    (["--cpu-threads", "2", "-t", "1"], "disagree"),
    (["--defer-experts", "-1"], "--defer-experts"),
    (["--torch-threads", "0"], "--torch-threads"),
])
def test_bad_runtime_flags_one_line_exit_2(args, message):
    test_bad_flags_one_line_exit_2(args, message)
