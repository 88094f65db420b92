"""The next turn of a conversation whose prefix sits in host RAM or on disk, against prefilling it again.

    python bench/bench_kv_tier.py                                   # demo model, 16,384-token prefix
    python bench/bench_kv_tier.py --model /tmp/k2s --prefix 2048    # K2-shaped slice (make-tiny --k2-shape)

One load. A random prefix of `--prefix` tokens is prefilled once; its cache goes to host RAM
(kv_tier.offload: the server's path when the conversation leaves the device) and to a file
(kv_file.write, as --kv-cache-dir does). Then the next turn (`--turn` new tokens) is answered three
ways, each timed to the logits of its last prompt token (what the first answer token needs):
  cold  prefill prefix + turn from nothing (no cache: what happens without the tiers)
  host  restore the prefix from the host snapshot, prefill the turn
  disk  read and check the file (sha256), restore, prefill the turn (the file is in the page cache
        after being written: a cold disk adds its read time, bytes / disk bandwidth)
The best of `--repeats` runs is reported, with the copy bandwidth against this machine's memory
bandwidth probed in the same run. Other work on the machine moves absolute figures: quote the ratios.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import hybrid_k2
from hybrid_k2.kernels.bandwidth import measure_bandwidth
from hybrid_k2.runtime import RuntimeConfig, kv_file
from hybrid_k2.runtime.kv_tier import fingerprint, offload, restore


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: the demo model)")
    ap.add_argument("--prefix", type=int, default=16384, help="tokens of the conversation so far")
    ap.add_argument("--turn", type=int, default=64, help="new tokens of the next turn")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of the host and disk paths (best kept)")
    ap.add_argument("--cold-repeats", type=int, default=1, help="timed runs of the cold prefill")
    ap.add_argument("--precision", default="fast", choices=["fast", "exact"])
    ap.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "bf16", "fp8"])
    ap.add_argument("--dir", type=Path, default=None, help="folder for the cache file (default: a temporary one)")
    ap.add_argument("--output", default="table", choices=["table", "json"])
    a = ap.parse_args()

    if a.model is None:
        from hybrid_k2.tiny import demo_model_path
        a.model = demo_model_path()
    model = hybrid_k2.load(a.model, precision=a.precision, runtime=RuntimeConfig(kv_cache_dtype=a.kv_cache_dtype))
    V = min(model.args.vocab_size, 100_000)
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, V, (a.prefix,), generator=g).tolist()
    turn = torch.randint(0, V, (a.turn,), generator=g).tolist()
    ctx = a.prefix + a.turn + 1

    def new_session():
        return model.new_session(ctx)

    new_session().prefill(turn, last_only=True)  # warm-up: first-touch of weights and experts

    cold = []
    for _ in range(a.cold_repeats):
        s = new_session()
        t, _ = timed(lambda: s.prefill(prefix + turn, last_only=True))
        cold.append(t)
        del s
    s = new_session()
    s.prefill(prefix, last_only=True)
    t_offload, snap = timed(lambda: offload(s))

    fp = fingerprint(model)
    folder = Path(a.dir or tempfile.mkdtemp(prefix="hk2-kv-bench-"))
    path = folder / kv_file.file_name(fp, snap.tokens)
    t_write, info = timed(lambda: kv_file.write(path, snap, fp))

    host, disk, restore_s, read_s = [], [], [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        sess = restore(snap, a.prefix, new_session)
        t1 = time.perf_counter()
        sess.prefill(turn, last_only=True)
        host.append(time.perf_counter() - t0)
        restore_s.append(t1 - t0)
        del sess
        t0 = time.perf_counter()
        loaded = kv_file.read(path, fp)
        t1 = time.perf_counter()
        sess = restore(loaded, a.prefix, new_session)
        sess.prefill(turn, last_only=True)
        disk.append(time.perf_counter() - t0)
        read_s.append(t1 - t0)
        del sess, loaded
    path.unlink()

    bw = measure_bandwidth(size_mb=512, repeats=3)
    nbytes = snap.nbytes
    out = {"model": str(a.model), "precision": a.precision, "kv_cache_dtype": a.kv_cache_dtype,
           "layers": model.args.num_hidden_layers, "prefix_tokens": a.prefix, "turn_tokens": a.turn,
           "snapshot_bytes": nbytes, "file_bytes": info.nbytes,
           "cold_s": min(cold), "host_s": min(host), "disk_s": min(disk),
           "ratio_cold_over_host": min(cold) / min(host), "ratio_cold_over_disk": min(cold) / min(disk),
           "offload_s": t_offload, "restore_s": min(restore_s), "file_write_s": t_write, "file_read_s": min(read_s),
           "restore_gbps": nbytes / min(restore_s) / 1e9, "file_read_gbps": info.nbytes / min(read_s) / 1e9,
           "probe_read_gbps": bw["read_gbps"], "probe_triad_gbps": bw["triad_gbps"],
           "threads": bw["threads"]}
    if a.output == "json":
        print(json.dumps(out, indent=2))
        return
    print(f"{a.model}: {out['layers']} layers, {a.precision}, cache {a.kv_cache_dtype}; prefix {a.prefix:,} tokens "
          f"({nbytes / 1e6:,.1f} MB as stored), next turn {a.turn} tokens")
    print(f"  cold (prefill prefix + turn): {out['cold_s']:8.3f} s")
    print(f"  host RAM (restore + turn):    {out['host_s']:8.3f} s   {out['ratio_cold_over_host']:7.1f}x faster "
          f"(restore {out['restore_s']:.3f} s, {out['restore_gbps']:.1f} GB/s)")
    print(f"  disk (read + check + turn):   {out['disk_s']:8.3f} s   {out['ratio_cold_over_disk']:7.1f}x faster "
          f"(read+sha256 {out['file_read_s']:.3f} s, {out['file_read_gbps']:.2f} GB/s; write {t_write:.3f} s)")
    print(f"  offload to host {t_offload:.3f} s; probe in this run: {bw['read_gbps']:.1f} GB/s read, "
          f"{bw['triad_gbps']:.1f} GB/s triad ({out['threads']} threads); restore at "
          f"{out['restore_gbps'] / bw['triad_gbps']:.0%} of triad")


if __name__ == "__main__":
    main()
