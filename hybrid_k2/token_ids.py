"""What Session.prefill / Session.decode accept as token ids, converted to plain Python ints.

prefill: a sequence of ints (list, tuple, range), a 1-D integer torch tensor or numpy array.
decode:  one int, numpy integer or 0-d / one-element integer tensor or array.
Anything else is refused in one line that names the type it got (a float tensor's element is not
"outside the vocabulary": it is not a token id at all).
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from hybrid_k2.errors import HybridK2Error

ACCEPTED = "a list of ints, a 1-D integer tensor or a 1-D integer numpy array"


def _describe(value) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"{type(value).__module__.split('.')[0]}.{type(value).__name__} of {value.dtype}, shape {list(value.shape)}"
    return type(value).__name__


def _integer_array(value) -> torch.Tensor | None:
    """A tensor or array as a CPU int64 tensor (None: neither); refuses non-integer dtypes."""
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.integer):
            raise HybridK2Error(f"token ids must be integers, got a {_describe(value)}")
        return torch.from_numpy(value.astype(np.int64, copy=False))
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise HybridK2Error(f"token ids must be integers, got a {_describe(value)}")
        return value.detach().to("cpu", torch.int64)
    return None


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def token_list(value) -> list[int]:
    """prefill's input -> list[int]."""
    t = _integer_array(value)
    if t is not None:
        if t.dim() != 1:
            raise HybridK2Error(f"token ids must be 1-D, got a {_describe(value)}")
        return t.tolist()
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise HybridK2Error(f"token ids must be {ACCEPTED}, got {_describe(value)}")
    ids = list(value)
    for x in ids:
        if not _is_int(x):
            raise HybridK2Error(f"token ids must be integers, got {x!r} ({_describe(x)})")
    return [int(x) for x in ids]


def token_scalar(value) -> int:
    """decode's input -> int."""
    t = _integer_array(value)
    if t is not None:
        if t.numel() != 1:
            raise HybridK2Error(f"decode takes one token id, got a {_describe(value)}")
        return int(t.reshape(()).item())
    if not _is_int(value):
        raise HybridK2Error(f"decode takes one token id (an int), got {value!r} ({_describe(value)})")
    return int(value)
