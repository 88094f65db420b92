"""`hybrid-k2 chat`: the real command in a pseudo-terminal (pexpect), the REPL in-process with real
models, the tool-call loop, the calculator, and one-line errors for bad input."""
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest
import torch

from hybrid_k2.chat.calculator import CalculatorError, calculate, run_calculator
from hybrid_k2.chat.engine import ChatEngine
from hybrid_k2.chat.repl import Repl, load_tools, visible
from hybrid_k2.chat.sampling import SamplingParams
from hybrid_k2.cli import main
from hybrid_k2.errors import HybridK2Error

STATS = r"\[(\d+) prompt tokens \((\d+) cached\), (\d+) generated"


def test_chat_command_in_a_terminal(tmp_path):
    child = pexpect.spawn(sys.executable, ["-m", "hybrid_k2.cli", "chat", "--max-tokens", "6", "--seed", "1"],
                          cwd=str(tmp_path), encoding="utf-8", timeout=300, dimensions=(40, 200))
    try:
        child.expect("random-weight demo model")  # no --model: says it is the demo
        child.expect("you> ")
        child.sendline("Hello")
        child.expect(STATS)
        assert child.match.group(2) == "0" and child.match.group(3) == "6"
        child.expect("you> ")
        child.sendline("Tell me more")
        child.expect(STATS)
        assert int(child.match.group(2)) > 0  # the second turn reused the first one's cache
        child.expect("you> ")
        child.sendline("/reset")
        child.expect(r"conversation cleared")
        child.expect("you> ")
        child.sendline("/set max_tokens 100000")
        child.expect("you> ")
        child.sendline("Go on for a long time")
        child.expect(r"\[thinking\]")
        child.expect(r"\S", timeout=60)  # tokens are streaming
        child.sendintr()  # Ctrl-C stops the answer, not the program
        child.expect(r"\[stopped\]", timeout=120)
        child.expect(r"cancelled")
        child.expect("you> ")
        child.send("half a line")
        child.expect("half a line")  # readline has taken the keys: a Ctrl-C that lands while Python's readline
        time.sleep(0.2)              # is still reading them is only seen at the next key (the tty drops them)
        child.sendintr()  # at the prompt: drops the line, stays
        if child.expect([r"\^C", "you> "]) == 0:
            child.expect("you> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    history = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hybrid-k2" / "chat_history"  # readline history kept
    assert "Tell me more" in history.read_text() and "half a line" not in history.read_text()


@pytest.fixture(scope="module")
def engine(tiny_model):
    return ChatEngine.load(tiny_model)


def repl_with(engine, text, **kw):
    out = io.StringIO()
    kw.setdefault("params", SamplingParams(max_tokens=3, seed=0))
    repl = Repl(engine, stdin=io.StringIO(text), stdout=out, **kw)
    assert repl.run() == 0
    return repl, out.getvalue()


def test_multiline_input_commands_and_save_load(engine, tmp_path):
    conv = tmp_path / "conv.json"
    repl, out = repl_with(engine, f'first\\\nsecond\n"""\nblock a\nblock b\n"""\n"""one line"""\n/system Be brief.\n'
                                  f'//slash text\n/save {conv}\n/think off\n/think maybe\n/set top_k 5\n/set seed x\n'
                                  f'/bogus\n/stats\n/help\n')
    users = [m["content"] for m in repl.messages if m["role"] == "user"]
    assert users == ["first\nsecond", "block a\nblock b", "one line", "/slash text"]
    assert len([m for m in repl.messages if m["role"] == "assistant"]) == 4
    assert "error: usage: /think on|off" in out and "error: seed needs a int" in out
    assert "error: unknown command /bogus (try /help)" in out and "answers: 4" in out and "/reset" in out
    assert repl.params.top_k == 5 and repl.system == "Be brief." and not repl.show_thinking
    saved = json.loads(conv.read_text())
    assert saved["system"] == "Be brief." and saved["messages"] == repl.messages

    loaded, out = repl_with(engine, f"/load {conv}\n/load {tmp_path / 'missing.json'}\n/reset\n")
    assert "loaded 8 messages" in out and "error: conversation file not found" in out and loaded.messages == []
    assert loaded.system == "Be brief." and len(loaded.session) == 0
    (tmp_path / "bad.json").write_text('{"messages": [{"content": "no role"}]}')
    _, out = repl_with(engine, f"/load {tmp_path / 'bad.json'}\n")
    assert 'error: message 0 must be an object with a string "role"' in out


class ToolCallingEngine(ChatEngine):
    """The real engine; its first answer is forced (through the constraint hook) to call tools."""

    def __init__(self, base, calls):
        super().__init__(base.model, base.tokenizer, base.template)
        tok = self.tokenizer
        self.forced = [tok.think_id, *tok.encode("need tools"), tok.think_end_id, tok.tool_calls_section_begin_id]
        for i, (name, args) in enumerate(calls):
            self.forced += [tok.tool_call_begin_id, *tok.encode(f"functions.{name}:{i}"),
                            tok.tool_call_argument_begin_id, *tok.encode(args), tok.tool_call_end_id]
        self.forced += [tok.tool_calls_section_end_id, tok.im_end_id]
        self.prompts = []

    def chat(self, session, messages, tools=None, params=SamplingParams(), **kw):
        self.prompts.append(list(messages))
        if len(self.prompts) == 1:
            ids, vocab = self.forced, self.tokenizer.vocab_size

            class Force:
                def mask(self, generated):
                    m = torch.zeros(vocab, dtype=torch.bool)
                    m[ids[len(generated)]] = True
                    return m

                def accept(self, token_id):
                    pass
            kw["constraint"] = Force()
        return super().chat(session, messages, tools, params, **kw)


def test_tool_calls_run_builtin_and_ask_the_user(engine):
    calls = [("calculator", '{"expression": "6*7"}'), ("lookup", '{"q": "k2"}')]
    forced = ToolCallingEngine(engine, calls)
    tools = load_tools_from([{"type": "function", "function": {"name": "lookup", "parameters": {}}}])
    repl, out = repl_with(forced, "What is 6*7?\nthe user's lookup result\n", tools=tools,
                          builtin={"calculator": run_calculator}, params=SamplingParams(max_tokens=200, seed=0))
    assert "[tool call] calculator" in out and "[built-in calculator] 42" in out
    assert "[tool lookup is yours to run" in out
    tool_msgs = [m for m in repl.messages if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in tool_msgs] == [
        ("functions.calculator:0", "42"), ("functions.lookup:1", "the user's lookup result")]
    assert repl.messages[1]["tool_calls"][0]["function"]["name"] == "calculator"
    assert len(forced.prompts) == 2 and forced.prompts[1][-1]["role"] == "tool"  # answered after the tools
    assert out.count("tool_calls]") == 1


def load_tools_from(data):
    import tempfile

    with tempfile.TemporaryDirectory() as d:  # nothing left behind in the temp folder
        path = Path(d) / "tools.json"
        path.write_text(json.dumps(data))
        return load_tools(path)


def test_calculator_is_safe_and_correct():
    assert calculate("(2 + 3) * sqrt(16)") == 20.0 and calculate("2**10 // 3 % 7") == 341 % 7
    assert calculate("-pi + max(1, 2, 3)") == pytest.approx(3 - 3.141592653589793)
    for bad in ["__import__('os').system('true')", "open('x')", "(1).__class__", "x", "9**9**9", "[1, 2]",
                "lambda: 1", "", "1/0", "(-8)**(1/3)", "sqrt(-1)", "2" * 600, "(10**1000)**10000"]:
        with pytest.raises(CalculatorError):
            calculate(bad)
    assert run_calculator('{"expression": "1+1"}') == "2"
    assert run_calculator("not json").startswith("error:") and run_calculator('{"expression": "x"}').startswith("error:")


def test_model_text_cannot_drive_the_terminal():
    assert visible("ok\x1b[2J\x07\tnext\n\x9b") == "ok\u241b[2J\u2407\tnext\n\ufffd"


def test_bad_input_is_one_line(tmp_path, tiny_model, monkeypatch, capsys):
    r = subprocess.run([sys.executable, "-m", "hybrid_k2.cli", "chat", "--model", str(tmp_path / "nope")],
                       input="", capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr == f"error: model folder not found: {tmp_path / 'nope'}\n"

    def run(*args):  # the same entry point in-process: main() turns errors into one stderr line
        monkeypatch.setattr(sys, "argv", ["hybrid-k2", "chat", *args])
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        with pytest.raises(SystemExit) as e:
            main()
        return e.value.code, capsys.readouterr().err.strip()

    (tmp_path / "tools.json").write_text("{not json")
    code, err = run("--model", str(tiny_model), "--tools", str(tmp_path / "tools.json"))
    assert code == 1 and err.startswith("error: corrupt tools file") and "\n" not in err
    (tmp_path / "tools.json").write_text('[{"type": "function", "function": {"description": "no name"}}]')
    code, err = run("--model", str(tiny_model), "--tools", str(tmp_path / "tools.json"))
    assert code == 1 and 'needs a "name"' in err and "\n" not in err
    code, err = run("--model", str(tiny_model), "--temperature", "-2")
    assert code == 1 and err == "error: temperature must be in [0, 100], got -2.0"
    code, err = run("--model", str(tiny_model), "--max-tokens", "4")  # stdin at its end: leaves cleanly
    assert code == 0, err
    code, err = run("--model", str(tiny_model), "--defer-experts", "9")  # the tiny model routes top-2
    assert code == 1 and err == "error: --defer-experts 9 must be below the model's top-k (2)"
    code, err = run("--model", str(tiny_model), "--cpu-threads", "0")  # refused before loading: a usage error
    assert code == 2 and err == "error: --cpu-threads must be >= 1"
    # Checked before the model is even looked for (a missing folder would be the other error).
    code, err = run("--model", str(tmp_path / "nope"), "--max-context", "-5")
    assert code == 2 and err == "error: --ctx must be at least 2 tokens"
    code, err = run("--model", str(tmp_path / "nope"), "--device", "tpu")
    assert code == 2 and err == "error: --device must be auto, cpu, cuda or cuda:N, got 'tpu'"
    code, err = run("--model", str(tmp_path / "nope"), "--precision", "fp8")
    assert code == 2 and err == "error: --precision must be one of exact, fast, got 'fp8'"
    code, err = run("--model", str(tiny_model), "--max-context", str(10**9))  # refused by the plan, before loading
    assert code == 1 and "exceeds the model's maximum context" in err and "\n" not in err


def test_runtime_flags_reach_the_loaded_model(tiny_model, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["hybrid-k2", "chat", "--model", str(tiny_model), "--defer-experts", "1",
                                      "--cpu-threads", "1", "--torch-threads", "1"])
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr().out
    assert e.value.code == 0
    runtime = next(line for line in out.splitlines() if line.startswith("runtime: "))  # what was loaded
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"device={device} precision=fast " in runtime  # the defaults: --device auto, --precision fast
    assert "defer=1" in runtime and "threads=1 " in runtime and "torch_threads=1" in runtime


def test_tools_file_formats(tmp_path):
    bare = load_tools_from([{"name": "f", "description": "d", "parameters": {"type": "object"}}])
    assert bare == [{"type": "function", "function": {"name": "f", "description": "d",
                                                      "parameters": {"type": "object"}}}]
    with pytest.raises(HybridK2Error, match="expected a JSON list"):
        load_tools_from({"name": "f"})
    with pytest.raises(HybridK2Error, match="must be a JSON schema object"):
        load_tools_from([{"name": "f", "parameters": "x"}])
    with pytest.raises(HybridK2Error, match="tools file not found"):
        load_tools(tmp_path / "none.json")
    assert re.match(r"^\[", json.dumps(bare))


def test_save_load_keeps_the_kv_cache(engine, tmp_path):
    conv = tmp_path / "conv.json"
    live, out = repl_with(engine, f"hello there\n/save {conv}\nand a second question\n")
    live_turns = [tuple(map(int, m)) for m in re.findall(STATS, out)]
    assert (tmp_path / "conv.json.kv").is_file() and "and its KV cache (" in out

    repl = Repl(engine, stdin=io.StringIO(f"/load {conv}\nand a second question\n"), stdout=io.StringIO(),
                params=SamplingParams(max_tokens=3, seed=0))
    prefilled, real = [], repl.session.prefill
    repl.session.prefill = lambda ids, **kw: prefilled.append(len(ids)) or real(ids, **kw)  # counts only
    assert repl.run() == 0
    stats = repl.last_stats
    # The loaded conversation is not prefilled again: the turn reuses exactly what the live one did.
    assert stats.cached_tokens == live_turns[1][1] > 0
    assert prefilled == [stats.prompt_tokens - stats.cached_tokens]
    assert repl.messages == live.messages
    # A damaged cache file is ignored with a warning: the turn prefills everything, answers the same.
    data = bytearray((tmp_path / "conv.json.kv").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "conv.json.kv").write_bytes(bytes(data))
    repl, out = repl_with(engine, f"/load {conv}\nand a second question\n")
    assert "warning: ignoring the saved KV cache" in out and "checksum" in out
    assert repl.last_stats.cached_tokens == 0
    assert repl.messages == live.messages
