"""``model: "octopus"``: the router chooses the node, and the request goes on as if the client had named it.

One routing hop: the last user message is the query; the router engine answers a functional token
(``select``) or a token plus the query rewritten for that specialist (``select+reformat``). A
node with ``reformat: true`` then receives the rewritten query in place of the last user message.
A router that fails, times out or answers nonsense never fails the request: the graph's fallback
node takes it, and the response says so (``x-octogate-fallback``). Decisions are cached in Redis
per graph version, so every replica reuses them and a graph change invalidates them all.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.graph import GraphConfig, RouteCacheConfig, resolve_secret
from gateway.metrics import Metrics
from gateway.nodes import Node, NodeTable
from gateway.tracing import Tracing
from router_model.engine import RouterEngineError
from router_model.protocol import RouterDecision, RouterGrammar, functional_token
from router_model.sglang_engine import SGLangRouterEngine

log = logging.getLogger("octogate.routing")

TOKEN_HEADER = b"x-octogate-token"
FALLBACK_HEADER = b"x-octogate-fallback"


def graph_version(graph: GraphConfig) -> str:
    """A digest of everything a routing decision depends on: nodes, tokens, descriptions, router."""
    parts = {
        "router": graph.router.model_dump(exclude={"cache", "timeout", "api_key"}) if graph.router else None,
        "nodes": [(n.name, n.token, n.description, n.reformat) for n in graph.nodes],
    }
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def last_user_text(messages: list[dict[str, Any]]) -> tuple[int, str]:
    """The index and text of the last user message (-1, "" when there is none)."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return i, content
            if isinstance(content, list):
                return i, " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            return i, ""
    return -1, ""


class RouteCache:
    """Routing decisions in Redis, shared by every replica; any Redis failure is a cache miss."""

    def __init__(self, cfg: RouteCacheConfig, version: str, mode: str):
        self.cfg = cfg
        self.prefix = f"octogate:route:{version}:{mode}:"
        self._redis = Redis.from_url(cfg.resolved_url(), socket_timeout=cfg.op_timeout,
                                     socket_connect_timeout=cfg.op_timeout, retry_on_timeout=False)

    def key(self, query: str) -> str:
        return self.prefix + hashlib.sha256(query.encode("utf-8", "surrogatepass")).hexdigest()

    async def get(self, query: str) -> RouterDecision | None:
        try:
            raw = await asyncio.wait_for(self._redis.get(self.key(query)), self.cfg.op_timeout)
        except (RedisError, OSError, asyncio.TimeoutError):
            return None
        if raw is None:
            return None
        try:
            d = orjson.loads(raw)
            return RouterDecision(token=int(d["token"]), node=str(d["node"]), argument=d.get("argument"))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    async def put(self, query: str, decision: RouterDecision) -> None:
        value = orjson.dumps({"token": decision.token, "node": decision.node, "argument": decision.argument})
        try:
            await asyncio.wait_for(self._redis.set(self.key(query), value, ex=self.cfg.ttl_seconds), self.cfg.op_timeout)
        except (RedisError, OSError, asyncio.TimeoutError):
            pass

    async def aclose(self) -> None:
        await self._redis.aclose()


class Router:
    def __init__(self, graph: GraphConfig, nodes: NodeTable, metrics: Metrics, tracing: Tracing):
        cfg = graph.router
        assert cfg is not None
        self.cfg = cfg
        self.name = cfg.name
        self.nodes = nodes
        self.metrics = metrics
        self.tracing = tracing
        self.grammar = RouterGrammar.from_graph(graph)
        # The router's deadline (asyncio.wait_for below) decides; the engine's own HTTP timeout is a backstop.
        self.engine = SGLangRouterEngine(resolve_secret(cfg.base_url) or cfg.base_url, self.grammar, mode=cfg.mode,
                                         timeout=cfg.timeout + 5, api_key=resolve_secret(cfg.api_key))
        self.fallback = nodes.resolve(cfg.fallback)
        self.version = graph_version(graph)
        self.cache = RouteCache(cfg.cache, self.version, cfg.mode) if cfg.cache else None
        self.reformat_nodes = frozenset(n.name for n in graph.nodes if n.reformat)

    async def start(self) -> None:
        await self.engine.start()

    async def aclose(self) -> None:
        await self.engine.aclose()
        if self.cache is not None:
            await self.cache.aclose()

    async def check_ready(self) -> str:
        try:
            return await self.engine.check_ready()
        except RouterEngineError as exc:
            return f"unavailable ({exc.message}); requests go to '{self.fallback.name}'"

    async def route(self, data: dict[str, Any]) -> tuple[Node, list[tuple[bytes, bytes]]]:
        """Choose the node for this request (rewriting its last user message if the node wants it)."""
        index, query = last_user_text(data["messages"])
        started = time.perf_counter()
        with self.tracing.child_span("octogate.route", {"octogate.route.engine": self.cfg.engine,
                                                        "octogate.route.mode": self.cfg.mode}) as span:
            decision, cached, failure = None, False, None
            if self.cache is not None and query:
                decision = await self.cache.get(query)
                cached = decision is not None
            if decision is None:
                try:
                    decision = await asyncio.wait_for(self.engine.decide(query), self.cfg.timeout)
                except asyncio.TimeoutError:
                    failure = "router_timeout"
                except RouterEngineError as exc:
                    failure = "router_error"
                    log.warning("router failed, using '%s': %s", self.fallback.name, exc.message)
            seconds = time.perf_counter() - started
            if decision is None:
                node, headers = self.fallback, [(FALLBACK_HEADER, failure.encode())]
            else:
                node = self.nodes.resolve(decision.node)
                headers = [(TOKEN_HEADER, functional_token(decision.token).encode())]
                if self.cache is not None and not cached and query:
                    await self.cache.put(query, decision)
            self.metrics.route_decision(node.name, seconds, fallback=decision is None)
            if span is not None:
                span.set_attribute("octogate.route.node", node.name)
                span.set_attribute("octogate.route.fallback", failure or "")
                span.set_attribute("octogate.route.cached", cached)
                span.set_attribute("octogate.route.decision_seconds", seconds)
                if decision is not None:
                    span.set_attribute("octogate.route.token", functional_token(decision.token))
        if decision is not None and decision.argument and index >= 0 and node.name in self.reformat_nodes:
            with self.tracing.child_span("octogate.reformat", {"octogate.node": node.name}):
                messages = list(data["messages"])
                messages[index] = {**messages[index], "content": decision.argument}
                data["messages"] = messages
        return node, headers
