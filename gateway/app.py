"""The FastAPI application: routes, lifecycle, and the factory ``octogate serve`` runs."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from gateway.auth import KeyChecker
from gateway.errors import install_error_handlers
from gateway.graph import GraphConfig, load_graph
from gateway.nodes import NodeTable
from gateway.serving_chat import ChatService
from gateway.serving_models import ModelsService

CONFIG_ENV = "OCTOGATE_CONFIG"
DEFAULT_CONFIG = Path("config/default.yaml")
# The default graph shipped beside the packages (a source checkout or an editable install).
_SHIPPED_DEFAULT = Path(__file__).resolve().parent.parent / "config" / "default.yaml"


def default_config_path() -> Path:
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    if DEFAULT_CONFIG.is_file() or not _SHIPPED_DEFAULT.is_file():
        return DEFAULT_CONFIG
    return _SHIPPED_DEFAULT


def _json(status: int, body: object) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def create_app(graph: GraphConfig) -> FastAPI:
    nodes = NodeTable(graph)
    keys = KeyChecker(graph.server.resolved_api_keys())
    chat = ChatService(nodes, graph.server.max_body_bytes)
    models = ModelsService(nodes)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await nodes.start()
        try:
            yield
        finally:
            await nodes.aclose()

    app = FastAPI(title="octogate", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.nodes = nodes
    install_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        keys.check(request)
        return await chat.create(request)

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        keys.check(request)
        return models.list()

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> Response:
        keys.check(request)
        return models.get(model_id)

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json(200, {"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        ready, backends = await nodes.readiness()
        return _json(200 if ready else 503, {"status": "ready" if ready else "unready", "backends": backends})

    return app


def app_from_env() -> FastAPI:
    """The factory uvicorn calls in each worker; the config path arrives through the environment."""
    return create_app(load_graph(default_config_path()))
