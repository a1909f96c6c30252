"""The graph at run time: each node with its live backend, and the resolution of ``model`` to a node.

Nodes that name the same backend share one backend object (one connection pool, one loaded
model). Everything a request needs from its node is computed once here, at start-up, so the hot
path only copies the client's JSON and fills in what the node adds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from octogate.adapters import build_backend
from octogate.adapters.base import Backend
from octogate.adapters.replicas import ReplicaObserver, replica_states
from octogate.core.errors import OpenAIError, UpstreamError
from octogate.core.graph import (
    DEFAULT_OPENAI_API_BASE,
    BackendConfig,
    GraphConfig,
    NodeConfig,
    resolve_secret,
)
from octogate.gateway.serving_agents import AgentTable
from octogate.router_model.protocol import functional_token
from octogate.router_model.toolsets import ToolsetRegistry

_TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")


@dataclass(frozen=True)
class Node:
    name: str
    description: str
    token: int | None
    backend: Backend
    backend_config: BackendConfig
    persona_message: dict[str, str] | None
    params: dict[str, Any] = field(default_factory=dict)
    #: what a trace's backend span says about where this node's requests go
    trace_target: dict[str, Any] = field(default_factory=dict)

    @property
    def functional_token(self) -> str | None:
        return None if self.token is None else functional_token(self.token)

    def build_payload(self, request: dict[str, Any]) -> dict[str, Any]:
        """The client's request as this node's backend should receive it.

        The client's fields win over the node's defaults; the node's persona goes first, before
        any system message of the client's own; ``model`` becomes the upstream's model name.
        """
        payload = dict(request)
        for key, value in self.params.items():
            if key in payload:
                continue
            if key in _TOKEN_LIMIT_FIELDS and any(k in payload for k in _TOKEN_LIMIT_FIELDS):
                continue
            payload[key] = value
        payload["model"] = self.backend_config.upstream_model
        if self.persona_message is not None:
            payload["messages"] = [self.persona_message, *request["messages"]]
        return payload


class NodeTable:
    """Every node of the graph, looked up by the name clients put in ``model``."""

    def __init__(self, graph: GraphConfig, observer: ReplicaObserver | None = None):
        """``observer``: where replica events go (the gateway's metrics)."""
        self.graph = graph
        self.toolsets = ToolsetRegistry.from_graph(graph)
        backends: dict[str, Backend] = {}
        self.nodes: dict[str, Node] = {}
        for cfg in graph.nodes:
            key = graph.backend_key(cfg)
            backend_cfg = graph.backend_of(cfg)
            if key not in backends:
                backends[key] = build_backend(backend_cfg, label=key, toolsets=self.toolsets or None,
                                              observer=observer)
            self.nodes[cfg.name] = _node(cfg, backend_cfg, backends[key])
        self.backends = backends
        self._configs = {cfg.name: cfg for cfg in graph.nodes}
        self.fallbacks = {name: [self.nodes[f] for f in graph.fallback_chain(name)] for name in self.nodes}
        self.agents = AgentTable(graph)  # models that answer by asking these nodes (Husky)

    def resolve(self, model: str) -> Node:
        node = self.nodes.get(model)
        if node is None:
            raise OpenAIError(
                404, f"The model '{model}' does not exist here; GET /v1/models lists the nodes you can use.",
                param="model", code="model_not_found",
            )
        return node

    async def start(self) -> None:
        await asyncio.gather(*(b.start() for b in self.backends.values()))
        # After, not beside, the backends: llama-cpp-python silences a model's loading by pointing the
        # process's stdout/stderr at /dev/null and back, and two loads at once can leave them there.
        await self.toolsets.start()
        await self.agents.start()  # after the toolsets, for the same reason

    async def aclose(self) -> None:
        await asyncio.gather(self.toolsets.aclose(), self.agents.aclose(), *(b.aclose() for b in self.backends.values()),
                             return_exceptions=True)

    async def readiness(self) -> tuple[dict[str, bool], dict[str, str], dict[str, dict[str, str]]]:
        """Each backend: whether it can serve, its status line, and its replicas' states (remote ones)."""
        async def one(backend: Backend) -> tuple[bool, str]:
            try:
                return True, await asyncio.wait_for(backend.check_ready(), timeout=5)
            except UpstreamError as exc:
                return False, exc.message
            except asyncio.TimeoutError:
                return False, "no answer within 5s"

        labels = list(self.backends)
        results = await asyncio.gather(*(one(self.backends[k]) for k in labels))
        replicas = {k: states for k in labels if (states := replica_states(self.backends[k])) is not None}
        return ({k: ok for k, (ok, _) in zip(labels, results)}, {k: status for k, (_, status) in zip(labels, results)},
                replicas)

    def serving_nodes(self, backend_ok: dict[str, bool]) -> list[str]:
        """The nodes that can answer now: their own backend is up, or a fallback's is."""
        def up(node: Node) -> bool:
            return backend_ok.get(self.graph.backend_key(self._configs[node.name]), False)

        return [name for name, node in self.nodes.items() if up(node) or any(up(f) for f in self.fallbacks[name])]


def _node(cfg: NodeConfig, backend_cfg: BackendConfig, backend: Backend) -> Node:
    persona = {"role": "system", "content": cfg.persona.strip()} if cfg.persona else None
    return Node(
        name=cfg.name, description=cfg.description, token=cfg.token, backend=backend,
        backend_config=backend_cfg, persona_message=persona, params=dict(cfg.params),
        trace_target=_trace_target(cfg.name, backend_cfg),
    )


def _trace_target(node: str, cfg: BackendConfig) -> dict[str, Any]:
    address = port = None
    if cfg.kind != "embedded":
        base = resolve_secret(cfg.api_bases[0]) or (DEFAULT_OPENAI_API_BASE if cfg.kind == "openai" else None)
        if base:
            parts = urlsplit(base)
            address, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    return {"operation": "chat", "provider": cfg.provider, "request_model": cfg.upstream_model,
            "server_address": address, "server_port": port, "node": node}
