"""POST /v1/chat/completions: read, validate, choose a node, dispatch, answer (JSON or SSE).

The request path is: body (size-limited) -> JSON -> schema check -> node -> payload -> backend.
"Choose a node" is ``NodeTable.resolve`` today (the client pins a node by name); the router
plugs in at that one step.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response

from adapters import UpstreamError
from gateway.errors import OpenAIError, from_validation_error
from gateway.nodes import NodeTable
from gateway.protocol import ChatCompletionRequest

NODE_HEADER = "x-octogate-node"
_DONE = b"data: [DONE]\n\n"


_MESSAGE_PARAM = re.compile(r"^messages\[(\d+)\]")


def to_openai_error(exc: UpstreamError, prepended: int = 0) -> OpenAIError:
    """The client's view of a backend error. ``prepended`` messages (a persona) were added in front of the
    client's, so a param naming ``messages[i]`` is shifted back to the client's own numbering."""
    headers = {"Retry-After": exc.retry_after} if exc.retry_after else None
    param = exc.param
    if prepended and param:
        match = _MESSAGE_PARAM.match(param)
        if match and int(match[1]) >= prepended:
            param = f"messages[{int(match[1]) - prepended}]{param[match.end():]}"
    return OpenAIError(exc.status, exc.message, type=exc.type, param=param, code=exc.code, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise OpenAIError(400, "Invalid Content-Length header.", code="invalid_request")
        if int(length) > limit:
            raise _too_large(limit)
        return await request.body()
    size, parts = 0, []
    async for part in request.stream():  # chunked upload: count as it arrives
        size += len(part)
        if size > limit:
            raise _too_large(limit)
        parts.append(part)
    return b"".join(parts)


def _too_large(limit: int) -> OpenAIError:
    return OpenAIError(413, f"Request body is larger than this server's limit of {limit} bytes.",
                       code="request_too_large")


def parse_request(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise OpenAIError(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    return data


class ChatService:
    def __init__(self, nodes: NodeTable, max_body_bytes: int):
        self.nodes = nodes
        self.max_body_bytes = max_body_bytes

    async def create(self, request: Request) -> Response:
        data = parse_request(await read_body(request, self.max_body_bytes))
        node = self.nodes.resolve(data["model"])
        payload = node.build_payload(data)
        prepended = len(payload["messages"]) - len(data["messages"])
        headers = {NODE_HEADER: node.name}
        if data.get("stream"):
            return await self._stream(node.backend.stream(payload), headers, prepended)
        try:
            body = await node.backend.complete(payload)
        except UpstreamError as exc:
            raise to_openai_error(exc, prepended) from None
        return Response(body, media_type="application/json", headers=headers)

    async def _stream(self, chunks: AsyncIterator[bytes], headers: dict[str, str], prepended: int) -> Response:
        # Wait for the first chunk before answering, so a refused request still gets its HTTP status.
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = None
        except UpstreamError as exc:
            raise to_openai_error(exc, prepended) from None
        return EventSourceResponse(
            _sse_events(first, chunks), headers={**headers, "Cache-Control": "no-cache"}, ping=15, sep="\n"
        )


async def _sse_events(first: bytes | None, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Frame chunks as SSE. An upstream failing mid-stream ends it with an error event (no [DONE]),
    which OpenAI SDKs raise as an APIError. A client disconnect cancels this generator, and with it
    the backend's stream."""
    try:
        if first is not None:
            yield b"data: " + first + b"\n\n"
        async for chunk in chunks:
            yield b"data: " + chunk + b"\n\n"
    except UpstreamError as exc:
        yield b"data: " + orjson.dumps(to_openai_error(exc).body()) + b"\n\n"
        return
    finally:
        await chunks.aclose()
    yield _DONE
