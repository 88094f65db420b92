"""How the REPL prints: colours on a terminal, thinking dimmed, and model text made harmless.

Model output can contain any character; control characters (escape sequences would recolour or
clear the user's terminal) are shown as Unicode control pictures instead.
"""
from __future__ import annotations

import os
from typing import TextIO


_VISIBLE = {c: chr(0x2400 + c) for c in range(32) if chr(c) not in "\n\t"}
_VISIBLE.update({0x7F: "\u2421", **{c: "\ufffd" for c in range(0x80, 0xA0)}})


def visible(text: str) -> str:
    """Control characters (escape sequences!) shown as symbols; newlines and tabs kept."""
    return text.translate(_VISIBLE)


class Terminal:
    """Output side: colours when writing to a terminal (and NO_COLOR is unset)."""

    def __init__(self, out: TextIO):
        self.out = out
        self.color = out.isatty() and not os.environ.get("NO_COLOR")

    def write(self, text: str, style: str = "") -> None:
        codes = {"dim": "\x1b[2m", "tool": "\x1b[36m", "error": "\x1b[31m"}
        if self.color and style:
            text = codes[style] + text + "\x1b[0m"
        self.out.write(text)
        self.out.flush()

    def line(self, text: str = "", style: str = "") -> None:
        self.write(text, style)
        self.write("\n")


class PrefillProgress:
    """One line redrawn in place while a long prompt is prefilled: tokens done, tok/s, time left."""

    MIN_TOKENS = 1024  # shorter prompts take a few seconds at most: no bar

    def __init__(self, term: Terminal):
        self.term, self.shown, self.t0 = term, False, None

    def update(self, done: int, total: int, now: float) -> None:
        if total < self.MIN_TOKENS:
            return
        if self.t0 is None or done == 0:
            self.t0 = now
        elapsed = now - self.t0
        rate = done / elapsed if elapsed > 0 and done else 0.0
        eta = f"{(total - done) / rate:,.0f} s left" if rate else "measuring"
        width = 24
        bar = "#" * (width * done // total) + "." * (width - width * done // total)
        self.term.write(f"\r[prefill {bar}] {done:,}/{total:,} tokens  {rate:,.1f} tok/s  {eta}   ", "dim")
        self.shown = True

    def end(self) -> None:
        if self.shown:
            self.term.write("\r" + " " * 79 + "\r")
            self.shown = False


class StreamPrinter:
    """Prints one answer as it streams: thinking dimmed (or a short marker), then the answer."""

    def __init__(self, term: Terminal, show_thinking: bool):
        self.term, self.show_thinking = term, show_thinking
        self.mode = ""  # "", "reasoning", "content", "tool"

    def delta(self, d) -> None:
        if d.kind == "reasoning":
            if self.mode != "reasoning":
                self.mode = "reasoning"
                self.term.write("[thinking] " if self.show_thinking else "[thinking...]", "dim")
            if self.show_thinking:
                self.term.write(visible(d.text), "dim")
        elif d.kind == "content":
            if self.mode == "reasoning":
                self.term.write("\n\n")
            self.mode = "content"
            self.term.write(visible(d.text))
        elif d.kind == "tool_call":
            self.term.write(("\n" if self.mode else "") + f"[tool call] {visible(d.name)} ", "tool")
            self.mode = "tool"
        elif d.kind == "tool_args":
            self.term.write(visible(d.text), "tool")

    def end(self, stats, cancelled: bool) -> None:
        if cancelled:
            self.term.write(" [stopped]", "dim")
        self.term.line()
        self.term.line(f"[{stats.prompt_tokens} prompt tokens ({stats.cached_tokens} cached), "
                       f"{stats.completion_tokens} generated ({stats.reasoning_tokens} thinking) | "
                       f"prefill {stats.prefill_tokens_per_s:.1f} tok/s, decode {stats.decode_tokens_per_s:.1f} tok/s"
                       f" | {stats.finish_reason}"
                       + (f" | {stats.dropped_tool_outputs} old tool outputs hidden" if stats.dropped_tool_outputs else "")
                       + "]", "dim")
