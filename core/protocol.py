"""OpenAI wire models: what a client may send to /v1/chat/completions, and what /v1/models returns.

The request models exist to *validate* (a clear 400 naming the offending param); the gateway
forwards the client's own JSON, so every field, documented or not, reaches the backend unchanged.
Unknown fields are therefore allowed everywhere (``extra="allow"``). Declared fields are checked
strictly, as OpenAI does: ``"max_tokens": "1"`` or ``"stream": "false"`` is a 400 naming the field
(an integer is still a valid float). octogate's own extension, ``"octogate": {"tool_calls": ...}``,
is declared here too. Response and chunk models live in ``core/responses.py``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)


class OpenAIBaseModel(BaseModel):
    """Base of every request model: unknown fields tolerated, as OpenAI-compatible servers do; declared
    fields strict (no string where a number or a boolean is expected)."""

    model_config = ConfigDict(extra="allow", strict=True)


# ---------------------------------------------------------------- messages
class ContentPart(OpenAIBaseModel):
    type: str


class TextPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


Content = str | list[ContentPart]


class FunctionCall(OpenAIBaseModel):
    name: str
    arguments: str


class ToolCall(OpenAIBaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class CustomCall(OpenAIBaseModel):
    name: str
    input: str


class CustomToolCall(OpenAIBaseModel):
    """An earlier call of a custom tool: ``{"id", "type": "custom", "custom": {"name", "input"}}``."""

    id: str
    type: Literal["custom"]
    custom: CustomCall


def _call_type(value: Any) -> str:
    """A history tool call's kind: its ``type`` (a call without one is a function call, as before)."""
    kind = value.get("type", "function") if isinstance(value, dict) else getattr(value, "type", "function")
    return kind if isinstance(kind, str) else "function"


AnyToolCall = Annotated[
    Annotated[ToolCall, Tag("function")] | Annotated[CustomToolCall, Tag("custom")],
    Discriminator(_call_type),
]


class SystemMessage(OpenAIBaseModel):
    role: Literal["system"]
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(OpenAIBaseModel):
    role: Literal["developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(OpenAIBaseModel):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(OpenAIBaseModel):
    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[AnyToolCall] | None = None
    function_call: FunctionCall | None = None


class ToolMessage(OpenAIBaseModel):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(OpenAIBaseModel):
    role: Literal["function"]
    content: str | None
    name: str


Message = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
    Field(discriminator="role"),
]


# ---------------------------------------------------------------- tools and formats
class FunctionDefinition(OpenAIBaseModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(OpenAIBaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class TextFormat(OpenAIBaseModel):
    type: Literal["text"]


class Grammar(OpenAIBaseModel):
    syntax: Literal["lark", "regex"]
    definition: str


class GrammarFormat(OpenAIBaseModel):
    type: Literal["grammar"]
    grammar: Grammar


class CustomDefinition(OpenAIBaseModel):
    """A custom tool: called with free-text ``input``, optionally under a grammar (``format``). Which
    grammars a backend that makes its own calls can enforce is ``core/tool_plan.py``'s business."""

    name: str
    description: str | None = None
    format: Annotated[TextFormat | GrammarFormat, Field(discriminator="type")] | None = None


class CustomTool(OpenAIBaseModel):
    type: Literal["custom"]
    custom: CustomDefinition


AnyTool = Annotated[Tool | CustomTool, Field(discriminator="type")]


class NamedFunction(OpenAIBaseModel):
    name: str


class NamedToolChoice(OpenAIBaseModel):
    type: Literal["function"]
    function: NamedFunction


class NamedCustomToolChoice(OpenAIBaseModel):
    type: Literal["custom"]
    custom: NamedFunction


class AllowedTools(OpenAIBaseModel):
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


class AllowedToolsChoice(OpenAIBaseModel):
    """``{"type": "allowed_tools", "allowed_tools": {"mode", "tools": [...]}}``: only the listed tools."""

    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


class JsonSchemaFormat(OpenAIBaseModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIBaseModel):
    model_config = ConfigDict(json_schema_extra={  # what _schema_given checks, for the JSON schema's readers
        "if": {"properties": {"type": {"const": "json_schema"}}},
        "then": {"required": ["json_schema"], "properties": {"json_schema": {"type": "object"}}},
    })

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("'json_schema' is required when type is 'json_schema'")
        return self


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = None


# ---------------------------------------------------------------- octogate's extension
TOOL_CALL_MODES = ("auto", "toolset", "constrained", "unconstrained")
ToolCallsMode = Literal["auto", "toolset", "constrained", "unconstrained"]


class OctogateExtension(OpenAIBaseModel):
    """``"octogate": {"tool_calls": MODE}``: how a model without tool calling of its own makes calls.

    ``auto`` (the default: a registered toolset when the tools match one, else constrained),
    ``toolset`` (a toolset or a 400), ``constrained`` (every function in the prompt,
    grammar-constrained) or ``unconstrained`` (the same prompt without grammars: the baseline
    ``fc eval`` compares with)."""

    tool_calls: ToolCallsMode = "auto"


# ---------------------------------------------------------------- the request
# Integers are 64-bit, as OpenAI's own schema says; past that, the JSON parser gives a float (a 400 anyway).
INT64_MAX = 2**63 - 1


def _cross_field_schema(schema: dict[str, Any]) -> None:
    """What ``ChatCompletionRequest._cross_field`` checks, said in the JSON schema (/openapi.json)."""
    for option in schema["properties"]["stop"].get("anyOf", []):
        if option.get("type") == "array":
            option["maxItems"] = 4
    schema["allOf"] = [
        {"if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer", "minimum": 1}}},
         "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}},
        {"if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
         "then": {"required": ["stream"], "properties": {"stream": {"const": True}}}},
    ]


class ChatCompletionRequest(OpenAIBaseModel):
    model_config = ConfigDict(json_schema_extra=_cross_field_schema)

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    max_tokens: int | None = Field(default=None, ge=1, le=INT64_MAX)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT64_MAX)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    seed: int | None = Field(default=None, ge=-INT64_MAX - 1, le=INT64_MAX)
    tools: list[AnyTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | NamedCustomToolChoice | AllowedToolsChoice \
        | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    octogate: OctogateExtension | None = None

    @field_validator("octogate", mode="wrap")
    @classmethod
    def _extension(cls, value: Any, handler: Any) -> OctogateExtension | None:
        try:
            return handler(value)
        except ValidationError:
            raise _ParamError("octogate.tool_calls", "'octogate' must be an object whose 'tool_calls' is one of "
                              f"{', '.join(repr(m) for m in TOOL_CALL_MODES)}.", prefixed=False) from None

    @property
    def tool_calls_mode(self) -> ToolCallsMode:
        return "auto" if self.octogate is None else self.octogate.tool_calls

    @property
    def max_tokens_asked(self) -> int | None:
        """The client's token limit, whichever of the two fields it came in."""
        return self.max_completion_tokens or self.max_tokens

    @model_validator(mode="after")
    def _cross_field(self) -> ChatCompletionRequest:
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise _ParamError("stop", "at most 4 stop sequences are allowed")
        if self.top_logprobs and not self.logprobs:
            raise _ParamError("top_logprobs", "'logprobs' must be true when 'top_logprobs' is set")
        if self.stream_options is not None and not self.stream:
            raise _ParamError("stream_options", "'stream_options' is only allowed when 'stream' is true")
        return self


class _ParamError(ValueError):
    """A cross-field validation error that names its param."""

    def __init__(self, param: str, message: str, prefixed: bool = True):
        super().__init__(message)
        self.param = param
        self.message = message
        self.prefixed = prefixed  # False: ``message`` is the whole message, not what follows "Invalid value for"


# ---------------------------------------------------------------- /v1/models
class ModelCard(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "octogate"
    description: str | None = None
    functional_token: str | None = None
    backend: str | None = None


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
