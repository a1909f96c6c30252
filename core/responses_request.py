"""OpenAI's Responses API (``POST /v1/responses``): the request as a client may send it.

``parse_request`` validates a body (a 400 names the exact field, ``tools[1].format.syntax``):
function and custom tools, ``tool_choice`` (``none``/``auto``/``required``, a named function or custom
tool, ``allowed_tools``), ``text.format``, and the input items octogate can answer
(``core/responses_items.py``, which also writes them in stored form).
The translation to a chat completion is ``core/responses_translate.py``; the stream of events,
``core/responses_events.py``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError, WithJsonSchema

from octogate.core.errors import from_validation_error
from octogate.core.protocol import INT64_MAX, OpenAIBaseModel
from octogate.core.responses_items import InputItem, InputMessage, bad_field, input_item, nested_error

# ``include`` values (OpenAI's list, ``Includable`` below): only the logprobs one changes what octogate
# returns; the others name outputs of OpenAI's hosted tools and reasoning, which octogate never produces.
LOGPROBS_INCLUDE = "message.output_text.logprobs"


# ---------------------------------------------------------------- tools and formats
class FunctionTool(OpenAIBaseModel):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class CustomTextFormat(OpenAIBaseModel):
    type: Literal["text"]


class CustomGrammarFormat(OpenAIBaseModel):
    """A grammar the input must match. Whether it can be enforced is the backend's business: a
    pass-through upstream gets it as sent; octogate's own decoders enforce ``regex`` only."""

    type: Literal["grammar"]
    syntax: Literal["lark", "regex"]
    definition: str


class CustomTool(OpenAIBaseModel):
    """A tool called with free text (``input``), under ``format`` when one is given."""

    type: Literal["custom"]
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    format: Annotated[CustomTextFormat | CustomGrammarFormat, Field(discriminator="type")] | None = None


Tool = Annotated[FunctionTool | CustomTool, Field(discriminator="type")]
_TOOL_MODELS: dict[str, type[BaseModel]] = {"function": FunctionTool, "custom": CustomTool}


class NamedFunctionChoice(OpenAIBaseModel):
    type: Literal["function"]
    name: str = Field(min_length=1)


class NamedCustomChoice(OpenAIBaseModel):
    type: Literal["custom"]
    name: str = Field(min_length=1)


class ToolReference(OpenAIBaseModel):
    """One tool of ``allowed_tools``: a function or custom tool of ``tools``, by name."""

    type: Literal["function", "custom"]
    name: str = Field(min_length=1)


class AllowedToolsChoice(OpenAIBaseModel):
    """Only the listed tools may be called, in ``mode`` (``auto``: or answer in text; ``required``)."""

    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[ToolReference] = Field(min_length=1)


ToolChoice = Literal["none", "auto", "required"] | NamedFunctionChoice | NamedCustomChoice | AllowedToolsChoice
_CHOICE_MODELS: dict[str, type[BaseModel]] = {
    "function": NamedFunctionChoice, "custom": NamedCustomChoice, "allowed_tools": AllowedToolsChoice,
}
_CHOICES = ("'none', 'auto', 'required', {'type': 'function', 'name': ...}, {'type': 'custom', 'name': ...} or "
            "{'type': 'allowed_tools', 'mode': ..., 'tools': [...]}")


class TextFormat(OpenAIBaseModel):
    model_config = ConfigDict(json_schema_extra={  # what parse_request checks, for the JSON schema's readers
        "if": {"properties": {"type": {"const": "json_schema"}}},
        "then": {"required": ["name", "schema"], "properties": {"name": {"type": "string", "minLength": 1},
                                                                "schema": {"type": "object"}}},
    })

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(OpenAIBaseModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


# ---------------------------------------------------------------- the request
def _schema_of(kind: Any, **extra: Any) -> WithJsonSchema:
    """What /openapi.json says a field holds: the typed form ``parse_request`` checks it against,
    written out whole (no references, so it stands wherever the field's schema is put; a union's
    ``discriminator`` dropped, as its mapping would name them and the ``const`` types already say it)."""
    schema = TypeAdapter(kind).json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()
                    if not (k == "discriminator" and isinstance(v, dict) and "propertyName" in v)}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return WithJsonSchema({**inline(schema), **extra})


def _request_schema(schema: dict[str, Any]) -> None:
    """The cross-field rules of ``parse_request``, said in the JSON schema (/openapi.json)."""
    schema["allOf"] = [
        {"if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer", "minimum": 1}}},
         "then": {"required": ["include"], "properties": {"include": {"type": "array",
                                                                     "contains": {"const": LOGPROBS_INCLUDE}}}}},
    ]


Includable = Literal[
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url", "code_interpreter_call.outputs",
    "reasoning.encrypted_content", "message.output_text.logprobs",
]


class ResponsesRequest(OpenAIBaseModel):
    """``POST /v1/responses``. Items, tools and ``tool_choice`` are checked one by one afterwards
    (``parse_request``), so that a 400 names the exact field."""

    model_config = ConfigDict(json_schema_extra=_request_schema)

    model: str = Field(min_length=1)
    input: str | Annotated[list[Any], Field(min_length=1), _schema_of(list[InputItem], minItems=1)]
    instructions: str | None = None
    tools: Annotated[list[Any] | None, _schema_of(list[Tool] | None)] = None
    tool_choice: Annotated[Any, _schema_of(ToolChoice | None)] = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=INT64_MAX)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    metadata: dict[str, str] | None = None
    user: str | None = None
    store: bool | None = True
    previous_response_id: str | None = Field(default=None, min_length=1)
    stream: bool | None = False
    include: list[Includable] | None = None
    background: Annotated[bool | None, WithJsonSchema({"anyOf": [{"type": "boolean", "const": False},
                                                                 {"type": "null"}]})] = None

    # filled by parse_request
    _items: list[InputItem] = PrivateAttr(default_factory=list)
    _tools: list[FunctionTool | CustomTool] = PrivateAttr(default_factory=list)
    _choice: str | BaseModel | None = PrivateAttr(default=None)

    @property
    def items(self) -> list[InputItem]:
        return self._items

    @property
    def declared_tools(self) -> list[FunctionTool | CustomTool]:
        """``tools``, checked, in the order sent (a chat tool's index is the same)."""
        return self._tools

    @property
    def function_tools(self) -> list[FunctionTool]:
        return [t for t in self._tools if isinstance(t, FunctionTool)]

    @property
    def choice(self) -> str | NamedFunctionChoice | NamedCustomChoice | AllowedToolsChoice | None:
        """``tool_choice``, checked (``None`` when not sent)."""
        return self._choice  # type: ignore[return-value]

    @property
    def wants_logprobs(self) -> bool:
        return bool(self.include) and LOGPROBS_INCLUDE in self.include  # type: ignore[operator]


def parse_request(data: dict[str, Any]) -> ResponsesRequest:
    """The validated request, or a 400 naming the first offending field."""
    try:
        request = ResponsesRequest.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    if isinstance(request.input, str):
        request._items = [InputMessage(role="user", content=request.input)]
    else:
        request._items = [input_item(raw, f"input[{i}]") for i, raw in enumerate(request.input)]
    request._tools = [_tool(raw, f"tools[{i}]") for i, raw in enumerate(request.tools or ())]
    request._choice = _tool_choice(request.tool_choice)
    fmt = request.text.format if request.text is not None else None
    if fmt is not None and fmt.type == "json_schema":
        if fmt.name is None:
            raise bad_field("text.format.name", "Missing required parameter: 'text.format.name'.",
                            "missing_required_parameter")
        if fmt.schema_ is None:
            raise bad_field("text.format.schema", "Missing required parameter: 'text.format.schema'.",
                            "missing_required_parameter")
    if request.background:
        raise bad_field("background", "Background responses are not supported by this gateway.",
                        "unsupported_parameter")
    if data.get("conversation") is not None:
        raise bad_field("conversation", "'conversation' is not supported by this gateway; continue a response with "
                        "'previous_response_id'.", "unsupported_parameter")
    if request.top_logprobs and not request.wants_logprobs:
        raise bad_field("top_logprobs", f"'top_logprobs' needs include: ['{LOGPROBS_INCLUDE}'].")
    return request


def _tool(raw: Any, where: str) -> FunctionTool | CustomTool:
    kind = raw.get("type") if isinstance(raw, dict) else None
    model = _TOOL_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise bad_field(f"{where}.type", f"Invalid value for '{where}.type': tool type {kind!r} is not supported by "
                        "this gateway; only 'function' and 'custom' tools are.", "unsupported_value")
    try:
        return model.model_validate(raw)  # type: ignore[return-value]
    except ValidationError as exc:
        raise nested_error(where, exc) from None


def _tool_choice(choice: Any) -> str | BaseModel | None:
    """The checked ``tool_choice``. Whether a named or allowed tool is one of ``tools`` is the backend's
    to say (octogate's decoders refuse it naming ``tool_choice.name`` or ``tool_choice.tools[j]``; a
    pass-through upstream answers for itself), as on chat completions."""
    if choice is None or choice in ("none", "auto", "required"):
        return choice
    kind = choice.get("type") if isinstance(choice, dict) else None
    model = _CHOICE_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise bad_field("tool_choice", f"Invalid value for 'tool_choice': expected {_CHOICES}; other tool choices "
                        "are not supported here.")
    try:
        return model.model_validate(choice)
    except ValidationError as exc:
        raise nested_error("tool_choice", exc) from None
