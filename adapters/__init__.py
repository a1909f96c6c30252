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
    if kind == "embedded":
        from adapters.embedded import EmbeddedBackend

        return EmbeddedBackend(cfg, label, toolsets=toolsets)  # makes its own tool calls, whatever tool_calls says
    backend: Backend
    if kind == "openai":
        from adapters.openai_compat import OpenAICompatibleBackend

        backend = OpenAICompatibleBackend(cfg, label)
    else:
        from adapters.litellm_backend import LiteLLMBackend

        backend = LiteLLMBackend(cfg, label)
    if cfg.tool_calls == "octogate":  # a model without tool calling of its own: octogate makes the calls
        from adapters.structured_tool_calls import StructuredToolCalls

        backend = StructuredToolCalls(backend)
    return backend


__all__ = ["Backend", "UpstreamError", "UpstreamTimeout", "build_backend"]
