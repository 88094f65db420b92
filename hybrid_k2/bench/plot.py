"""`--plot FILE.png`: tok/s against context depth (with the decode ceiling), and where a decode step's
time goes (stacked phases per depth). Rendered from the bench document with matplotlib's Agg backend."""
from __future__ import annotations

from pathlib import Path

from hybrid_k2.errors import HybridK2Error

COLORS = {"embed": "#9e9e9e", "attention": "#1f77b4", "dense_mlp": "#aec7e8", "router": "#17becf",
          "to_host": "#ffbb78", "shared_experts": "#2ca02c", "device_experts": "#98df8a",
          "cpu_experts": "#d62728", "wait": "#ff9896", "to_device": "#ff7f0e", "lm_head": "#9467bd",
          "sampling": "#8c564b", "python": "#e377c2"}


def _throughput(ax, doc: dict) -> None:
    series: dict[tuple, list[dict]] = {}
    for r in doc["results"]:
        series.setdefault((r["kind"], r["tokens"], r["batch"], r["threads"]), []).append(r)
    for (kind, tokens, batch, threads), rows in sorted(series.items(), key=lambda kv: str(kv[0])):
        rows.sort(key=lambda r: r["depth"])
        name = f"{kind}{tokens}" + (f" b{batch}" if batch is not None else "") + f" t{threads}"
        ax.errorbar([r["depth"] for r in rows], [r["mean"] for r in rows], yerr=[r["std"] for r in rows],
                    marker="o" if kind == "pp" else "s", capsize=3, label=name)
    by_threads: dict[int, list[dict]] = {}
    for r in doc["roofline"]:
        by_threads.setdefault(r["threads"], []).append(r)
    for threads, rows in by_threads.items():
        rows.sort(key=lambda r: r["depth"])
        ax.plot([r["depth"] for r in rows], [r["ceiling"]["serial_tok_s"] for r in rows], "k--", marker="x",
                label=f"decode ceiling t{threads} (bytes / bandwidth)")
    ax.set_yscale("log")
    from matplotlib.ticker import LogFormatter

    ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))  # plain numbers, not 4 x 10^0
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    depth_axis(ax, sorted({r["depth"] for r in doc["results"]}))
    ax.set_xlabel("context depth (tokens already cached)")
    ax.set_ylabel("tokens / s (mean ± std)")
    ax.set_title("throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def depth_axis(ax, depths: list[int]) -> None:
    """Ticks at the measured depths (matplotlib's own choice for one depth d is d ± 0.04 tokens)."""
    if len(depths) == 1:
        d = depths[0]
        ax.set_xlim(d - max(1, d // 2), d + max(1, d // 2))
    if len(depths) <= 12:
        ax.set_xticks(depths, [f"{d:,}" for d in depths])


def _phases(ax, doc: dict) -> None:
    profiles = doc["breakdown"]
    if not profiles:
        ax.text(0.5, 0.5, "no tg run (-n 0): no breakdown", ha="center", va="center")
        ax.set_axis_off()
        return
    labels = [f"t{b['threads']} d{b['depth']}" for b in profiles]
    seen = set()
    for i, b in enumerate(profiles):
        left = 0.0
        for ph in b["phases"]:
            if ph["concurrent"]:
                continue
            ax.barh(i, ph["ms"], left=left, color=COLORS.get(ph["name"], "#bcbd22"),
                    label=ph["name"] if ph["name"] not in seen else None)
            seen.add(ph["name"])
            left += ph["ms"]
        for ph in b["phases"]:
            if ph["concurrent"]:  # runs beside the serial phases: drawn as an outline under the bar
                ax.barh(i - 0.42, ph["ms"], height=0.15, color=COLORS.get(ph["name"], "#bcbd22"),
                        label=f"{ph['name']} (overlapping)" if ph["name"] + "*" not in seen else None)
                seen.add(ph["name"] + "*")
    ax.set_yticks(range(len(profiles)), labels)
    ax.set_xlabel("ms per decoded token")
    ax.set_title("decode step breakdown")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, axis="x", alpha=0.3)


def write_plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
    _throughput(left, doc)
    _phases(right, doc)
    m, p = doc["model"], doc["provenance"]
    fig.suptitle(f"hybrid-k2 bench: {m['name']}, {m['precision']} on {m['device']}, "
                 f"{doc['hardware']['cpu_model']}, commit {p['commit'][:10]}, {p['date'][:10]}", fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise HybridK2Error(f"cannot write the plot to {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
