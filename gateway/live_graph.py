"""One graph, live: its nodes, router, conversations and chat service, and the FastAPI app that
serves every route but the chat endpoint. A config reload builds a new one beside the old."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import orjson
from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.openapi.utils import get_openapi
from starlette.responses import PlainTextResponse, Response

from octogate.core.graph import GraphConfig
from octogate.core.protocol import ChatCompletionRequest, ModelCard, ModelList
from octogate.core.responses import ChatCompletion, ErrorResponse
from octogate.core.responses_request import ResponsesRequest
from octogate.core.responses_translate import ResponseObject
from octogate.gateway.auth import KeyChecker
from octogate.gateway.conversations import Conversations
from octogate.gateway.error_handlers import install_error_handlers
from octogate.gateway.history import _CONVERSATION_ID
from octogate.gateway.metrics import Metrics
from octogate.gateway.nodes import NodeTable
from octogate.gateway.rate_limits import RateLimiter
from octogate.gateway.response_store import Responses
from octogate.gateway.routing import Router
from octogate.gateway.serving_chat import ChatService
from octogate.gateway.serving_models import ModelsService
from octogate.gateway.serving_responses import ResponsesService
from octogate.gateway.tracing import Tracing

CHAT_PATH = "/v1/chat/completions"  # served by ChatService ahead of the FastAPI app (gateway/app.py)
RESPONSES_PATH = "/v1/responses"  # POST: served by ResponsesService ahead of the FastAPI app


def _json(status: int, body: object) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


# One Server-Sent Event of a streamed answer (OpenAPI before 3.2: the schema of each event).
_SSE_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {
    "type": "string", "description": "a chat.completion.chunk as JSON, an error in OpenAI's envelope if the upstream "
    "fails mid-stream, and `[DONE]` last"}}}


def _chat_schema_route() -> APIRouter:
    """``POST /v1/chat/completions`` and ``POST /v1/responses`` as the OpenAPI document describes them. These routes are handed to
    the schema generator only, never mounted: the Gateway serves the path before the FastAPI app."""
    router = APIRouter()

    @router.post(
        CHAT_PATH, summary="Create a chat completion", operation_id="create_chat_completion",
        responses={200: {"model": ChatCompletion, "description": "The completion; with `stream: true`, "
                         "Server-Sent Events (`data: {chunk}` ... `data: [DONE]`)",
                         "content": {"text/event-stream": {"schema": _SSE_EVENT}}}},
    )
    async def create_chat_completion(
        body: ChatCompletionRequest,
        x_conversation_id: str | None = Header(default=None, description="keep this conversation's turns (history)"),
    ) -> None:
        raise AssertionError("never mounted")  # pragma: no cover

    @router.post(
        RESPONSES_PATH, summary="Create a response (OpenAI's Responses API)", operation_id="create_response",
        responses={200: {"model": ResponseObject, "description": "The response; with `stream: true`, Server-Sent "
                         "Events (`response.created` ... `response.completed`, see docs/responses.md)",
                         "content": {"text/event-stream": {"schema": _SSE_EVENT}}}},
    )
    async def create_response(body: ResponsesRequest) -> None:
        raise AssertionError("never mounted")  # pragma: no cover

    return router


def _exact_int64_bounds(node: Any) -> None:
    """FastAPI's OpenAPI models hold numbers as floats: the int64 bounds of the requests' integers
    (2**63 - 1, -2**63) would read 9.223372036854776e+18, which is 2**63, past int64. Put them back."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("maximum", "minimum") and isinstance(value, float) and abs(value) == 2.0**63:
                node[key] = 2**63 - 1 if value > 0 else -(2**63)
            else:
                _exact_int64_bounds(value)
    elif isinstance(node, list):
        for item in node:
            _exact_int64_bounds(item)


def _openapi(api: FastAPI, models: list[str], api_keys: bool) -> dict[str, Any]:
    """Every route the gateway serves, the chat endpoint included; every error in OpenAI's envelope
    (the ``default`` response: FastAPI's 422 schema is never what a client gets); the bearer key
    where one is needed; the models this graph serves as examples of ``model``."""
    schema = get_openapi(title="octogate", version="1", routes=[*api.routes, *_chat_schema_route().routes],
                         description="An OpenAI-compatible gateway over a graph of language models.")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    error = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in error.pop("$defs", {}).items():
        components[name] = sub
    components["ErrorResponse"] = error
    components["ErrorBody"]["required"] = ["message", "type", "param", "code"]  # always all four, null or not
    # FastAPI's own component names (module-qualified when two models share a name: core/protocol.py's
    # and core/responses_request.py's TextFormat), with the int64 bounds its float-typed models lose put back.
    _exact_int64_bounds(components)
    request = components["ChatCompletionRequest"]["properties"]
    if models:
        request["model"]["examples"] = models
        components["ResponsesRequest"]["properties"]["model"]["examples"] = models
    # A conversation id, wherever it comes from (header, path, metadata), is checked by history.check_conversation_id.
    conversation_id = {"type": "string", "pattern": f"^{_CONVERSATION_ID.pattern}$"}
    for option in request["metadata"].get("anyOf", []):
        if option.get("type") == "object":
            option["properties"] = {"conversation_id": conversation_id}
    security = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    security["adminKey"] = {"type": "http", "scheme": "bearer", "description": "a key of server.admin_keys"}
    if api_keys:
        security["apiKey"] = {"type": "http", "scheme": "bearer", "description": "a key of server.api_keys"}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["default"] = {"description": "An error, in OpenAI's envelope",
                                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
            for parameter in operation.get("parameters", []):
                if parameter["name"] in ("conversation_id", "x-conversation-id"):
                    parameter["schema"] = {**conversation_id, "description": parameter["schema"].get("description", "")}
                elif parameter["name"] == "model_id" and models:
                    parameter["schema"]["examples"] = models
            if path.startswith("/admin/"):
                operation["security"] = [{"adminKey": []}]
            elif path.startswith("/v1/") and api_keys:
                operation["security"] = [{"apiKey": []}]
    return schema


class LiveGraph:
    """Everything that serves one graph; ``in_flight`` counts its requests, so that a reload can
    close the old graph once its last request has finished."""

    def __init__(self, graph: GraphConfig, metrics: Metrics, tracing: Tracing,
                 reload: Callable[[], Awaitable[dict[str, Any]]]):
        self.graph = graph
        self.in_flight = 0
        self.nodes = nodes = NodeTable(graph, observer=metrics)
        keys = KeyChecker(graph.server.key_table())
        self.limits = limits = RateLimiter(graph.server.rate_limits, metrics)
        admin = KeyChecker(graph.server.resolved_admin_keys(), required=True)
        self.conversations = conversations = Conversations(graph.history, metrics)
        self.router = router = Router(graph, nodes, metrics, tracing) if graph.router else None
        self.chat = ChatService(nodes, keys, metrics, conversations, tracing, graph.server.max_body_bytes, router,
                                limits)
        self.responses = ResponsesService(self.chat, stored := Responses(graph.responses))  # POST /v1/responses
        models = ModelsService(nodes, router.name if router else None)

        api = FastAPI(title="octogate", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
        install_error_handlers(api)
        openapi_schema: dict[str, Any] = {}

        def openapi() -> dict[str, Any]:
            if not openapi_schema:
                openapi_schema.update(_openapi(api, list(models.cards), keys.enabled))
            return openapi_schema

        api.openapi = openapi  # type: ignore[method-assign]

        @api.get("/v1/models", responses={200: {"model": ModelList}})
        async def list_models(request: Request) -> Response:
            keys.check(request.headers.get("authorization"))
            return models.list()

        @api.get("/v1/models/{model_id:path}", responses={200: {"model": ModelCard}})
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

        @api.get("/v1/responses/{response_id}")
        async def get_response(response_id: str, request: Request) -> Response:
            authorization = request.headers.get("authorization")
            keys.check(authorization)
            return _json(200, (await stored.load(response_id, authorization))["response"])

        @api.delete("/v1/responses/{response_id}")
        async def delete_response(response_id: str, request: Request) -> Response:
            authorization = request.headers.get("authorization")
            keys.check(authorization)
            return _json(200, await stored.delete(response_id, authorization))

        @api.get("/v1/responses/{response_id}/input_items")
        async def list_input_items(response_id: str, request: Request, after: str | None = None,
                                   limit: int = Query(default=20, ge=1, le=100),
                                   order: Literal["asc", "desc"] = "desc") -> Response:
            authorization = request.headers.get("authorization")
            keys.check(authorization)
            return _json(200, await stored.input_items(response_id, authorization, after, limit, order))

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
            if nodes.agents:  # an agent whose action generator is down still answers: degraded
                body["agents"] = {name: await agent.check_ready() for name, agent in nodes.agents.agents.items()}
            if limits.enabled:
                body["rate_limits"] = limits.status  # "degraded": Redis is down and limits fail open
            degraded = (failing or history == "degraded" or limits.status == "degraded"
                        or (router is not None and not body["router"].startswith("ok"))
                        or any(not status.startswith("ok") for status in body.get("agents", {}).values()))
            if not serving:
                body["status"] = "unready"
            elif degraded:
                body["status"] = "degraded"
            return _json(200 if serving else 503, body)

        @api.get("/metrics", response_class=PlainTextResponse)
        async def prometheus_metrics() -> Response:
            body, content_type = metrics.render()
            return Response(body, media_type=content_type)

        @api.post("/admin/reload")
        async def admin_reload(request: Request) -> Response:
            admin.check(request.headers.get("authorization"))
            return _json(200, await reload())
        self.api = api

    async def start(self) -> None:
        await self.limits.start()
        await self.nodes.start()
        await self.conversations.start()
        await self.responses.start()
        if self.router is not None:
            await self.router.start()

    async def aclose(self) -> None:
        if self.router is not None:
            await self.router.aclose()
        await self.conversations.aclose()
        await self.responses.aclose()
        await self.nodes.aclose()
        await self.limits.aclose()
