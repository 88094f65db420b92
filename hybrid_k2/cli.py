"""The `hybrid-k2` command. Only this file reads argv; each command is a thin shell over a module.

Every user mistake surfaces as one line on stderr and a non-zero exit (never a traceback).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from hybrid_k2.errors import HybridK2Error

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Run Kimi-K2-Thinking on one machine: GPU for attention, CPU INT4 kernels for the experts.",
)


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(code)


@app.command("make-tiny")
def make_tiny_cmd(
    out_dir: Path = typer.Argument(..., help="Folder to write the checkpoint into."),
    seed: int = typer.Option(0, help="Random seed."),
    layers: int = typer.Option(3, help="Number of decoder layers (first one dense)."),
    experts: int = typer.Option(8, help="Routed experts per MoE layer."),
    top_k: int = typer.Option(2, "--top-k", help="Experts per token."),
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


@app.command("info")
def info_cmd(
    model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint folder (default: the demo model)."),
) -> None:
    """Architecture, parameter counts by placement, bytes, KV bytes per token, and loader findings."""
    from hybrid_k2.info import print_info

    print_info(model)


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
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130)
    except OSError as e:
        fail(f"{e.strerror or e}: {e.filename}" if getattr(e, "filename", None) else str(e))


if __name__ == "__main__":
    main()
