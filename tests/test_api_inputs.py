"""Session.prefill / decode take ids as lists, 1-D integer tensors and numpy arrays (the same logits),
and refuse anything else in one line that names the type."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import hybrid_k2
from hybrid_k2.errors import HybridK2Error

IDS = [5, 17, 42, 7, 99]


@pytest.fixture(scope="module")
def model(tiny_model):
    return hybrid_k2.load(tiny_model)


def run(model, prompt, next_id):
    s = model.new_session()
    return s.prefill(prompt), s.decode(next_id), s.tokens


@pytest.mark.parametrize("kind", ["tuple", "int64 tensor", "int32 tensor", "numpy int64", "numpy uint16", "range"])
def test_integer_arrays_give_the_same_logits(model, kind):
    want_prefill, want_decode, want_tokens = run(model, IDS, 3)
    prompt, next_id = {
        "tuple": (tuple(IDS), 3),
        "int64 tensor": (torch.tensor(IDS), torch.tensor(3)),
        "int32 tensor": (torch.tensor(IDS, dtype=torch.int32), torch.tensor([3], dtype=torch.int32)),
        "numpy int64": (np.array(IDS), np.int64(3)),
        "numpy uint16": (np.array(IDS, dtype=np.uint16), np.array([3], dtype=np.uint16)),
        "range": (range(5, 10), 3),
    }[kind]
    got_prefill, got_decode, tokens = run(model, prompt, next_id)
    if kind == "range":
        want_prefill, want_decode, want_tokens = run(model, list(range(5, 10)), 3)
    assert torch.equal(got_prefill, want_prefill) and torch.equal(got_decode, want_decode)
    assert tokens == want_tokens and all(type(t) is int for t in tokens)


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([1.0, 2.0]), "token ids must be integers, got a torch.Tensor of torch.float32, shape [2]"),
    (torch.tensor([[1, 2]]), "token ids must be 1-D, got a torch.Tensor of torch.int64, shape [1, 2]"),
    (np.array([1.5]), "token ids must be integers, got a numpy.ndarray of float64, shape [1]"),
    (torch.tensor([True]), "token ids must be integers, got a torch.Tensor of torch.bool"),
    ("hello", "token ids must be a list of ints, a 1-D integer tensor or a 1-D integer numpy array, got str"),
    (5, "token ids must be a list of ints, a 1-D integer tensor or a 1-D integer numpy array, got int"),
    ([1, 2.0], "token ids must be integers, got 2.0 (float)"),
    ([True], "token ids must be integers, got True (bool)"),
    ([10**9], "token id 1000000000 is outside the vocabulary"),
])
def test_prefill_refuses_other_inputs(model, bad, message):
    s = model.new_session()
    with pytest.raises(HybridK2Error) as e:
        s.prefill(bad)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert len(s) == 0


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([1, 2]), "decode takes one token id, got a torch.Tensor of torch.int64, shape [2]"),
    (torch.tensor(1.0), "token ids must be integers, got a torch.Tensor of torch.float32, shape []"),
    (2.0, "decode takes one token id (an int), got 2.0 (float)"),
    ([3], "decode takes one token id (an int), got [3] (list)"),
])
def test_decode_refuses_other_inputs(model, bad, message):
    s = model.new_session()
    s.prefill(IDS)
    with pytest.raises(HybridK2Error) as e:
        s.decode(bad)
    assert str(e.value) == message and len(s) == len(IDS)
