"""Request bodies of the Anthropic Messages API (POST /v1/messages, /v1/messages/count_tokens).

Field names follow Anthropic's API. Content blocks are one lenient model with the fields of every block
type; anthropic.py checks each type's fields and refuses the types this text-only model cannot read
(images, documents, server tools) with a 400 naming the block. Unknown fields are ignored
(`cache_control`, `citations`, `metadata`, `service_tier`, ...), as on the OpenAI side.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Block(_Lenient):
    type: str
    text: Optional[str] = None                           # text
    thinking: Optional[str] = None                       # thinking
    signature: Optional[str] = None
    data: Optional[str] = None                           # redacted_thinking
    id: Optional[str] = None                             # tool_use
    name: Optional[str] = None
    input: Optional[Any] = None
    tool_use_id: Optional[str] = None                    # tool_result
    content: Union[str, list["Block"], None] = None
    is_error: Optional[bool] = None


class Message(_Lenient):
    # "system" mid-conversation: Claude Code sends them (beta mid-conversation-system-2026-04-07)
    role: Literal["user", "assistant", "system"]
    content: Union[str, list[Block]]


class ToolDef(_Lenient):
    # No dots: K2's call ids are `functions.NAME:IDX`, and Anthropic's own names allow none either.
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+$")
    description: Optional[str] = None
    input_schema: Optional[dict[str, Any]] = None
    type: Optional[str] = None                           # absent or "custom"; others are Anthropic's own tools


class ToolChoice(_Lenient):
    type: Literal["auto", "any", "tool", "none"]
    name: Optional[str] = None
    disable_parallel_tool_use: Optional[bool] = None


class Thinking(_Lenient):
    type: str                                            # enabled | disabled | adaptive (or newer kinds)
    budget_tokens: Optional[int] = Field(default=None, ge=0)


class OutputFormat(_Lenient):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Lenient):
    format: Optional[OutputFormat] = None                # structured output; `effort` is ignored


class CountTokensRequest(_Lenient):
    model: str
    messages: list[Message] = Field(min_length=1)
    system: Union[str, list[Block], None] = None
    tools: Optional[list[ToolDef]] = None
    tool_choice: Optional[ToolChoice] = None
    thinking: Optional[Thinking] = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: Optional[list[str]] = None
    temperature: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=0)
    stream: bool = False
    output_config: Optional[OutputConfig] = None
