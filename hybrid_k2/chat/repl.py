"""`hybrid-k2 chat`: a terminal conversation with the model.

[NOTE] The model runs in a worker thread and streams GenerationEvents through a queue; the main
thread prints them and owns the keyboard, so Ctrl-C only sets the cancel event (the cache stays
consistent: the loop stops between tokens) and the REPL goes on. Input uses the stdlib `readline`
(history in the user cache dir). Model text is printed with control characters made visible, so an
answer cannot send escape sequences to the terminal (display.py).
"""
from __future__ import annotations

import json
import queue
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, TextIO

from hybrid_k2.chat.calculator import TOOL as CALCULATOR_TOOL, run_calculator
from hybrid_k2.chat.display import PrefillProgress, StreamPrinter, Terminal, visible
from hybrid_k2.chat.parser import ToolCall
from hybrid_k2.chat.sampling import SamplingParams
from hybrid_k2.chat.template import check_messages
from hybrid_k2.chat.tokenizer import read_json
from hybrid_k2.errors import HybridK2Error

MAX_TOOL_ROUNDS = 8
BUILTIN_TOOLS: dict[str, tuple[dict, Callable[[str], str]]] = {"calculator": (CALCULATOR_TOOL, run_calculator)}
SETTABLE = {"temperature": float, "top_p": float, "top_k": int, "min_p": float, "max_tokens": int,
            "seed": int, "thinking_budget": int}
HELP = """commands:
  /help               this text
  /reset              forget the conversation (keeps the system prompt)
  /system [TEXT]      set the system prompt (no TEXT: back to the model's default)
  /think on|off       show or hide the model's thinking
  /set NAME VALUE     sampling: temperature top_p top_k min_p max_tokens seed thinking_budget (VALUE none: unset)
  /save FILE          write the conversation as JSON (its KV cache to FILE.kv);  /load FILE  read both back
  /stats              token counts and speeds
  /exit               leave (also Ctrl-D)
input: end a line with \\ to continue it, or wrap several lines in \"\"\" ... \"\"\"; Ctrl-C stops an answer."""

def load_tools(path: Path) -> list[dict]:
    """A JSON list of OpenAI tool declarations (or bare {"name", "description", "parameters"})."""
    data = read_json(path, "tools file")
    if not isinstance(data, list):
        raise HybridK2Error(f"tools file {path}: expected a JSON list of tool declarations")
    tools = []
    for i, t in enumerate(data):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else t
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise HybridK2Error(f"tools file {path}: tool {i} needs a \"name\" (OpenAI format: "
                                "{\"type\": \"function\", \"function\": {\"name\": ...}})")
        if not isinstance(fn.get("parameters", {}), dict):
            raise HybridK2Error(f"tools file {path}: parameters of {fn['name']} must be a JSON schema object")
        tools.append({"type": "function", "function": fn})
    return tools


class Repl:
    def __init__(self, engine, *, params: SamplingParams, tools: list[dict] | None = None,
                 builtin: dict[str, Callable[[str], str]] | None = None, system: str | None = None,
                 show_thinking: bool = True, max_context: int | None = None, banner: str = "",
                 stdin: TextIO | None = None, stdout: TextIO | None = None):
        self.engine, self.params, self.tools = engine, params, tools or None
        self.builtin = builtin or {}
        self.system, self.show_thinking, self.banner = system, show_thinking, banner
        self.session = engine.new_session(max_context)
        self.messages: list[dict] = []
        self.term = Terminal(stdout or sys.stdout)
        self.stdin = stdin or sys.stdin
        self.totals = {"turns": 0, "prompt": 0, "cached": 0, "generated": 0, "thinking": 0}
        self.last_stats = None

    # ---- input ---------------------------------------------------------------------------
    def _input(self, prompt: str) -> str:
        if self.stdin is sys.stdin:
            return input(prompt)  # readline-enabled when stdin is a terminal
        self.term.write(prompt)
        line = self.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    def read_message(self) -> str:
        """One message: continuation lines after a trailing backslash, or a \"\"\" block."""
        line = self._input("you> ")
        if line.lstrip().startswith('"""'):
            first = line.lstrip()[3:]
            if first.rstrip().endswith('"""') and len(first.rstrip()) >= 3:
                return first.rstrip()[:-3]
            lines = [first] if first else []
            while True:
                line = self._input("...> ")
                if line.rstrip().endswith('"""'):
                    if line.rstrip()[:-3]:
                        lines.append(line.rstrip()[:-3])
                    return "\n".join(lines)
                lines.append(line)
        lines = []
        while line.endswith("\\"):
            lines.append(line[:-1])
            line = self._input("...> ")
        lines.append(line)
        return "\n".join(lines)

    # ---- main loop -----------------------------------------------------------------------
    def run(self) -> int:
        history = _setup_readline() if self.stdin is sys.stdin and sys.stdin.isatty() else None
        if self.banner:
            self.term.line(self.banner, "dim")
        try:
            while True:
                try:
                    text = self.read_message()
                except KeyboardInterrupt:
                    self.term.line("^C")
                    continue
                except EOFError:
                    self.term.line()
                    return 0
                if text.startswith("/") and not text.startswith("//"):
                    if self.command(text.strip()) == "exit":
                        return 0
                    continue
                text = text[1:] if text.startswith("//") else text
                if text.strip():
                    self.messages.append({"role": "user", "content": text})
                    try:
                        self.respond()
                    except KeyboardInterrupt:  # between answers (tool rounds, stats): back to the prompt
                        self.term.line(" [interrupted]", "dim")
        finally:
            if history is not None:
                history()

    def conversation(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages

    def respond(self) -> None:
        for _ in range(MAX_TOOL_ROUNDS):
            final = self.generate_once()
            if final is None:
                return
            if final.stats.completion_tokens:
                self.messages.append(final.output.to_message())
            if final.stats.finish_reason != "tool_calls" or not self.run_tools(final.output.tool_calls):
                return
        self.term.line(f"[stopped after {MAX_TOOL_ROUNDS} rounds of tool calls]", "dim")

    def generate_once(self):
        """Streams one answer; returns its final event, or None after an error."""
        events: queue.Queue = queue.Queue()
        cancel = threading.Event()
        conversation = self.conversation()

        def progress(done: int, total: int) -> None:
            events.put(("prefill", done, total, time.perf_counter()))

        def worker():
            try:
                for event in self.engine.chat(self.session, conversation, self.tools, self.params, cancel=cancel,
                                              progress=progress):
                    events.put(event)
            except BaseException as e:  # handed to the main thread, which reports it
                events.put(e)
            finally:
                events.put(None)

        threading.Thread(target=worker, name="hybrid-k2-generate", daemon=True).start()
        printer, final, error = StreamPrinter(self.term, self.show_thinking), None, None
        bar = PrefillProgress(self.term)
        while True:
            try:
                item = events.get(timeout=0.1)
                if item is None:
                    break
                if isinstance(item, tuple):  # ("prefill", done, total, time)
                    bar.update(*item[1:])
                    continue
                bar.end()
                if isinstance(item, BaseException):
                    error = item
                    continue
                for d in item.deltas:
                    printer.delta(d)
                if item.done:
                    final = item
            except queue.Empty:
                continue
            except KeyboardInterrupt:
                cancel.set()  # the worker stops before its next token
        if error is not None:
            if isinstance(error, HybridK2Error):
                if self.messages and self.messages[-1]["role"] == "user":
                    self.messages.pop()  # the message that failed (e.g. did not fit) is not kept
                self.term.line(f"error: {str(error).splitlines()[0]}", "error")
                return None
            raise error
        printer.end(final.stats, final.stats.finish_reason == "cancelled")
        self._count(final.stats)
        return final

    def run_tools(self, calls: list[ToolCall]) -> bool:
        """Appends one tool message per call; False if the user gave up (Ctrl-C / Ctrl-D)."""
        for call in calls:
            if call.name in self.builtin:
                result = self.builtin[call.name](call.arguments)
                self.term.line(f"[built-in {call.name}] {visible(result)}", "tool")
            else:
                self.term.line(f"[tool {visible(call.name)} is yours to run; type its result, \"\"\" for several lines]",
                               "tool")
                try:
                    result = self.read_message()
                except (KeyboardInterrupt, EOFError):
                    self.term.line("\n[tool call abandoned]", "dim")
                    return False
            self.messages.append({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": result})
        return True

    def _count(self, stats) -> None:
        self.last_stats = stats
        t = self.totals
        t["turns"] += 1
        t["prompt"] += stats.prompt_tokens
        t["cached"] += stats.cached_tokens
        t["generated"] += stats.completion_tokens
        t["thinking"] += stats.reasoning_tokens

    # ---- commands ------------------------------------------------------------------------
    def command(self, text: str) -> str | None:
        name, _, arg = text.partition(" ")
        arg = arg.strip()
        try:
            if name in ("/exit", "/quit"):
                return "exit"
            handler = {"/help": self.cmd_help, "/reset": self.cmd_reset, "/system": self.cmd_system,
                       "/think": self.cmd_think, "/set": self.cmd_set, "/save": self.cmd_save,
                       "/load": self.cmd_load, "/stats": self.cmd_stats}.get(name)
            if handler is None:
                raise HybridK2Error(f"unknown command {name} (try /help)")
            handler(arg)
        except HybridK2Error as e:
            self.term.line(f"error: {e}", "error")
        return None

    def cmd_help(self, arg: str) -> None:
        self.term.line(HELP)

    def cmd_reset(self, arg: str) -> None:
        self.messages.clear()
        self.session.truncate(0)
        self.term.line("[conversation cleared]", "dim")

    def cmd_system(self, arg: str) -> None:
        self.system = arg or None
        self.term.line(f"[system prompt {'set' if arg else 'back to the default'}]", "dim")

    def cmd_think(self, arg: str) -> None:
        if arg not in ("on", "off"):
            raise HybridK2Error("usage: /think on|off")
        self.show_thinking = arg == "on"
        self.term.line(f"[thinking {'shown' if self.show_thinking else 'hidden'}]", "dim")

    def cmd_set(self, arg: str) -> None:
        key, _, value = arg.partition(" ")
        if key not in SETTABLE or not value.strip():
            raise HybridK2Error(f"usage: /set NAME VALUE with NAME one of {', '.join(SETTABLE)}")
        if value.strip().lower() == "none" and key in ("seed", "thinking_budget"):
            parsed = None
        else:
            try:
                parsed = SETTABLE[key](value.strip())
            except ValueError:
                raise HybridK2Error(f"{key} needs a {SETTABLE[key].__name__}, got {value.strip()!r}") from None
        self.params = replace(self.params, **{key: parsed})
        self.term.line(f"[{key} = {parsed}]", "dim")

    def cmd_save(self, arg: str) -> None:
        if not arg:
            raise HybridK2Error("usage: /save FILE")
        data = {"system": self.system, "tools": self.tools, "messages": self.messages}
        try:
            Path(arg).expanduser().write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            raise HybridK2Error(f"cannot write {arg}: {e.strerror or e}") from None
        kv = ""
        if len(self.session) > 0 and hasattr(self.engine, "model"):
            from hybrid_k2.runtime.kv_store import save_session

            try:  # the KV cache beside it, so that /load does not prefill the conversation again
                kv = f" and its KV cache ({save_session(self.session, kv_path(arg), self.engine.model)} tokens)"
            except OSError as e:
                self.term.line(f"warning: the KV cache was not saved ({e.strerror or e})", "error")
        self.term.line(f"[saved {len(self.messages)} messages{kv} to {arg}]", "dim")

    def cmd_load(self, arg: str) -> None:
        if not arg:
            raise HybridK2Error("usage: /load FILE")
        data = read_json(Path(arg).expanduser(), "conversation file")
        messages = data.get("messages") if isinstance(data, dict) else data
        check_messages(messages)
        if isinstance(data, dict) and isinstance(data.get("system"), str):
            self.system = data["system"]
        self.messages = [dict(m) for m in messages]
        kv = ""
        if kv_path(arg).is_file() and hasattr(self.engine, "model"):
            from hybrid_k2.runtime.kv_file import BadCacheFile
            from hybrid_k2.runtime.kv_store import load_session

            try:  # the next turn prefills only what the saved cache does not hold
                kv = f" and their KV cache ({load_session(self.session, kv_path(arg), self.engine.model)} tokens)"
            except BadCacheFile as e:
                self.session.truncate(0)
                self.term.line(f"warning: ignoring the saved KV cache: {e}", "error")
        self.term.line(f"[loaded {len(self.messages)} messages{kv} from {arg}]", "dim")

    def cmd_stats(self, arg: str) -> None:
        t = self.totals
        self.term.line(f"answers: {t['turns']}  prompt tokens: {t['prompt']} ({t['cached']} from cache)  "
                       f"generated: {t['generated']} ({t['thinking']} thinking)")
        self.term.line(f"KV cache: {len(self.session)} of {self.session.max_len} tokens  messages: {len(self.messages)}")
        if self.last_stats is not None:
            s = self.last_stats
            self.term.line(f"last answer: prefill {s.prefill_tokens_per_s:.1f} tok/s, "
                           f"decode {s.decode_tokens_per_s:.1f} tok/s, {s.finish_reason}")
        p = self.params
        self.term.line(f"sampling: temperature {p.temperature} top_p {p.top_p} top_k {p.top_k} min_p {p.min_p} "
                       f"max_tokens {p.max_tokens} seed {p.seed} thinking_budget {p.thinking_budget}")


def kv_path(conversation_file: str) -> Path:
    """Where /save puts the KV cache of the conversation saved to conversation_file."""
    return Path(conversation_file + ".kv").expanduser()


def _setup_readline():
    """Line editing + persistent history; returns the function that saves it (None if unavailable)."""
    try:
        import readline
    except ImportError:
        return None
    from hybrid_k2.paths import cache_dir

    cache = cache_dir()
    history = cache / "chat_history"
    try:
        readline.read_history_file(history)
    except OSError:
        pass
    readline.set_history_length(1000)

    def save():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(history)
        except OSError:
            pass
    return save


def run_chat(model: Path | None, *, tools_file: Path | None = None, builtin_tools: bool = False,
             params: SamplingParams, system: str | None = None, show_thinking: bool = True,
             max_context: int | None = None, device: str = "cpu", precision: str = "fast",
             runtime=None) -> int:
    """The `hybrid-k2 chat` command: checks the inputs, loads the model, runs the REPL."""
    tools = load_tools(tools_file) if tools_file is not None else []
    builtin = {}
    if builtin_tools:
        for name, (declaration, fn) in BUILTIN_TOOLS.items():
            tools.append(declaration)
            builtin[name] = fn
    demo = model is None
    if demo:
        from hybrid_k2.tiny import demo_model_path

        model = demo_model_path()
    elif not Path(model).is_dir():
        raise HybridK2Error(f"model folder not found: {model}")
    from hybrid_k2.chat.engine import ChatEngine

    engine = ChatEngine.load(model, device=device, precision=precision, runtime=runtime)
    context = max_context or engine.model.ctx
    banner = (f"hybrid-k2 chat | {'DEMO model with random weights: its answers are noise | ' if demo else ''}"
              f"{model} | context {context} tokens"
              + (f" | tools: {', '.join(t['function']['name'] for t in tools)}" if tools else "")
              + (f" (built-in: {', '.join(builtin)})" if builtin else "")
              + " | /help for commands"
              + (f"\nruntime: {engine.model.runtime.describe()}" if engine.model.runtime is not None else ""))
    repl = Repl(engine, params=params, tools=tools, builtin=builtin, system=system, show_thinking=show_thinking,
                max_context=max_context, banner=banner)
    return repl.run()
