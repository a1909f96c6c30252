"""The ASGI application: the chat endpoint, every other route, the lifespan, and config reload.

``POST /v1/chat/completions`` is served by ``ChatService`` directly (the hot path, see
serving_chat.py); every other route by the live graph's FastAPI app (live_graph.py). SIGHUP or
``POST /admin/reload`` re-reads the graph file: a valid graph is started beside the old one and
swapped in at once (requests in flight finish on the old one, which closes when they are done); an
invalid one is refused with the errors ``check-config`` prints, and the old graph keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

from octogate.core.errors import OpenAIError
from octogate.core.graph import ConfigError, GraphConfig, default_config_path, load_graph
from octogate.gateway.live_graph import LiveGraph
from octogate.gateway.metrics import Metrics, mark_worker_dead
from octogate.gateway.serving_chat import send_error
from octogate.gateway.tracing import Tracing
from octogate.router_model.toolsets import ToolsetError, ToolsetRegistry

CHAT_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"  # POST: gateway/serving_responses.py; GET/DELETE /v1/responses/{id}: FastAPI
log = logging.getLogger("octogate")


def _route(path: str) -> str:
    """The low-cardinality route of a path, for span names."""
    if path.startswith("/v1/models/"):
        return "/v1/models/{model_id}"
    if path.startswith("/v1/conversations/"):
        return "/v1/conversations/{conversation_id}"
    if path.startswith("/v1/responses/"):
        return "/v1/responses/{response_id}/input_items" if path.endswith("/input_items") else "/v1/responses/{response_id}"
    return path if path in _KNOWN_ROUTES else "(unknown)"


_KNOWN_ROUTES = frozenset({CHAT_PATH, RESPONSES_PATH, "/v1/models", "/healthz", "/readyz", "/metrics", "/admin/reload"})


class Gateway:
    """The outermost ASGI app: the lifespan, the chat endpoint first and the live graph's FastAPI
    app for the rest; a server span around each HTTP request when tracing is on (and no extra work
    at all when it is off)."""

    def __init__(self, graph: GraphConfig, config_path: Path | None = None):
        self.config_path = config_path
        self.metrics = Metrics()
        self.tracing = Tracing(capture_content=True if graph.server.trace_content else None)  # None: the environment decides
        self.live = LiveGraph(graph, self.metrics, self.tracing, self.reload)
        self._reloading = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        live = self.live
        live.in_flight += 1
        try:
            if not self.tracing.enabled or scope["type"] != "http":
                await self._dispatch(live, scope, receive, send)
                return
            status = 500

            async def send_and_note_status(message: dict[str, Any]) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            with self.tracing.server_span(scope, _route(scope["path"])) as span:
                await self._dispatch(live, scope, receive, send_and_note_status)
                self.tracing.set_http_status(span, status)
        finally:
            live.in_flight -= 1

    @staticmethod
    async def _dispatch(live: LiveGraph, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == CHAT_PATH:
            if scope["method"] == "POST":
                await live.chat(scope, receive, send)
            else:
                await send_error(send, OpenAIError(405, f"Method {scope['method']} is not allowed for {CHAT_PATH}.",
                                                   code="method_not_allowed", headers={"Allow": "POST"}))
        elif scope["type"] == "http" and scope["path"] == RESPONSES_PATH:
            if scope["method"] == "POST":
                await live.responses(scope, receive, send)
            else:
                await send_error(send, OpenAIError(405, f"Method {scope['method']} is not allowed for {RESPONSES_PATH}.",
                                                   code="method_not_allowed", headers={"Allow": "POST"}))
        else:
            await live.api(scope, receive, send)

    # ------------------------------------------------------------------ lifespan
    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.live.start()
                    self._watch_sighup()
                except Exception as exc:  # noqa: BLE001 - uvicorn prints it and exits
                    await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.live.aclose()
                for task in list(self._retired):
                    task.cancel()
                self.tracing.shutdown()
                mark_worker_dead(os.getpid())
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _watch_sighup(self) -> None:
        if self.config_path is None:
            return
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._on_sighup()))
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            log.info("SIGHUP reload unavailable in this process; POST /admin/reload still works")

    async def _on_sighup(self) -> None:
        try:
            await self.reload()
        except OpenAIError:
            pass  # logged by reload(); the running graph keeps serving

    # ------------------------------------------------------------------ reload
    async def reload(self) -> dict[str, Any]:
        """Re-read the graph file and swap it in; raise a 400 with check-config's errors if it is invalid."""
        if self.config_path is None:
            raise OpenAIError(409, "This gateway was not started from a graph file; there is nothing to re-read.",
                              code="reload_unavailable")
        async with self._reloading:
            try:
                graph = load_graph(self.config_path)
                ToolsetRegistry.from_graph(graph)  # the same checks as check-config
            except (ConfigError, ToolsetError) as exc:
                log.error("config reload refused; the running graph keeps serving:\n%s", exc)
                raise OpenAIError(400, f"The graph file is invalid; the running graph keeps serving.\n{exc}",
                                  code="invalid_config") from None
            fresh = LiveGraph(graph, self.metrics, self.tracing, self.reload)
            try:
                await fresh.start()
            except Exception as exc:  # noqa: BLE001 - a backend that cannot start: keep the old graph
                await fresh.aclose()
                log.error("config reload failed to start; the running graph keeps serving: %s", exc)
                raise OpenAIError(500, f"The new graph could not start ({type(exc).__name__}: {exc}); the running "
                                  "graph keeps serving.", code="reload_failed") from None
            old, self.live = self.live, fresh
            task = asyncio.ensure_future(self._retire(old, graph.server.shutdown_grace_seconds))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
            log.info("config reloaded from %s: %d nodes", self.config_path, len(graph.nodes))
            return {"status": "reloaded", "config": str(self.config_path), "nodes": [n.name for n in graph.nodes]}

    @staticmethod
    async def _retire(old: LiveGraph, grace: float) -> None:
        """Close a replaced graph once its requests are done (or after the shutdown grace at most)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(grace, 1.0)
        while old.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await old.aclose()


def create_app(graph: GraphConfig, config_path: Path | None = None) -> Gateway:
    return Gateway(graph, config_path)


def app_from_env() -> Gateway:
    """The factory uvicorn calls in each worker; the config path arrives through the environment."""
    path = default_config_path()
    return create_app(load_graph(path), path.resolve())
