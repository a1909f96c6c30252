"""Router engines built from a graph's ``router:`` blocks: the embedded llama.cpp engine or the
SGLang client, the grammar of the choices they decide among (``RoutingPoint``), and the digest of
an embedded router's files (what cached decisions depend on)."""

from __future__ import annotations

from octogate.core.graph import GraphConfig, RouterEngineConfig, resolve_secret
from octogate.router_model.engine import RouterEngine
from octogate.router_model.protocol import RouterGrammar
from octogate.router_model.sglang_engine import PROMPT_TEMPLATES, SGLangRouterEngine


def router_files_digest(cfg: RouterEngineConfig | None) -> str | None:
    """The digest of an embedded router's files (None for SGLang, or if they cannot be read)."""
    if cfg is None or cfg.engine != "embedded":
        return None
    from octogate.router_model.artifact import artifact_digest
    from octogate.router_model.embedded_engine import DEFAULT_ROUTER_DIR

    return artifact_digest(cfg.path or DEFAULT_ROUTER_DIR)


class RoutingPoint:
    """A place where a routing decision is made: a router engine and the grammar of its choices."""

    def __init__(self, name: str, grammar: RouterGrammar, cfg: RouterEngineConfig):
        self.name = name
        self.grammar = grammar
        self.mode = cfg.mode
        self.timeout = cfg.timeout
        self.engine = build_engine(cfg, grammar)

    @classmethod
    def for_graph(cls, graph: GraphConfig) -> RoutingPoint:
        """The graph's own router: its ``router:`` block, choosing among every node with a token."""
        cfg = graph.router
        assert cfg is not None
        return cls(cfg.name, RouterGrammar.from_graph(graph), cfg)


def build_engine(cfg: RouterEngineConfig, grammar: RouterGrammar) -> RouterEngine:
    if cfg.engine == "embedded":
        from octogate.router_model.embedded_engine import (
            EmbeddedRouterEngine,  # loads llama.cpp only when used
        )

        # An argument still being written at 90% of the deadline is dropped, so the choice beats the timeout.
        return EmbeddedRouterEngine(grammar, router_path=cfg.path, mode=cfg.mode, n_threads=cfg.threads,
                                    time_limit=0.9 * cfg.timeout, prior_correction=cfg.prior_correction)
    base_url = resolve_secret(cfg.base_url) or cfg.base_url
    # The deadline (asyncio.wait_for with cfg.timeout) decides; the engine's own HTTP timeout is a backstop.
    return SGLangRouterEngine(base_url, grammar, mode=cfg.mode, timeout=cfg.timeout + 5,
                              api_key=resolve_secret(cfg.api_key), prompt_template=PROMPT_TEMPLATES[cfg.prompt_template])
