"""``POST /v1/responses`` with ``model`` naming an agent of the graph (``husky``): the agent runs
(``agents/husky.py``, its experts asked through ``AgentService``) and its steps become output items
before the answer's ``message`` (``core/responses_steps.py``): JSON at the end, or streamed as OpenAI's
events while each step happens.

``ResponsesService`` (``gateway/serving_responses.py``) has done what every request gets: auth, rate
limit admission, the body's validation, the previous response's context and the store check; it
calls ``AgentResponses.serve`` with them. The task is the last user message of the input; the
request's ``instructions`` and the conversation before that message (``previous_response_id``'s
context, earlier input items) follow it in the task text, so the action generator (which reads the
task's start) sees the question first and the experts and the answer node see the rest too. An
earlier run's steps (``reasoning``, ``code_interpreter_call``, ``web_search_call`` items, from
``previous_response_id`` or sent back in ``input`` by a client keeping its own context) are not part
of it: the conversation is read through ``chat_messages``, which leaves them out, as for a node.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from octogate.core.errors import OpenAIError
from octogate.core.responses_events import EventWriter
from octogate.core.responses_request import ResponsesRequest
from octogate.core.responses_steps import StepItems, container_of
from octogate.core.responses_translate import ResponseObject, chat_messages
from octogate.gateway.asgi_io import JSON_HEADERS, SSE_HEADERS, CancelOnDisconnect, ClientGone, send_response
from octogate.gateway.serving_agents import AGENT_HEADER, AgentService, count_usage

log = logging.getLogger("octogate")

CONTEXT_CHARS = 2000  # the most of the earlier conversation a task carries (older turns dropped first) ...
MESSAGE_CHARS = 400  # ... and of each of its messages
_ROLES = {"user": "User", "assistant": "Assistant", "system": "System", "developer": "Developer", "tool": "Tool"}


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + " ..."


def agent_task(request: ResponsesRequest, items: list[dict[str, Any]]) -> str:
    """The agent's task: the last user message of ``items`` (context then input, stored form), then the
    request's instructions and the conversation before that message."""
    messages = chat_messages(items)
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if message["role"] == "user" and (message.get("content") or "").strip():
            break
    else:
        raise OpenAIError(400, "An agent needs a user message with text in 'input': its task.", param="input",
                          code="invalid_value")
    parts = [messages[i]["content"].strip()]
    if request.instructions:
        parts.append(f"Instructions: {request.instructions.strip()}")
    earlier = [f"{_ROLES.get(m['role'], m['role'])}: {_clip(m['content'])}" for m in messages[:i]
               if isinstance(m.get("content"), str) and m["content"].strip()]
    while earlier and sum(len(line) + 1 for line in earlier) > CONTEXT_CHARS:
        earlier.pop(0)
    if earlier:
        parts.append("Earlier in the conversation:\n" + "\n".join(earlier))
    return "\n\n".join(parts)


def refuse_unserved(request: ResponsesRequest) -> None:
    """A 400 for what an agent cannot honour: the client's own tools (an agent calls its experts),
    structured output and logprobs (the answer is written by the agent's answer node)."""
    if request.tools:
        raise OpenAIError(400, f"'{request.model}' is an agent: it calls its own tools, not the request's.",
                          param="tools", code="unsupported_parameter")
    fmt = request.text.format if request.text is not None else None
    if fmt is not None and fmt.type != "text":
        raise OpenAIError(400, f"'{request.model}' is an agent: it answers in text only.", param="text.format",
                          code="unsupported_value")
    if request.wants_logprobs:
        raise OpenAIError(400, f"'{request.model}' is an agent: its answer has no logprobs.", param="include",
                          code="unsupported_value")


class AgentResponses:
    """Answers a Responses request with an agent; ``keep`` stores the response (``_Keeper``) or is None."""

    def __init__(self, agents: AgentService, limits: Any):
        self.agents = agents
        self.limits = limits

    async def serve(self, request: ResponsesRequest, items: list[dict[str, Any]], shell: ResponseObject, keep: Any,
                    headers_extra: list[tuple[bytes, bytes]], receive: Any, send: Any, caller: Any) -> int:
        refuse_unserved(request)
        task = agent_task(request, items)
        agent = self.agents.table.agents[request.model]
        usage = count_usage(caller.name if caller is not None else "")
        writer = EventWriter(shell, False)
        steps = StepItems(writer, container_of(shell.id))
        if not request.stream:
            async def collect(kind: str, text: str) -> None:
                steps.feed(kind, text)

            async with CancelOnDisconnect(receive):  # a client gone stops the agent
                result = await agent.run(task, collect, max_tokens=request.max_output_tokens)
            steps.finish(result.finish_reason, usage.prompt_tokens, usage.completion_tokens)
            body = writer.response.model_dump()
            await self.limits.spent(caller, usage.prompt_tokens + usage.completion_tokens)
            if keep is not None:
                await keep.put(body)  # a 503 rather than an answer that was asked to be kept and was not
            await send_response(send, 200, orjson.dumps(body),
                                [*JSON_HEADERS, (AGENT_HEADER, request.model.encode()), *headers_extra])
            return 200
        return await self._stream(agent, task, request, writer, steps, keep, headers_extra, receive, send, caller,
                                  usage)

    async def _stream(self, agent: Any, task: str, request: ResponsesRequest, writer: EventWriter, steps: StepItems,
                      keep: Any, headers_extra: list[tuple[bytes, bytes]], receive: Any, send: Any, caller: Any,
                      usage: Any) -> int:
        headers = [*SSE_HEADERS, (AGENT_HEADER, request.model.encode()), *headers_extra]

        async def emit(kind: str, text: str) -> None:
            events = steps.feed(kind, text)
            if events:
                await send({"type": "http.response.body", "body": events, "more_body": True})

        try:
            async with CancelOnDisconnect(receive):  # a client gone cancels the agent where it is
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": writer.start(), "more_body": True})
                try:
                    result = await agent.run(task, emit, max_tokens=request.max_output_tokens)
                except Exception:  # the 200 is sent: the stream ends with error and response.failed
                    log.exception("agent %s failed mid-stream", request.model)
                    tail = writer.fail(OpenAIError(500, "The agent failed while answering.", code="server_error"))
                else:
                    tail = steps.finish(result.finish_reason, usage.prompt_tokens, usage.completion_tokens)
                    try:
                        if keep is not None:
                            await keep.put(writer.response.model_dump())
                        tail += writer.completed()
                    except OpenAIError as err:
                        tail += writer.fail(err)
                await send({"type": "http.response.body", "body": tail, "more_body": False})
        except ClientGone:
            return 499
        finally:
            await self.limits.spent(caller, usage.prompt_tokens + usage.completion_tokens)
        return 200
