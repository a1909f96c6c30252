"""Agents served on /v1/chat/completions: ``model: "husky"`` (the graph's ``agents:`` block); on
/v1/responses, ``gateway/responses_agent.py`` runs them through the same ``AgentService``.

``AgentTable`` (built and started with the ``NodeTable``) holds each agent; ``AgentService``
(one per ``ChatService``) answers a request to one: the task is the last user message, the agent
runs (``agents/husky.py``) with each expert asked through the expert node's own backend (persona
and params applied, a backend span per call), and:

- ``stream: true``: each step is a chunk with ``delta.reasoning_content`` in Husky's history
  format (``Step: [search] ...`` then ``Output: ...``, ``Step: [finish]`` last), then the answer
  as ``delta.content`` and a last chunk with ``finish_reason``;
- otherwise one ``chat.completion`` whose message has ``content`` (the answer) and
  ``reasoning_content`` (the steps).

``finish_reason`` is ``length`` when ``max_steps`` ran out before ``[finish]``. Each step is a
span (``octogate.agent.action``, ``.expert``, ``.execute``, ``.search``, ``.answer``) under the
request's and counted in ``octogate_agent_steps_total{agent,tool}``. A failing expert is recorded
in the step, never answered as a 5xx. Conversations (``X-Conversation-Id``) are not applied to
agents: the task is the request's own last user message.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CollectorRegistry, Counter

from octogate.agents.husky import AgentResult, Husky
from octogate.core.errors import OpenAIError, UpstreamError
from octogate.core.messages import content_text
from octogate.gateway.asgi_io import _tokens, stream_sse

if TYPE_CHECKING:
    from octogate.core.graph import GraphConfig
    from octogate.gateway.metrics import Metrics
    from octogate.gateway.nodes import NodeTable
    from octogate.gateway.tracing import Tracing

log = logging.getLogger("octogate")
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]
AGENT_HEADER = b"x-octogate-agent"


class AgentTable:
    """The graph's agents, by the name clients put in ``model``."""

    def __init__(self, graph: GraphConfig):
        self.agents: dict[str, Husky] = {name: Husky(name, cfg) for name, cfg in graph.agents.items()}

    def __contains__(self, name: str) -> bool:
        return name in self.agents

    def __bool__(self) -> bool:
        return bool(self.agents)

    async def start(self) -> None:
        for name, agent in self.agents.items():  # one at a time: llama.cpp loads are not concurrent-safe
            await agent.start()
            log.info("agent %s: code runs under %s isolation; search %s", name,
                     getattr(agent.executor, "isolation", "?"), getattr(agent.search, "label", "?"))

    async def aclose(self) -> None:
        await asyncio.gather(*(a.aclose() for a in self.agents.values()), return_exceptions=True)


class AgentUsage:
    """The tokens the expert calls of one request used (``count_usage``); the action generator's
    decisions, made in process, are not counted."""

    __slots__ = ("key", "prompt_tokens", "completion_tokens")

    def __init__(self, key: str):
        self.key = key
        self.prompt_tokens = 0
        self.completion_tokens = 0


_usage: ContextVar[AgentUsage | None] = ContextVar("octogate_agent_usage", default=None)


def count_usage(key: str) -> AgentUsage:
    """From here on in this request (its task and the tasks it starts), expert calls add their tokens to
    the ``AgentUsage`` returned; ``key`` (the caller's key name) labels them in the token metrics."""
    usage = AgentUsage(key)
    _usage.set(usage)
    return usage


_step_counters: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()


def _step_counter(registry: CollectorRegistry) -> Counter:
    counter = _step_counters.get(registry)
    if counter is None:
        counter = _step_counters[registry] = Counter(
            "octogate_agent_steps_total", "Steps agents took, by tool ([finish] included).", ("agent", "tool"),
            registry=registry)
    return counter


class AgentService:
    def __init__(self, nodes: NodeTable, metrics: Metrics, tracing: Tracing):
        self.nodes = nodes
        self.table: AgentTable = nodes.agents
        self.metrics = metrics
        self.tracing = tracing
        steps = _step_counter(metrics.registry)
        for name, agent in self.table.agents.items():
            agent.instrument(self._ask, tracing.child_span, lambda tool, n=name: steps.labels(n, tool).inc())

    def __contains__(self, model: str) -> bool:
        return model in self.table

    async def _ask(self, node_name: str, messages: list[dict[str, str]], max_tokens: int) -> str:
        """One expert call: the node's backend, its persona and params, a backend span and the metrics."""
        node = self.nodes.resolve(node_name)
        payload = node.build_payload({"model": node_name, "messages": messages, "max_tokens": max_tokens,
                                      "temperature": 0.0})
        t0 = time.perf_counter()
        with self.tracing.backend_span(**node.trace_target, stream=False, request=payload) as span:
            try:
                body = await node.backend.complete(payload, self.tracing.inject({}))
            except UpstreamError as exc:
                self.metrics.upstream_call(node.name, node.backend.label, time.perf_counter() - t0, ok=False)
                self.tracing.record_error(span, exc.status, exc.message, exc.code or exc.type)
                raise
            self.metrics.upstream_call(node.name, node.backend.label, time.perf_counter() - t0, ok=True)
        data = orjson.loads(body)
        prompt, completion = _tokens(data.get("usage"))
        usage = _usage.get()
        self.metrics.tokens(node.name, prompt, completion, usage.key if usage is not None else "")
        if usage is not None:
            usage.prompt_tokens += prompt
            usage.completion_tokens += completion
        choices = data.get("choices") or [{}]
        return content_text((choices[0].get("message") or {}).get("content"))

    async def serve(self, model: str, data: dict[str, Any], send: Any, receive: Any) -> int:
        agent = self.table.agents[model]
        task = _task_of(data)
        max_tokens = data.get("max_completion_tokens") or data.get("max_tokens")
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not data.get("stream"):
            result = await agent.run(task, max_tokens=max_tokens)
            body = {"id": rid, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "finish_reason": result.finish_reason, "message": {
                        "role": "assistant", "content": result.answer, "reasoning_content": result.reasoning}}],
                    "octogate": {"steps": [{"tool": s.tool, "subtask": s.subtask} for s in result.steps]}}
            raw = orjson.dumps(body)
            await send({"type": "http.response.start", "status": 200, "headers": [
                *_JSON_HEADERS, (AGENT_HEADER, model.encode()), (b"content-length", str(len(raw)).encode())]})
            await send({"type": "http.response.body", "body": raw})
            return 200
        return await self._stream(agent, model, task, max_tokens, rid, created, send, receive)

    async def _stream(self, agent: Husky, model: str, task: str, max_tokens: int | None, rid: str, created: int,
                      send: Any, receive: Any) -> int:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return orjson.dumps({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        async def on_event(kind: str, text: str) -> None:
            if kind in ("reasoning", "content"):  # a step's code and query are in its reasoning lines already
                await queue.put(chunk({"reasoning_content" if kind == "reasoning" else "content": text}))

        async def work() -> AgentResult:
            try:
                result = await agent.run(task, on_event, max_tokens=max_tokens)
                await queue.put(chunk({}, result.finish_reason))
                return result
            finally:
                await queue.put(None)

        runner = asyncio.ensure_future(work())  # copies the context: its spans are the request's children

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while (item := await queue.get()) is not None:
                    yield item
                await runner  # an unexpected failure surfaces here
            finally:
                if not runner.done():
                    runner.cancel()  # the client went away: stop the agent

        stream = chunks()
        first = chunk({"role": "assistant", "content": ""})
        headers = [*_SSE_HEADERS, (AGENT_HEADER, model.encode())]
        outcome = await stream_sse(send, receive, headers, first, stream)
        return 499 if outcome.client_gone else 200


def _task_of(data: dict[str, Any]) -> str:
    """The task of a chat request to an agent: its last user message with text."""
    for message in reversed(data.get("messages") or []):
        if message.get("role") == "user":
            text = content_text(message.get("content"), "\n").strip()
            if text:
                return text
    raise OpenAIError(400, "An agent needs a user message with text: its task.", param="messages",
                      code="invalid_request")
