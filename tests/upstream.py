"""A scripted OpenAI-compatible server on loopback, for testing proxy mechanics deterministically.

It runs in a thread of the test process (its own event loop), records every request it receives,
and behaves according to the ``model`` it is asked for:

- ``echo``: answers with the text of the last user message; streams it word by word.
- ``ratelimit``: 429 with ``Retry-After: 7``.
- ``broken``: 500 with an OpenAI-style error.
- ``badparam``: 400 with an OpenAI-style error naming ``temperature``.
- ``slow``: waits 5 s before answering (longer than the test graph's timeout).
- ``dies``: streams two chunks, then drops the connection.
- ``endless``: streams a chunk every 50 ms until the client goes away; records that it went.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.loopback import LoopbackServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes = b""


@dataclass
class UpstreamState:
    requests: list[Received] = field(default_factory=list)
    endless_cancelled: threading.Event = field(default_factory=threading.Event)
    endless_chunks_sent: int = 0

    def last(self) -> Received:
        return self.requests[-1]


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                     "logprobs": None}],
        "usage": {"prompt_tokens": 5, "completion_tokens": len(text.split()), "total_tokens": 5 + len(text.split())},
    }


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
    return ""


class ScriptedUpstream(LoopbackServer):
    name = "scripted upstream"

    def __init__(self) -> None:
        super().__init__()
        self.state = UpstreamState()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)

    # ----------------------------------------------------------------- handlers
    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "echo", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw)
        self.state.requests.append(Received(request.path, dict(request.headers), body, raw))
        model = body.get("model", "")
        if model == "ratelimit":
            return web.json_response({"error": {"message": "slow down", "type": "rate_limit_error", "code": "rate_limited"}},
                                     status=429, headers={"Retry-After": "7"})
        if model == "broken":
            return web.json_response({"error": {"message": "the GPU caught fire", "type": "server_error"}}, status=500)
        if model == "badparam":
            return web.json_response({"error": {"message": "temperature too spicy", "type": "invalid_request_error",
                                                "param": "temperature", "code": None}}, status=400)
        if model == "slow":
            await asyncio.sleep(5)
        text = _last_user_text(body)
        if not body.get("stream"):
            return web.json_response(_completion(model, f"echo: {text}"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_chunk(model, {"role": "assistant", "content": ""}))
        if model == "endless":
            try:
                while True:
                    await resp.write(_chunk(model, {"content": "tick "}))
                    self.state.endless_chunks_sent += 1
                    await asyncio.sleep(0.05)
            except (ConnectionResetError, asyncio.CancelledError):
                self.state.endless_cancelled.set()
                raise
        words = f"echo: {text}".split(" ")
        for i, word in enumerate(words):
            await resp.write(_chunk(model, {"content": word if i == 0 else " " + word}))
            if model == "dies" and i == 1:
                request.transport.close()  # drop the connection mid-stream
                return resp
        await resp.write(_chunk(model, {}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1, "model": model,
                     "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)}}
            await resp.write(b"data: " + orjson.dumps(usage) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
