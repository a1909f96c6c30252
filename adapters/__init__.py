"""Backends a node can point at: a direct OpenAI-compatible pass-through, LiteLLM for providers
that need translation, and the embedded CPU model. ``build_backend`` picks one from the config."""

from __future__ import annotations

from octogate.adapters.base import Backend
from octogate.core.graph import BackendConfig
from octogate.core.tool_plan import ToolChoosers


def build_backend(cfg: BackendConfig, label: str, toolsets: ToolChoosers | None = None) -> Backend:
    """``toolsets``: the graph's registered toolsets (``octogate.router_model.toolsets.ToolsetRegistry``),
    which the embedded model uses for requests whose tools match one."""
    kind = cfg.kind
    if kind == "embedded":
        from octogate.adapters.embedded import EmbeddedBackend

        return EmbeddedBackend(cfg, label, toolsets=toolsets)  # makes its own tool calls, whatever tool_calls says
    backend: Backend
    if kind == "openai":
        from octogate.adapters.openai_compat import OpenAICompatibleBackend

        backend = OpenAICompatibleBackend(cfg, label)
    else:
        from octogate.adapters.litellm_backend import LiteLLMBackend

        backend = LiteLLMBackend(cfg, label)
    if cfg.tool_calls == "octogate":  # a model without tool calling of its own: octogate makes the calls
        from octogate.adapters.tool_calling.structured import StructuredToolCalls

        backend = StructuredToolCalls(backend)
    return backend


__all__ = ["Backend", "build_backend"]
