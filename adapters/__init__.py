"""Backends a node can point at: a direct OpenAI-compatible pass-through, LiteLLM for providers
that need translation, and the embedded CPU model. ``build_backend`` picks one from the config."""

from __future__ import annotations

from typing import Any

from adapters.base import Backend, UpstreamError, UpstreamTimeout
from gateway.graph import BackendConfig


def build_backend(cfg: BackendConfig, label: str, toolsets: Any = None) -> Backend:
    """``toolsets``: the graph's registered toolsets (``function_calling.toolsets.ToolsetRegistry``),
    which the embedded model uses for requests whose tools match one."""
    kind = cfg.kind
    if kind == "openai":
        from adapters.openai_compat import OpenAICompatibleBackend

        return OpenAICompatibleBackend(cfg, label)
    if kind == "embedded":
        from adapters.embedded import EmbeddedBackend

        return EmbeddedBackend(cfg, label, toolsets=toolsets)
    from adapters.litellm_backend import LiteLLMBackend

    return LiteLLMBackend(cfg, label)


__all__ = ["Backend", "UpstreamError", "UpstreamTimeout", "build_backend"]
