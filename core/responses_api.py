"""OpenAI's Responses API (``POST /v1/responses``): the request as a client may send it, the
response object, its stream of semantic events, and the translation to and from a chat completion.

The gateway answers a Responses request through the node's chat completion (every backend works
unchanged), so this module is pure protocol: ``parse_request`` validates (a 400 names the exact
field, ``input[2].content[0].type``), ``chat_request`` builds the chat-completions body,
``response_of_completion`` reads a completion back into a response object, and ``EventWriter``
turns a chat stream's chunks into OpenAI's event sequence, each with its ``sequence_number``:
``response.created``, ``response.in_progress``, per output item ``response.output_item.added``,
(``response.content_part.added``, ``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done`` | ``response.function_call_arguments.delta``...,
``response.function_call_arguments.done``), ``response.output_item.done``, then
``response.completed`` (``response.incomplete`` when cut off; ``error`` and ``response.failed``
when the backend fails after the stream began).
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError, WithJsonSchema

from octogate.core.errors import OpenAIError, from_validation_error
from octogate.core.protocol import INT64_MAX, OpenAIBaseModel

# ``include`` values (OpenAI's list, ``Includable`` below): only the logprobs one changes what octogate
# returns; the others name outputs of OpenAI's hosted tools and reasoning, which octogate never produces.
LOGPROBS_INCLUDE = "message.output_text.logprobs"
_ITEM_TYPES = "message, function_call, function_call_output"


def new_id(prefix: str) -> str:
    """An OpenAI-style id: ``resp_``, ``msg_``, ``fc_`` ... and 48 hex digits."""
    return f"{prefix}_{secrets.token_hex(24)}"


def _bad(param: str, message: str, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def _within(param: str, exc: ValidationError) -> OpenAIError:
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


class FunctionCallOutputItem(OpenAIBaseModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[TextContent]
    id: str | None = None
    status: str | None = None

    @property
    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(p.text for p in self.output)


InputItem = InputMessage | FunctionCallItem | FunctionCallOutputItem
_ITEM_MODELS: dict[str, type[BaseModel]] = {
    "message": InputMessage, "function_call": FunctionCallItem, "function_call_output": FunctionCallOutputItem,
}
_PART_TYPES = ("input_text", "output_text")


def _item(raw: Any, where: str) -> InputItem:
    if not isinstance(raw, dict):
        raise _bad(where, f"Invalid value for '{where}': an input item must be an object.", "invalid_type")
    kind = raw.get("type", "message" if "role" in raw else None)
    if kind is None:
        raise _bad(f"{where}.type", f"Missing required parameter: '{where}.type'.", "missing_required_parameter")
    model = _ITEM_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise _bad(f"{where}.type", f"Invalid value for '{where}.type': {kind!r} is not supported here; "
                   f"supported item types: {_ITEM_TYPES}.", "unsupported_value")
    for field in ("content", "output"):
        parts = raw.get(field)
        if isinstance(parts, list):
            for j, part in enumerate(parts):
                ptype = part.get("type") if isinstance(part, dict) else None
                if ptype not in _PART_TYPES:
                    param = f"{where}.{field}[{j}].type"
                    raise _bad(param, f"Invalid value for '{param}': {ptype!r} is not supported here; supported "
                               "content types: input_text, output_text.", "unsupported_value")
    try:
        return model.model_validate(raw)  # type: ignore[return-value]
    except ValidationError as exc:
        raise _within(where, exc) from None


# ---------------------------------------------------------------- tools and formats
class FunctionTool(OpenAIBaseModel):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunctionChoice(OpenAIBaseModel):
    type: Literal["function"]
    name: str = Field(min_length=1)


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
    written out whole (no references, so it stands wherever the field's schema is put)."""
    schema = TypeAdapter(kind).json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
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
    tools: Annotated[list[Any] | None, _schema_of(list[FunctionTool] | None)] = None
    tool_choice: Annotated[Any, _schema_of(Literal["none", "auto", "required"] | NamedFunctionChoice | None)] = None
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
    _function_tools: list[FunctionTool] = PrivateAttr(default_factory=list)

    @property
    def items(self) -> list[InputItem]:
        return self._items

    @property
    def function_tools(self) -> list[FunctionTool]:
        return self._function_tools

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
        request._items = [_item(raw, f"input[{i}]") for i, raw in enumerate(request.input)]
    for i, raw in enumerate(request.tools or ()):
        where = f"tools[{i}]"
        kind = raw.get("type") if isinstance(raw, dict) else None
        if kind != "function":
            raise _bad(f"{where}.type", f"Invalid value for '{where}.type': tool type {kind!r} is not supported by "
                       "this gateway; only 'function' tools are.", "unsupported_value")
        try:
            request.function_tools.append(FunctionTool.model_validate(raw))
        except ValidationError as exc:
            raise _within(where, exc) from None
    choice = request.tool_choice
    if isinstance(choice, dict):
        try:
            NamedFunctionChoice.model_validate(choice)
        except ValidationError:
            raise _bad("tool_choice", "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
                       "{'type': 'function', 'name': ...}; other tool choices are not supported here.") from None
    elif choice is not None and choice not in ("none", "auto", "required"):
        raise _bad("tool_choice", "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
                   "{'type': 'function', 'name': ...}.")
    fmt = request.text.format if request.text is not None else None
    if fmt is not None and fmt.type == "json_schema":
        if fmt.name is None:
            raise _bad("text.format.name", "Missing required parameter: 'text.format.name'.", "missing_required_parameter")
        if fmt.schema_ is None:
            raise _bad("text.format.schema", "Missing required parameter: 'text.format.schema'.",
                       "missing_required_parameter")
    if request.background:
        raise _bad("background", "Background responses are not supported by this gateway.", "unsupported_parameter")
    if data.get("conversation") is not None:
        raise _bad("conversation", "'conversation' is not supported by this gateway; continue a response with "
                   "'previous_response_id'.", "unsupported_parameter")
    if request.top_logprobs and not request.wants_logprobs:
        raise _bad("top_logprobs", f"'top_logprobs' needs include: ['{LOGPROBS_INCLUDE}'].")
    return request


# ---------------------------------------------------------------- stored items
def stored_item(item: InputItem) -> dict[str, Any]:
    """An input item as ``input_items`` lists it and as it is stored: with an id, content as parts."""
    if isinstance(item, InputMessage):
        part = "output_text" if item.role == "assistant" else "input_text"
        content = ([{"type": part, "text": item.content}] if isinstance(item.content, str)
                   else [p.model_dump() for p in item.content])
        if item.role == "assistant":
            for p in content:
                p.setdefault("annotations", [])
        return {"id": item.id or new_id("msg"), "type": "message", "role": item.role, "content": content,
                "status": "completed"}
    if isinstance(item, FunctionCallItem):
        return {"id": item.id or new_id("fc"), "type": "function_call", "call_id": item.call_id, "name": item.name,
                "arguments": item.arguments, "status": "completed"}
    return {"id": item.id or new_id("fco"), "type": "function_call_output", "call_id": item.call_id,
            "output": item.output if isinstance(item.output, str) else [p.model_dump() for p in item.output],
            "status": "completed"}


# ---------------------------------------------------------------- to a chat completion
def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored-form items (``stored_item``, or output items of a response) as chat messages: a message
    is one message; function calls join the assistant message before them; an output is a tool message."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type")
        if kind == "message":
            content = item["content"]
            text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
            messages.append({"role": item["role"], "content": text})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if not last.get("content"):
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item["output"]
            text = output if isinstance(output, str) else "".join(p.get("text", "") for p in output)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
    return messages


def chat_request(request: ResponsesRequest, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat-completions body that answers ``request``; ``items``: the earlier context (a previous
    response's input and output), then this request's input, in stored form."""
    messages = chat_messages(items)
    if request.instructions:
        messages.insert(0, {"role": "system", "content": request.instructions})
    chat: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    for name in ("temperature", "top_p", "user", "parallel_tool_calls"):
        value = getattr(request, name)
        if value is not None:
            chat[name] = value
    if request.max_output_tokens is not None:
        chat["max_tokens"] = request.max_output_tokens
    if request.function_tools:
        chat["tools"] = [{"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
                         for t in request.function_tools]
    choice = request.tool_choice
    if isinstance(choice, dict):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        chat["tool_choice"] = choice
    fmt = request.text.format if request.text is not None else None
    if fmt is not None and fmt.type == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        chat["response_format"] = {"type": "json_schema", "json_schema": fmt.model_dump(
            include={"name", "schema_", "description", "strict"}, by_alias=True, exclude_none=True)}
    if request.wants_logprobs:
        chat["logprobs"] = True
        if request.top_logprobs:
            chat["top_logprobs"] = request.top_logprobs
    return chat


# ---------------------------------------------------------------- the response object
def usage_of(chat_usage: Any) -> dict[str, Any] | None:
    """A chat completion's usage as a response's: ``input_tokens``, ``input_tokens_details.cached_tokens``,
    ``output_tokens``, ``output_tokens_details.reasoning_tokens``, ``total_tokens``."""
    if not isinstance(chat_usage, dict):
        return None
    try:
        prompt, completion = int(chat_usage.get("prompt_tokens") or 0), int(chat_usage.get("completion_tokens") or 0)
        cached = int(((chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
        reasoning = int(((chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens")) or 0)
    except (TypeError, ValueError, AttributeError):
        return None
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached}, "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning}, "total_tokens": prompt + completion}


class ResponseObject(BaseModel):
    """The ``response`` object; ``output_text`` is the SDKs' convenience, written out for raw clients."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "failed", "in_progress", "incomplete"] = "in_progress"
    completed_at: int | None = None
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[dict[str, Any]] = Field(default_factory=list)
    output_text: str = ""
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] = Field(default_factory=lambda: {"effort": None, "summary": None})
    store: bool = True
    temperature: float | None = 1.0
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: Any = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_logprobs: int = 0
    top_p: float | None = 1.0
    truncation: str = "disabled"
    usage: dict[str, Any] | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    background: bool = False
    service_tier: str = "default"


def response_shell(request: ResponsesRequest, response_id: str, store: bool) -> ResponseObject:
    """The response as ``response.created`` shows it: what was asked, nothing answered yet."""
    text: dict[str, Any] = {"format": {"type": "text"}}
    if request.text is not None and request.text.format is not None:
        text = {"format": request.text.format.model_dump(by_alias=True, exclude_none=True)}
    return ResponseObject(
        id=response_id, created_at=int(time.time()), model=request.model, instructions=request.instructions,
        max_output_tokens=request.max_output_tokens, previous_response_id=request.previous_response_id,
        parallel_tool_calls=request.parallel_tool_calls if request.parallel_tool_calls is not None else True,
        store=store, temperature=request.temperature if request.temperature is not None else 1.0,
        top_p=request.top_p if request.top_p is not None else 1.0, text=text,
        tool_choice=request.tool_choice if request.tool_choice is not None else "auto",
        tools=[t.model_dump(exclude_none=True) for t in request.function_tools], top_logprobs=request.top_logprobs or 0,
        user=request.user, metadata=request.metadata or {},
    )


def _finish(response: ResponseObject, finish_reason: str | None) -> None:
    if finish_reason == "length":
        response.status = "incomplete"
        response.incomplete_details = {"reason": "max_output_tokens"}
    elif finish_reason == "content_filter":
        response.status = "incomplete"
        response.incomplete_details = {"reason": "content_filter"}
    else:
        response.status = "completed"
        response.completed_at = int(time.time())
    response.output_text = "".join(p["text"] for item in response.output if item["type"] == "message"
                                   for p in item["content"] if p["type"] == "output_text")


def _text_logprobs(chat_logprobs: Any) -> list[dict[str, Any]]:
    """A chat choice's ``logprobs.content`` as an output_text part's ``logprobs``."""
    content = chat_logprobs.get("content") if isinstance(chat_logprobs, dict) else None
    out = []
    for entry in content or ():
        if isinstance(entry, dict):
            out.append({"token": entry.get("token", ""), "logprob": entry.get("logprob", 0.0),
                        "bytes": entry.get("bytes") or [],
                        "top_logprobs": [{"token": t.get("token", ""), "logprob": t.get("logprob", 0.0),
                                          "bytes": t.get("bytes") or []} for t in entry.get("top_logprobs") or ()]})
    return out


def _message_item(text: str, logprobs: list[dict[str, Any]] | None, status: str = "completed",
                  item_id: str | None = None) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
    if logprobs is not None:
        part["logprobs"] = logprobs
    return {"id": item_id or new_id("msg"), "type": "message", "role": "assistant", "status": status,
            "content": [part]}


def response_of_completion(shell: ResponseObject, completion: dict[str, Any], logprobs: bool) -> ResponseObject:
    """The finished response of a chat completion (its first choice); ``shell`` is completed in place.
    Parts of an upstream's answer that are not what the protocol says are left out, never a 500."""
    response = shell
    choices = completion.get("choices") if isinstance(completion, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content")
    calls = message.get("tool_calls") if isinstance(message.get("tool_calls"), list) else []
    if isinstance(content, str) and (content or not calls):
        response.output.append(_message_item(content, _text_logprobs(choice.get("logprobs")) if logprobs else None))
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        response.output.append({"id": new_id("fc"), "type": "function_call", "status": "completed",
                                "call_id": str(call.get("id") or new_id("call")), "name": str(fn.get("name") or ""),
                                "arguments": str(fn.get("arguments") or "")})
    response.usage = usage_of(completion.get("usage") if isinstance(completion, dict) else None)
    reason = choice.get("finish_reason")
    _finish(response, reason if isinstance(reason, str) else None)
    return response


# ---------------------------------------------------------------- the stream
class EventWriter:
    """A chat stream's chunks in, Responses events out (SSE bytes), numbered from 0."""

    def __init__(self, shell: ResponseObject, logprobs: bool):
        self.response = shell
        self.logprobs = logprobs
        self.sequence = 0
        self.open_item: dict[str, Any] | None = None  # the output item being streamed
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> function_call item
        self.finish_reason: str | None = None
        self.text_logprobs: list[dict[str, Any]] = []

    def event(self, kind: str, **fields: Any) -> bytes:
        body = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(body) + b"\n\n"

    def start(self) -> bytes:
        data = self.response.model_dump()
        return self.event("response.created", response=data) + self.event("response.in_progress", response=data)

    def feed(self, chunk: bytes) -> bytes:
        """The events one chat chunk makes (b"" for none; a chunk that is not what the protocol says, too)."""
        try:
            parsed = orjson.loads(chunk)
        except orjson.JSONDecodeError:
            return b""
        if not isinstance(parsed, dict):
            return b""
        try:
            return self._events(parsed)
        except (AttributeError, TypeError, KeyError):
            return b""

    def _events(self, parsed: dict[str, Any]) -> bytes:
        out = []
        if isinstance(parsed.get("usage"), dict):
            self.response.usage = usage_of(parsed["usage"])
        for choice in parsed.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.append(self._text(text, _text_logprobs(choice.get("logprobs")) if self.logprobs else []))
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    out.append(self._call(call))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return b"".join(out)

    def _text(self, text: str, logprobs: list[dict[str, Any]]) -> bytes:
        out = b""
        item = self.open_item
        if item is None or item["type"] != "message":
            out += self._close()
            item = self.open_item = _message_item("", [] if self.logprobs else None, status="in_progress")
            item["content"] = []
            index = len(self.response.output)
            self.response.output.append(item)
            out += self.event("response.output_item.added", output_index=index, item=_copy(item))
            part = {"type": "output_text", "text": "", "annotations": []}
            if self.logprobs:
                part["logprobs"] = []
            item["content"].append(part)
            out += self.event("response.content_part.added", item_id=item["id"], output_index=index,
                              content_index=0, part=_copy(part))
        part = item["content"][0]
        part["text"] += text
        if self.logprobs:
            part["logprobs"].extend(logprobs)
        return out + self.event("response.output_text.delta", item_id=item["id"], output_index=self._index(item),
                                content_index=0, delta=text, logprobs=logprobs)

    def _call(self, call: dict[str, Any]) -> bytes:
        out = b""
        index = call.get("index", 0)
        fn = call.get("function") or {}
        item = self.calls.get(index)
        if item is None:
            out += self._close()
            item = self.calls[index] = self.open_item = {
                "id": new_id("fc"), "type": "function_call", "status": "in_progress",
                "call_id": call.get("id") or new_id("call"), "name": fn.get("name") or "", "arguments": ""}
            self.response.output.append(item)
            out += self.event("response.output_item.added", output_index=self._index(item), item=_copy(item))
        elif fn.get("name"):
            item["name"] += fn["name"]
        arguments = fn.get("arguments")
        if arguments:
            item["arguments"] += arguments
            out += self.event("response.function_call_arguments.delta", item_id=item["id"],
                              output_index=self._index(item), delta=arguments)
        return out

    def _index(self, item: dict[str, Any]) -> int:
        for i, candidate in enumerate(self.response.output):
            if candidate is item:
                return i
        raise AssertionError("item not in output")

    def _close(self) -> bytes:
        item, self.open_item = self.open_item, None
        if item is None:
            return b""
        index = self._index(item)
        out = b""
        status = "incomplete" if self.finish_reason in ("length", "content_filter") else "completed"
        if item["type"] == "message":
            part = item["content"][0]
            out += self.event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                              text=part["text"], logprobs=part.get("logprobs", []))
            out += self.event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                              part=_copy(part))
        else:
            out += self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                              name=item["name"], arguments=item["arguments"])
        item["status"] = status
        return out + self.event("response.output_item.done", output_index=index, item=_copy(item))

    def close(self) -> bytes:
        """The closing events of the open output item, once the chat stream has ended; the response
        is then final (``self.response``: status, output, usage), to be stored before ``completed``."""
        out = self._close()
        _finish(self.response, self.finish_reason)
        return out

    def completed(self) -> bytes:
        """``response.completed`` (``response.incomplete`` when cut off), after ``close``."""
        response = self.response
        kind = "response.incomplete" if response.status == "incomplete" else "response.completed"
        return self.event(kind, response=response.model_dump())

    def fail(self, error: OpenAIError) -> bytes:
        """The closing events of a stream whose backend failed after it began."""
        response = self.response
        response.status = "failed"
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"
        response.error = {"code": code, "message": error.message}
        return (self.event("error", code=error.code or code, message=error.message, param=error.param)
                + self.event("response.failed", response=response.model_dump()))


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(orjson.dumps(item))
