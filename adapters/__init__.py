"""Backends a node can point at: a direct OpenAI-compatible pass-through, LiteLLM for providers
that need translation, and the embedded CPU model. ``build_backend`` picks one from the config."""

from __future__ import annotations

from urllib.parse import urlsplit

from octogate.adapters.base import Backend
from octogate.adapters.replicas import ReplicaObserver, ReplicatedBackend
from octogate.core.graph import DEFAULT_OPENAI_API_BASE, BackendConfig, resolve_secret
from octogate.core.tool_plan import ToolChoosers


def build_backend(cfg: BackendConfig, label: str, toolsets: ToolChoosers | None = None,
                  observer: ReplicaObserver | None = None) -> Backend:
    """``toolsets``: the graph's registered toolsets (``octogate.router_model.toolsets.ToolsetRegistry``),
    which the embedded model uses for requests whose tools match one. ``observer``: where replica
    events go (the gateway's metrics). Remote backends are always replicated (one replica or more),
    which is what gives them retries and cooldowns."""
    kind = cfg.kind
    if kind == "embedded":
        from octogate.adapters.embedded import EmbeddedBackend

        return EmbeddedBackend(cfg, label, toolsets=toolsets)  # makes its own tool calls, whatever tool_calls says
    if kind == "openai":
        from octogate.adapters.openai_compat import OpenAICompatibleBackend as Remote
    else:
        from octogate.adapters.litellm_backend import LiteLLMBackend as Remote  # type: ignore[assignment]
    replicas = [(replica_address(cfg, written), Remote(cfg, label, api_base=written)) for written in cfg.api_bases]
    backend: Backend = ReplicatedBackend(cfg, label, replicas, observer)
    if cfg.tool_calls == "octogate":  # a model without tool calling of its own: octogate makes the calls
        from octogate.adapters.tool_calling.structured import StructuredToolCalls

        backend = StructuredToolCalls(backend)
    return backend


def replica_address(cfg: BackendConfig, written: str | None) -> str:
    """A replica's name in /readyz and metrics: its URL without credentials or query."""
    url = resolve_secret(written) or (DEFAULT_OPENAI_API_BASE if cfg.kind == "openai" else cfg.provider)
    parts = urlsplit(url)
    if not parts.hostname:
        return url
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}".rstrip("/")


__all__ = ["Backend", "build_backend"]
