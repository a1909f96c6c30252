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

_ITEM_TYPES = "message, function_call, function_call_output, custom_tool_call, custom_tool_call_output"


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


InputItem = InputMessage | FunctionCallItem | FunctionCallOutputItem | CustomToolCallItem | CustomToolCallOutputItem
_ITEM_MODELS: dict[str, type[BaseModel]] = {
    "message": InputMessage, "function_call": FunctionCallItem, "function_call_output": FunctionCallOutputItem,
    "custom_tool_call": CustomToolCallItem, "custom_tool_call_output": CustomToolCallOutputItem,
}
_PART_TYPES = ("input_text", "output_text")


def input_item(raw: Any, where: str) -> InputItem:
    if not isinstance(raw, dict):
        raise bad_field(where, f"Invalid value for '{where}': an input item must be an object.", "invalid_type")
    kind = raw.get("type", "message" if "role" in raw else None)
    if kind is None:
        raise bad_field(f"{where}.type", f"Missing required parameter: '{where}.type'.", "missing_required_parameter")
    model = _ITEM_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise bad_field(f"{where}.type", f"Invalid value for '{where}.type': {kind!r} is not supported here; "
                   f"supported item types: {_ITEM_TYPES}.", "unsupported_value")
    for field in ("content", "output"):
        parts = raw.get(field)
        if isinstance(parts, list):
            for j, part in enumerate(parts):
                ptype = part.get("type") if isinstance(part, dict) else None
                if ptype not in _PART_TYPES:
                    param = f"{where}.{field}[{j}].type"
                    raise bad_field(param, f"Invalid value for '{param}': {ptype!r} is not supported here; supported "
                               "content types: input_text, output_text.", "unsupported_value")
    try:
        return model.model_validate(raw)  # type: ignore[return-value]
    except ValidationError as exc:
        raise nested_error(where, exc) from None



# ---------------------------------------------------------------- stored items
def stored_item(item: InputItem) -> dict[str, Any]:
    """An input item as ``input_items`` lists it and as it is stored: with an id, content as parts."""
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
