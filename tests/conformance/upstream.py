"""A loopback OpenAI-compatible upstream whose every answer is valid under OpenAI's response schemas
(a completion with ``refusal``, ``annotations``, ``logprobs`` and usage; chunks, then ``[DONE]``). It
records the raw body of each request, so a run can compare what arrived with what was sent."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.loopback import LoopbackServer


class SpecUpstream(LoopbackServer):
    name = "spec-valid upstream"

    def __init__(self) -> None:
        super().__init__()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.received: list[dict[str, Any]] = []

    def last(self) -> dict[str, Any] | None:
        return self.received[-1] if self.received else None

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "loop", "object": "model", "created": 1,
                                                               "owned_by": "tests"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())  # the standard library: integers of any size kept exact
        self.received.append(body)
        n = body.get("n") if isinstance(body.get("n"), int) else 1
        base = {"id": "chatcmpl-loop", "created": 1, "model": "loop", "system_fingerprint": "fp_loopback0"}
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "choices": [
                {"index": i, "message": {"role": "assistant", "content": "loop answer", "refusal": None,
                                         "annotations": []}, "logprobs": None, "finish_reason": "stop"}
                for i in range(n)], "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
            chunk = {**base, "object": "chat.completion.chunk", "choices": choices, **extra}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        for i in range(n):
            await send([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            await send([{"index": i, "delta": {"content": "loop answer"}, "finish_reason": None}])
            await send([{"index": i, "delta": {}, "finish_reason": "stop"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], usage=usage)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
