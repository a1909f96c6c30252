"""OpenAI tool calling for remote models that have none of their own, made by octogate with structured outputs.

A backend marked ``tool_calls: octogate`` (an OpenAI-compatible server such as vLLM, SGLang, Ollama or
llama.cpp server, or a LiteLLM provider) is wrapped in ``StructuredToolCalls``. A request that carries
``tools`` is then answered in three steps:

1. **Check.** ``tools``, ``tool_choice`` and each function's ``parameters`` go through
   ``core.tool_plan.plan_tools``, so a bad request is the same 400 (``param`` naming the exact
   schema path) as on the embedded model.
2. **Ask under a schema.** ``tools``, ``tool_choice`` and ``parallel_tool_calls`` are removed; the
   functions are listed in a system message (``tools_system_text``, one JSON line each); earlier
   assistant ``tool_calls`` become the call JSON the model is asked to write, and ``role: "tool"``
   results become user turns (``Result of get_weather: ...``), which every chat template accepts.
   The upstream is asked for JSON under OpenAI's ``response_format: {"type": "json_schema", ...,
   "strict": true}`` (what vLLM, SGLang, llama.cpp server and Ollama enforce with a grammar on
   ``/v1/chat/completions``). The schema is ``anyOf`` over one object per function,
   ``{"name": {"const": NAME}, "arguments": <that function's parameters>}``, plus an array of such
   calls when ``parallel_tool_calls`` is not false, plus, for ``tool_choice: auto`` only, the no-call
   alternative ``{"content": <the answer>}``. ``required`` leaves the no-call alternative out; a named
   function offers only that function, once.
3. **Validate.** The reply is parsed and each call's arguments are checked against the full schema with
   the same ``jsonschema`` check the embedded model uses (``core.json_schema.validation_error``;
   grammar engines skip keywords such as ``minimum``). A reply that fails is retried once, with the
   reply and the reason it failed put back to the model; a second failure is a 502
   ``invalid_tool_call``, never an invalid call returned. A reply cut off by ``max_tokens`` is a 400
   naming ``max_tokens``.

**Why one constrained step for ``auto``** (rather than a first step choosing among the names plus
"none", then a second one for the arguments): the grammar still chooses the function by constrained
decoding over the offered names, because ``name`` is the first key of every alternative and its
``const`` is decoded before the arguments, and the arguments are then decoded under that function's
schema alone, which is the same order as the two-step version. Doing it in one request costs one
round trip and one prompt evaluation instead of two (every request to a remote server re-sends the
whole conversation and the function list, and not every server caches prefixes); it keeps the
choice and the arguments consistent, since they come from one generation; it is the same output
format as the embedded model's grammar and as the earlier calls rendered into the prompt, so a
conversation reads the same to the model on every turn; and it needs nothing beyond ``json_schema``
(no logprobs, no second request shape). What it gives up: a text answer under ``auto`` is written
inside a JSON string and, like calls, is validated before its first streamed chunk, so it arrives
in one burst rather than token by token. A client ``response_format`` is honoured there: the
``content`` alternative takes its schema, and the answer is that JSON.

Streaming requests get OpenAI's chunk format (``delta.tool_calls`` with ``index``, ``id``, the name,
then ``arguments`` fragments, ``finish_reason: "tool_calls"``; or ``delta.content`` pieces), and a
usage chunk when the client asked for one and the upstream reported usage (summed over attempts).

The backend follows the translating template (``adapters/translating.py``): prepare (the request
checked and rebuilt under the schema), generate (the asking, validating and retrying), render.
Requests without ``tools`` go to the wrapped backend untouched (``complete`` and ``stream`` return
its own coroutine and iterator: no extra await, no copy); with ``tool_choice: none`` the tools are
removed, tool turns are made plain, and the request is passed through as an ordinary one. Errors
of the wrapped backend (``UpstreamError``) propagate unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import orjson

from octogate.adapters.base import Backend
from octogate.adapters.tool_calling.parsing import InvalidCall, parse_calls, tool_call_objects
from octogate.adapters.tool_calling.prompt import after_system, tools_system_text, written_calls
from octogate.adapters.translating import Answer, AnswerChoice, Origin, TranslatingBackend
from octogate.core.errors import UpstreamError, max_tokens_reached
from octogate.core.json_schema import normalise, validation_error
from octogate.core.messages import content_text
from octogate.core.protocol import ChatCompletionRequest
from octogate.core.responses import AnyToolCall, Usage
from octogate.core.tool_plan import MAX_PARALLEL, ToolPlan, plan_tools

ATTEMPTS = 2
SCHEMA_NAME = "octogate_tool_calls"
_TOOL_FIELDS = frozenset({"tools", "tool_choice", "parallel_tool_calls"})
# Fields about the shape of a text answer that the constrained request cannot honour as such: the
# reply is one non-streamed JSON value (stop strings would cut it; they are applied to a text answer
# afterwards), logprobs would describe the JSON rather than the answer, and response_format is ours.
_REBUILT = _TOOL_FIELDS | {"stream", "stream_options", "logprobs", "top_logprobs", "response_format", "n", "stop"}


@dataclass
class _Job:
    """A request with tools, rebuilt to be asked under the calls' schema."""

    request: ChatCompletionRequest
    plan: ToolPlan
    answer_schema: dict[str, Any] | None
    messages: list[dict[str, Any]]  # the conversation as asked (without a retry's correction)
    upstream: dict[str, Any]  # the request the wrapped backend receives
    trace_headers: dict[str, str] | None
    source: dict[str, Any] | None = None  # the upstream's completion (its id, model, created), once answered


class StructuredToolCalls(TranslatingBackend):
    """Wraps a remote backend whose model has no tool calling: octogate makes the calls (module docstring)."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.label = inner.label

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def check_ready(self) -> str:
        return await self.inner.check_ready()

    # Not ``async def``: a request without tools gets the wrapped backend's own coroutine and iterator.
    def complete(self, payload: dict[str, Any], trace_headers: dict[str, str] | None = None) -> Awaitable[bytes]:
        if "tools" not in payload:
            return self.inner.complete(payload, trace_headers)
        return super().complete(payload, trace_headers)

    def stream(self, payload: dict[str, Any], trace_headers: dict[str, str] | None = None) -> AsyncIterator[bytes]:
        if "tools" not in payload:
            return self.inner.stream(payload, trace_headers)
        return super().stream(payload, trace_headers)

    def forward_complete(self, payload: dict[str, Any], trace_headers: dict[str, str] | None) -> Awaitable[bytes]:
        return self.inner.complete(without_tools(payload), trace_headers)

    def forward_stream(self, payload: dict[str, Any], trace_headers: dict[str, str] | None) -> AsyncIterator[bytes]:
        return self.inner.stream(without_tools(payload), trace_headers)

    # ------------------------------------------------------------------ the translating template
    def prepare(self, request: ChatCompletionRequest, payload: dict[str, Any],
                trace_headers: dict[str, str] | None) -> _Job | None:
        plan = _plan(request, payload)
        if plan is None:
            return None
        answer_schema = _answer_schema(request) if plan.mode == "auto" else None
        messages = with_tool_prompt(plain_turns(payload["messages"]), plan, answer_schema)
        upstream = {k: v for k, v in payload.items() if k not in _REBUILT}
        upstream["messages"] = messages
        upstream["response_format"] = {"type": "json_schema", "json_schema": {
            "name": SCHEMA_NAME, "schema": reply_schema(plan, answer_schema), "strict": True}}
        return _Job(request, plan, answer_schema, messages, upstream, trace_headers)

    async def generate(self, job: _Job) -> Answer:
        """Ask the wrapped backend under the calls' schema; validate; retry once with the reason."""
        usage: Usage | None = None
        problem = ""
        for _ in range(ATTEMPTS):
            body = _completion_body(await self.inner.complete(job.upstream, job.trace_headers), self.label)
            job.source = body
            usage = _add_usage(usage, body.get("usage"))
            choice = body["choices"][0]
            text = (choice.get("message") or {}).get("content")
            try:
                if not isinstance(text, str):
                    raise InvalidCall("the reply has no text content")
                calls, answer = read_reply(text, job.plan, job.answer_schema)
            except InvalidCall as exc:
                if choice.get("finish_reason") == "length":
                    raise max_tokens_reached(job.request.max_tokens_asked, "tool call") from None
                problem = str(exc)
                job.upstream["messages"] = [*job.messages, {"role": "assistant", "content": text or ""}, {
                    "role": "user", "content": f"That reply is not valid: {problem}. Reply again with only the "
                    "corrected JSON."}]
                continue
            if calls is not None:
                return Answer([AnswerChoice.calls(calls)], usage)
            return Answer([AnswerChoice(_apply_stop(answer, job.request.stop))], usage)
        raise UpstreamError(502, f"Upstream {self.label} did not produce a valid tool call in {ATTEMPTS} attempts: "
                            f"{problem}", type="upstream_error", code="invalid_tool_call")

    def origin(self, job: _Job) -> Origin:
        source = job.source or {}
        fingerprint = source.get("system_fingerprint")
        origin = Origin(model=source.get("model") or job.request.model,
                        system_fingerprint=fingerprint if isinstance(fingerprint, str) and fingerprint else None)
        origin.id = source.get("id") or origin.id
        origin.created = source.get("created") or origin.created
        return origin


# ---------------------------------------------------------------------------------------------- request
def _plan(request: ChatCompletionRequest, payload: dict[str, Any]) -> ToolPlan | None:
    if request.tools and request.tool_choice != "none" and (request.n or 1) > 1:
        raise UpstreamError(400, "octogate makes one tool-calling choice per request for this model; send n=1 with "
                            "'tools' (or tool_choice 'none').", param="n", code="unsupported_parameter")
    return plan_tools(payload)


def without_tools(payload: dict[str, Any]) -> dict[str, Any]:
    """The request as a plain one (``tool_choice: none``): no tool fields, tool turns made plain."""
    request = {k: v for k, v in payload.items() if k not in _TOOL_FIELDS}
    request["messages"] = plain_turns(payload["messages"])
    return request


def plain_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with its tool turns rewritten as turns any chat server accepts.

    An assistant message's ``tool_calls`` become its text, written as the calls the model is asked to
    write (``prompt.written_calls``); ``role: "tool"`` (and legacy ``function``) results become a user
    turn ``Result of NAME: ...``, consecutive results and a user message right after them sharing one turn,
    so that user and assistant turns still alternate. Other messages are passed on as they are."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    results_at = -1  # index in ``out`` of the user turn that holds the latest tool results
    for m in messages:
        role = m.get("role")
        if role == "assistant" and ("tool_calls" in m or "function_call" in m):
            out.append({"role": "assistant", "content": written_calls(m, content_text(m.get("content")), names)})
        elif role in ("tool", "function"):
            name = m.get("name") or names.get(m.get("tool_call_id") or "") or "the function"
            result = f"Result of {name}: {content_text(m.get('content'))}"
            if results_at == len(out) - 1 and results_at >= 0:
                out[results_at] = {"role": "user", "content": f"{out[results_at]['content']}\n{result}"}
            else:
                out.append({"role": "user", "content": result})
                results_at = len(out) - 1
        elif role == "user" and results_at == len(out) - 1 and results_at >= 0 and isinstance(m.get("content"), str):
            out[results_at] = {**m, "content": f"{out[results_at]['content']}\n{m['content']}"}
        else:
            out.append(m)
    return out


def with_tool_prompt(messages: list[dict[str, Any]], plan: ToolPlan,
                     answer_schema: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The functions' system message, after the leading system messages (the persona's, the client's)."""
    listed = dataclasses.replace(plan, mode="required") if plan.mode == "auto" else plan  # our own no-call line
    lines = [tools_system_text(listed)]
    if plan.parallel:
        lines.append("To call several functions at once, reply with a JSON array of such objects.")
    if answer_schema is not None:
        answer = '"<your answer>"' if answer_schema.get("type") == "string" else "<your answer, as JSON>"
        lines.append(f'If no function is needed, reply with only JSON: {{"content": {answer}}}.')
    return after_system(messages, {"role": "system", "content": "\n".join(lines)})


def _answer_schema(request: ChatCompletionRequest) -> dict[str, Any]:
    """What a text answer (``tool_choice: auto``, no call) must be: a string, or the client's response_format."""
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_object":
        return {"type": "object"}
    if fmt is not None and fmt.type == "json_schema":
        return normalise(fmt.json_schema.schema_ or {}, "response_format.json_schema.schema")
    return {"type": "string", "minLength": 1}  # an empty answer is no answer


def reply_schema(plan: ToolPlan, answer_schema: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON the upstream must reply with: one call (the name's ``const`` tied to its own parameters),
    an array of calls when parallel calls are allowed, or (``auto``) ``{"content": answer}``."""
    calls = [{"type": "object", "properties": {"name": {"type": "string", "const": f.name}, f.value_key: f.schema},
              "required": ["name", f.value_key], "additionalProperties": False} for f in plan.functions]
    alternatives = list(calls)
    if plan.parallel:
        alternatives.append({"type": "array", "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
                             "minItems": 1, "maxItems": MAX_PARALLEL})
    if answer_schema is not None:
        alternatives.append({"type": "object", "properties": {"content": answer_schema}, "required": ["content"],
                             "additionalProperties": False})
    return alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}


# ---------------------------------------------------------------------------------------------- reply
def read_reply(text: str, plan: ToolPlan,
               answer_schema: dict[str, Any] | None) -> tuple[list[AnyToolCall] | None, str | None]:
    """(OpenAI tool_call objects, None) or (None, the text answer); InvalidCall when the reply is neither."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidCall(f"not JSON ({exc})") from None
    if answer_schema is not None and isinstance(value, dict) and "content" in value and "name" not in value:
        if set(value) != {"content"}:
            raise InvalidCall(f"an answer object has only 'content', not {sorted(value)}")
        problem = validation_error(answer_schema, value["content"])
        if problem:
            raise InvalidCall(f"the answer does not match its schema at {problem}")
        content = value["content"]
        return None, content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    calls = parse_calls(text, plan)
    if len(calls) > MAX_PARALLEL:
        raise InvalidCall(f"{len(calls)} calls where at most {MAX_PARALLEL} are allowed")
    return tool_call_objects(calls, plan), None


def _completion_body(raw: bytes, label: str) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list) or not body["choices"] \
            or not isinstance(body["choices"][0], dict):
        raise UpstreamError(502, f"Upstream {label} did not answer with a chat completion.", type="upstream_error",
                            code="upstream_error")
    return body


def _add_usage(total: Usage | None, usage: Any) -> Usage | None:
    """The usage of every attempt added up; None while no upstream reply has reported any."""
    if not isinstance(usage, dict):
        return total
    total = total.model_copy() if total is not None else Usage()
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = usage.get(key)
        if isinstance(value, int):
            setattr(total, key, getattr(total, key) + value)
    return total


def _apply_stop(text: str, stop: Any) -> str:
    """A text answer ends where the client's first stop string begins, as if generated freely."""
    stops = [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str) and s]
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]
