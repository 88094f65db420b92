"""Text renderings of the bench document: a rich table (default), Markdown, CSV and JSON."""
from __future__ import annotations

import csv
import io
import json

CSV_COLUMNS = ("test", "kind", "depth", "batch", "threads", "tokens", "mean", "std", "median", "min", "max",
               "unit", "model", "precision", "device", "experts_backend", "cpu_model", "isa", "read_gbps",
               "version", "commit", "date")


def _gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e8 else f"{n / 1e6:,.2f} MB"


def label(r: dict) -> str:
    return r["test"] + (f" @ d{r['depth']}" if r["depth"] else "")


def _n(x, digits=2) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def header_lines(doc: dict) -> list[str]:
    m, h, p = doc["model"], doc["hardware"], doc["provenance"]
    bws = ", ".join(f"{b['read_gbps']:.1f} GB/s read / {b['triad_gbps']:.1f} GB/s triad with {b['threads']} "
                    f"threads ({b['method']}{', cached ' + b['measured_at'] if b.get('cached') else ''})"
                    for b in h["memory_bandwidth"])
    return [
        f"model: {m['name']} ({m['layers']} layers, {m['experts']} experts top-{m['top_k']}, hidden {m['hidden']}), "
        f"{m['precision']} on {m['device']} (torch threads {doc['settings']['torch_threads']}), "
        f"experts: {m['experts_backend']}, timing: {m['instrument']}",
        f"cpu: {h['cpu_model']} ({h['physical_cores']} cores, {h['logical_cpus']} logical), isa {h['isa']}, "
        f"gpu: {h['gpu']['name'] if h['gpu'] else 'none'}",
        f"memory bandwidth: {bws}",
        f"hybrid-k2 {p['version']} commit {p['commit'][:12]}{' (modified)' if p['commit_dirty'] else ''}, {p['date']}",
    ]


def results_rows(doc: dict) -> list[list[str]]:
    m = doc["model"]
    return [[m["name"], str(r["threads"]), "" if r["batch"] is None else str(r["batch"]), label(r),
             f"{r['mean']:,.2f} ± {r['std']:,.2f}"] for r in doc["results"]]


RESULT_HEADERS = ["model", "threads", "batch", "test", "t/s"]


def breakdown_table(doc: dict) -> tuple[list[str], list[list[str]]]:
    """Rows: phases; columns: one per (threads, depth) profile, 'ms (share)'."""
    profiles = doc["breakdown"]
    headers = ["phase", "where"] + [f"t{b['threads']} d{b['depth']}: ms/token" for b in profiles]
    names: list[str] = []
    for b in profiles:
        names += [ph["name"] for ph in b["phases"] if ph["name"] not in names]
    rows = []
    for n in names:
        cells, where = [], ""
        for b in profiles:
            ph = next((x for x in b["phases"] if x["name"] == n), None)
            if ph is None:
                cells.append("")
                continue
            where = ph["where"]
            tag = " (overlaps)" if ph["concurrent"] else f" ({ph['share']:.0%})"
            rate = f", {_gb(ph['bytes'])} at {ph['gbps']:,.1f} GB/s" if "gbps" in ph else ""
            cells.append(f"{ph['ms']:,.3f}{tag}{rate}")
        rows.append([n if n != "python" else "python overhead", where] + cells)
    rows.append(["step (sum of serial phases)", ""] + [f"{b['sum_ms']:,.3f}" for b in profiles])
    rows.append(["step from tg tok/s", ""] + [f"{b['tg_step_ms']:,.3f}" for b in profiles])
    return headers, rows


def summary_lines(doc: dict) -> list[str]:
    out = []
    for e, r, b in zip(doc["experts"], doc["roofline"], doc["breakdown"]):
        c = r["ceiling"]
        where = f"t{e['threads']} d{e['depth']}"
        dev = [ph for ph in b["phases"] if "gbps" in ph]
        if dev:
            total_b, total_ms = sum(ph["bytes"] for ph in dev), sum(ph["ms"] for ph in dev)
            gbps = total_b / total_ms / 1e6 if total_ms > 0 else 0.0
            out.append(f"[{where}] device side: {_gb(total_b)}/token in {total_ms:,.3f} ms = {gbps:,.1f} GB/s = "
                       f"{gbps / e['bandwidth_read_gbps']:.1%} of the read bandwidth ("
                       + ", ".join(f"{ph['name']} {ph['gbps']:,.1f}" for ph in dev) + " GB/s)")
        out.append(f"[{where}] routed experts: {e['experts_per_token']:.1f} experts/token = {_gb(e['bytes_per_token'])}"
                   f"/token; cpu_experts phase {_n(e['gbps'])} GB/s = "
                   f"{'n/a' if e['fraction_of_bandwidth'] is None else format(e['fraction_of_bandwidth'], '.1%')} "
                   f"of the {e['bandwidth_read_gbps']:.1f} GB/s read bandwidth ({e['bandwidth_method']} probe)")
        out.append(f"[{where}] roofline: {_gb(c['cpu_bytes'])} routed / {c['cpu_gbps']:.1f} GB/s = "
                   f"{c['cpu_ms']:.3f} ms + device side {_gb(c['device_bytes'])} / {c['device_gbps']:.1f} GB/s = "
                   f"{c['device_ms']:.3f} ms -> ceiling {c['serial_tok_s']:,.1f} tok/s; this run "
                   f"{r['tg_tok_s']:,.2f} tok/s = {r['fraction_of_ceiling']:.1%} of it")
        out.append(f"[{where}] note: {r['note']}")
    p = doc["projection"]
    if p:
        c = p["ceiling"]
        gpu = f", GPU {p['gpu_bw_gbps']:g} GB/s" if p["gpu_bw_gbps"] else ", no GPU"
        out.append(f"projection '{p['name']}' (host {p['bandwidth_gbps']:g} GB/s{gpu}) for {p['model']}: "
                   f"ceiling {c['serial_tok_s']:.1f} tok/s in series"
                   + (f", {c['overlap_tok_s']:.1f} tok/s with full CPU/GPU overlap" if p["gpu_bw_gbps"] else "")
                   + (f"; at this run's fraction of the ceiling {p['at_this_run_fraction_tok_s']:.1f} tok/s"
                      if p["at_this_run_fraction_tok_s"] is not None else "")
                   + (f"; at this run's expert efficiency {p['at_this_run_expert_efficiency_tok_s']:.1f} tok/s"
                      if p["at_this_run_expert_efficiency_tok_s"] is not None else ""))
        out += [f"  assumption: {a}" for a in p["assumptions"]]
    return out + [f"warning: {w}" for w in doc["warnings"]]


def to_json(doc: dict) -> str:
    return json.dumps(doc, indent=2) + "\n"


def to_csv(doc: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    m, h, p = doc["model"], doc["hardware"], doc["provenance"]
    bw = {b["threads"]: b["read_gbps"] for b in h["memory_bandwidth"]}
    for r in doc["results"]:
        w.writerow({**{k: r[k] for k in ("test", "kind", "depth", "batch", "threads", "tokens", "mean", "std",
                                         "median", "min", "max", "unit")},
                    "model": m["name"], "precision": m["precision"], "device": m["device"],
                    "experts_backend": m["experts_backend"], "cpu_model": h["cpu_model"], "isa": h["isa"],
                    "read_gbps": bw.get(r["threads"]), "version": p["version"], "commit": p["commit"],
                    "date": p["date"]})
    return buf.getvalue()


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    aligns = ["---:" if h in ("threads", "batch", "t/s") or h.endswith("ms/token") else "---" for h in headers]
    return (["| " + " | ".join(headers) + " |", "| " + " | ".join(aligns) + " |"]
            + ["| " + " | ".join(r) + " |" for r in rows])


def to_markdown(doc: dict) -> str:
    lines = [f"- {x}" for x in header_lines(doc)] + [""]
    lines += _md_table(RESULT_HEADERS, results_rows(doc))
    if doc["breakdown"]:
        lines += ["", "Decode step breakdown:", ""] + _md_table(*breakdown_table(doc))
    lines += [""] + [f"- {x}" for x in summary_lines(doc)]
    return "\n".join(lines) + "\n"


def print_table(doc: dict, console) -> None:
    from rich.table import Table

    for line in header_lines(doc):
        console.print(line, highlight=False, markup=False)
    t = Table(show_edge=True)
    for h in RESULT_HEADERS:
        t.add_column(h, justify="right" if h in ("threads", "batch", "t/s") else "left")
    for r in results_rows(doc):
        t.add_row(*r)
    console.print(t)
    if doc["breakdown"]:
        headers, rows = breakdown_table(doc)
        b = Table(title="decode step breakdown (ms per token, share of the step)")
        for h in headers:
            b.add_column(h, justify="left" if h in ("phase", "where") else "right")
        for r in rows:
            b.add_row(*r)
        console.print(b)
    for line in summary_lines(doc):
        console.print(line, highlight=False, markup=False)
