"""`hybrid-k2 bench`: tokens/s the way people compare runners (llama-bench's pp/tg, mean ± std over
repetitions, at several context depths), with a decode-step breakdown, the routed experts' GB/s against
the machine's measured bandwidth, and a roofline. See docs/bench.md.

  options.py     what was asked (lists, ranges, --project target)
  hardware.py    CPU, ISA path, cores, GPU, version, commit
  probe.py       memory bandwidth, cached per CPU model and thread count
  instrument.py  phase timing (executor spans or module hooks) and routed-expert counting
  runner.py      warm-up and the pp / tg measurement loop
  roofline.py    decode ceilings from bytes per token and bandwidth; projections
  result.py      the bench document (schema.json)
  render.py      table / markdown / csv / json
  plot.py        the PNG
"""
from __future__ import annotations

import sys
from pathlib import Path


def run_bench(opts) -> dict:
    """Runs the benchmark described by `opts` (options.BenchOptions), prints it, returns the document."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hybrid_k2.bench import hardware, render, result, runner
    from hybrid_k2.tiny import demo_model_path

    err = Console(stderr=True)
    show = err.is_terminal if opts.progress is None else opts.progress
    demo = opts.model is None
    path = demo_model_path() if demo else Path(opts.model)
    hw = hardware.describe(__import__("torch").device(opts.device))
    provenance = hardware.provenance()  # at the start: the checkout may move during a long run

    def progress():
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err, transient=True, disable=not show)

    data, model = runner.run(opts, path, hw, progress, show_progress=show)
    doc = result.build(opts, data, model, hw, provenance, demo)
    out = sys.stdout
    if opts.output == "json":
        out.write(render.to_json(doc))
    elif opts.output == "csv":
        out.write(render.to_csv(doc))
    elif opts.output == "md":
        out.write(render.to_markdown(doc))
    else:
        render.print_table(doc, Console(width=max(Console().width, 120)))
    if opts.plot is not None:
        from hybrid_k2.bench.plot import write_plot

        write_plot(doc, opts.plot)
        err.print(f"wrote {opts.plot}")
    return doc
