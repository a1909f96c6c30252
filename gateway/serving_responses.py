"""POST /v1/responses: OpenAI's Responses API over the graph, served as raw ASGI like chat completions.

A request is translated into the chat completion of its node (``core/responses_translate.py``) and
answered by the chat path's own machinery (``ChatService.complete_chat`` / ``open_stream``): the
same auth, rate limits, routing (``model: "octopus"``), persona, node params, fallbacks, backend
spans and metrics, and the same headers (``x-octogate-node``, ``x-octogate-token`` ...). The answer
is read back into a response object, or, streamed, into OpenAI's semantic events.

With ``store`` (the default) the response, its input items and the context before them are kept
in Redis under the caller's key (``gateway/response_store.py``), and ``previous_response_id``
continues from them. When the store cannot be used, a request that asks for storing, or that
continues a stored response, is a 503; ``store: false`` is served regardless. A node whose backend
declares ``responses: native``, named directly in ``model``, gets the request passed through to its
upstream's own ``/v1/responses`` with the persona put in front of ``instructions`` (the upstream then
keeps its own state: ``previous_response_id`` goes to it untouched). A request naming an agent
(``husky``) runs it and answers its steps as output items before its answer
(``gateway/responses_agent.py``), stored like any other response.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from octogate.adapters.base import Backend
from octogate.adapters.openai_responses import build_responses_backend
from octogate.core.errors import OpenAIError, UpstreamError
from octogate.core.responses_events import EventWriter
from octogate.core.responses_items import new_id, stored_item
from octogate.core.responses_request import ResponsesRequest, parse_request
from octogate.core.responses_translate import (ResponseObject, chat_request, response_of_completion, response_shell,
                                               responses_error)
from octogate.gateway.asgi_io import JSON_HEADERS, SSE_HEADERS, ClientGone, read_body, send_response
from octogate.gateway.nodes import Node
from octogate.gateway.response_store import Responses
from octogate.gateway.responses_agent import AgentResponses
from octogate.gateway.serving_chat import NODE_HEADER, ChatService, Exchange, answer_request, to_openai_error

RESPONSES_PATH = "/v1/responses"
_NO_HEADERS: dict[str, str] = {}
_PARAM_DEFAULTS = (("temperature", "temperature"), ("top_p", "top_p"), ("max_tokens", "max_output_tokens"),
                   ("max_completion_tokens", "max_output_tokens"))


def _load(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise OpenAIError(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "The request body must be a JSON object.", code="invalid_json")
    return data


class ResponsesService:
    def __init__(self, chat: ChatService, responses: Responses):
        self.chat = chat
        self.responses = responses
        self.agents = AgentResponses(chat.agents, chat.limits)
        self.native: dict[str, Backend] = {}  # node name -> its upstream's /v1/responses
        graph = chat.nodes.graph
        by_key: dict[str, Backend] = {}
        for cfg in graph.nodes:
            backend_cfg = graph.backend_of(cfg)
            if backend_cfg.responses == "native":
                key = graph.backend_key(cfg)
                if key not in by_key:
                    by_key[key] = build_responses_backend(backend_cfg, f"{key}/responses", chat.metrics)
                self.native[cfg.name] = by_key[key]
        self._backends = list(by_key.values())

    async def start(self) -> None:
        await asyncio.gather(*(b.start() for b in self._backends))
        await self.responses.start()

    async def aclose(self) -> None:
        await asyncio.gather(self.responses.aclose(), *(b.aclose() for b in self._backends), return_exceptions=True)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI endpoint. Every outcome is an OpenAI-shaped answer; nothing escapes as a 500 trace."""
        await answer_request(self.chat.metrics, RESPONSES_PATH, send, lambda ex: self._serve(ex, scope, receive, send),
                             responses_error)  # a chat field named as the request's

    async def _serve(self, ex: Exchange, scope: dict[str, Any], receive: Any, send: Any) -> None:
        chat = self.chat
        authorization = content_length = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                content_length = value
        caller = ex.caller = chat.keys.check(authorization)
        headers_extra = ex.headers_extra
        headers_extra += await chat.limits.admit(caller)
        data = _load(await read_body(receive, content_length, chat.max_body_bytes))
        request = parse_request(data)
        model = ex.model = request.model
        agent = model in chat.agents
        routed = not agent and chat.router is not None and model == chat.router.name
        node = None if routed or agent else chat.nodes.resolve(model)
        if node is not None and node.name in self.native:
            ex.node_name = node.name
            ex.status = await self._native(node, data, request, headers_extra, receive, send, caller)
            return
        store = request.store is not False and self.responses.store is not None
        context: list[dict[str, Any]] = []
        if request.previous_response_id is not None:
            record = await self.responses.load(request.previous_response_id, authorization, "previous_response_id")
            context = [*record.get("context", []), *record.get("input", []), *record["response"].get("output", [])]
        if store:
            await self.responses.check_writable()
        input_items = [stored_item(item) for item in request.items]
        shell = response_shell(request, new_id("resp"), store)
        keep = _Keeper(self.responses, Responses.scope(authorization), input_items, context) if store else None
        if agent:  # its steps are output items before its answer: gateway/responses_agent.py
            ex.node_name = model
            ex.status = await self.agents.serve(request, [*context, *input_items], shell, keep, headers_extra,
                                                receive, send, caller)
            return
        chat_data = chat_request(request, [*context, *input_items])
        if routed:
            node, route_headers = await chat.router.route(chat_data)
            headers_extra += route_headers
        ex.node_name = node.name
        if request.stream:
            ex.status, answered = await self._stream(node, chat_data, request, shell, keep, headers_extra, ex.started,
                                                     receive, send, caller)
        else:
            ex.status, answered = await self._complete(node, chat_data, request, shell, keep, headers_extra,
                                                       receive, send, caller)
        ex.node_name = answered.name

    # ------------------------------------------------------------------ translated: JSON
    async def _complete(self, node: Node, chat_data: dict[str, Any], request: ResponsesRequest, shell: ResponseObject,
                        keep: _Keeper | None, headers_extra: list[tuple[bytes, bytes]], receive: Any, send: Any,
                        caller: Any) -> tuple[int, Node]:
        done = await self.chat.complete_chat(node, chat_data, headers_extra, receive, caller)
        response = response_of_completion(shell, done.summary, request.wants_logprobs)
        body = response.model_dump()
        await self.chat.limits.spent(caller, done.prompt_tokens + done.completion_tokens)  # spent, kept or not
        if keep is not None:
            await keep.put(body)  # a 503 rather than an answer that was asked to be kept and was not
        headers = [*JSON_HEADERS, (NODE_HEADER, done.node.name.encode()), *headers_extra]
        await send_response(send, 200, orjson.dumps(body), headers)
        return 200, done.node

    # ------------------------------------------------------------------ translated: events
    async def _stream(self, node: Node, chat_data: dict[str, Any], request: ResponsesRequest, shell: ResponseObject,
                      keep: _Keeper | None, headers_extra: list[tuple[bytes, bytes]], started: float, receive: Any,
                      send: Any, caller: Any) -> tuple[int, Node]:
        opened = await self.chat.open_stream(node, chat_data, headers_extra, started, caller)
        writer = EventWriter(shell, request.wants_logprobs)
        headers = [*SSE_HEADERS, (NODE_HEADER, opened.node.name.encode()), *headers_extra]
        chunks = opened.chunks
        ok, gone = True, _Gone()
        try:
            async with gone.watching(receive):
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": writer.start(), "more_body": True})
                chunk = opened.first
                try:
                    while chunk is not None:
                        events = writer.feed(chunk)
                        if events:
                            await send({"type": "http.response.body", "body": events, "more_body": True})
                        chunk = await anext(chunks, None)
                    tail = writer.close()
                    if keep is not None:
                        try:
                            await keep.put(writer.response.model_dump())
                        except OpenAIError as err:
                            ok = False
                            tail += writer.fail(err)
                    if ok:
                        tail += writer.completed()
                except UpstreamError as exc:
                    ok = False
                    tail = writer.fail(to_openai_error(exc))
                gone.finished = True
                await send({"type": "http.response.body", "body": tail, "more_body": False})
        except ClientGone:
            status = 499  # the backend's stream is closed below, which stops its work
        except BaseException as exc:
            await chunks.aclose()
            opened.close(type(exc), exc, exc.__traceback__)
            raise
        else:
            status = 200
        await chunks.aclose()
        usage = writer.response.usage or {}
        prompt, completion = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
        text = writer.response.output_text if self.chat.tracing.capture_content else None
        opened.finished(ok, prompt, completion, writer.response.model, writer.response.id,
                        [writer.finish_reason] if writer.finish_reason else None, text)
        opened.close()
        await self.chat.limits.spent(caller, prompt + completion)
        return status, opened.node

    # ------------------------------------------------------------------ native pass-through
    async def _native(self, node: Node, data: dict[str, Any], request: ResponsesRequest,
                      headers_extra: list[tuple[bytes, bytes]], receive: Any, send: Any, caller: Any) -> int:
        backend = self.native[node.name]
        payload = dict(data)
        payload["model"] = node.backend_config.upstream_model
        persona = node.persona_message["content"] if node.persona_message else None
        if persona:
            payload["instructions"] = f"{persona}\n\n{request.instructions}" if request.instructions else persona
        for param, field in _PARAM_DEFAULTS:
            if param in node.params and payload.get(field) is None:
                payload[field] = node.params[param]
        chat = self.chat
        t0 = time.perf_counter()
        key = caller.name if caller is not None else ""
        with chat.tracing.backend_span(**node.trace_target, stream=bool(request.stream), request=payload):
            trace_headers = chat.tracing.inject(_NO_HEADERS)
            if not request.stream:
                try:
                    body = await backend.complete(payload, trace_headers)
                except UpstreamError as exc:
                    chat.metrics.upstream_call(node.name, backend.label, time.perf_counter() - t0, ok=False)
                    raise to_openai_error(exc) from None
                chat.metrics.upstream_call(node.name, backend.label, time.perf_counter() - t0, ok=True)
                tokens = _native_usage(body)
                chat.metrics.tokens(node.name, *tokens, key)
                await send_response(send, 200, body, [*JSON_HEADERS, (NODE_HEADER, node.name.encode()), *headers_extra])
                await chat.limits.spent(caller, sum(tokens))
                return 200
            events = backend.stream(payload, trace_headers)
            try:
                first = await anext(events)
            except StopAsyncIteration:
                first = None
            except UpstreamError as exc:
                chat.metrics.upstream_call(node.name, backend.label, time.perf_counter() - t0, ok=False)
                raise to_openai_error(exc) from None
            headers = [*SSE_HEADERS, (NODE_HEADER, node.name.encode()), *headers_extra]
            ok, gone, tokens = True, _Gone(), (0, 0)
            try:
                async with gone.watching(receive):
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    event = first
                    try:
                        while event is not None:
                            kind = _event_type(event)
                            if kind in ("response.completed", "response.incomplete"):
                                tokens = _native_usage(event, nested=True)
                            await send({"type": "http.response.body", "more_body": True,
                                        "body": b"event: " + kind.encode() + b"\ndata: " + event + b"\n\n"})
                            event = await anext(events, None)
                        tail = b""
                    except UpstreamError as exc:
                        ok = False
                        tail = b"event: error\ndata: " + orjson.dumps({"type": "error", "code": exc.code or "server_error",
                                                                       "message": exc.message, "param": exc.param}) + b"\n\n"
                    gone.finished = True
                    await send({"type": "http.response.body", "body": tail, "more_body": False})
            except ClientGone:
                return 499
            finally:
                await events.aclose()
            chat.metrics.upstream_call(node.name, backend.label, time.perf_counter() - t0, ok=ok)
            chat.metrics.tokens(node.name, *tokens, key)
            await chat.limits.spent(caller, sum(tokens))
            return 200


class _Keeper:
    """What a stored response is kept with: its caller's scope, its input items and its context."""

    __slots__ = ("responses", "scope", "input_items", "context")

    def __init__(self, responses: Responses, scope: str, input_items: list[dict[str, Any]], context: list[dict[str, Any]]):
        self.responses = responses
        self.scope = scope
        self.input_items = input_items
        self.context = context

    async def put(self, response: dict[str, Any]) -> None:
        await self.responses.put(self.scope, response["id"],
                                 {"response": response, "input": self.input_items, "context": self.context})


class _Gone:
    """``async with gone.watching(receive):`` around a stream: a client that disconnects before
    ``finished`` is set cancels the sending (which closes the backend's stream) and raises ClientGone."""

    def __init__(self) -> None:
        self.finished = False
        self.client_gone = False

    def watching(self, receive: Any) -> _Watch:
        return _Watch(self, receive)


class _Watch:
    def __init__(self, gone: _Gone, receive: Any):
        self.gone = gone
        self.receive = receive

    async def __aenter__(self) -> None:
        self.task = asyncio.current_task()
        self.watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                if not self.gone.finished:
                    self.gone.client_gone = True
                    self.task.cancel()
                return

    async def __aexit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        self.watcher.cancel()
        if self.gone.client_gone and kind is asyncio.CancelledError:
            self.task.uncancel()
            raise ClientGone()
        return False


def _event_type(event: bytes) -> str:
    try:
        parsed = orjson.loads(event)
    except orjson.JSONDecodeError:
        return "message"
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    return kind if isinstance(kind, str) and kind.isascii() and "\n" not in kind else "message"


def _native_usage(body: bytes, nested: bool = False) -> tuple[int, int]:
    try:
        parsed = orjson.loads(body)
        usage = (parsed.get("response") or {}).get("usage") if nested else parsed.get("usage")
        return int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 0, 0
