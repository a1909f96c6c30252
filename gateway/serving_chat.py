"""POST /v1/chat/completions: read, validate, choose a node, dispatch, answer (JSON or SSE).

The request path is: body (size-limited) -> JSON -> schema check -> node -> payload -> backend.
"Choose a node" is ``NodeTable.resolve`` today (the client pins a node by name); the router
plugs in at that one step.

This endpoint is the gateway's hot path, so it is served as a plain ASGI callable rather than
through FastAPI's routing and middleware stack, which measured at about half of the gateway's
CPU per request (see bench/). Everything else the app serves stays on FastAPI.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import ValidationError

from octogate.core.errors import OpenAIError, UpstreamError, from_validation_error
from octogate.core.exact_json import load_json
from octogate.core.protocol import ChatCompletionRequest
from octogate.core.server_config import ApiKeyConfig
from octogate.gateway.asgi_io import (  # noqa: F401  (stream_sse and friends: re-exported for other endpoints)
    JSON_HEADERS,
    SSE_HEADERS,
    CancelOnDisconnect,
    ClientGone,
    StreamOutcome,
    _count_usage,
    _tokens,
    read_body,
    send_error,
    send_response,
    stream_sse,
)
from octogate.gateway.auth import KeyChecker
from octogate.gateway.conversations import (
    CONVERSATION_HEADER,
    HISTORY_HEADER,
    AnswerAssembler,
    Conversations,
    Turn,
    answer_of,
    conversation_id,
)
from octogate.gateway.metrics import Metrics
from octogate.gateway.nodes import Node, NodeTable
from octogate.gateway.rate_limits import RateLimiter
from octogate.gateway.routing import FALLBACK_HEADER, Router
from octogate.gateway.serving_agents import AgentService
from octogate.gateway.tracing import Tracing

log = logging.getLogger("octogate")

NODE_HEADER = b"x-octogate-node"
_NO_HEADERS: dict[str, str] = {}
_MESSAGE_PARAM = re.compile(r"^messages\[(\d+)\]")


def to_openai_error(exc: UpstreamError, prepended: int = 0) -> OpenAIError:
    """The client's view of a backend error. ``prepended`` messages (a persona) were added in front of the
    client's, so a param naming ``messages[i]`` is shifted back to the client's own numbering."""
    param = exc.param
    if not (prepended and param):
        return exc
    match = _MESSAGE_PARAM.match(param)
    if not match or int(match[1]) < prepended:
        return exc
    param = f"messages[{int(match[1]) - prepended}]{param[match.end():]}"
    return OpenAIError(exc.status, exc.message, type=exc.type, param=param, code=exc.code, headers=exc.headers)


def parse_request(body: bytes) -> tuple[dict[str, Any], ChatCompletionRequest]:
    """The request body as the client wrote it (what is forwarded) and as the validated protocol model."""
    try:
        data = load_json(body)
    except ValueError as exc:  # orjson's JSONDecodeError is one
        raise OpenAIError(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    return data, request


def _completion_summary(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


class ChatService:
    def __init__(self, nodes: NodeTable, keys: KeyChecker, metrics: Metrics, conversations: Conversations,
                 tracing: Tracing, max_body_bytes: int, router: Router | None = None,
                 limits: RateLimiter | None = None):
        self.limits = limits if limits is not None else RateLimiter(None, metrics)
        self.nodes = nodes
        self.router = router
        self.keys = keys
        self.metrics = metrics
        self.conversations = conversations
        self.tracing = tracing
        self.max_body_bytes = max_body_bytes
        self.agents = AgentService(nodes, metrics, tracing)  # model == an agent's name: serving_agents.py

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI endpoint. Every outcome is an OpenAI-shaped answer; nothing escapes as a 500 trace."""
        await answer_request(self.metrics, "/v1/chat/completions", send,
                             lambda ex: self._serve(ex, scope, receive, send))

    async def _serve(self, ex: Exchange, scope: dict[str, Any], receive: Any, send: Any) -> None:
        authorization = content_length = conversation = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                content_length = value
            elif name == CONVERSATION_HEADER:
                conversation = value
        caller = ex.caller = self.keys.check(authorization)
        headers_extra = ex.headers_extra
        headers_extra += await self.limits.admit(caller)
        data, request = parse_request(await read_body(receive, content_length, self.max_body_bytes))
        model = ex.model = request.model
        if model in self.agents:
            ex.node_name = model
            ex.status = await self.agents.serve(model, data, send, receive)
            return
        cid = conversation_id(conversation, data)
        routed = self.router is not None and model == self.router.name
        node = None if routed else self.nodes.resolve(model)
        turn = None
        if cid is not None:
            with self.tracing.child_span("octogate.history.read", {"octogate.conversation.id": cid}):
                turn = await self.conversations.begin(cid, authorization, data)
        if routed:
            node, route_headers = await self.router.route(data)
            headers_extra += route_headers
        ex.node_name = node.name
        if request.stream:
            ex.status, answered = await self._stream(node, data, turn, headers_extra, ex.started, receive, send,
                                                     caller)
        else:
            ex.status, answered = await self._complete(node, data, turn, headers_extra, receive, send, caller)
        ex.node_name = answered.name

    async def _complete(self, node: Node, data: dict[str, Any], turn: Turn | None,
                        headers_extra: list[tuple[bytes, bytes]], receive: Any, send: Any,
                        caller: Any) -> tuple[int, Node]:
        done = await self.complete_chat(node, data, headers_extra, receive, caller, want_answer=turn is not None)
        headers = [*JSON_HEADERS, (NODE_HEADER, done.node.name.encode()), *headers_extra]
        if turn is not None:
            with self.tracing.child_span("octogate.history.append"):
                await self.conversations.finish(turn, done.answer)
            if turn.header is not None:
                headers.append((HISTORY_HEADER, turn.header))
        await send_response(send, 200, done.body, headers)
        await self.limits.spent(caller, done.prompt_tokens + done.completion_tokens)
        return 200, done.node

    async def complete_chat(self, node: Node, data: dict[str, Any], headers_extra: list[tuple[bytes, bytes]],
                            receive: Any, caller: Any, want_answer: bool = False) -> Completed:
        """The non-streamed chat completion of ``data`` (a chat request as the client would write it) by
        ``node``, or by its fallbacks when it fails before answering (``x-octogate-fallback`` added to
        ``headers_extra``): the backend span, the call's metrics and tokens recorded; nothing sent.
        Endpoints that answer through a chat completion (/v1/responses) call this too."""
        chain = self._chain(node)
        for i, node in enumerate(chain):
            payload = node.build_payload(data)
            with self.tracing.backend_span(**node.trace_target, stream=False, request=payload) as span:
                call = _BackendCall(self, node, span, caller)
                try:
                    async with CancelOnDisconnect(receive):  # a client gone stops the work done for it
                        body = await node.backend.complete(payload, self.tracing.inject(_NO_HEADERS))
                except UpstreamError as exc:
                    error = call.failed(exc, payload, data)
                    if i + 1 == len(chain) or not exc.retryable:
                        raise error from None
                    self._fall_back(node, chain[i + 1], exc, headers_extra)
                    continue
                summary = _completion_summary(body)  # the one parse of the body: usage, span, history
                prompt_tokens, completion_tokens = _tokens(summary.get("usage"))
                answer = answer_of(summary) if want_answer or self.tracing.capture_content else None
                choices = summary.get("choices") if span is not None else None
                call.finished(True, prompt_tokens, completion_tokens, summary.get("model"), summary.get("id"),
                              [c.get("finish_reason") for c in choices or () if c.get("finish_reason")],
                              (answer or {}).get("content") if self.tracing.capture_content else None)
            return Completed(node, body, summary, answer, prompt_tokens, completion_tokens)
        raise AssertionError("a chain is never empty")  # pragma: no cover

    async def _stream(self, node: Node, data: dict[str, Any], turn: Turn | None,
                      headers_extra: list[tuple[bytes, bytes]], started: float, receive: Any, send: Any,
                      caller: Any) -> tuple[int, Node]:
        opened = await self.open_stream(node, data, headers_extra, started, caller)
        try:
            headers = [*SSE_HEADERS, (NODE_HEADER, opened.node.name.encode()), *headers_extra]
            recorder = None
            if turn is not None:
                if turn.header is not None:
                    headers.append((HISTORY_HEADER, turn.header))
                recorder = _TurnRecorder(self.conversations, turn, self.tracing)
            elif opened.span is not None:
                recorder = AnswerAssembler()  # what the span reports: model, id, finish reasons, text
            outcome = await stream_sse(send, receive, headers, opened.first, opened.chunks, recorder)
            opened.finished(outcome.ok, outcome.prompt_tokens, outcome.completion_tokens,
                            *((recorder.model, recorder.response_id, recorder.finish_reasons,
                               "".join(recorder.content)) if recorder is not None else (None, None, None, None)))
        except BaseException as exc:
            opened.close(type(exc), exc, exc.__traceback__)
            raise
        opened.close()
        await self.limits.spent(caller, outcome.prompt_tokens + outcome.completion_tokens)
        return (499 if outcome.client_gone else 200), opened.node

    async def open_stream(self, node: Node, data: dict[str, Any], headers_extra: list[tuple[bytes, bytes]],
                          started: float, caller: Any) -> OpenedStream:
        """A streamed chat completion of ``data`` by ``node`` (or its fallbacks), up to its first chunk:
        a refusal is raised before anything is sent, so the client still gets its HTTP status. The
        backend span stays open until the caller's ``OpenedStream.close``."""
        chain = self._chain(node)
        for i, node in enumerate(chain):
            payload = node.build_payload(data)
            span_scope = self.tracing.backend_span(**node.trace_target, stream=True, request=payload)
            span = span_scope.__enter__()
            try:
                call = _BackendCall(self, node, span, caller)
                chunks = node.backend.stream(payload, self.tracing.inject(_NO_HEADERS))
                # Wait for the first chunk before answering, so a refused request still gets its HTTP status.
                try:
                    first = await anext(chunks)
                except StopAsyncIteration:
                    first = None
                except UpstreamError as exc:
                    error = call.failed(exc, payload, data)
                    if i + 1 == len(chain) or not exc.retryable:
                        raise error from None
                    self._fall_back(node, chain[i + 1], exc, headers_extra)
                    span_scope.__exit__(None, None, None)
                    continue
            except BaseException as exc:
                span_scope.__exit__(type(exc), exc, exc.__traceback__)
                raise
            self.metrics.time_to_first_token(node.name, time.perf_counter() - started)
            self.tracing.first_token(span)
            return OpenedStream(node, span, span_scope, call, first, chunks)
        raise AssertionError("a chain is never empty")  # pragma: no cover

    def _chain(self, node: Node) -> list[Node]:
        """The node, then the nodes that take over when every replica of the one before has failed."""
        fallbacks = self.nodes.fallbacks.get(node.name)
        return [node, *fallbacks] if fallbacks else [node]

    def _fall_back(self, node: Node, to: Node, exc: UpstreamError, headers_extra: list[tuple[bytes, bytes]]) -> None:
        log.warning("node %s failed before answering (%s: %s); %s takes the request", node.name, exc.reason,
                    exc.message, to.name)
        headers_extra[:] = [(k, v) for k, v in headers_extra if k != FALLBACK_HEADER]
        headers_extra.append((FALLBACK_HEADER, exc.reason.encode()))
        self.metrics.fallback(node.name, to.name, exc.reason)


class Exchange:
    """One request to an endpoint served by ``answer_request``: what its handler sets as it goes
    (model, node, caller, status; headers for a refusal), read once the request is over."""

    __slots__ = ("started", "model", "node_name", "status", "caller", "headers_extra")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.model = ""
        self.node_name = ""
        self.status = 500
        self.caller: ApiKeyConfig | None = None
        self.headers_extra: list[tuple[bytes, bytes]] = []


async def answer_request(metrics: Metrics, path: str, send: Any, handle: Callable[[Exchange], Awaitable[None]],
                         shape_error: Callable[[OpenAIError], OpenAIError] | None = None) -> None:
    """What every raw-ASGI OpenAI endpoint (chat completions, responses) does around its handler: an
    ``OpenAIError`` is sent as its status and envelope (``shape_error`` may re-say it in the endpoint's
    terms; with ``x-ratelimit-*`` and the other headers gathered so far, as OpenAI sends them on
    refusals too), a client gone is a 499, anything else is logged and answered 500
    ``internal_error``; the request is counted in the metrics either way."""
    ex = Exchange()
    metrics.request_started("")
    try:
        await handle(ex)
    except OpenAIError as err:
        ex.status = err.status
        await send_error(send, shape_error(err) if shape_error is not None else err, ex.headers_extra)
    except ClientGone:
        ex.status = 499
    except Exception:
        log.exception("unhandled error in %s", path)
        await send_error(send, OpenAIError(500, "The server had an error while processing your request.",
                                           code="internal_error"))
    finally:
        metrics.request_finished(ex.model, ex.node_name, ex.status, time.perf_counter() - ex.started,
                                 ex.caller.name if ex.caller is not None else "")


class _BackendCall:
    """One call to a node's backend: the per-call bookkeeping both paths share. ``finished`` records
    the call and its tokens in the metrics and the response on the span; ``failed`` does the same for
    a call refused before answering and gives the error to send the client."""

    __slots__ = ("key", "node", "service", "span", "t0")

    def __init__(self, service: ChatService, node: Node, span: Any, caller: ApiKeyConfig | None):
        self.service = service
        self.node = node
        self.span = span
        self.key = caller.name if caller is not None else ""
        self.t0 = time.perf_counter()

    def finished(self, ok: bool, prompt_tokens: int, completion_tokens: int, model: str | None,
                 response_id: str | None, finish_reasons: list[str] | None, output_text: str | None) -> None:
        service, node = self.service, self.node
        service.metrics.upstream_call(node.name, node.backend.label, time.perf_counter() - self.t0, ok=ok)
        service.metrics.tokens(node.name, prompt_tokens, completion_tokens, self.key)
        if self.span is not None:
            service.tracing.record_response(
                self.span, response_model=model, response_id=response_id, input_tokens=prompt_tokens or None,
                output_tokens=completion_tokens or None, finish_reasons=finish_reasons, output_text=output_text,
            )
            if not ok:
                service.tracing.record_error(self.span, 502, "the upstream failed mid-stream", "upstream_error")

    def failed(self, exc: UpstreamError, payload: dict[str, Any], data: dict[str, Any]) -> OpenAIError:
        """Record a call that failed before answering; the error to send the client."""
        service, node = self.service, self.node
        service.metrics.upstream_call(node.name, node.backend.label, time.perf_counter() - self.t0, ok=False)
        service.tracing.record_error(self.span, exc.status, exc.message, exc.code or exc.type)
        return to_openai_error(exc, _prepended(payload, data))


class Completed:
    """A non-streamed chat completion as ``complete_chat`` got it: the node that answered, the body
    as the backend sent it, its one parse, the assistant message (when asked for) and the tokens."""

    __slots__ = ("node", "body", "summary", "answer", "prompt_tokens", "completion_tokens")

    def __init__(self, node: Node, body: bytes, summary: dict[str, Any], answer: dict[str, Any] | None,
                 prompt_tokens: int, completion_tokens: int):
        self.node = node
        self.body = body
        self.summary = summary
        self.answer = answer
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


class OpenedStream:
    """A streamed chat completion whose first chunk is in hand (``open_stream``): ``first``, then the
    rest of ``chunks``. The caller records the outcome with ``finished`` and ends the span with ``close``."""

    __slots__ = ("node", "span", "span_scope", "call", "first", "chunks")

    def __init__(self, node: Node, span: Any, span_scope: Any, call: _BackendCall, first: bytes | None, chunks: Any):
        self.node = node
        self.span = span
        self.span_scope = span_scope
        self.call = call
        self.first = first
        self.chunks = chunks

    def finished(self, ok: bool, prompt_tokens: int, completion_tokens: int, model: str | None = None,
                 response_id: str | None = None, finish_reasons: list[str] | None = None,
                 output_text: str | None = None) -> None:
        self.call.finished(ok, prompt_tokens, completion_tokens, model, response_id, finish_reasons, output_text)

    def close(self, kind: Any = None, exc: BaseException | None = None, tb: Any = None) -> None:
        self.span_scope.__exit__(kind, exc, tb)


class _TurnRecorder(AnswerAssembler):
    """Assembles a streamed answer and appends the turn once the stream is complete."""

    def __init__(self, conversations: Conversations, turn: Turn, tracing: Tracing):
        super().__init__()
        self.conversations = conversations
        self.turn = turn
        self.tracing = tracing

    async def complete(self) -> None:
        with self.tracing.child_span("octogate.history.append"):
            await self.conversations.finish(self.turn, self.answer())


def _prepended(payload: dict[str, Any], data: dict[str, Any]) -> int:
    return len(payload["messages"]) - len(data["messages"])


