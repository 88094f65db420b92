"""The server's pure-Python pieces on their own: history rewriting, response shaping, the FIFO
scheduler's admission and cancellation, the Prometheus text."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from hybrid_k2.chat.parser import Delta, OutputParser, ParsedOutput, ToolCall
from hybrid_k2.serve.answer import Answer
from hybrid_k2.serve.conversation import build_conversation
from hybrid_k2.serve.errors import APIError
from hybrid_k2.serve.metrics import Metrics
from hybrid_k2.serve.responses import ChatAssembler, Outcome, TextAssembler, usage
from hybrid_k2.serve.scheduler import Job, QueueFull, Scheduler
from hybrid_k2.serve.schemas import ChatMessage, Tool


def msgs(*items):
    return [ChatMessage.model_validate(m) for m in items]


def test_foreign_ids_rewritten_consistently_with_running_index():
    history = msgs(
        {"role": "developer", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "reasoning": "r1",
         "tool_calls": [{"id": "call_1", "function": {"name": "f", "arguments": "{}"}},
                        {"id": "functions.g:1", "function": {"name": "g", "arguments": {"x": 1}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
        {"role": "tool", "tool_call_id": "functions.g:1", "name": "custom", "content": "ok2"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "toolu_9", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "toolu_9", "content": "ok3"})
    conv = build_conversation(history, None)
    m = conv.messages
    assert m[0] == {"role": "system", "content": "sys"}
    assert m[1]["content"] == "ab"
    assert m[2]["reasoning_content"] == "r1" and "reasoning" not in m[2]
    assert [c["id"] for c in m[2]["tool_calls"]] == ["functions.f:0", "functions.g:1"]
    assert m[2]["tool_calls"][1]["function"]["arguments"] == '{"x": 1}'
    assert m[3] == {"role": "tool", "content": "ok", "tool_call_id": "functions.f:0", "name": "f"}
    assert m[4]["tool_call_id"] == "functions.g:1" and m[4]["name"] == "custom"  # the client's name wins
    assert m[5]["tool_calls"][0]["id"] == "functions.f:2"
    assert m[6]["tool_call_id"] == "functions.f:2"
    assert conv.calls_so_far == 3
    assert "reasoning_content" not in m[5]  # no reasoning given: the key stays out (the template prints None)


def test_tools_are_declared_without_nulls_and_names_are_unique():
    tools = [Tool.model_validate({"type": "function", "function": {"name": "f", "parameters": {"type": "object"},
                                                                   "strict": True}})]
    conv = build_conversation(msgs({"role": "user", "content": "x"}), tools)
    assert conv.tools == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(APIError, match="unique"):
        build_conversation(msgs({"role": "user", "content": "x"}), tools * 2)


def test_chat_assembler_fields_and_finish():
    asm = ChatAssembler(reasoning_field="both")
    assert asm.push([Delta("reasoning", "think"), Delta("content", "hi"), Delta("tool_call", index=0, id="functions.f:0",
                                                                              name="f"),
                     Delta("tool_args", ' {"a"', index=0), Delta("tool_args", ": 1} ", index=0)]) == [
        {"reasoning_content": "think", "reasoning": "think"}, {"content": "hi"},
        {"tool_calls": [{"index": 0, "id": "functions.f:0", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}]
    out = ParsedOutput(reasoning="think", content="hi", tool_calls=[ToolCall("functions.f:0", "f", '{"a": 1}')])
    last, message, finish = asm.finish(Outcome("tool_calls", 5, 0, 7, reasoning_tokens=3, output=out))
    assert finish == "tool_calls" and last == []
    assert message["tool_calls"] == [c.to_openai() for c in out.tool_calls]
    assert message["reasoning"] == message["reasoning_content"] == "think"
    _, message, finish = ChatAssembler().finish(Outcome("length", 5, 0, 7, output=ParsedOutput(content="x")))
    assert finish == "length" and "reasoning" not in message and message["reasoning_content"] is None


def _answer_of(ids_text: str, tok, **kw):
    """Feeds K2 output text (markers by name) through the real parser into an Answer."""
    parser = OutputParser(tok, **kw)
    answer = Answer()
    pieces = answer.push(parser.feed_ids(tok.encode(ids_text, allow_special=True)))
    deltas, parsed = parser.finish()
    return answer, pieces + answer.push(deltas) + answer.finish(), parsed


@pytest.mark.parametrize("text", [
    "plan</think>  \n<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|> "
    '{"a": [1, 2]}  <|tool_call_end|><|tool_call_begin|>functions.g:1<|tool_call_argument_begin|><|tool_call_end|>'
    "<|tool_calls_section_end|><|im_end|>",
    "r</think>Hello <b>world</b><|im_end|>",
    "r</think>\n\n<|im_end|>",
])
def test_answer_matches_the_parser_on_complete_output(tiny_model, text):
    from hybrid_k2.chat.tokenizer import Tokenizer

    answer, pieces, parsed = _answer_of(text, Tokenizer.from_dir(tiny_model))
    assert answer.reasoning == parsed.reasoning and answer.content == parsed.content
    assert [(c.id, c.name, c.text) for c in answer.calls] == [(c.id, c.name, c.arguments) for c in parsed.tool_calls]
    for i, part in enumerate(answer.parts):  # the pieces add up to the parts, each opened once
        assert "".join(p.text for p in pieces if p.part == i) == part.text
        assert [p.opens for p in pieces if p.part == i][0] and sum(p.opens for p in pieces if p.part == i) == 1


@pytest.mark.parametrize("text", [
    "r</think>Hi <|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{\"a\": ",
    "r</think>Hi <|tool_calls_section_begin|><|tool_call_begin|>functions.f",
    "r</think>Hi <|tool_calls_section_begin|>oops<|im_end|>",
])
def test_abandoned_tool_section_never_shows_markers(tiny_model, text):
    from hybrid_k2.chat.tokenizer import Tokenizer

    answer, pieces, parsed = _answer_of(text, Tokenizer.from_dir(tiny_model))
    assert parsed.malformed and "<|" in parsed.content      # the parser gives the raw text back...
    assert "<|" not in (answer.content or "") and answer.content.startswith("Hi")  # ...the server does not show it
    assert [c.text for c in answer.calls] in ([], ['{"a":'])


def test_stray_control_tokens_are_not_shown(tiny_model):
    from hybrid_k2.chat.tokenizer import Tokenizer

    text = "r<|reserved_token_600|>s</think>Hi <|tool_call_end|>there<|im_end|>"
    answer, _, parsed = _answer_of(text, Tokenizer.from_dir(tiny_model))
    assert (parsed.reasoning, parsed.content) == ("r<|reserved_token_600|>s", "Hi <|tool_call_end|>there")  # REPL
    assert (answer.reasoning, answer.content) == ("rs", "Hi there")                                      # server
    # A stop string is matched on the words shown, across a hidden control token.
    answer, _, parsed = _answer_of(text, Tokenizer.from_dir(tiny_model), stop=[" th"])
    assert answer.content == "Hi" and parsed.stop_sequence == " th"


def test_usage_shape():
    u = usage(Outcome("stop", prompt_tokens=10, cached_tokens=4, completion_tokens=3, reasoning_tokens=2))
    assert u == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
                 "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 2}}


def test_text_assembler_writes_tool_sections_back():
    asm = TextAssembler()
    assert asm.push([Delta("content", "a<think>"), Delta("tool_call", index=0, id="functions.f:0", name="f")]) == "a<think>"
    tail = asm.finish(Outcome("stop", 1, 0, 1, output=ParsedOutput(tool_calls=[ToolCall("functions.f:0", "f", '{"a": 1}')])))
    assert asm.text == "a<think>" + tail
    assert tail == ("<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>"
                    '{"a": 1}<|tool_call_end|><|tool_calls_section_end|>')


def test_scheduler_fifo_limit_and_cancel():
    async def main():
        loop = asyncio.get_running_loop()
        sched = Scheduler(max_waiting=2)
        order, gate = [], threading.Event()

        def work(tag):
            def run(job):
                order.append(tag)
                while not gate.is_set() and not job.cancelled.is_set():
                    time.sleep(0.005)
            return run

        jobs = [Job(work(i), loop) for i in range(3)]
        for j in jobs:
            sched.submit(j)
        while not jobs[0].started.is_set():
            await asyncio.sleep(0.005)
        assert sched.running == 1 and sched.waiting == 2
        with pytest.raises(QueueFull):
            sched.submit(Job(work(9), loop))
        sched.cancel(jobs[1])             # a waiting job leaves the queue at once
        assert sched.waiting == 1 and jobs[1].finished.is_set()
        sched.submit(j4 := Job(work(4), loop))
        sched.cancel(jobs[0])             # the running job sees its event and ends
        gate.set()
        for j in (jobs[2], j4):
            while not j.finished.is_set():
                await asyncio.sleep(0.005)
        assert order == [0, 2, 4]         # FIFO, the cancelled job never ran
        assert await jobs[1].events.get() is None
        sched.close()

    asyncio.run(main())


def test_scheduler_survives_a_failing_job():
    async def main():
        loop = asyncio.get_running_loop()
        sched = Scheduler(max_waiting=1)

        def boom(job):
            raise RuntimeError("kaput")

        job = Job(boom, loop)
        sched.submit(job)
        assert isinstance(await job.events.get(), RuntimeError)
        assert await job.events.get() is None
        ok = Job(lambda j: j.emit("fine"), loop)
        sched.submit(ok)
        assert await ok.events.get() == "fine"
        sched.close()

    asyncio.run(main())


def test_metrics_text_format():
    m = Metrics()
    m.count_request("/v1/chat/completions", 200)
    m.record_generation(prompt=100, cached=60, completion=20, reasoning=5, prefill_s=0.5, decode_s=2.0,
                        mask_s=0.01, cancelled=False)
    m.add_gauge("queue_depth", "Requests waiting.", lambda: 3)
    text = m.render()
    assert 'hybrid_k2_requests_total{route="/v1/chat/completions",status="200"} 1' in text
    assert "hybrid_k2_prefill_tokens_total 40" in text
    assert "hybrid_k2_prefill_tokens_per_second 80" in text
    assert "hybrid_k2_decode_tokens_per_second 10" in text
    assert "# TYPE hybrid_k2_queue_depth gauge\nhybrid_k2_queue_depth 3" in text
    for line in text.splitlines():  # every sample line: name{labels} value
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            float(value)
            assert name.startswith("hybrid_k2_")
