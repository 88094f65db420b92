"""Starts uvicorn on the app: what `hybrid-k2 serve` runs."""
from __future__ import annotations

import ipaddress
import logging
import socket
import sys
from pathlib import Path
from typing import Optional

from hybrid_k2.errors import HybridK2Error
from hybrid_k2.serve.engine import ServeConfig, load_engine

REASONING_FIELDS = ("reasoning_content", "reasoning", "both")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a busy port fails in a second, not after
    loading hundreds of GB."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise HybridK2Error(f"cannot resolve --host {host!r}: {e}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise HybridK2Error(f"cannot listen on {host}:{port}: {e.strerror or e} (another server on that port? "
                            "choose another with --port)") from None
    sock.set_inheritable(True)
    return sock


def run_server(*, model: Optional[Path], host: str, port: int, api_key: Optional[str], config: ServeConfig,
               max_queue: int, max_body_bytes: int, device: str, precision: str, threads: Optional[int],
               log_level: str = "info", runtime=None) -> None:
    import uvicorn

    from hybrid_k2.serve.app import create_app

    if not 0 <= port <= 65535:
        raise HybridK2Error(f"port must be 0..65535, got {port}")
    if config.reasoning_field not in REASONING_FIELDS:
        raise HybridK2Error(f"--reasoning-field must be one of {', '.join(REASONING_FIELDS)}")
    if max_queue < 0 or max_body_bytes < 1024:
        raise HybridK2Error("--max-queue must be >= 0 and --max-body-bytes >= 1024")
    if config.max_model_len is not None and config.max_model_len < 2:
        raise HybridK2Error("--max-model-len must be at least 2")
    if log_level.lower() not in LOG_LEVELS:
        raise HybridK2Error(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    log_level = log_level.lower()
    if threads:  # the old --threads: torch threads, applied by the runtime like --torch-threads
        from hybrid_k2.runtime.cli_options import runtime_config

        runtime = runtime or runtime_config()
        if runtime.torch_threads is None:
            runtime = runtime.replace(torch_threads=threads)
    if not _is_loopback(host) and not api_key:
        print(f"warning: listening on {host} without --api-key: anyone who can reach this port can use the model",
              file=sys.stderr)
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.DEBUG),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = bind(host, port)
    port = sock.getsockname()[1]
    engine = load_engine(model, config, device=device, precision=precision, runtime=runtime)
    if config.max_model_len and config.max_model_len > engine.model.args.max_position_embeddings:
        raise HybridK2Error(f"--max-model-len {config.max_model_len} exceeds the model's context of "
                            f"{engine.model.args.max_position_embeddings}")
    app = create_app(engine, api_key=api_key, max_queue=max_queue, max_body_bytes=max_body_bytes)
    print(f"serving {config.served_model_name} from {engine.model.path} on http://{host}:{port}/v1 "
          f"(context {engine.max_model_len} tokens)", file=sys.stderr, flush=True)
    if engine.model.runtime is not None:
        print(f"runtime: {engine.model.runtime.describe()}", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=5, timeout_keep_alive=30))
    server.run(sockets=[sock])
