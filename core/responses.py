"""OpenAI wire models of what /v1/chat/completions answers: a completion, its stream of chunks,
tool calls, usage and the error envelope.

Backends that make their own answers (the embedded model, octogate's tool calls for remote
models) build these and render them with ``render``: ``model_dump`` then orjson, in the shapes of
OpenAI's published schemas (``CreateChatCompletionResponse``, ``CreateChatCompletionStreamResponse``,
``ErrorResponse``; tests/conformance validates every answer against them): a message always has
``content`` and ``refusal`` (``null`` when there is none) and ``annotations: []``, its ``tool_calls``
only when there are calls; ``system_fingerprint`` is a string or absent, never ``null``; a delta
holds only the fields that were given (``{"content": "x"}`` is a whole delta, as OpenAI streams it).
Answers passed through from an OpenAI-compatible upstream are never parsed into these models:
their bytes go to the client as they came.

Tool calls are of two kinds, as in OpenAI's API: a function call (``function.name``,
``function.arguments`` as a JSON string) and a custom tool's call (``custom.name``, ``custom.input``
as free text). The spec's chunk schema only knows function calls; a streamed custom call is sent as
``{"index", "id", "custom": {"name", "input"}}`` and then ``{"index", "custom": {"input": piece}}``
deltas, with no ``type`` (whose only value there is ``function``).
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_serializer

#: "stop", "length", "tool_calls", "content_filter" (or a provider's own word, passed on as it is)
FinishReason = str


class ResponseModel(BaseModel):
    """Base of the response models: lax (an upstream's answer is read back as it is), extras kept."""

    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------- pieces
class ResponseFunctionCall(ResponseModel):
    name: str
    arguments: str


class ResponseToolCall(ResponseModel):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunctionCall

    @classmethod
    def of(cls, name: str, arguments: str) -> ResponseToolCall:
        """A new call with a fresh id (``call_`` and 24 hex digits, as OpenAI's)."""
        return cls(id=f"call_{secrets.token_hex(12)}", function=ResponseFunctionCall(name=name, arguments=arguments))


class ResponseCustomCall(ResponseModel):
    name: str
    input: str


class ResponseCustomToolCall(ResponseModel):
    id: str
    type: Literal["custom"] = "custom"
    custom: ResponseCustomCall

    @classmethod
    def of(cls, name: str, input: str) -> ResponseCustomToolCall:
        """A new custom tool call with a fresh id."""
        return cls(id=f"call_{secrets.token_hex(12)}", custom=ResponseCustomCall(name=name, input=input))


AnyToolCall = ResponseToolCall | ResponseCustomToolCall


class Usage(ResponseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


# ---------------------------------------------------------------- a completion
class ChatMessage(ResponseModel):
    """The assistant's message in a completion."""

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    tool_calls: list[AnyToolCall] | None = None

    @model_serializer(mode="wrap")
    def _calls_when_any(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("tool_calls") is None:  # the spec's tool_calls is an array: absent, not null
            data.pop("tool_calls", None)
        return data


class Choice(ResponseModel):
    index: int = 0
    message: ChatMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: FinishReason | None = "stop"


class ChatCompletion(ResponseModel):
    id: str = Field(default_factory=lambda: new_completion_id())
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str | None = None
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage | None = None

    @model_serializer(mode="wrap")
    def _no_null_fingerprint(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("system_fingerprint") is None:  # a string in the spec, never null
            data.pop("system_fingerprint", None)
        return data


# ---------------------------------------------------------------- a stream
class _OnlySet(ResponseModel):
    """Serialised with the fields that were given only: a delta says what changed."""

    @model_serializer(mode="wrap")
    def _only_set(self, handler: Any) -> dict[str, Any]:
        given = self.model_fields_set
        return {k: v for k, v in handler(self).items() if k in given or k not in type(self).model_fields}


class ToolCallDelta(_OnlySet):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: dict[str, str] | None = None
    custom: dict[str, str] | None = None  # a custom tool's call: {"name", "input"} then {"input": piece}


class ChunkDelta(_OnlySet):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(ResponseModel):
    index: int = 0
    delta: ChunkDelta
    logprobs: dict[str, Any] | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(ResponseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str | None = None
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None

    @model_serializer(mode="wrap")
    def _no_empty_extras(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for key in ("system_fingerprint", "usage"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


# ---------------------------------------------------------------- errors
class ErrorBody(ResponseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(ResponseModel):
    error: ErrorBody


# ---------------------------------------------------------------- rendering
def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def render(answer: ChatCompletion | ChatCompletionChunk | ErrorResponse) -> bytes:
    """The JSON body of a completion, a chunk or an error."""
    return orjson.dumps(answer.model_dump())
