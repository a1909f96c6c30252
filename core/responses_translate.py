"""A Responses request answered through the node's chat completion (every backend works unchanged):
``chat_request`` builds the chat-completions body, ``response_shell`` the response object as
``response.created`` shows it, and ``response_of_completion`` reads a completion back into it.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from octogate.core.responses_request import ResponsesRequest, new_id


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
        response.output.append(message_item(content, text_logprobs(choice.get("logprobs")) if logprobs else None))
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        response.output.append({"id": new_id("fc"), "type": "function_call", "status": "completed",
                                "call_id": str(call.get("id") or new_id("call")), "name": str(fn.get("name") or ""),
                                "arguments": str(fn.get("arguments") or "")})
    response.usage = usage_of(completion.get("usage") if isinstance(completion, dict) else None)
    reason = choice.get("finish_reason")
    finish_response(response, reason if isinstance(reason, str) else None)
    return response
