"""llguidance grammars over the project's real tiny tokenizer: every walk through the masks yields
K2 output that the chat parser reads as valid tool calls / JSON valid for its schema."""
from __future__ import annotations

import json
import random

import jsonschema
import pytest
import torch

from hybrid_k2.chat.parser import parse_output
from hybrid_k2.chat.tokenizer import Tokenizer
from hybrid_k2.serve.constraints import Constraints, ThinkingBudget
from hybrid_k2.serve.grammar import (GrammarCompiler, GrammarError, ToolSpec, json_grammar,
                                     lltokenizer_for, tool_calls_grammar)
from hybrid_k2.tiny import write_tokenizer

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit", "days"],
           "properties": {"city": {"type": "string", "maxLength": 8},
                          "unit": {"enum": ["celsius", "fahrenheit"]},
                          "days": {"type": "integer", "minimum": 1, "maximum": 14}}}
CLOCK = {"type": "object", "additionalProperties": False, "required": ["tz"],
         "properties": {"tz": {"type": "string", "maxLength": 5}}}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    write_tokenizer(d, 256)
    return Tokenizer.from_dir(d)


@pytest.fixture(scope="module")
def compiler(tok):
    c = GrammarCompiler(lltokenizer_for(tok), logits_size=tok.vocab_size + 7)  # padded model vocab
    yield c
    c.close()


def walk(tok, compiler, lark, *, seed, budget=3, max_steps=300):
    """Samples uniformly among allowed tokens until an end-of-message token: a stand-in for a model
    that knows nothing (the tiny random model's situation), with the thinking budget as the server
    applies it when a grammar is active."""
    rng = random.Random(seed)
    cons = Constraints(compiler.constraint(lark), [budget_for(tok, budget, compiler.logits_size)])
    out = []
    try:
        for _ in range(max_steps):
            allowed = torch.nonzero(cons.mask(out)).flatten().tolist()
            assert allowed, "grammar left no token"
            t = rng.choice(allowed)
            if t in tok.stop_ids:
                return out, t
            assert cons.accept(t), cons.grammar.error()
            out.append(t)
    finally:
        cons.close()
    raise AssertionError(f"no end after {max_steps} tokens: {tok.decode(out)!r}")


def budget_for(tok, budget, logits_size):
    return ThinkingBudget(budget, think_id=tok.think_id, think_end_id=tok.think_end_id,
                          section_begin_id=tok.tool_calls_section_begin_id, logits_size=logits_size)


@pytest.mark.parametrize("seed", range(8))
def test_tool_call_walks_parse_and_validate(tok, compiler, seed):
    tools = [ToolSpec("get_weather", WEATHER), ToolSpec("clock", CLOCK)]
    lark = tool_calls_grammar(tools, first_index=5, max_calls=3)
    ids, stop = walk(tok, compiler, lark, seed=seed)
    assert stop == tok.im_end_id  # the first end-of-message token is the one the grammar offers
    parsed = parse_output(ids + [stop], tok)
    assert parsed.malformed is None, tok.decode(ids)
    assert 1 <= len(parsed.tool_calls) <= 3
    for i, call in enumerate(parsed.tool_calls):
        assert call.id == f"functions.{call.name}:{5 + i}"
        jsonschema.validate(json.loads(call.arguments), WEATHER if call.name == "get_weather" else CLOCK)
        # K2's training style: json.dumps separators, nothing else.
        assert call.arguments == json.dumps(json.loads(call.arguments), ensure_ascii=False)


@pytest.mark.parametrize("seed", range(6))
def test_json_schema_walks_validate(tok, compiler, seed):
    ids, _ = walk(tok, compiler, json_grammar(WEATHER), seed=seed)
    parsed = parse_output(ids, tok)
    assert not parsed.tool_calls
    jsonschema.validate(json.loads(parsed.content), WEATHER)


def test_first_mask_allows_reasoning_or_the_section(tok, compiler):
    g = compiler.constraint(tool_calls_grammar([ToolSpec("clock", CLOCK)], first_index=0, max_calls=1))
    allowed = set(torch.nonzero(g.allowed()).flatten().tolist())
    g.close()
    assert {tok.think_id, tok.think_end_id, tok.tool_calls_section_begin_id, tok.encode("a")[0]} <= allowed
    specials = set(range(tok.n_base, tok.vocab_size))
    assert allowed & specials == {tok.think_id, tok.think_end_id, tok.tool_calls_section_begin_id}


def test_budget_ends_reasoning_early(tok, compiler):
    for seed in range(4):
        ids, _ = walk(tok, compiler, json_grammar(CLOCK), seed=seed, budget=2)
        end = ids.index(tok.think_end_id)
        reasoning = [t for t in ids[:end] if t != tok.think_id]
        # 2 tokens, plus at most 3 to finish a UTF-8 character the budget cut into
        assert 2 <= len(reasoning) <= 5 or tok.think_end_id in ids[:2]


def test_budget_waits_for_a_character_boundary(tok, compiler):
    """The grammar cannot take </think> after half a character: the budget waits for the rest."""
    lead = next(i for i in range(tok.n_base) if tok.token_bytes(i) == "好".encode()[:1])
    rest = next(i for i in range(tok.n_base) if tok.token_bytes(i) == "好".encode()[1:2])
    cons = Constraints(compiler.constraint(json_grammar(CLOCK)), [budget_for(tok, 1, compiler.logits_size)])
    assert cons.accept(tok.think_id) and cons.accept(lead)
    assert cons.mask([]).sum() > 1 and not cons.mask([])[tok.think_end_id]  # mid-character: no </think> yet
    assert cons.accept(rest)
    assert cons.mask([]).sum() > 1  # still mid-character (3-byte char)
    last = next(i for i in range(tok.n_base) if tok.token_bytes(i) == "好".encode()[2:])
    assert cons.accept(last)
    assert torch.nonzero(cons.mask([])).flatten().tolist() == [tok.think_end_id]
    cons.close()


def test_banned_ids_combine_with_the_grammar(tok, compiler):
    g = compiler.constraint(tool_calls_grammar([ToolSpec("clock", CLOCK)], first_index=0, max_calls=1))
    cons = Constraints(g, banned=[tok.think_id], logits_size=compiler.logits_size)
    allowed = set(torch.nonzero(cons.mask([])).flatten().tolist())
    cons.close()
    assert tok.think_id not in allowed and tok.tool_calls_section_begin_id in allowed
    assert len(allowed) < compiler.logits_size
    bare = Constraints(banned=[5], logits_size=10)
    assert torch.nonzero(~bare.mask([])).flatten().tolist() == [5]
    assert Constraints().mask([]) is None


def test_rejected_token_reports_error(tok, compiler):
    g = compiler.constraint(json_grammar(CLOCK))
    assert not g.accept(tok.tool_call_begin_id)
    assert g.error()
    g.close()


@pytest.mark.parametrize("schema", [{"type": "objectx"}, {"type": 5}, {"properties": {"a": {"minimum": "x"}}}])
def test_bad_schema_is_a_grammar_error(compiler, schema):
    with pytest.raises(GrammarError, match="cannot compile"):
        compiler.constraint(json_grammar(schema))


def test_compiled_grammars_are_cached(compiler):
    lark = json_grammar(CLOCK)
    compiler.constraint(lark).close()
    n = len(compiler._cache)
    compiler.constraint(lark).close()
    assert len(compiler._cache) == n
