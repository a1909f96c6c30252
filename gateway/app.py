"""The ASGI application: routes, lifecycle, and the factory ``octogate serve`` runs.

``POST /v1/chat/completions`` is served by ``ChatService`` directly (the hot path, see
serving_chat.py); every other route, and the lifespan, by a FastAPI app behind it.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from octogate.core.errors import OpenAIError
from octogate.core.graph import GraphConfig, default_config_path, load_graph
from octogate.gateway.auth import KeyChecker
from octogate.gateway.conversations import Conversations
from octogate.gateway.error_handlers import install_error_handlers
from octogate.gateway.metrics import Metrics, mark_worker_dead
from octogate.gateway.nodes import NodeTable
from octogate.gateway.routing import Router
from octogate.gateway.serving_chat import ChatService, send_error
from octogate.gateway.serving_models import ModelsService
from octogate.gateway.tracing import Tracing

CHAT_PATH = "/v1/chat/completions"


def _json(status: int, body: object) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def _route(path: str) -> str:
    """The low-cardinality route of a path, for span names."""
    if path.startswith("/v1/models/"):
        return "/v1/models/{model_id}"
    if path.startswith("/v1/conversations/"):
        return "/v1/conversations/{conversation_id}"
    return path if path in _KNOWN_ROUTES else "(unknown)"


_KNOWN_ROUTES = frozenset({CHAT_PATH, "/v1/models", "/healthz", "/readyz", "/metrics"})


class Gateway:
    """The outermost ASGI app: the chat endpoint first, FastAPI for the rest; a server span around
    each HTTP request when tracing is on (and no extra work at all when it is off)."""

    def __init__(self, api: FastAPI, chat: ChatService, tracing: Tracing):
        self.api = api
        self.chat = chat
        self.tracing = tracing
        self.state = api.state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not self.tracing.enabled or scope["type"] != "http":
            await self._dispatch(scope, receive, send)
            return
        status = 500

        async def send_and_note_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracing.server_span(scope, _route(scope["path"])) as span:
            await self._dispatch(scope, receive, send_and_note_status)
            self.tracing.set_http_status(span, status)

    async def _dispatch(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == CHAT_PATH:
            if scope["method"] == "POST":
                await self.chat(scope, receive, send)
            else:
                await send_error(send, OpenAIError(405, f"Method {scope['method']} is not allowed for {CHAT_PATH}.",
                                                   code="method_not_allowed", headers={"Allow": "POST"}))
        else:
            await self.api(scope, receive, send)


def create_app(graph: GraphConfig) -> Gateway:
    metrics = Metrics()
    nodes = NodeTable(graph, observer=metrics)
    keys = KeyChecker(graph.server.resolved_api_keys())
    conversations = Conversations(graph.history, metrics)
    tracing = Tracing(capture_content=True if graph.server.trace_content else None)  # None: the environment decides
    router = Router(graph, nodes, metrics, tracing) if graph.router else None
    chat = ChatService(nodes, keys, metrics, conversations, tracing, graph.server.max_body_bytes, router)
    models = ModelsService(nodes, router.name if router else None)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await nodes.start()
        await conversations.start()
        if router is not None:
            await router.start()
        try:
            yield
        finally:
            if router is not None:
                await router.aclose()
            await conversations.aclose()
            await nodes.aclose()
            tracing.shutdown()
            mark_worker_dead(os.getpid())

    api = FastAPI(title="octogate", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    api.state.nodes = nodes
    install_error_handlers(api)

    @api.get("/v1/models")
    async def list_models(request: Request) -> Response:
        keys.check(request.headers.get("authorization"))
        return models.list()

    @api.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> Response:
        keys.check(request.headers.get("authorization"))
        return models.get(model_id)

    @api.get("/v1/conversations/{conversation_id}")
    async def get_conversation(conversation_id: str, request: Request) -> Response:
        authorization = request.headers.get("authorization")
        keys.check(authorization)
        return _json(200, await conversations.get(conversation_id, authorization))

    @api.delete("/v1/conversations/{conversation_id}")
    async def delete_conversation(conversation_id: str, request: Request) -> Response:
        authorization = request.headers.get("authorization")
        keys.check(authorization)
        return _json(200, await conversations.delete(conversation_id, authorization))

    @api.get("/healthz")
    async def healthz() -> Response:
        return _json(200, {"status": "ok"})

    @api.get("/readyz")
    async def readyz() -> Response:
        """Whether this process can serve: 503 only when no node can answer (or it is draining).
        One dead backend among several is ``degraded``, listed, and still in rotation: behind a load
        balancer, answering 503 for it would take every replica of the gateway out at once."""
        backend_ok, backends, replicas = await nodes.readiness()
        serving = nodes.serving_nodes(backend_ok)
        history = conversations.status()
        if history == "degraded" and conversations.store is not None and await conversations.store.ping():
            history = "ok"
        failing = sorted(k for k, ok in backend_ok.items() if not ok)
        body: dict[str, Any] = {"status": "ready", "backends": backends, "history": history}
        if replicas:
            body["replicas"] = replicas
        if failing:
            body["failing_backends"] = failing
            body["unavailable_nodes"] = sorted(set(nodes.nodes) - set(serving))
        if router is not None:
            # A router that is down sends requests to the fallback node: degraded, still serving.
            body["router"] = await router.check_ready()
        degraded = failing or history == "degraded" or (router is not None and not body["router"].startswith("ok"))
        if not serving:
            body["status"] = "unready"
        elif degraded:
            body["status"] = "degraded"
        return _json(200 if serving else 503, body)

    @api.get("/metrics")
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return Gateway(api, chat, tracing)


def app_from_env() -> Gateway:
    """The factory uvicorn calls in each worker; the config path arrives through the environment."""
    return create_app(load_graph(default_config_path()))
