"""``model: "octopus"``: the router chooses the node, and the request goes on as if the client had named it.

One routing hop: the last user message is the query; the router engine answers a functional token
(``select``) or a token plus the query rewritten for that specialist (``select+reformat``). A
node with ``reformat: true`` then receives the rewritten query in place of the last user message.
A router that fails, times out or answers nonsense never fails the request: the graph's fallback
node takes it, and the response says so (``x-octogate-fallback``). Decisions are cached in Redis
per graph version, so every replica reuses them and a graph change invalidates them all; for an
embedded router the version includes its files, so a retrained router does not inherit them either.
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

from octogate.core.graph import (
    GraphConfig,
    RouteCacheConfig,
)
from octogate.core.messages import content_text
from octogate.gateway.metrics import Metrics
from octogate.gateway.nodes import Node, NodeTable
from octogate.gateway.tracing import Tracing
from octogate.router_model.engine import RouterEngineError
from octogate.router_model.engine_factory import RoutingPoint, router_files_digest
from octogate.router_model.protocol import (
    RouterDecision,
    RouterGrammar,
    functional_token,
)

log = logging.getLogger("octogate.routing")

TOKEN_HEADER = b"x-octogate-token"
FALLBACK_HEADER = b"x-octogate-fallback"
ROUTE_HEADER = b"x-octogate-route"  # the nodes passed through, when routing took more than one hop


def graph_version(graph: GraphConfig) -> str:
    """A digest of everything a routing decision depends on: nodes, tokens, descriptions, router
    settings and, for embedded routers, the trained router itself."""
    parts = {
        "router": graph.router.model_dump(exclude={"cache", "timeout", "api_key"}) if graph.router else None,
        "router_files": router_files_digest(graph.router),
        "nodes": [(n.name, n.token, n.description, n.reformat, n.neighbours,
                   n.router.model_dump(exclude={"timeout", "api_key"}) if n.router else None,
                   router_files_digest(n.router)) for n in graph.nodes],
    }
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def last_user_text(messages: list[dict[str, Any]]) -> tuple[int, str]:
    """The index and text of the last user message (-1, "" when there is none)."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.get("role") == "user":
            content = m.get("content")
            return i, content_text(content, " ") if isinstance(content, (str, list)) else ""
    return -1, ""


class RouteCache:
    """Routing decisions in Redis, shared by every replica; any Redis failure is a cache miss."""

    def __init__(self, cfg: RouteCacheConfig, version: str, mode: str):
        self.cfg = cfg
        self.prefix = f"octogate:route:{version}:{mode}:"
        self._redis = Redis.from_url(cfg.resolved_url(), socket_timeout=cfg.op_timeout,
                                     socket_connect_timeout=cfg.op_timeout, retry_on_timeout=False)

    def key(self, point: str, query: str) -> str:
        """``point`` is where the decision is made: the graph's router, or a node with its own."""
        return f"{self.prefix}{point}:" + hashlib.sha256(query.encode("utf-8", "surrogatepass")).hexdigest()

    async def get(self, point: str, query: str) -> RouterDecision | None:
        try:
            raw = await asyncio.wait_for(self._redis.get(self.key(point, query)), self.cfg.op_timeout)
        except (RedisError, OSError, asyncio.TimeoutError):
            return None
        if raw is None:
            return None
        try:
            d = orjson.loads(raw)
            return RouterDecision(token=int(d["token"]), node=str(d["node"]), argument=d.get("argument"))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    async def put(self, point: str, query: str, decision: RouterDecision) -> None:
        value = orjson.dumps({"token": decision.token, "node": decision.node, "argument": decision.argument})
        try:
            await asyncio.wait_for(self._redis.set(self.key(point, query), value, ex=self.cfg.ttl_seconds),
                                   self.cfg.op_timeout)
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
        # Where decisions are made: the graph's router over every node with a token, and each node
        # with a router of its own over its neighbours.
        self.points: dict[str, RoutingPoint] = {cfg.name: RoutingPoint.for_graph(graph)}
        tokens = {n.name: n.token for n in graph.nodes}
        for n in graph.nodes:
            if n.router is not None:
                grammar = RouterGrammar([(tokens[name], name) for name in n.neighbours])
                self.points[n.name] = RoutingPoint(n.name, grammar, n.router)
        self.fallback = nodes.resolve(cfg.fallback)
        self.version = graph_version(graph)
        self.cache = RouteCache(cfg.cache, self.version, cfg.mode) if cfg.cache else None
        self.reformat_nodes = frozenset(n.name for n in graph.nodes if n.reformat)

    async def start(self) -> None:
        await asyncio.gather(*(p.engine.start() for p in self.points.values()))

    async def aclose(self) -> None:
        await asyncio.gather(*(p.engine.aclose() for p in self.points.values()))
        if self.cache is not None:
            await self.cache.aclose()

    async def check_ready(self) -> str:
        try:
            return await self.points[self.name].engine.check_ready()
        except RouterEngineError as exc:
            return f"unavailable ({exc.message}); requests go to '{self.fallback.name}'"

    async def route(self, data: dict[str, Any]) -> tuple[Node, list[tuple[bytes, bytes]]]:
        """Choose the node for this request, hop by hop while the chosen node has a router of its own
        (at most ``max_hops`` decisions), rewriting the last user message if the final node wants it."""
        index, query = last_user_text(data["messages"])
        point, path, decision, failure = self.points[self.name], [], None, None
        for hop in range(self.cfg.max_hops):
            decision, failure = await self._decide(point, query, hop)
            if decision is None:
                break
            path.append(decision.node)
            if decision.node not in self.points or decision.node == point.name:
                break
            point = self.points[decision.node]
        if decision is None:
            node, headers = self.fallback, [(FALLBACK_HEADER, failure.encode())]
        else:
            node = self.nodes.resolve(decision.node)
            headers = [(TOKEN_HEADER, functional_token(decision.token).encode())]
            if len(path) > 1:
                headers.append((ROUTE_HEADER, ">".join(path).encode()))
        if decision is not None and decision.argument and index >= 0 and node.name in self.reformat_nodes:
            with self.tracing.child_span("octogate.reformat", {"octogate.node": node.name}):
                messages = list(data["messages"])
                messages[index] = {**messages[index], "content": decision.argument}
                data["messages"] = messages
        return node, headers

    async def _decide(self, point: RoutingPoint, query: str, hop: int) -> tuple[RouterDecision | None, str | None]:
        """One routing hop: a cached or fresh decision at ``point``, or the reason there is none."""
        started = time.perf_counter()
        with self.tracing.child_span("octogate.route", {"octogate.route.engine": self.cfg.engine,
                                                        "octogate.route.mode": point.mode,
                                                        "octogate.route.point": point.name,
                                                        "octogate.route.hop": hop}) as span:
            decision, cached, failure = None, False, None
            if self.cache is not None and query:
                decision = await self.cache.get(point.name, query)
                cached = decision is not None
            if decision is None:
                try:
                    decision = await asyncio.wait_for(point.engine.decide(query), point.timeout)
                except asyncio.TimeoutError:
                    failure = "router_timeout"
                except RouterEngineError as exc:
                    failure = "router_error"
                    log.warning("router '%s' failed, using '%s': %s", point.name, self.fallback.name, exc.message)
                if decision is not None and self.cache is not None and query:
                    await self.cache.put(point.name, query, decision)
            seconds = time.perf_counter() - started
            chosen = decision.node if decision is not None else self.fallback.name
            self.metrics.route_decision(chosen, seconds, fallback=decision is None)
            if span is not None:
                span.set_attribute("octogate.route.node", chosen)
                span.set_attribute("octogate.route.fallback", failure or "")
                span.set_attribute("octogate.route.cached", cached)
                span.set_attribute("octogate.route.decision_seconds", seconds)
                if decision is not None:
                    span.set_attribute("octogate.route.token", functional_token(decision.token))
        return decision, failure
