"""A protocol double of an SGLang server on loopback: its native ``/generate``, ``/health`` and
``/get_model_info``, with no model behind them.

It exists to test the SGLang clients (the router's, Husky's action generator's) without a GPU. It speaks the request and response
shapes of SGLang's documented native API (docs/basic_usage/sampling_params.md and native_api.ipynb
in sgl-project/sglang): ``{"text", "sampling_params"}`` in, ``{"text", "meta_info"}`` out, errors
as ``{"error": {"message"}}`` with HTTP 400. Batches (a list in ``text``) are not modelled: the
client never sends them.

Like a real server with a grammar backend, it refuses a request whose ``sampling_params.regex`` is
missing or does not compile (here: with Python ``re``). Instead of decoding, it answers with the
text its ``script`` holds, and records for each request whether that text matches the request's
regex, so a test can check that the canned decision is one the constraint admits. The script can
also make it fail, stall, or drop the connection. It runs in a thread of the test process with
its own event loop, and records every request and the client connection it came on.
"""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.loopback import LoopbackServer

MODEL_PATH = "octogate/router-double"


@dataclass
class Script:
    """What the next /generate requests get."""

    text: str = "<nexa_0>"           # the "model output", returned as is
    then: list[str] = field(default_factory=list)  # outputs for the next requests, the last one repeated
    finish_reason: dict[str, Any] = field(default_factory=lambda: {"type": "stop", "matched": 2})
    status: int = 200                # anything else: an error body with this status
    error: str = "scripted failure"
    delay: float = 0.0               # seconds to stall before answering
    drop: int = 0                    # close this many connections without answering


@dataclass
class Generated:
    body: dict[str, Any]
    headers: dict[str, str]
    peer: tuple[str, int]
    regex_matched: bool | None  # None when the request was refused before matching


class SGLangDouble(LoopbackServer):
    name = "SGLang double"

    def __init__(self) -> None:
        super().__init__()
        self.script = Script()
        self.requests: list[Generated] = []
        self.peers: set[tuple[str, int]] = set()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/generate", self._generate)
        app.router.add_get("/health", self._health)
        app.router.add_get("/get_model_info", self._model_info)

    def reset(self, **script: Any) -> None:
        with self._lock:
            self.script = Script(**script)
            self.requests.clear()
            self.peers.clear()

    # ----------------------------------------------------------------- handlers
    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _model_info(self, _: web.Request) -> web.Response:
        return web.json_response({"model_path": MODEL_PATH, "tokenizer_path": MODEL_PATH, "is_generation": True,
                                  "preferred_sampling_params": None, "weight_version": "default"})

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername")[:2] if request.transport else ("?", 0)
        body = orjson.loads(await request.read())
        with self._lock:
            script = self.script
            self.peers.add(peer)
            record = Generated(body, dict(request.headers), peer, None)
            self.requests.append(record)
            # the first request gets ``text``, the next ones ``then`` in order, its last one repeated
            answers = [script.text, *script.then]
            answer = answers[min(len(self.requests) - 1, len(answers) - 1)]
            dropping = script.drop > 0
            if dropping:
                script.drop -= 1
        if dropping:
            request.transport.close()
            raise ConnectionResetError("scripted drop")
        if script.delay:
            await asyncio.sleep(script.delay)
        if not isinstance(body.get("text"), str) and not isinstance(body.get("input_ids"), list):
            return _error(400, "Either text or input_ids should be provided.")
        params = body.get("sampling_params")
        if not isinstance(params, dict) or not isinstance(params.get("regex"), str):
            return _error(400, "this double expects sampling_params.regex: the router must decode under its grammar")
        try:
            pattern = re.compile(params["regex"])
        except re.error as exc:
            return _error(400, f"Invalid regex: {exc}")
        record.regex_matched = pattern.fullmatch(answer) is not None
        if script.status != 200:
            return _error(script.status, script.error)
        prompt_tokens = len(body["text"].split()) if "text" in body else len(body["input_ids"])
        return web.json_response({
            "text": answer,
            "meta_info": {
                "id": f"double-{len(self.requests)}",
                "finish_reason": script.finish_reason,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": max(1, len(answer) // 4),
                "cached_tokens": 0,
                "e2e_latency": script.delay,
            },
        })


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)
