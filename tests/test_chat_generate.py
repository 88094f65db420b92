"""Generation on a real tiny model: prefix reuse (counted), seeds, greedy = argmax of full prefills,
stops, max_tokens, thinking budget, stop strings, the constraint hook, cancellation from another
thread, context overflow; plus the sampler and SamplingParams checks."""
import queue
import threading

import pytest
import torch

from hybrid_k2.chat.context import TOOL_OUTPUT_PLACEHOLDER, fit_prompt
from hybrid_k2.chat.engine import ChatEngine
from hybrid_k2.chat.generate import common_prefix_len, generate
from hybrid_k2.chat.sampling import SamplingParams, draw, filtered_probs, make_generator, sample
from hybrid_k2.errors import HybridK2Error

USER = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def engine(tiny_model):
    return ChatEngine.load(tiny_model)


class Force:
    """A real constraint: allows exactly one token per step (a fixed sequence), then anything."""

    def __init__(self, ids, vocab):
        self.ids, self.vocab, self.accepted = list(ids), vocab, []

    def mask(self, generated):
        if len(generated) >= len(self.ids):
            return None
        m = torch.zeros(self.vocab, dtype=torch.bool)
        m[self.ids[len(generated)]] = True
        return m

    def accept(self, token_id):
        self.accepted.append(token_id)


class TextOnly:
    """Allows only ordinary (non-special) tokens."""

    def __init__(self, tok):
        self.m = torch.arange(tok.vocab_size) < tok.n_base

    def mask(self, generated):
        return self.m

    def accept(self, token_id):
        pass


def run(engine, session, messages, params, **kw):
    events = list(engine.chat(session, messages, params=params, **kw))
    assert events[-1].done and all(not e.done for e in events[:-1])
    return [e.token_id for e in events[:-1]], events[-1]


def test_second_turn_prefills_only_the_new_tokens(engine):
    session = engine.new_session()
    prefilled = []
    real_prefill = session.prefill

    def counting_prefill(ids, **kw):  # wraps the real method, only counts
        prefilled.append(len(ids))
        return real_prefill(ids, **kw)

    session.prefill = counting_prefill
    params = SamplingParams(max_tokens=4, seed=5)
    ids1, last1 = run(engine, session, USER, params)
    prompt1 = engine.prompt(USER, max_len=session.max_len, reserve=1).ids
    assert prefilled == [len(prompt1)] and last1.stats.cached_tokens == 0
    assert session.tokens == prompt1 + ids1[:-1]  # the last sampled token is never fed

    history = USER + [last1.output.to_message(), {"role": "user", "content": "And now?"}]
    prompt2 = engine.prompt(history, max_len=session.max_len, reserve=1).ids
    common = common_prefix_len(session.tokens, prompt2)
    assert common >= len(prompt1)
    cached_before = list(session.tokens)
    _, last2 = run(engine, session, history, params)
    assert prefilled[1] == len(prompt2) - common == last2.stats.prefilled_tokens
    assert last2.stats.cached_tokens == common and session.tokens[:common] == cached_before[:common]

    # Reused cache + partial prefill gives the same next-token logits as a fresh full prefill.
    session.truncate(0)
    fresh = engine.new_session()
    full = fresh.prefill(prompt2, last_only=True)[-1]
    session.prefill(prompt1)
    part = session.prefill(prompt2[len(prompt1):], last_only=True)[-1]
    torch.testing.assert_close(part, full, atol=1e-4, rtol=1e-4)


def test_same_prompt_again_reuses_all_but_one_token(engine):
    session = engine.new_session()
    prompt = engine.prompt(USER, max_len=session.max_len, reserve=1).ids
    params = SamplingParams(max_tokens=2, seed=1)
    a, _ = run(engine, session, USER, params)
    b, last = run(engine, session, USER, params)
    assert a == b and last.stats.cached_tokens == len(prompt) - 1


def test_seed_reproduces_and_greedy_is_argmax(engine):
    p = SamplingParams(max_tokens=6, seed=123, temperature=1.0)
    a, _ = run(engine, engine.new_session(), USER, p)
    b, _ = run(engine, engine.new_session(), USER, p)
    c, _ = run(engine, engine.new_session(), USER, SamplingParams(max_tokens=6, seed=124))
    assert a == b and a != c
    greedy, last = run(engine, engine.new_session(), USER, SamplingParams(max_tokens=4, temperature=0))
    prompt = engine.prompt(USER, max_len=1 << 20, reserve=1).ids
    logits = engine.new_session().prefill(prompt + greedy[:-1])  # [T, V]: teacher-forced
    expect = logits[len(prompt) - 1:].argmax(-1).tolist()
    assert greedy == expect
    assert last.stats.finish_reason == "length" and last.stats.completion_tokens == 4


def test_stop_token_tool_calls_and_constraint_hook(engine):
    tok = engine.tokenizer
    force = Force([tok.think_id, *tok.encode("ok"), tok.im_end_id], tok.vocab_size)
    ids, last = run(engine, engine.new_session(), USER, SamplingParams(max_tokens=50), constraint=force)
    assert ids == force.ids == force.accepted and last.stats.finish_reason == "stop"
    assert last.stats.completion_tokens == len(force.ids)

    call = [tok.think_id, *tok.encode("use a tool"), tok.think_end_id, tok.tool_calls_section_begin_id,
            tok.tool_call_begin_id, *tok.encode("functions.get_weather:0"), tok.tool_call_argument_begin_id,
            *tok.encode('{"city": "Beijing"}'), tok.tool_call_end_id, tok.tool_calls_section_end_id, tok.im_end_id]
    events = list(engine.chat(engine.new_session(), USER, params=SamplingParams(max_tokens=80),
                              constraint=Force(call, tok.vocab_size)))
    out, stats = events[-1].output, events[-1].stats
    assert stats.finish_reason == "tool_calls" and out.reasoning == "use a tool" and out.content is None
    assert [c.to_openai()["function"] for c in out.tool_calls] == [{"name": "get_weather",
                                                                    "arguments": '{"city": "Beijing"}'}]
    kinds = [d.kind for e in events for d in e.deltas]
    assert kinds.count("tool_call") == 1 and "tool_args" in kinds
    assert stats.reasoning_tokens == len(tok.encode("use a tool"))


def test_thinking_budget_forces_end_of_reasoning(engine):
    tok = engine.tokenizer
    ids, last = run(engine, engine.new_session(), USER, SamplingParams(max_tokens=8, thinking_budget=3, seed=0),
                    constraint=TextOnly(tok))
    assert ids[3] == tok.think_end_id and last.stats.reasoning_tokens == 3
    assert last.output.reasoning and last.output.content  # text after the forced </think> is content
    _, zero = run(engine, engine.new_session(), USER, SamplingParams(max_tokens=3, thinking_budget=0, seed=0))
    assert zero.output.reasoning is None and zero.stats.reasoning_tokens == 0


def test_stop_strings_end_the_content(engine):
    tok = engine.tokenizer
    seq = [tok.think_id, *tok.encode("STOP in thinking is fine"), tok.think_end_id, *tok.encode("Hello STOP world")]
    ids, last = run(engine, engine.new_session(), USER, SamplingParams(max_tokens=100, stop=("STOP",)),
                    constraint=Force(seq, tok.vocab_size))
    assert last.stats.finish_reason == "stop" and last.output.content == "Hello "
    assert last.output.reasoning == "STOP in thinking is fine" and len(ids) < len(seq)


def test_cancel_from_another_thread(engine):
    cancel, events = threading.Event(), queue.Queue()

    def worker():
        for e in engine.chat(engine.new_session(), USER, params=SamplingParams(max_tokens=10_000), cancel=cancel):
            events.put(e)

    t = threading.Thread(target=worker)
    t.start()
    events.get(timeout=120)
    cancel.set()
    t.join(timeout=120)
    got = []
    while not events.empty():
        got.append(events.get())
    assert not t.is_alive() and got[-1].stats.finish_reason == "cancelled"
    assert got[-1].stats.completion_tokens < 10_000


def test_context_overflow_drops_old_tool_outputs_then_refuses(engine):
    tok, template = engine.tokenizer, engine.template
    call = lambda i: {"role": "assistant", "content": "", "tool_calls": [  # noqa: E731
        {"id": f"functions.search:{i}", "type": "function", "function": {"name": "search", "arguments": "{}"}}]}
    messages = [{"role": "user", "content": "research"}]
    for i in range(3):
        messages += [call(i), {"role": "tool", "tool_call_id": f"functions.search:{i}", "content": "result " * 200}]

    def render(m):
        return template.render_ids(tok, m)

    full = len(render(messages))
    fitted = fit_prompt(render, messages, max_len=full - 150, reserve=10)
    assert fitted.dropped_tool_outputs == 1 and fitted.messages[2]["content"] == TOOL_OUTPUT_PLACEHOLDER
    assert fitted.messages[4]["content"] == "result " * 200 and len(fitted.ids) + 10 <= full - 150
    with pytest.raises(HybridK2Error, match=r"after removing 3 old tool outputs.*exceeds the context of 60 tokens"):
        fit_prompt(render, messages, max_len=60, reserve=10)
    # End to end: a session with a small context still answers, with the oldest outputs hidden.
    two_dropped = [{**m, "content": TOOL_OUTPUT_PLACEHOLDER} if i in (2, 4) else m for i, m in enumerate(messages)]
    session = engine.new_session(max_len=len(render(two_dropped)) + 3)  # room for exactly 3 answer tokens
    _, last = run(engine, session, messages, SamplingParams(max_tokens=3, seed=0))
    assert last.stats.dropped_tool_outputs == 2 and last.stats.completion_tokens == 3


def test_generation_stops_at_the_end_of_the_context(engine):
    session = engine.new_session(max_len=60)
    prompt = engine.prompt(USER, max_len=60, reserve=1).ids
    ids, last = run(engine, session, USER, SamplingParams(max_tokens=1000, seed=0))
    assert len(ids) == 60 - len(prompt) and last.stats.finish_reason == "length"


def test_generate_directly_on_ids(engine):
    session = engine.new_session()
    prompt = engine.prompt(USER, max_len=session.max_len, reserve=1).ids
    events = list(generate(session, engine.tokenizer, prompt, SamplingParams(max_tokens=3, seed=9)))
    ids = [e.token_id for e in events[:-1]]
    assert all(0 <= i < engine.tokenizer.vocab_size for i in ids)
    assert "".join(e.text for e in events) == engine.tokenizer.decode(ids)
    with pytest.raises(HybridK2Error, match="prompt is empty"):
        list(generate(session, engine.tokenizer, [], SamplingParams()))


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"), (dict(top_k=1.5), "top_k"),
    (dict(min_p=2), "min_p"), (dict(seed="x"), "seed"), (dict(max_tokens=0), "max_tokens"),
    (dict(stop=("",)), "stop"), (dict(thinking_budget=-1), "thinking_budget"), (dict(temperature=float("nan")), "temperature"),
])
def test_sampling_params_are_checked(kw, match):
    with pytest.raises(HybridK2Error, match=match):
        SamplingParams(**kw)
    assert SamplingParams(stop="x").stop == ("x",)


def test_sampler_filters():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.5, 2.9])
    gen = make_generator(0)
    argmax = 1
    for p in [SamplingParams(temperature=0), SamplingParams(top_k=1), SamplingParams(top_p=0.01),
              SamplingParams(min_p=1.0)]:
        assert {sample(logits, p, gen) for _ in range(20)} == {argmax}
    assert {sample(logits, SamplingParams(top_k=2), gen) for _ in range(200)} == {1, 4}
    allowed = torch.tensor([True, False, True, False])  # shorter than V: id 4 disallowed too
    assert {sample(logits, SamplingParams(), gen, allowed) for _ in range(200)} == {0, 2}
    with pytest.raises(HybridK2Error, match="allows no token"):
        sample(logits, SamplingParams(), gen, torch.zeros(5, dtype=torch.bool))
    # Frequencies follow softmax(logits / T).
    probs = torch.softmax(logits / 0.7, -1)
    draws = torch.tensor([sample(logits, SamplingParams(temperature=0.7), gen) for _ in range(3000)])
    freq = torch.bincount(draws, minlength=5) / 3000
    torch.testing.assert_close(freq, probs, atol=0.04, rtol=0)


def sorted_reference_probs(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """The filters written plainly over one full descending sort: the oracle for filtered_probs."""
    probs = torch.softmax(logits / p.temperature, -1)  # [V]
    order = torch.argsort(probs, descending=True, stable=True)
    keep = torch.zeros_like(probs, dtype=torch.bool)
    mass = 0.0
    for rank, i in enumerate(order.tolist()):
        if (p.top_k and rank >= p.top_k) or (p.top_p < 1 and mass >= p.top_p):
            break
        keep[i] = True
        mass += float(probs[i]) / float(probs[order[:p.top_k or len(order)]].sum())
    out = torch.where(keep, probs / probs[keep].sum(), torch.zeros_like(probs))
    out = torch.where(out >= p.min_p * out.max(), out, torch.zeros_like(out))
    return out / out.sum()


@pytest.mark.parametrize("kw", [{}, {"temperature": 0.6}, {"top_k": 7}, {"top_p": 0.8}, {"top_p": 0.999},
                                {"min_p": 0.1}, {"top_k": 50, "top_p": 0.9, "min_p": 0.02},
                                {"top_p": 5e-324}])  # below fp32: only the first token stays
def test_filtered_probs_match_the_sorted_reference(kw):
    logits = torch.randn(3000, generator=torch.Generator().manual_seed(1)) * 2  # [V], no ties
    p = SamplingParams(**kw)
    fast = filtered_probs(logits, p)
    torch.testing.assert_close(fast / fast.sum(), sorted_reference_probs(logits, p), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kw", [{}, {"top_p": 0.7}, {"top_k": 3, "temperature": 1.5}])
def test_inverse_cdf_frequencies_match_the_probabilities(kw):
    logits = torch.tensor([0.3, -1.0, 2.0, 1.1, -0.2, 0.9, -3.0, 1.6])
    p = SamplingParams(**kw)
    probs = filtered_probs(logits, p)
    probs = probs / probs.sum()
    gen = make_generator(123)
    n = 20000
    freq = torch.bincount(torch.tensor([sample(logits, p, gen) for _ in range(n)]), minlength=8) / n
    assert freq[probs == 0].sum() == 0  # a filtered token is never drawn
    # within 4.5 standard errors of each probability
    assert bool(((freq - probs).abs() <= 4.5 * (probs * (1 - probs) / n).sqrt() + 1e-9).all()), (freq, probs)


def test_draw_edges_and_seeds():
    probs = torch.tensor([0.0, 0.0, 1.0, 0.0])
    gen = make_generator(0)
    assert {draw(probs, gen) for _ in range(100)} == {2}  # zero-mass tokens never, even at u = 0
    logits = torch.randn(163_840, generator=torch.Generator().manual_seed(0))
    for p in (SamplingParams(), SamplingParams(top_p=0.9, top_k=100)):
        a = [sample(logits, p, make_generator(7)) for _ in range(3)]
        g1, g2 = make_generator(42), make_generator(42)
        assert [sample(logits, p, g1) for _ in range(20)] == [sample(logits, p, g2) for _ in range(20)]
        assert len(set(a)) == 1
    g42, g43 = make_generator(42), make_generator(43)
    assert [sample(logits, SamplingParams(), g42) for _ in range(20)] != \
        [sample(logits, SamplingParams(), g43) for _ in range(20)]
