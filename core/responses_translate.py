"""A Responses request answered through the node's chat completion (every backend works unchanged):
``chat_request`` builds the chat-completions body, ``response_shell`` the response object as
``response.created`` shows it, and ``response_of_completion`` reads a completion back into it.
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from octogate.core.errors import OpenAIError
from octogate.core.responses_items import STEP_ITEM_TYPES, new_id
from octogate.core.responses_request import (AllowedToolsChoice, CustomGrammarFormat, CustomTool, FunctionTool,
                                             NamedCustomChoice, NamedFunctionChoice, ResponsesRequest)


# ---------------------------------------------------------------- to a chat completion
def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored-form items (``stored_item``, or output items of a response) as chat messages: a message
    is one message; function and custom tool calls join the assistant message before them; an output
    is a tool message. An earlier response's steps (``reasoning``, ``code_interpreter_call``,
    ``web_search_call``: an agent's, in its output or sent back as input) are no message: a node never
    sees them, only the answer that followed them."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type")
        if kind in STEP_ITEM_TYPES:
            continue
        if kind == "message":
            content = item["content"]
            text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
            messages.append({"role": item["role"], "content": text})
        elif kind == "function_call":
            _join_call(messages, {"id": item["call_id"], "type": "function",
                                  "function": {"name": item["name"], "arguments": item["arguments"]}})
        elif kind == "custom_tool_call":
            _join_call(messages, {"id": item["call_id"], "type": "custom",
                                  "custom": {"name": item["name"], "input": item["input"]}})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item["output"]
            text = output if isinstance(output, str) else "".join(p.get("text", "") for p in output)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
    return messages


def _join_call(messages: list[dict[str, Any]], call: dict[str, Any]) -> None:
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
        if not last.get("content"):
            last["content"] = None
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def chat_tool(tool: FunctionTool | CustomTool) -> dict[str, Any]:
    """A Responses tool as chat completions writes it: its definition under ``function`` or ``custom``."""
    if isinstance(tool, FunctionTool):
        return {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
    custom: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        custom["description"] = tool.description
    if isinstance(tool.format, CustomGrammarFormat):
        custom["format"] = {"type": "grammar", "grammar": {"syntax": tool.format.syntax,
                                                          "definition": tool.format.definition}}
    elif tool.format is not None:
        custom["format"] = {"type": "text"}
    return {"type": "custom", "custom": custom}


def chat_tool_choice(choice: Any) -> Any:
    """A checked ``tool_choice`` (``ResponsesRequest.choice``) as chat completions writes it."""
    if isinstance(choice, AllowedToolsChoice):
        return {"type": "allowed_tools", "allowed_tools": {
            "mode": choice.mode, "tools": [{"type": ref.type, ref.type: {"name": ref.name}} for ref in choice.tools]}}
    if isinstance(choice, (NamedFunctionChoice, NamedCustomChoice)):
        return {"type": choice.type, choice.type: {"name": choice.name}}
    return choice


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
    if request.declared_tools:
        chat["tools"] = [chat_tool(t) for t in request.declared_tools]
    if request.choice is not None:
        chat["tool_choice"] = chat_tool_choice(request.choice)
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


# ---------------------------------------------------------------- errors of the chat completion
# A chat-completion field named by an error -> the request field of the Responses body it came from.
_PARAMS = [
    (re.compile(r"^tools\[(\d+)\]\.custom\.format\.grammar(?=\.|$)"), r"tools[\1].format"),
    (re.compile(r"^tools\[(\d+)\]\.(?:custom|function)(?:\.|$)"), r"tools[\1]."),
    (re.compile(r"^tool_choice\.allowed_tools\.tools\[(\d+)\]\.(?:custom|function)(?:\.|$)"), r"tool_choice.tools[\1]."),
    (re.compile(r"^tool_choice\.allowed_tools(?:\.|$)"), "tool_choice."),
    (re.compile(r"^tool_choice\.(?:custom|function)(?:\.|$)"), "tool_choice."),
    (re.compile(r"^(?:max_tokens|max_completion_tokens)$"), "max_output_tokens"),
    (re.compile(r"^response_format\.json_schema(?=\.|$)"), "text.format"),
    (re.compile(r"^response_format(?=\.|$)"), "text.format"),
    (re.compile(r"^messages(?:\[.*)?$"), "input"),  # a chat message may be instructions, a persona or context
]


def responses_param(param: str) -> str:
    """The Responses field for a chat-completion field (unchanged when it already is one):
    ``tools[1].custom.format.grammar.syntax`` -> ``tools[1].format.syntax``."""
    for pattern, replacement in _PARAMS:
        if pattern.search(param):
            return pattern.sub(replacement, param, count=1).rstrip(".")
    return param


def responses_error(error: OpenAIError) -> OpenAIError:
    """An error of the chat completion that answers a Responses request, naming the Responses field."""
    param = error.param
    if not param:
        return error
    mapped = responses_param(param)
    if mapped == param:
        return error
    message = error.message.replace(f"'{param}'", f"'{mapped}'")
    return OpenAIError(error.status, message, type=error.type, param=mapped, code=error.code, headers=error.headers)


# ---------------------------------------------------------------- the response object
def usage_of(chat_usage: Any) -> dict[str, Any] | None:
    """A chat completion's usage as a response's: ``input_tokens``, ``input_tokens_details.cached_tokens``
    and ``.cache_write_tokens`` (required by OpenAI's current document and SDK), ``output_tokens``,
    ``output_tokens_details.reasoning_tokens``, ``total_tokens``."""
    if not isinstance(chat_usage, dict):
        return None
    try:
        prompt, completion = int(chat_usage.get("prompt_tokens") or 0), int(chat_usage.get("completion_tokens") or 0)
        prompt_details = chat_usage.get("prompt_tokens_details") or {}
        cached = int(prompt_details.get("cached_tokens") or 0)
        written = int(prompt_details.get("cache_write_tokens") or 0)
        reasoning = int(((chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens")) or 0)
    except (TypeError, ValueError, AttributeError):
        return None
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion}


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

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: Any) -> dict[str, Any]:
        # The spec types ``user`` and ``usage`` as not nullable: a response without them (usage before
        # the end of a stream, or when a failed backend reported none) leaves them out.
        data = handler(self)
        for name in ("user", "usage"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


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
        tools=[_tool_echo(t) for t in request.declared_tools], top_logprobs=request.top_logprobs or 0,
        user=request.user, metadata=request.metadata or {},
    )


def _tool_echo(tool: Any) -> dict[str, Any]:
    """A declared tool as the response echoes it: the spec requires a function tool's ``strict`` and
    ``parameters`` (null when the request left them out)."""
    echo = tool.model_dump(exclude_none=True)
    if echo.get("type") == "function":
        echo.setdefault("strict", None)
        echo.setdefault("parameters", None)
    return echo


def finish_response(response: ResponseObject, finish_reason: str | None) -> None:
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


def text_logprobs(chat_logprobs: Any) -> list[dict[str, Any]]:
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


def message_item(text: str, logprobs: list[dict[str, Any]] | None, status: str = "completed",
                  item_id: str | None = None) -> dict[str, Any]:
    """An assistant ``message`` output item; its ``output_text`` part always has ``logprobs`` (the spec
    requires the field; it is empty unless ``include`` asked for them)."""
    part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}
    return {"id": item_id or new_id("msg"), "type": "message", "role": "assistant", "status": status,
            "content": [part]}


def call_item(call: dict[str, Any]) -> dict[str, Any] | None:
    """A chat tool call (whole, or a stream's first delta of it) as a ``function_call`` or
    ``custom_tool_call`` output item, ``in_progress``; ``None`` when it is neither."""
    custom = call.get("custom")
    if isinstance(custom, dict) and call.get("type") in ("custom", None):
        return {"id": new_id("ctc"), "type": "custom_tool_call", "status": "in_progress",
                "call_id": str(call.get("id") or new_id("call")), "name": str(custom.get("name") or ""),
                "input": str(custom.get("input") or "")}
    fn = call.get("function")
    if isinstance(fn, dict):
        return {"id": new_id("fc"), "type": "function_call", "status": "in_progress",
                "call_id": str(call.get("id") or new_id("call")), "name": str(fn.get("name") or ""),
                "arguments": str(fn.get("arguments") or "")}
    return None


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
        response.output.append(message_item(content, text_logprobs(choice.get("logprobs")) if logprobs else None))
    for call in calls:
        item = call_item(call) if isinstance(call, dict) else None
        if item is not None:
            item["status"] = "completed"
            response.output.append(item)
    response.usage = usage_of(completion.get("usage") if isinstance(completion, dict) else None)
    reason = choice.get("finish_reason")
    finish_response(response, reason if isinstance(reason, str) else None)
    return response
