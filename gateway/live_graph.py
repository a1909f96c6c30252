"""One graph, live: its nodes, router, conversations and chat service, and the FastAPI app that
serves every route but the chat endpoint. A config reload builds a new one beside the old."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from octogate.core.graph import GraphConfig
from octogate.gateway.auth import KeyChecker
from octogate.gateway.conversations import Conversations
from octogate.gateway.error_handlers import install_error_handlers
from octogate.gateway.metrics import Metrics
from octogate.gateway.nodes import NodeTable
from octogate.gateway.routing import Router
from octogate.gateway.serving_chat import ChatService
from octogate.gateway.serving_models import ModelsService
from octogate.gateway.tracing import Tracing


def _json(status: int, body: object) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


class LiveGraph:
    """Everything that serves one graph; ``in_flight`` counts its requests, so that a reload can
    close the old graph once its last request has finished."""

    def __init__(self, graph: GraphConfig, metrics: Metrics, tracing: Tracing,
                 reload: Callable[[], Awaitable[dict[str, Any]]]):
        self.graph = graph
        self.in_flight = 0
        self.nodes = nodes = NodeTable(graph, observer=metrics)
        keys = KeyChecker(graph.server.resolved_api_keys())
        admin = KeyChecker(graph.server.resolved_admin_keys(), required=True)
        self.conversations = conversations = Conversations(graph.history, metrics)
        self.router = router = Router(graph, nodes, metrics, tracing) if graph.router else None
        self.chat = ChatService(nodes, keys, metrics, conversations, tracing, graph.server.max_body_bytes, router)
        models = ModelsService(nodes, router.name if router else None)

        api = FastAPI(title="octogate", docs_url=None, redoc_url=None, openapi_url=None)
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

        @api.post("/admin/reload")
        async def admin_reload(request: Request) -> Response:
            admin.check(request.headers.get("authorization"))
            return _json(200, await reload())
        self.api = api

    async def start(self) -> None:
        await self.nodes.start()
        await self.conversations.start()
        if self.router is not None:
            await self.router.start()

    async def aclose(self) -> None:
        if self.router is not None:
            await self.router.aclose()
        await self.conversations.aclose()
        await self.nodes.aclose()
