"""K2's tokenizer, read from the checkpoint's own files and run by the `tiktoken` library.

[NOTE] Format (docs/chat.md, kimi-k2-format.md section 4):
- `tiktoken.model`: one line per mergeable token, `base64(bytes) SP rank`; ranks are 0..n_base-1.
- 256 special slots follow at ids n_base..n_base+255; their names come from `tokenizer_config.json`
  `added_tokens_decoder`, unnamed slots are `<|reserved_token_{absolute id}|>`.
- Pre-tokenizer: Kimi's `pat_str` below. tiktoken's regex engine (Rust fancy-regex over `regex`)
  supports `&&` class intersection, which the pattern uses to take Han out of the letter classes;
  tests check the split against Python's `regex` module in VERSION1 mode.
- Long inputs are cut like the original before BPE: 400,000-char pieces, and runs of more than
  25,000 whitespace (or non-whitespace) chars are split, so pathological inputs give the same ids.
Untrusted text never becomes control tokens: `encode` treats special-token strings as plain text
unless `allow_special=True`. Templates are turned into ids by `template.render_ids`, which encodes
the markers as control tokens and the message text as text.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import json
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import tiktoken

from hybrid_k2.errors import HybridK2Error

NUM_SPECIAL_SLOTS = 256
MAX_ENCODE_CHARS = 400_000
MAX_SAME_CLASS_RUN = 25_000

# Kimi's split pattern, alternatives in the original order: Han runs first; letter runs that exclude
# Han (class intersection `&&[^\p{Han}]`) with English contractions; digits in groups of <= 3;
# punctuation runs; newlines; trailing whitespace.
PAT_STR = "|".join([
    r"[\p{Han}]+",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
])

# Names the chat code looks up; the ids always come from tokenizer_config.json (tiny models differ).
BOS, EOS, UNK, PAD = "[BOS]", "[EOS]", "[UNK]", "[PAD]"
IM_END, IM_USER, IM_ASSISTANT, IM_SYSTEM, IM_MIDDLE = (
    "<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|im_system|>", "<|im_middle|>")
THINK, THINK_END = "<think>", "</think>"
TOOL_CALLS_SECTION_BEGIN, TOOL_CALLS_SECTION_END = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
TOOL_CALL_BEGIN, TOOL_CALL_ARGUMENT_BEGIN, TOOL_CALL_END = (
    "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>")


def load_ranks(path: Path) -> dict[bytes, int]:
    """Reads a tiktoken BPE file; any defect is one HybridK2Error line naming the file and line."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise HybridK2Error(f"tokenizer file not found: {path}") from None
    except OSError as e:
        raise HybridK2Error(f"cannot read tokenizer file {path}: {e.strerror or e}") from None
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected 'base64 rank'")
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (ValueError, binascii.Error) as e:
            raise HybridK2Error(f"corrupt tokenizer file {path}, line {lineno}: {e}") from None
        if token in ranks:
            raise HybridK2Error(f"corrupt tokenizer file {path}, line {lineno}: token listed twice")
        ranks[token] = rank
    if not ranks:
        raise HybridK2Error(f"corrupt tokenizer file {path}: no tokens")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise HybridK2Error(f"corrupt tokenizer file {path}: ranks are not 0..{len(ranks) - 1}, each once")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise HybridK2Error(f"corrupt tokenizer file {path}: single byte {missing[0]:#04x} has no token")
    return ranks


def special_token_names(n_base: int, added_tokens_decoder: dict) -> dict[str, int]:
    """The 256 special slots: names from `added_tokens_decoder` (id string -> {"content": ...}), else
    `<|reserved_token_{id}|>` with the absolute id, exactly like the original tokenizer."""
    named: dict[int, str] = {}
    for key, entry in (added_tokens_decoder or {}).items():
        try:
            idx = int(key)
            content = entry["content"] if isinstance(entry, dict) else entry
        except (TypeError, ValueError, KeyError):
            raise HybridK2Error(f"tokenizer_config.json: bad added_tokens_decoder entry {key!r}") from None
        if not isinstance(content, str) or not content:
            raise HybridK2Error(f"tokenizer_config.json: added token {key} has no content")
        named[idx] = content
    specials: dict[str, int] = {}
    for idx in range(n_base, n_base + NUM_SPECIAL_SLOTS):
        name = named.get(idx, f"<|reserved_token_{idx}|>")
        if name in specials:
            raise HybridK2Error(f"tokenizer_config.json: special token {name!r} named twice")
        specials[name] = idx
    return specials


def split_long_runs(text: str, max_run: int = MAX_SAME_CLASS_RUN) -> Iterator[str]:
    """Cuts `text` wherever a run of whitespace (or of non-whitespace) chars would exceed `max_run`,
    the original's `_split_whitespaces_or_nonwhitespaces`; short text cannot hold such a run."""
    if len(text) <= max_run:
        yield text
        return
    run_len, run_is_space, start = 0, text[0].isspace(), 0
    for i, ch in enumerate(text):
        is_space = ch.isspace()
        if is_space != run_is_space:
            run_len, run_is_space = 1, is_space
        else:
            run_len += 1
            if run_len > max_run:
                yield text[start:i]
                start, run_len = i, 1
    yield text[start:]


def encode_chunks(text: str) -> Iterator[str]:
    """The pieces the original encodes separately: 400k-char slices, then long runs split."""
    for i in range(0, len(text), MAX_ENCODE_CHARS):
        yield from split_long_runs(text[i:i + MAX_ENCODE_CHARS])


class Tokenizer:
    """K2's tiktoken BPE plus its 256 special slots.

    Build with `Tokenizer.from_dir(model_dir)`. `encode(text)` never yields control tokens unless
    `allow_special=True`; `decode(ids)` keeps specials (as their names) unless `skip_special_tokens`.
    Ids of the tokens the chat code needs are properties looked up by name (`im_end_id`, ...).
    """

    def __init__(self, mergeable_ranks: dict[bytes, int], special_tokens: dict[str, int], *,
                 bos_token: str = BOS, eos_token: str = EOS, name: str = "kimi-k2"):
        self.n_base = len(mergeable_ranks)
        self.special_tokens = dict(special_tokens)  # name -> id
        self.special_names = {i: s for s, i in special_tokens.items()}  # id -> name
        self.vocab_size = self.n_base + len(special_tokens)
        self.bos_token, self.eos_token = bos_token, eos_token
        self._enc = tiktoken.Encoding(name, pat_str=PAT_STR, mergeable_ranks=mergeable_ranks,
                                      special_tokens=self.special_tokens)

    @classmethod
    def from_dir(cls, path: str | Path) -> "Tokenizer":
        """Reads `tiktoken.model` and `tokenizer_config.json` from a checkpoint folder."""
        path = Path(path)
        if not path.is_dir():
            raise HybridK2Error(f"model folder not found: {path}")
        ranks = load_ranks(path / "tiktoken.model")
        config = read_tokenizer_config(path / "tokenizer_config.json")
        specials = special_token_names(len(ranks), config.get("added_tokens_decoder", {}))
        return cls(ranks, specials, bos_token=_token_text(config.get("bos_token"), BOS),
                   eos_token=_token_text(config.get("eos_token"), EOS))

    # ---- ids by name -------------------------------------------------------------------------
    def token_id(self, name: str) -> int:
        """Id of a special token by name (e.g. "<|im_end|>"); HybridK2Error if the vocabulary lacks it."""
        try:
            return self.special_tokens[name]
        except KeyError:
            raise HybridK2Error(f"tokenizer has no special token {name}") from None

    def is_special(self, token_id: int) -> bool:
        return token_id >= self.n_base

    bos_id = cached_property(lambda self: self.token_id(self.bos_token))
    eos_id = cached_property(lambda self: self.token_id(self.eos_token))
    im_end_id = cached_property(lambda self: self.token_id(IM_END))
    im_user_id = cached_property(lambda self: self.token_id(IM_USER))
    im_assistant_id = cached_property(lambda self: self.token_id(IM_ASSISTANT))
    im_system_id = cached_property(lambda self: self.token_id(IM_SYSTEM))
    im_middle_id = cached_property(lambda self: self.token_id(IM_MIDDLE))
    think_id = cached_property(lambda self: self.token_id(THINK))
    think_end_id = cached_property(lambda self: self.token_id(THINK_END))
    tool_calls_section_begin_id = cached_property(lambda self: self.token_id(TOOL_CALLS_SECTION_BEGIN))
    tool_calls_section_end_id = cached_property(lambda self: self.token_id(TOOL_CALLS_SECTION_END))
    tool_call_begin_id = cached_property(lambda self: self.token_id(TOOL_CALL_BEGIN))
    tool_call_argument_begin_id = cached_property(lambda self: self.token_id(TOOL_CALL_ARGUMENT_BEGIN))
    tool_call_end_id = cached_property(lambda self: self.token_id(TOOL_CALL_END))

    @cached_property
    def stop_ids(self) -> frozenset[int]:
        """Generation ends at `<|im_end|>` (primary), `[EOS]` and the configured eos token."""
        ids = {self.im_end_id}
        for name in (EOS, self.eos_token):
            if name in self.special_tokens:
                ids.add(self.special_tokens[name])
        return frozenset(ids)

    # ---- encode / decode ---------------------------------------------------------------------
    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Text -> ids with the original's chunking. Special-token strings inside `text` stay plain
        text unless `allow_special=True` (then they become control tokens, as HF's default does)."""
        ids: list[int] = []
        for chunk in encode_chunks(text):
            if allow_special:
                ids += self._enc.encode(chunk, allowed_special="all")
            else:
                ids += self._enc.encode_ordinary(chunk)
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token; a special token gives its name."""
        try:
            return self._enc.decode_single_token_bytes(token_id)
        except KeyError:
            raise HybridK2Error(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})") from None

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Ids -> text (invalid UTF-8 replaced). Specials are kept as their names by default, which the
        reasoning/tool parser needs."""
        ids = [i for i in ids if not (skip_special_tokens and self.is_special(i))]
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(n_base={self.n_base}, vocab_size={self.vocab_size})"


class StreamDecoder:
    """Detokenises one token at a time and never returns half a UTF-8 character: incomplete byte
    sequences wait for the next token; `flush()` ends the stream (a dangling partial becomes U+FFFD)."""

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if self.skip_special_tokens and self.tokenizer.is_special(token_id):
            return ""
        return self._utf8.decode(self.tokenizer.token_bytes(token_id))

    def push_many(self, ids: Sequence[int]) -> str:
        return "".join(self.push(i) for i in ids)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def read_json(path: Path, what: str, *, missing_ok: bool = False):
    """Parsed JSON file; a missing or broken file is one HybridK2Error line naming `what`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing_ok:
            return None
        raise HybridK2Error(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HybridK2Error(f"corrupt {what} {path}: {str(e).splitlines()[0]}") from None


def read_tokenizer_config(path: Path) -> dict:
    config = read_json(path, "tokenizer config")
    if not isinstance(config, dict):
        raise HybridK2Error(f"corrupt tokenizer config {path}: not a JSON object")
    if not isinstance(config.get("added_tokens_decoder", {}), dict):
        raise HybridK2Error(f"corrupt tokenizer config {path}: added_tokens_decoder is not an object")
    return config


def _token_text(value, default: str) -> str:
    # HF configs hold either "[EOS]" or {"content": "[EOS]", ...}.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else default
