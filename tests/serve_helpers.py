"""A real `hybrid-k2 serve` subprocess on a free loopback port, for the serve tests."""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

API_KEY = "test-key-123"
MODEL = "kimi-k2-thinking"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log
        self.base = f"http://127.0.0.1:{port}"

    def client(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.base + "/v1", api_key=API_KEY, max_retries=0, timeout=120, **kw)

    def http(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120, **kw)

    def metrics(self) -> dict[str, float]:
        """Unlabelled samples of /metrics as name -> value."""
        text = self.http().get("/metrics").text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def run_server(model_dir: Path, tmp_dir: Path, *extra: str, api_key: str | None = API_KEY, preexec_fn=None):
    port = free_port()
    log = tmp_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "hybrid_k2.cli", "serve", "--model", str(model_dir), "--port", str(port),
           "--threads", "1", "--log-level", "warning", *extra]
    if api_key:
        cmd += ["--api-key", api_key]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec_fn)
    server = Server(proc, port, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log_text()}")
            try:
                if httpx.get(server.base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not come up:\n{server.log_text()}")
            time.sleep(0.2)
        yield server
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def close_streams(streams) -> None:
    """Leaves httpx stream contexts (hanging up), ignoring errors of connections already closed."""
    for s in streams:
        try:
            s.__exit__(None, None, None)
        except httpx.HTTPError:
            pass


def render_prompt_ids(model_dir: Path, messages, tools=None) -> list[int]:
    """The prompt the server must build, computed independently with the chat package."""
    from hybrid_k2.chat.template import ChatTemplate
    from hybrid_k2.chat.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(model_dir)
    return ChatTemplate.from_dir(model_dir).render_ids(tok, messages, tools)


# Servers shared by the test modules of one pytest run (starting one costs seconds): keyed by model
# and flags, stopped when the run ends. Tests on a shared server assert on differences of counters,
# never on their absolute values.
STRICT = ("--max-model-len", "400", "--max-body-bytes", "65536", "--max-queue", "1", "--thinking-token-budget", "1")
_shared: dict[tuple, tuple[Server, object]] = {}


def shared_server(model_dir: Path, *extra: str) -> Server:
    key = (str(model_dir), extra)
    if key not in _shared:
        log_dir = Path(tempfile.mkdtemp(prefix="hk2-serve-"))
        cm = run_server(model_dir, log_dir, *extra)
        _shared[key] = (cm.__enter__(), cm)
        atexit.register(shutil.rmtree, log_dir, ignore_errors=True)  # atexit runs last-in first-out:
        atexit.register(cm.__exit__, None, None, None)  # the server stops, then its log folder goes
    return _shared[key][0]
