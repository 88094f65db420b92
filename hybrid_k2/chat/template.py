"""K2's chat template: the checkpoint's own `chat_template.jinja`, or our built-in renderer of it.

[NOTE] Two renderers, one format (kimi-k2-format.md section 5):
- `JinjaTemplate` renders the checkpoint's file the way Hugging Face does (sandboxed, trim_blocks,
  lstrip_blocks, loopcontrols, `tojson` = json.dumps(ensure_ascii=False)).
- `apply_chat_template` is our Python rendering of the same logic, used when a checkpoint ships no
  template; tests check both produce identical strings on generated conversations.
Values are printed the way Jinja prints them (None -> "None", a missing key -> ""), because clients
do send `reasoning_content: null` and the model was trained on whatever the template printed.

Token ids: `render_ids` never lets message text become control tokens. Every special-token string
found in the caller's data is swapped for a random placeholder before rendering; the rendered text is
then split at the real markers (control tokens) and the text between them is encoded as plain text
with the placeholders put back.
"""
from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any, Mapping, Sequence

from hybrid_k2.errors import HybridK2Error

DEFAULT_SYSTEM_PROMPT = "You are Kimi, an AI assistant created by Moonshot AI."
MEDIA_PLACEHOLDER = "<|media_start|>image<|media_content|><|media_pad|><|media_end|>\n"
TEMPLATE_FILE = "chat_template.jinja"


def tojson(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _text(value: Any) -> str:
    """What `{{ value }}` prints in Jinja: str() of anything (None -> "None")."""
    return value if isinstance(value, str) else str(value)


def _render_content(message: Mapping) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, (list, tuple)):
        raise HybridK2Error(f"message content must be a string or a list of parts, not {type(content).__name__}")
    out = []
    for part in content:
        if not isinstance(part, Mapping):
            raise HybridK2Error("each content part must be an object like {\"type\": \"text\", \"text\": ...}")
        if part.get("type") == "image" or "image" in part or "image_url" in part:
            out.append(MEDIA_PLACEHOLDER)
        elif "text" in part:
            out.append(_text(part["text"]))
    return "".join(out)


def _header(message: Mapping) -> str:
    role = message["role"]
    name = _text(message.get("name") or role)
    if role == "user":
        return f"<|im_user|>{name}<|im_middle|>"
    if role == "assistant":
        return f"<|im_assistant|>{name}<|im_middle|>"
    return f"<|im_system|>{name}<|im_middle|>"  # system, tool, and any other role


def _render_tool_calls(message: Mapping) -> str:
    out = ["<|tool_calls_section_begin|>"]
    for call in message["tool_calls"]:
        try:
            call_id, args = call.get("id", ""), call["function"]["arguments"]
        except (KeyError, TypeError, AttributeError):
            raise HybridK2Error("each tool call needs {\"id\", \"function\": {\"name\", \"arguments\"}}") from None
        out.append(f"<|tool_call_begin|>{_text(call_id)}<|tool_call_argument_begin|>"
                   f"{args if isinstance(args, str) else tojson(args)}<|tool_call_end|>")
    out.append("<|tool_calls_section_end|>")
    return "".join(out)


def _render_message(message: Mapping, *, keep_reasoning: bool) -> str:
    role = message["role"]
    out = [_header(message)]
    if role == "assistant":
        # Past thinking is dropped: only the in-progress tool-calling chain keeps its reasoning.
        reasoning = _text(message.get("reasoning_content", "")) if keep_reasoning else ""
        out.append(f"<think>{reasoning}</think>{_render_content(message)}")
        if message.get("tool_calls"):
            out.append(_render_tool_calls(message))
    elif role == "tool":
        out.append(f"## Return of {_text(message.get('tool_call_id', ''))}\n{_render_content(message)}")
    else:
        out.append(_render_content(message))
    out.append("<|im_end|>")
    return "".join(out)


def check_messages(messages: Any, tools: Any = None) -> None:
    """One-line errors for inputs neither renderer can take."""
    if not isinstance(messages, (list, tuple)):
        raise HybridK2Error("messages must be a list of objects")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise HybridK2Error(f"message {i} must be an object with a string \"role\"")
        if m.get("tool_calls") and not isinstance(m["tool_calls"], (list, tuple)):
            raise HybridK2Error(f"message {i}: tool_calls must be a list")
    if tools is not None and not isinstance(tools, (list, tuple)):
        raise HybridK2Error("tools must be a list of tool declarations")


def apply_chat_template(messages: Sequence[Mapping], tools: Sequence[Mapping] | None = None, *,
                        add_generation_prompt: bool = True) -> str:
    """Renders a conversation in K2-Thinking's chat format (the built-in renderer).

    Same output as the official `chat_template.jinja`: tool declarations, then the default system
    prompt unless the first message is a system message, then the messages; assistant messages up to
    the last final answer get an empty `<think></think>`, later ones keep `reasoning_content`.
    The generation prompt is `<|im_assistant|>assistant<|im_middle|>` (the model writes `<think>`).
    """
    check_messages(messages, tools)
    last_final = -1  # the last assistant message without tool calls
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant" and not messages[i].get("tool_calls"):
            last_final = i
            break
    out = []
    if tools:
        out.append(f"<|im_system|>tool_declare<|im_middle|>{tojson(list(tools))}<|im_end|>")
    if not messages or messages[0]["role"] != "system":
        out.append(f"<|im_system|>system<|im_middle|>{DEFAULT_SYSTEM_PROMPT}<|im_end|>")
    for i, message in enumerate(messages):
        out.append(_render_message(message, keep_reasoning=i > last_final))
    if add_generation_prompt:
        out.append("<|im_assistant|>assistant<|im_middle|>")
    return "".join(out)


class JinjaTemplate:
    """A checkpoint's `chat_template.jinja`, rendered exactly as Hugging Face renders it."""

    def __init__(self, source: str, *, origin: str = "<string>"):
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: \
            json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
        env.globals["raise_exception"] = raise_exception
        self.origin = origin
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise HybridK2Error(f"chat template {origin} line {e.lineno}: {e.message}") from None

    def __call__(self, messages, tools=None, *, add_generation_prompt=True) -> str:
        import jinja2

        check_messages(messages, tools)
        try:
            return self._template.render(messages=list(messages), tools=tools,
                                         add_generation_prompt=add_generation_prompt)
        except (jinja2.TemplateError, TypeError, ValueError) as e:
            message = getattr(e, "message", None) or str(e)
            raise HybridK2Error(f"chat template {self.origin}: {message.splitlines()[0] if message else type(e).__name__}") from None


class ChatTemplate:
    """The chat format a checkpoint uses: its `chat_template.jinja` if present, else the built-in one.

    `render(...) -> str` and `render_ids(tokenizer, ...) -> list[int]` (safe: message text never
    becomes control tokens). A message's `reasoning` is copied to `reasoning_content` when only the
    former is given (newer OpenAI clients send `reasoning`; the template reads `reasoning_content`).
    """

    def __init__(self, jinja: JinjaTemplate | None = None):
        self.jinja = jinja
        self.source = jinja.origin if jinja else "built-in"

    @classmethod
    def from_dir(cls, path: str | Path) -> "ChatTemplate":
        path = Path(path)
        file = path / TEMPLATE_FILE
        if file.is_file():
            try:
                return cls(JinjaTemplate(file.read_text(encoding="utf-8"), origin=str(file)))
            except (OSError, UnicodeDecodeError) as e:
                raise HybridK2Error(f"cannot read chat template {file}: {e}") from None
        return cls(None)

    def render(self, messages, tools=None, *, add_generation_prompt: bool = True) -> str:
        messages = alias_reasoning(messages)
        if self.jinja is not None:
            return self.jinja(messages, tools, add_generation_prompt=add_generation_prompt)
        return apply_chat_template(messages, tools, add_generation_prompt=add_generation_prompt)

    def render_ids(self, tokenizer, messages, tools=None, *, add_generation_prompt: bool = True) -> list[int]:
        """Renders and tokenises: template markers become control tokens, caller text stays text."""
        check_messages(messages, tools)
        names = sorted(tokenizer.special_tokens, key=len, reverse=True)
        marker_re = re.compile("|".join(re.escape(n) for n in names))
        nonce = _fresh_nonce((messages, tools))
        hidden: list[str] = []  # special-token strings found in caller data, by placeholder index

        def hide(value):
            if isinstance(value, str):
                def sub(m):
                    hidden.append(m.group(0))
                    return f"{nonce}{len(hidden) - 1}Z"
                return marker_re.sub(sub, value)
            if isinstance(value, Mapping):
                return {hide(k): hide(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [hide(v) for v in value]
            return value

        text = self.render(hide(list(messages)), hide(tools) if tools is not None else None,
                           add_generation_prompt=add_generation_prompt)
        restore = re.compile(re.escape(nonce) + r"(\d+)Z")
        ids: list[int] = []
        pos = 0
        for m in marker_re.finditer(text):
            ids += tokenizer.encode(restore.sub(lambda r: hidden[int(r.group(1))], text[pos:m.start()]))
            ids.append(tokenizer.special_tokens[m.group(0)])
            pos = m.end()
        ids += tokenizer.encode(restore.sub(lambda r: hidden[int(r.group(1))], text[pos:]))
        return ids


def alias_reasoning(messages):
    """Copies `reasoning` into `reasoning_content` where only `reasoning` is set (as HF does)."""
    if not isinstance(messages, (list, tuple)):
        return messages
    out = []
    for m in messages:
        if isinstance(m, Mapping) and m.get("reasoning_content") is None and m.get("reasoning") is not None:
            m = {**m, "reasoning_content": m["reasoning"]}
        out.append(m)
    return out


def _fresh_nonce(data) -> str:
    blob = json.dumps(data, ensure_ascii=False, default=str)
    while True:
        nonce = "HK2SPECIAL" + secrets.token_hex(8)
        if nonce not in blob:
            return nonce
