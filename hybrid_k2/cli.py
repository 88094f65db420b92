"""The `hybrid-k2` command. Only this file reads argv; each command is a thin shell over a module.

Every user mistake surfaces as one line on stderr and a non-zero exit (never a traceback).
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import typer

from hybrid_k2.errors import HybridK2Error
from hybrid_k2.runtime.cli_options import runtime_options


def _valueless_flags(params: list) -> list:
    """A flag takes no value: --help shows no type for it (typer would print `<bool>`)."""
    for p in params:
        if getattr(p, "is_flag", False):
            p.metavar = ""
    return params


class Command(typer.core.TyperCommand):
    def get_params(self, ctx):
        return _valueless_flags(super().get_params(ctx))


class Group(typer.core.TyperGroup):
    def get_params(self, ctx):
        return _valueless_flags(super().get_params(ctx))


app = typer.Typer(
    cls=Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Run Kimi-K2-Thinking on one machine: GPU for attention, CPU INT4 kernels for the experts.",
)
command = functools.partial(app.command, cls=Command)

# The device and precision flags of every command that loads or plans a model.
DEVICE = typer.Option("auto", "--device", help="auto (cuda when available, else cpu), cpu or cuda[:N]: "
                      "where attention, the dense layer and the shared experts run.")
PRECISION = typer.Option("fast", "--precision", help="fast (bf16 + fast kernels) or exact (fp32, no TF32: "
                         "for checking numerics).")


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def checked_device(device: str, precision: str, *, gpu_wanted: bool = False) -> str:
    """The device `--device` names ("auto" resolved); a bad --device or --precision is a usage error."""
    from hybrid_k2.api import PRECISIONS
    from hybrid_k2.runtime.machine import resolve_device

    if precision not in PRECISIONS:
        fail(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}", code=2)
    try:
        return resolve_device(device, gpu_wanted=gpu_wanted)
    except HybridK2Error as e:
        fail(str(e), code=2)


def _version(value: bool) -> None:
    if value:
        from hybrid_k2.version import describe

        typer.echo(f"hybrid-k2 {describe()}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="Print the version (and the commit it was built from) and exit.")) -> None:
    pass  # the options of `hybrid-k2` itself; the help text is the app's


@command("make-tiny")
def make_tiny_cmd(
    out_dir: Path = typer.Argument(..., help="Folder to write the checkpoint into."),
    seed: int = typer.Option(0, help="Random seed."),
    layers: int = typer.Option(3, help="Number of decoder layers (first one dense)."),
    experts: int = typer.Option(8, help="Routed experts per MoE layer."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Experts per token (default 2; 8 with --k2-shape)."),
    hidden: int = typer.Option(64, help="Hidden size (multiple of 32)."),
    moe_intermediate: int = typer.Option(32, "--moe-intermediate", help="Routed expert width (multiple of 32)."),
    n_group: int = typer.Option(1, "--n-group", help="Router groups."),
    topk_group: int = typer.Option(1, "--topk-group", help="Router groups kept."),
    vocab: int = typer.Option(0, help="Vocabulary size incl. 256 specials (0: smallest that fits the tokenizer)."),
    k2_shape: bool = typer.Option(False, "--k2-shape", help="Real K2 dimensions (hidden 7168, 64 heads, ...), few layers/experts."),
    force: bool = typer.Option(False, help="Overwrite a non-empty folder."),
) -> None:
    """Write a small random model in exactly the official on-disk format."""
    from hybrid_k2.tiny import TinySpec, make_tiny

    spec = TinySpec(seed=seed, layers=layers, experts=experts, top_k=top_k, hidden=hidden,
                    moe_intermediate=moe_intermediate, n_group=n_group, topk_group=topk_group,
                    vocab=vocab, k2_shape=k2_shape)
    path = make_tiny(out_dir, spec, force=force)
    typer.echo(f"wrote {path}")


@command("chat")
@runtime_options
def chat_cmd(
    model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint folder (default: the random-weight demo model)."),
    tools: Optional[Path] = typer.Option(None, "--tools", help="JSON file with a list of tool declarations (OpenAI format)."),
    builtin_tools: bool = typer.Option(False, "--builtin-tools", help="Declare and run the built-in tools (calculator)."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt (default: the model's own)."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (0: greedy; K2-Thinking is tuned for 1.0)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the k most likely tokens (0: off)."),
    min_p: float = typer.Option(0.0, "--min-p", help="Drop tokens below min_p x the top probability."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Tokens per answer, thinking included (default 4096; demo 128)."),
    seed: Optional[int] = typer.Option(None, help="Random seed for reproducible answers."),
    thinking_budget: Optional[int] = typer.Option(None, "--thinking-budget", help="Force the end of thinking after N tokens."),
    hide_thinking: bool = typer.Option(False, "--hide-thinking", help="Start with the thinking hidden (/think on shows it)."),
    device: str = DEVICE,
    precision: str = PRECISION,
    runtime=None,
) -> None:
    """Talk to the model in the terminal: streamed answers, thinking shown dimmed, tool calls, /help."""
    from hybrid_k2.chat.repl import run_chat
    from hybrid_k2.chat.sampling import SamplingParams

    device = checked_device(device, precision)
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed,
                            max_tokens=max_tokens or (4096 if model is not None else 128),
                            thinking_budget=thinking_budget)
    raise SystemExit(run_chat(model, tools_file=tools, builtin_tools=builtin_tools, params=params, system=system,
                              show_thinking=not hide_thinking, max_context=runtime.ctx, device=device,
                              precision=precision, runtime=runtime))


@command("bench")
@runtime_options
def bench_cmd(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Checkpoint folder (default: the demo model)."),
    n_prompt: int = typer.Option(512, "--n-prompt", "-p", help="Prompt tokens of the pp test (0: skip pp)."),
    n_gen: int = typer.Option(128, "--n-gen", "-n", help="Generated tokens of the tg test (0: skip tg)."),
    repetitions: int = typer.Option(5, "--repetitions", "-r", help="Repetitions of each test."),
    depth: str = typer.Option("0", "--depth", "-d", help="Context depths, e.g. 0,4096,16384 or 0-16384+4096."),
    batch: str = typer.Option("512", "--batch", "-b", help="Prompt tokens per forward during pp (list or range)."),
    threads: Optional[str] = typer.Option(None, "--threads", "-t",
                                          help="Expert-kernel threads (list; default: physical cores)."),
    precision: str = PRECISION,
    device: str = DEVICE,
    output: str = typer.Option("table", "--output", "-o", help="table | json | csv | md."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write tok/s vs depth and the step breakdown to a PNG."),
    project: Optional[str] = typer.Option(None, "--project",
                                          help='Project onto a target, e.g. "bandwidth=307GB/s,gpu_bw=1008GB/s".'),
    seed: int = typer.Option(0, help="Seed of the random prompt tokens."),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup", help="Warm up (and touch every expert) first."),
    reprobe: bool = typer.Option(False, "--reprobe", help="Measure the memory bandwidth again (else cached)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr."),
    fill: str = typer.Option("prefill", "--fill",
                             help="How the cache reaches each depth: prefill (real tokens) or synthetic (random rows)."),
    runtime=None,
) -> None:
    """Prompt-processing and generation tokens/s (llama-bench style), step breakdown, bandwidth roofline."""
    from hybrid_k2.bench import run_bench
    from hybrid_k2.bench.options import BenchOptionError, BenchOptions, Target, parse_int_list

    device = checked_device(device, precision)
    try:
        opts = BenchOptions(model=model, n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions,
                            depths=parse_int_list(depth, "--depth"), batches=parse_int_list(batch, "--batch"),
                            threads=parse_int_list(threads, "--threads", minimum=1), runtime=runtime,
                            precision=precision, device=device,
                            output=output, plot=plot, project=Target.parse(project) if project else None,
                            seed=seed, warmup=warmup, reprobe=reprobe, progress=progress, fill=fill)
        run_bench(opts)
    except BenchOptionError as e:  # a usage error, like a flag the parser rejects
        fail(str(e), code=2)


@command("info")
def info_cmd(
    model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint folder, or config.json alone (default: "
                                         "the demo model)."),
) -> None:
    """Architecture, parameter counts by placement, bytes, KV bytes per token, and loader findings."""
    from hybrid_k2.info import print_info

    print_info(model)


@command("serve")
@runtime_options
def serve_cmd(
    model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint folder (default: the demo model)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="HYBRID_K2_API_KEY",
                                          help="Require the key ('Authorization: Bearer KEY' or 'x-api-key: KEY') on every route but / and /health."),
    served_model_name: str = typer.Option("kimi-k2-thinking", "--served-model-name", help="Model id clients send."),
    max_queue: int = typer.Option(16, "--max-queue", help="Requests waiting behind the running one before 429."),
    max_body_bytes: int = typer.Option(32 * 2**20, "--max-body-bytes", help="Largest request body (413 above)."),
    prefix_cache_tokens: Optional[int] = typer.Option(None, "--prefix-cache-tokens",
                                                      help="Cap on tokens of KV kept for reuse across requests (0: no reuse; default: --kv-host-mem decides)."),
    prefix_cache_sessions: int = typer.Option(256, "--prefix-cache-sessions", help="Conversations kept cached (device + host RAM)."),
    kv_host_mem: Optional[str] = typer.Option(None, "--kv-host-mem",
                                              help="Host RAM for idle conversations' KV caches, e.g. 64GiB (default: half the free RAM)."),
    kv_cache_dir: Optional[Path] = typer.Option(None, "--kv-cache-dir",
                                                help="Also keep conversations' KV caches in files here: they survive eviction and restarts."),
    kv_disk_mem: Optional[str] = typer.Option(None, "--kv-disk-mem",
                                              help="Bytes of files in --kv-cache-dir (default: half the free space there)."),
    thinking_token_budget: Optional[int] = typer.Option(None, "--thinking-token-budget",
                                                        help="Default cap on reasoning tokens (none: unbounded)."),
    reasoning_field: str = typer.Option("reasoning_content", "--reasoning-field",
                                        help="reasoning_content | reasoning | both (newer vLLM clients read 'reasoning')."),
    device: str = DEVICE,
    precision: str = PRECISION,
    threads: Optional[int] = typer.Option(None, help="Same as --torch-threads (kept for old scripts)."),
    log_level: str = typer.Option("info", "--log-level", help="critical | error | warning | info | debug | trace."),
    runtime=None,
) -> None:
    """OpenAI- and Anthropic-compatible HTTP server with a web chat at / (docs/serve.md)."""
    from hybrid_k2.runtime.config import parse_bytes
    from hybrid_k2.serve.engine import ServeConfig
    from hybrid_k2.serve.server import run_server

    device = checked_device(device, precision)
    if prefix_cache_tokens is not None and prefix_cache_tokens < 0:
        fail("--prefix-cache-tokens must be >= 0")
    config = ServeConfig(served_model_name=served_model_name, max_model_len=runtime.ctx,
                         cache_tokens=prefix_cache_tokens, cache_sessions=prefix_cache_sessions,
                         kv_host_mem=parse_bytes(kv_host_mem), kv_cache_dir=kv_cache_dir,
                         kv_disk_mem=parse_bytes(kv_disk_mem),
                         thinking_token_budget=thinking_token_budget, reasoning_field=reasoning_field)
    run_server(model=model, host=host, port=port, api_key=api_key, config=config, max_queue=max_queue,
               max_body_bytes=max_body_bytes, device=device, precision=precision, threads=threads,
               log_level=log_level, runtime=runtime)


@command("plan")
@runtime_options
def plan_cmd(
    model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint folder or config.json (no weights needed)."),
    gpu_mem: Optional[str] = typer.Option(None, "--gpu-mem", help="GPU memory budget, e.g. 24GiB."),
    ram: Optional[str] = typer.Option(None, "--ram", help="Host RAM budget, e.g. 1TiB."),
    precision: str = PRECISION,
    device: str = typer.Option("auto", "--device", help="auto (cuda when a GPU is present or --gpu-mem is "
                               "given, else cpu: everything in RAM), cpu or cuda[:N]."),
    output: str = typer.Option("table", "--output", help="table | json"),
    runtime=None,
) -> None:
    """What goes where and how many bytes (GPU weights, KV, activations, experts in RAM), before loading."""
    from hybrid_k2.runtime.report import plan_for, print_plan
    from hybrid_k2.tiny import demo_model_path

    if output not in ("table", "json"):
        fail(f"--output must be table or json, got {output!r}")
    device = checked_device(device, precision, gpu_wanted=gpu_mem is not None)
    path = model if model is not None else demo_model_path()
    plan = plan_for(path, gpu_mem=gpu_mem, ram=ram, precision=precision, device=device, runtime=runtime)
    print_plan(plan, output=output, model=path)


@command("profile-experts")
@runtime_options
def profile_experts_cmd(
    prompts: Path = typer.Option(..., "--prompts", help="Text (one prompt per line) or JSON lines."),
    out: Path = typer.Option(..., "--out", help="Counts file to write (read by --gpu-experts)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint folder (default: the demo model)."),
    device: str = DEVICE,
    precision: str = PRECISION,
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Use at most this many tokens per prompt."),
    runtime=None,
) -> None:
    """Per-layer routing counts over prompts: which experts are hot."""
    from hybrid_k2.runtime.profile import profile_experts
    from hybrid_k2.tiny import demo_model_path

    device = checked_device(device, precision)
    data = profile_experts(model if model is not None else demo_model_path(), prompts, out, device=device,
                           precision=precision, max_tokens=max_tokens, runtime=runtime)
    typer.echo(f"wrote {out}: {data['tokens']} tokens over {data['prompts']} prompts, {len(data['counts'])} MoE layers")


@app.command("doctor")
def doctor_cmd(
    output: str = typer.Option("table", "--output", "-o", help="table | json."),
    probe_mb: int = typer.Option(1024, "--probe-mb", help="Size of the memory bandwidth probes in MB."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda: check this device only (default: all here)."),
    check: Optional[list[str]] = typer.Option(None, "--check", help="Run only the checks whose name contains this (repeatable)."),
) -> None:
    """Is this machine set up right, and what will it do? The machine, then every check on a tiny model."""
    import torch

    from hybrid_k2.doctor import run_doctor
    from hybrid_k2.doctor.checks import CHECKS

    if output not in ("table", "json"):
        fail(f"--output must be table or json, got {output!r}", code=2)
    if probe_mb < 1:
        fail("--probe-mb must be >= 1", code=2)
    if device not in (None, "cpu", "cuda"):
        fail(f"--device must be cpu or cuda, got {device!r}", code=2)
    if device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA GPU is available to this torch build")
    only = None
    if check:
        only = {c.name for c in CHECKS if any(word.lower() in c.name.lower() for word in check)}
        if not only:
            fail(f"no check matches {', '.join(check)}", code=2)
    raise SystemExit(run_doctor(output=output, probe_mb=probe_mb, devices=[device] if device else None, only=only))


def main() -> None:
    import click

    try:
        app(standalone_mode=False)
    except HybridK2Error as e:
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        raise SystemExit(130)
    except click.ClickException as e:
        e.show()
        raise SystemExit(e.exit_code)
    except typer.TyperException as e:  # typer vendors click: its usage errors are not click's classes
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        fail(message.splitlines()[0] if message else type(e).__name__, getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130)
    except OSError as e:
        fail(f"{e.strerror or e}: {e.filename}" if getattr(e, "filename", None) else str(e))


if __name__ == "__main__":
    main()
