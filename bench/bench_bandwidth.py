"""Memory-bandwidth probe: STREAM triad and an AVX2 read-only sum over >= 1 GB, 1 and N threads.

    python bench/bench_bandwidth.py [--size-mb 1024] [--repeats 5] [--output table|json]

The decode kernels (bench/bench_moe.py) are judged against the higher of the two figures."""
import argparse
import json

from hybrid_k2.kernels import measure_bandwidth


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="*", default=None, help="default: 1 and all CPUs")
    ap.add_argument("--output", choices=("table", "json"), default="table")
    a = ap.parse_args()
    from hybrid_k2 import _C

    threads = a.threads or sorted({1, _C.default_threads()})
    rows = [measure_bandwidth(size_mb=a.size_mb, threads=t, repeats=a.repeats) for t in threads]
    if a.output == "json":
        print(json.dumps(rows, indent=1))
        return
    print(f"{'threads':>7} {'read GB/s':>10} {'triad GB/s':>11} {'best GB/s':>10}")
    for r in rows:
        print(f"{r['threads']:>7} {r['read_gbps']:>10.1f} {r['triad_gbps']:>11.1f} {r['best_gbps']:>10.1f}")


if __name__ == "__main__":
    main()
