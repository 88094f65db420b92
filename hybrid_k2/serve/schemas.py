"""Request bodies of the OpenAI-compatible API, as pydantic models (they also make the OpenAPI schema).

Field names and defaults follow OpenAI's Chat Completions / Completions API; the extensions vLLM users
know (`top_k`, `thinking_token_budget`, `reasoning` as an alias of `reasoning_content`) keep vLLM's
names. Unknown fields are ignored, as OpenAI-compatible servers do; fields that would change the answer
in a way we do not implement (n > 1, logprobs, penalties, echo) are declared so they can be refused
with a 400 instead of being silently dropped (see request_checks.py).
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- messages ---------------------------------------------------------------------------------------

class ContentPart(_Lenient):
    type: str
    text: Optional[str] = None


class FunctionCall(_Lenient):
    name: str
    arguments: Union[str, dict[str, Any]] = "{}"


class ToolCall(_Lenient):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    tool_call_id: Optional[str] = None
    # K2's name (Moonshot, SGLang, older vLLM) and newer vLLM's name for the same thing.
    reasoning_content: Optional[str] = None
    reasoning: Optional[str] = None


# --- tools and output formats -----------------------------------------------------------------------

class FunctionDef(_Lenient):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class Tool(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Union[Literal["auto", "none", "required"], NamedToolChoice]


class JsonSchemaFormat(_Lenient):
    name: str = "response"
    description: Optional[str] = None
    # `schema` shadows a BaseModel attribute, hence the alias.
    schema_: Optional[dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None


class StreamOptions(_Lenient):
    include_usage: bool = False


# --- sampling fields shared by both endpoints ---------------------------------------------------------

class _Sampling(_Lenient):
    model: str
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=-1, description="vLLM extension; -1 or 0: off.")
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    n: int = 1
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    user: Optional[str] = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    tools: Optional[list[Tool]] = None
    tool_choice: Optional[ToolChoice] = None
    parallel_tool_calls: Optional[bool] = None
    response_format: Optional[ResponseFormat] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None
    thinking_token_budget: Optional[int] = Field(
        default=None, ge=0, description="vLLM extension: most reasoning tokens before </think> is forced.")


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int]]
    max_tokens: Optional[int] = Field(default=16, ge=1)
    echo: bool = False
    logprobs: Optional[int] = None
    suffix: Optional[str] = None
    best_of: Optional[int] = None
