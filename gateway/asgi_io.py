"""Reading a request body and writing JSON or Server-Sent Events over raw ASGI: what every
endpoint served outside FastAPI (chat completions, agents) shares."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from octogate.core.errors import OpenAIError, UpstreamError
from octogate.gateway.conversations import AnswerAssembler

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]
_DONE = b"data: [DONE]\n\n"


class ClientGone(Exception):
    """The client disconnected before its request was read."""


class CancelOnDisconnect:
    """``async with CancelOnDisconnect(receive):`` around work done for a client that may leave: when
    it disconnects, the work is cancelled (a backend call closes its upstream connection; the
    embedded model stops at its next token) and ``ClientGone`` is raised in its place."""

    __slots__ = ("receive", "task", "watcher", "gone")

    def __init__(self, receive: Any):
        self.receive = receive
        self.gone = False

    async def __aenter__(self) -> CancelOnDisconnect:
        self.task = asyncio.current_task()
        self.watcher = asyncio.ensure_future(self._watch())
        return self

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                self.task.cancel()
                return

    async def __aexit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        self.watcher.cancel()
        if self.gone and kind is asyncio.CancelledError:
            self.task.uncancel()
            raise ClientGone()
        return False


def _too_large(limit: int) -> OpenAIError:
    return OpenAIError(413, f"Request body is larger than this server's limit of {limit} bytes.",
                       code="request_too_large")


async def read_body(receive: Any, content_length: bytes | None, limit: int) -> bytes:
    if content_length is not None:
        if not content_length.isdigit():
            raise OpenAIError(400, "Invalid Content-Length header.", code="invalid_request")
        if int(content_length) > limit:
            raise _too_large(limit)
    size, parts = 0, []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        part = message.get("body", b"")
        size += len(part)
        if size > limit:  # chunked uploads carry no Content-Length: count as they arrive
            raise _too_large(limit)
        parts.append(part)
        if not message.get("more_body"):
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def send_response(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Any, err: OpenAIError, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [*JSON_HEADERS, *((k.lower().encode(), v.encode()) for k, v in err.headers.items())]
    if extra:
        own = {name for name, _ in headers}
        headers += [(k, v) for k, v in extra if k not in own]
    await send_response(send, err.status, orjson.dumps(err.body()), headers)


def _tokens(usage: Any) -> tuple[int, int]:
    if not isinstance(usage, dict):
        return 0, 0
    try:
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (TypeError, ValueError):
        return 0, 0


class StreamOutcome:
    __slots__ = ("ok", "client_gone", "prompt_tokens", "completion_tokens")

    def __init__(self) -> None:
        self.ok = True
        self.client_gone = False
        self.prompt_tokens = 0
        self.completion_tokens = 0


async def stream_sse(send: Any, receive: Any, headers: list[tuple[bytes, bytes]], first: bytes | None,
                     chunks: AsyncIterator[bytes], recorder: AnswerAssembler | None = None) -> StreamOutcome:
    """Send chunks as Server-Sent Events until the backend is done or the client goes away.

    An upstream failing mid-stream ends the stream with an OpenAI error event and no [DONE], which
    the OpenAI SDKs raise as APIError. One watcher task waits for the client's disconnect and
    cancels the sending, which closes the backend's stream (and so the upstream connection, or
    the embedded model's generation).
    """
    outcome = StreamOutcome()
    task = asyncio.current_task()
    finished = False

    async def watch_disconnect() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not finished:
                    outcome.client_gone = True
                    task.cancel()
                return

    watcher = asyncio.create_task(watch_disconnect())
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        chunk = first
        try:
            while chunk is not None:
                if chunk.startswith(b'{') and b'"usage"' in chunk:
                    _count_usage(chunk, outcome)
                if recorder is not None:
                    recorder.feed(chunk)
                await send({"type": "http.response.body", "body": b"data: " + chunk + b"\n\n", "more_body": True})
                chunk = await anext(chunks, None)
            if recorder is not None:
                await recorder.complete()  # before [DONE], so the client's next turn sees this one
            tail = _DONE
        except UpstreamError as exc:
            outcome.ok = False
            tail = b"data: " + orjson.dumps(exc.body()) + b"\n\n"
        finished = True
        await send({"type": "http.response.body", "body": tail, "more_body": False})
    except asyncio.CancelledError:
        if not outcome.client_gone:
            raise
        task.uncancel()
    finally:
        finished = True
        watcher.cancel()
        await chunks.aclose()
    return outcome


def _count_usage(chunk: bytes, outcome: StreamOutcome) -> None:
    try:
        usage = orjson.loads(chunk).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return
    if isinstance(usage, dict):
        outcome.prompt_tokens, outcome.completion_tokens = _tokens(usage)
