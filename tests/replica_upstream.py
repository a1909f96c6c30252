"""One replica of an OpenAI-compatible upstream, as a process of its own, told how to fail.

``python -m tests.replica_upstream PORT NAME`` serves ``/v1/chat/completions`` (answers and
streams ``NAME: <last user text>``) and ``/v1/models``. ``POST /control {"mode": ..., "times": N}``
sets how the next N chat calls (all, without ``times``) are answered:

- ``ok``; ``error500``; ``error400`` (the request's own fault: never retried);
- ``ratelimit`` (429 with ``Retry-After``, ``retry_after`` seconds, default 1);
- ``reset`` (the connection is closed before any response byte); ``hang`` (no answer for 30 s);
- ``dies`` (a stream sends two chunks, then the connection drops).

``GET /stats`` gives the chat calls received and when (``time.time()``), in order. Killing the
process is the test of a replica that dies.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import orjson
from aiohttp import web


class Replica:
    def __init__(self, name: str):
        self.name = name
        self.mode = "ok"
        self.times: int | None = None  # None: every call
        self.retry_after = 1
        self.calls: list[dict[str, Any]] = []

    def next_mode(self) -> str:
        if self.times is None:
            return self.mode
        if self.times <= 0:
            return "ok"
        self.times -= 1
        return self.mode

    async def control(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.mode = body.get("mode", "ok")
        self.times = body.get("times")
        self.retry_after = body.get("retry_after", 1)
        return web.json_response({"mode": self.mode, "times": self.times})

    async def stats(self, _: web.Request) -> web.Response:
        return web.json_response({"name": self.name, "calls": self.calls})

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        mode = self.next_mode()
        messages = body.get("messages") or [{}]
        self.calls.append({"at": time.time(), "mode": mode, "stream": bool(body.get("stream")),
                           "first_message": messages[0].get("content"), "model": body.get("model")})
        if mode == "error500":
            return web.json_response({"error": {"message": f"{self.name} is on fire", "type": "server_error"}},
                                     status=500)
        if mode == "error400":
            return web.json_response({"error": {"message": "bad temperature", "type": "invalid_request_error",
                                                "param": "temperature", "code": None}}, status=400)
        if mode == "ratelimit":
            return web.json_response({"error": {"message": "slow down", "type": "rate_limit_error"}}, status=429,
                                     headers={"Retry-After": str(self.retry_after)})
        if mode == "reset":
            request.transport.close()
            raise ConnectionResetError("reset by the test")
        if mode == "hang":
            await asyncio.sleep(30)
        text = f"{self.name}: " + next((m.get("content") for m in reversed(body.get("messages", []))
                                         if m.get("role") == "user"), "")
        usage = {"prompt_tokens": 5, "completion_tokens": len(text.split()), "total_tokens": 5 + len(text.split())}
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-r", "object": "chat.completion", "created": 1, "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                             "logprobs": None}], "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            return b"data: " + orjson.dumps({"id": "chatcmpl-r", "object": "chat.completion.chunk", "created": 1,
                                              "model": body.get("model"), "choices": [
                                                  {"index": 0, "delta": delta, "finish_reason": finish}], **extra}) + b"\n\n"

        await resp.write(chunk({"role": "assistant", "content": ""}))
        for i, word in enumerate(text.split(" ")):
            await resp.write(chunk({"content": word if i == 0 else " " + word}))
            if mode == "dies" and i == 0:
                await asyncio.sleep(0.05)
                request.transport.close()
                return resp
        await resp.write(chunk({}, "stop", usage=usage))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def main() -> None:
    port, name = int(sys.argv[1]), sys.argv[2]
    replica = Replica(name)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", replica.chat)
    app.router.add_get("/v1/models", replica.models)
    app.router.add_post("/control", replica.control)
    app.router.add_get("/stats", replica.stats)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
