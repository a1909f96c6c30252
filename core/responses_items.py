"""OpenAI's Responses API: the input items a request may carry (``input``), checked one by one so that
a 400 names the exact field (``input[2].content[0].type``), and ``stored_item``, an input item in the
form ``input_items`` lists and the store keeps. The request around them is ``core/responses_request.py``.
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from octogate.core.errors import OpenAIError, from_validation_error
from octogate.core.protocol import OpenAIBaseModel

def new_id(prefix: str) -> str:
    """An OpenAI-style id: ``resp_``, ``msg_``, ``fc_`` ... and 48 hex digits."""
    return f"{prefix}_{secrets.token_hex(24)}"


def bad_field(param: str, message: str, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def nested_error(param: str, exc: ValidationError) -> OpenAIError:
    """A pydantic error on a nested object, re-said with its path from the top of the request."""
    err = from_validation_error(exc)
    inner = err.param
    full = f"{param}.{inner}" if inner and not inner.startswith("[") else f"{param}{inner or ''}"
    message = err.message.replace(f"'{inner}'", f"'{full}'") if inner else err.message
    return OpenAIError(400, message, param=full, code=err.code)


# ---------------------------------------------------------------- request items
class TextContent(OpenAIBaseModel):
    type: Literal["input_text", "output_text"]
    text: str


class InputMessage(OpenAIBaseModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[TextContent]
    id: str | None = None
    status: str | None = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class FunctionCallItem(OpenAIBaseModel):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: str | None = None


class _ToolOutput(OpenAIBaseModel):
    """What a tool call returned, for the call ``call_id``."""

    call_id: str = Field(min_length=1)
    output: str | list[TextContent]
    id: str | None = None
    status: str | None = None

    @property
    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(p.text for p in self.output)


class CustomToolCallItem(OpenAIBaseModel):
    """An earlier call of a custom tool: free-text ``input`` instead of JSON ``arguments``."""

    type: Literal["custom_tool_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_ToolOutput):
    type: Literal["function_call_output"]


class CustomToolCallOutputItem(_ToolOutput):
    type: Literal["custom_tool_call_output"]


# ---------------------------------------------------------------- an earlier response's steps, sent back
# A client that keeps its own context (``store: false``, no ``previous_response_id``: the OpenAI Agents
# SDK's default) sends a response's output back as input, an agent's steps included. They are checked
# and kept as sent; no node is shown them (``chat_messages`` leaves them out).
class SummaryText(OpenAIBaseModel):
    type: Literal["summary_text"]
    text: str


class ReasoningText(OpenAIBaseModel):
    type: Literal["reasoning_text"]
    text: str


class ReasoningItem(OpenAIBaseModel):
    """A ``reasoning`` item of an earlier response (an agent's step: its summary is the step)."""

    type: Literal["reasoning"]
    id: str = Field(min_length=1)
    summary: list[SummaryText]
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class LogsOutput(OpenAIBaseModel):
    type: Literal["logs"]
    logs: str


class ImageOutput(OpenAIBaseModel):
    type: Literal["image"]
    url: str


class CodeInterpreterCallItem(OpenAIBaseModel):
    """A ``code_interpreter_call`` of an earlier response: the code and what it printed. ``code`` and
    ``outputs`` must be there, null allowed, as OpenAI's spec has them."""

    type: Literal["code_interpreter_call"]
    id: str = Field(min_length=1)
    status: Literal["in_progress", "completed", "incomplete", "interpreting", "failed"]
    container_id: str
    code: str | None
    outputs: list[LogsOutput | ImageOutput] | None


class SearchSource(OpenAIBaseModel):
    type: Literal["url"]
    url: str


class SearchAction(OpenAIBaseModel):
    type: Literal["search"]
    query: str | None = None  # required by OpenAI's spec, optional in its SDK's types: a client's either way
    queries: list[str] | None = None
    sources: list[SearchSource] | None = None


class OpenPageAction(OpenAIBaseModel):
    type: Literal["open_page"]
    url: str | None = None


class FindInPageAction(OpenAIBaseModel):
    type: Literal["find_in_page"]
    url: str
    pattern: str


class WebSearchCallItem(OpenAIBaseModel):
    """A ``web_search_call`` of an earlier response: what was searched."""

    type: Literal["web_search_call"]
    id: str = Field(min_length=1)
    status: Literal["in_progress", "searching", "completed", "failed", "incomplete"]
    action: SearchAction | OpenPageAction | FindInPageAction


StepItem = ReasoningItem | CodeInterpreterCallItem | WebSearchCallItem
STEP_ITEM_TYPES = frozenset({"reasoning", "code_interpreter_call", "web_search_call"})


# ---------------------------------------------------------------- one item
InputItem = (InputMessage | FunctionCallItem | FunctionCallOutputItem | CustomToolCallItem | CustomToolCallOutputItem
             | StepItem)
_ITEM_MODELS: dict[str, type[BaseModel]] = {
    "message": InputMessage, "function_call": FunctionCallItem, "function_call_output": FunctionCallOutputItem,
    "custom_tool_call": CustomToolCallItem, "custom_tool_call_output": CustomToolCallOutputItem,
    "reasoning": ReasoningItem, "code_interpreter_call": CodeInterpreterCallItem, "web_search_call": WebSearchCallItem,
}
_TEXT_PARTS: dict[str, type[BaseModel]] = {"input_text": TextContent, "output_text": TextContent}
# Per item type, its fields that hold typed parts (a list of them, or one): the models by ``type``. Each
# part is checked before the item, so that a 400 names it (``input[3].outputs[0].logs``).
_PARTS: dict[str, dict[str, dict[str, type[BaseModel]]]] = {
    "message": {"content": _TEXT_PARTS},
    "function_call_output": {"output": _TEXT_PARTS},
    "custom_tool_call_output": {"output": _TEXT_PARTS},
    "reasoning": {"summary": {"summary_text": SummaryText}, "content": {"reasoning_text": ReasoningText}},
    "code_interpreter_call": {"outputs": {"logs": LogsOutput, "image": ImageOutput}},
    "web_search_call": {"action": {"search": SearchAction, "open_page": OpenPageAction,
                                   "find_in_page": FindInPageAction}},
}
_ONE_PART = frozenset({"action"})  # one object; the other fields of _PARTS hold a list


def input_item(raw: Any, where: str) -> InputItem:
    if not isinstance(raw, dict):
        raise bad_field(where, f"Invalid value for '{where}': an input item must be an object.", "invalid_type")
    kind = raw.get("type", "message" if "role" in raw else None)
    if kind is None:
        raise bad_field(f"{where}.type", f"Missing required parameter: '{where}.type'.", "missing_required_parameter")
    model = _ITEM_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise bad_field(f"{where}.type", f"Invalid value for '{where}.type': {kind!r} is not supported here; "
                        f"supported item types: {', '.join(_ITEM_MODELS)}.", "unsupported_value")
    for field, models in _PARTS.get(kind, {}).items():
        value = raw.get(field)
        if field in _ONE_PART and field in raw:
            if not isinstance(value, dict):
                raise bad_field(f"{where}.{field}", f"Invalid value for '{where}.{field}': expected an object.",
                                "invalid_type")
            _part(value, f"{where}.{field}", models)
        elif isinstance(value, list):
            for j, part in enumerate(value):
                _part(part, f"{where}.{field}[{j}]", models)
    try:
        return model.model_validate(raw)  # type: ignore[return-value]
    except ValidationError as exc:
        raise nested_error(where, exc) from None


def _part(part: Any, where: str, models: dict[str, type[BaseModel]]) -> None:
    kind = part.get("type") if isinstance(part, dict) else None
    model = models.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise bad_field(f"{where}.type", f"Invalid value for '{where}.type': {kind!r} is not supported here; "
                        f"supported types: {', '.join(models)}.", "unsupported_value")
    try:
        model.model_validate(part)
    except ValidationError as exc:
        raise nested_error(where, exc) from None


# ---------------------------------------------------------------- stored items
def stored_item(item: InputItem) -> dict[str, Any]:
    """An input item as ``input_items`` lists it and as it is stored: with an id, content as parts; an
    earlier response's step item as it was sent, less its null fields (an SDK's typed item writes
    them, OpenAI's spec has most of them not nullable), but a code call's ``code`` and ``outputs``,
    which must be there."""
    if isinstance(item, (ReasoningItem, CodeInterpreterCallItem, WebSearchCallItem)):
        stored = item.model_dump(exclude_unset=True, exclude_none=True)
        if isinstance(item, CodeInterpreterCallItem):
            stored.update(code=item.code, outputs=stored.get("outputs"))
        return stored
    if isinstance(item, InputMessage):
        part = "output_text" if item.role == "assistant" else "input_text"
        content = ([{"type": part, "text": item.content}] if isinstance(item.content, str)
                   else [p.model_dump() for p in item.content])
        if item.role == "assistant":  # an output_text part as the spec has it: annotations and logprobs required
            for p in content:
                p.setdefault("annotations", [])
                p.setdefault("logprobs", [])
        return {"id": item.id or new_id("msg"), "type": "message", "role": item.role, "content": content,
                "status": "completed"}
    if isinstance(item, FunctionCallItem):
        return {"id": item.id or new_id("fc"), "type": "function_call", "call_id": item.call_id, "name": item.name,
                "arguments": item.arguments, "status": "completed"}
    if isinstance(item, CustomToolCallItem):
        return {"id": item.id or new_id("ctc"), "type": "custom_tool_call", "call_id": item.call_id,
                "name": item.name, "input": item.input, "status": "completed"}
    custom = isinstance(item, CustomToolCallOutputItem)
    return {"id": item.id or new_id("ctco" if custom else "fco"), "type": item.type, "call_id": item.call_id,
            "output": item.output if isinstance(item.output, str) else [p.model_dump() for p in item.output],
            "status": "completed"}
