"""Output parser: render -> parse round trips (text and token ids), streaming == non-streaming,
the grammar's corner cases, and fuzzed output that must never raise."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid_k2.chat.parser import MARKERS, OutputParser, parse_output
from hybrid_k2.chat.template import ChatTemplate, apply_chat_template
from hybrid_k2.chat.tokenizer import Tokenizer

HEADER = "<|im_assistant|>assistant<|im_middle|>"
SLOW = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tok(tiny_model):
    return Tokenizer.from_dir(tiny_model)


def model_output_ids(tok, message) -> list[int]:
    """What the model would have generated for `message`: the template's rendering of it (as the
    in-progress turn, so reasoning is kept) after the assistant header, as token ids. The template
    drops the reasoning of a final answer, so those are assembled by hand in the same format."""
    if not message.get("tool_calls"):
        return [tok.think_id, *tok.encode(message["reasoning_content"]), tok.think_end_id,
                *tok.encode(message["content"]), tok.im_end_id]
    ids = ChatTemplate(None).render_ids(tok, [{"role": "user", "content": "q"}, message], add_generation_prompt=False)
    header = [tok.im_assistant_id] + tok.encode("assistant") + [tok.im_middle_id]
    start = max(i for i in range(len(ids)) if ids[i:i + len(header)] == header) + len(header)
    return ids[start:]


def model_output_text(message) -> str:
    if not message.get("tool_calls"):
        return f"<think>{message['reasoning_content']}</think>{message['content']}<|im_end|>"
    text = apply_chat_template([{"role": "user", "content": "q"}, message], add_generation_prompt=False)
    return text[text.rindex(HEADER) + len(HEADER):]


any_text = st.text(max_size=30)
plain_text = st.text(alphabet=st.characters(blacklist_characters="<[", codec="utf-8"), max_size=30)


@st.composite
def assistant_messages(draw, text):
    calls = []
    for i in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["get_weather", "search", "run_code"]))
        args = draw(st.dictionaries(st.sampled_from(["city", "query", "n"]), st.one_of(st.integers(), text), max_size=3))
        calls.append({"id": f"functions.{name}:{i}", "type": "function",
                      "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}})
    message = {"role": "assistant", "reasoning_content": draw(text), "content": draw(text)}
    if calls:
        message["tool_calls"] = calls
    return message


def check_round_trip(message, parsed):
    assert parsed.reasoning == (message["reasoning_content"] or None)
    content = message["content"]
    expect_content = None if not content or (content.isspace() and message.get("tool_calls")) else content
    assert parsed.content == expect_content
    assert [c.to_openai() for c in parsed.tool_calls] == message.get("tool_calls", [])
    assert parsed.malformed is None


@settings(max_examples=80, **SLOW)
@given(assistant_messages(any_text))
def test_round_trip_on_token_ids(tok, message):
    # Any text, markers included: by ids, message text can never be mistaken for control tokens.
    ids = model_output_ids(tok, message)
    check_round_trip(message, parse_output(ids, tok))
    # Streamed one token at a time, the deltas add up to the same answer.
    parser, deltas = OutputParser(tok), []
    for i in ids:
        deltas += parser.feed_ids([i])
    more, final = parser.finish()
    deltas += more
    check_round_trip(message, final)
    assert "".join(d.text for d in deltas if d.kind == "reasoning") == (final.reasoning or "")
    streamed_content = "".join(d.text for d in deltas if d.kind == "content")
    # whitespace-only content beside tool calls is streamed but final content is None (documented)
    assert streamed_content == (final.content or "") or (final.content is None and streamed_content.isspace())
    starts = [d for d in deltas if d.kind == "tool_call"]
    assert [(d.index, d.id, d.name) for d in starts] == [(i, c.id, c.name) for i, c in enumerate(final.tool_calls)]
    for i, call in enumerate(final.tool_calls):
        streamed = "".join(d.text for d in deltas if d.kind == "tool_args" and d.index == i)
        assert json.loads(streamed) == json.loads(call.arguments)


@settings(max_examples=80, **SLOW)
@given(assistant_messages(plain_text), st.lists(st.integers(1, 7), min_size=1, max_size=50))
def test_round_trip_on_text_in_random_pieces(message, cuts):
    text = model_output_text(message)
    check_round_trip(message, parse_output(text))
    parser, pos, k = OutputParser(), 0, 0
    while pos < len(text):  # markers get cut in the middle: the parser must hold them back
        parser.feed_text(text[pos:pos + cuts[k % len(cuts)]])
        pos += cuts[k % len(cuts)]
        k += 1
    check_round_trip(message, parser.finish()[1])


@pytest.mark.parametrize("text, reasoning, content, calls", [
    ("<think>r</think>answer<|im_end|>", "r", "answer", []),
    ("r</think>answer", "r", "answer", []),  # leading <think> missing
    ("only thinking, cut by max_tokens", "only thinking, cut by max_tokens", None, []),
    ("<think>r<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{}"
     "<|tool_call_end|><|tool_calls_section_end|><|im_end|>", "r", None, [("functions.f:0", "f", "{}")]),
    ("</think>  <|tool_calls_section_begin|><|tool_call_begin|> functions.a:0 <|tool_call_argument_begin|>"
     "<|tool_call_end|>\n<|tool_call_begin|>b:1<|tool_call_argument_begin|> {\"x\": [1, 2]} <|tool_call_end|>"
     "<|tool_calls_section_end|>ignored after the section", None, None,
     [("functions.a:0", "a", "{}"), ("b:1", "b", '{"x": [1, 2]}')]),
    ("<think><think>in<think>ner</think>text with </think> and <think> inside", "in<think>ner",
     "text with </think> and <think> inside", []),
])
def test_grammar_cases(text, reasoning, content, calls):
    parsed = parse_output(text)
    assert (parsed.reasoning, parsed.content) == (reasoning, content)
    assert [(c.id, c.name, c.arguments) for c in parsed.tool_calls] == calls
    assert parsed.malformed is None


def test_thinking_off_is_all_content():
    assert parse_output("hello <|im_end|>", thinking=False).content == "hello "


SECTION = "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>"


@pytest.mark.parametrize("tail, problem", [
    ('{"a": 1}<|tool_call_end|>', "not closed"),  # im_end before the section end
    ('{"a": 1', "ended inside"),  # truncated by max_tokens
    ('{"a": <|tool_call_end|><|tool_calls_section_end|>', "not a JSON object"),
    ('[1, 2]<|tool_call_end|><|tool_calls_section_end|>', "not a JSON object"),
])
def test_malformed_sections_degrade_to_raw_content(tail, problem):
    text = "<think>r</think>before" + SECTION + tail
    parsed = parse_output(text + ("<|im_end|>" if "not closed" in problem else ""))
    assert parsed.tool_calls == [] and problem in parsed.malformed
    assert parsed.reasoning == "r"
    assert parsed.content == "before" + SECTION + tail


def test_bad_call_headers_degrade():
    for header in ["no_index", "functions.f:x", "a b:0", ""]:
        text = f"</think><|tool_calls_section_begin|><|tool_call_begin|>{header}<|tool_call_argument_begin|>{{}}" \
               "<|tool_call_end|><|tool_calls_section_end|>"
        parsed = parse_output(text)
        assert parsed.tool_calls == [] and parsed.content.startswith("<|tool_calls_section_begin|>")
    parsed = parse_output("</think><|tool_calls_section_begin|>chatter<|tool_call_begin|>f:0")
    assert parsed.tool_calls == [] and parsed.content == "<|tool_calls_section_begin|>chatter<|tool_call_begin|>f:0"


def test_streaming_tool_deltas_come_in_order(tok):
    message = {"role": "assistant", "reasoning_content": "think", "content": "",
               "tool_calls": [{"id": "functions.search:0", "type": "function",
                               "function": {"name": "search", "arguments": '{"query": "k2"}'}}]}
    parser = OutputParser(tok)
    kinds = []
    for i in model_output_ids(tok, message):
        kinds += [d.kind for d in parser.feed_ids([i])]
    assert kinds[0] == "reasoning" and "content" not in kinds
    assert kinds.index("tool_call") < kinds.index("tool_args")
    assert parser.finish()[1].tool_calls[0].name == "search"


pieces = st.one_of(st.sampled_from(MARKERS), st.sampled_from(["{", "}", '"', ":", "functions.f:0", " ", "\n", "x"]),
                   st.text(max_size=6))


@settings(max_examples=400, deadline=None)
@given(st.lists(pieces, max_size=30), st.booleans())
def test_fuzzed_text_never_raises_and_is_split_invariant(parts, thinking):
    whole = parse_output("".join(parts), thinking=thinking)
    parser = OutputParser(thinking=thinking)
    for p in parts:
        parser.feed_text(p)
    assert parser.finish()[1] == whole
    for call in whole.tool_calls:
        assert isinstance(json.loads(call.arguments), dict) and call.name and call.id


@settings(max_examples=200, **SLOW)
@given(st.lists(st.integers(0, 1 << 30), max_size=60))
def test_fuzzed_token_ids_never_raise(tok, raw):
    # Ids drawn over the whole vocabulary, with the parser's markers made frequent.
    markers = [tok.special_tokens[m] for m in MARKERS]
    ids = [markers[r % len(markers)] if r % 3 == 0 else r % tok.vocab_size for r in raw]
    parsed = parse_output(ids, tok)
    for call in parsed.tool_calls:
        assert isinstance(json.loads(call.arguments), dict)
    assert parsed.to_message()["role"] == "assistant"


@settings(max_examples=200, deadline=None)
@given(st.lists(pieces, max_size=20), st.lists(st.sampled_from(["x", "xy", "STOP", "\n\n", "<|im"]), max_size=2))
def test_stop_strings_cut_content_whatever_the_split(parts, stop):
    text = "".join(parts)
    whole = parse_output(text, stop=stop)
    parser = OutputParser(stop=stop)
    streamed = []
    for p in parts:
        streamed += parser.feed_text(p)
    more, final = parser.finish()
    assert final == whole
    content = "".join(d.text for d in streamed + more if d.kind == "content")
    assert content == (whole.content or "") or (whole.content is None and content.isspace())
    assert not any(s in (whole.content or "") for s in stop)


def test_stop_string_examples():
    parsed = parse_output("<think>a STOP b</think>one STOP two", stop=["STOP"])
    assert (parsed.reasoning, parsed.content) == ("a STOP b", "one ")
    parser = OutputParser(stop=["STOP"])
    assert [d.text for d in parser.feed_text("</think>one ST")] == ["one "]  # "ST" held back
    assert [d.text for d in parser.feed_text("OP")] == [] and parser.stopped
    parser = OutputParser(stop=["STOP"])
    parser.feed_text("</think>ends with ST")
    assert parser.finish()[1].content == "ends with ST"  # released at the end
