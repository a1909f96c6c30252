"""Backends that need protocol translation (Anthropic, Bedrock, Vertex, Cohere, ...) go through
LiteLLM's SDK. LiteLLM is imported on first use, so graphs without such nodes never pay its
import time.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from octogate.adapters.base import Backend
from octogate.core.errors import PASS_THROUGH_STATUSES, RETRYABLE_STATUSES, UpstreamError, UpstreamTimeout
from octogate.core.graph import BackendConfig, resolve_secret
from octogate.core.responses import ChatCompletion, ChatCompletionChunk, render


def _litellm():
    # LiteLLM fetches a price list from the internet at import unless told to use its bundled copy.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.drop_params = True  # a provider that lacks a parameter ignores it rather than failing
    litellm.telemetry = False
    return litellm


class LiteLLMBackend(Backend):
    def __init__(self, cfg: BackendConfig, label: str, api_base: str | None = None):
        """``api_base``: this instance's address as written (default: the config's only one)."""
        self.cfg = cfg
        self.label = label
        self.api_base = resolve_secret(api_base if api_base is not None else cfg.api_bases[0])
        self.api_key = resolve_secret(cfg.api_key)
        self._lib: Any = None

    async def start(self) -> None:
        self._lib = await asyncio.to_thread(_litellm)

    def _kwargs(self, payload: dict[str, Any], stream: bool, trace_headers: dict[str, str] | None) -> dict[str, Any]:
        kwargs = dict(payload)
        kwargs["model"] = self.cfg.model  # LiteLLM wants the provider-qualified name
        kwargs["stream"] = stream
        kwargs["timeout"] = self.cfg.timeout
        kwargs["num_retries"] = 0
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.api_key:
            kwargs["api_key"] = self.api_key
        if self.cfg.headers or trace_headers:
            kwargs["extra_headers"] = {**self.cfg.headers, **(trace_headers or {})}
        return kwargs

    def _translate(self, exc: Exception) -> UpstreamError:
        lib = self._lib
        if isinstance(exc, lib.Timeout):
            return UpstreamTimeout(f"Upstream {self.label} timed out: {exc}")
        status = getattr(exc, "status_code", None)
        message = getattr(exc, "message", None) or str(exc)
        retry_after = None
        response = getattr(exc, "response", None)
        if response is not None and getattr(response, "headers", None) is not None:
            retry_after = response.headers.get("retry-after")
        mapped = PASS_THROUGH_STATUSES.get(status, 502) if isinstance(status, int) else 502
        # no status at all: the provider could not be reached
        retryable = status in RETRYABLE_STATUSES if isinstance(status, int) else True
        if mapped == 502:
            return UpstreamError(502, f"Upstream {self.label} failed: {message}", type="upstream_error",
                                 code="upstream_error", retryable=retryable)
        return UpstreamError(mapped, message, retry_after=retry_after, retryable=retryable)

    async def complete(self, payload: dict[str, Any], trace_headers: dict[str, str] | None = None) -> bytes:
        try:
            resp = await self._lib.acompletion(**self._kwargs(payload, stream=False, trace_headers=trace_headers))
        except UpstreamError:
            raise
        except Exception as exc:  # LiteLLM raises its own OpenAI-shaped exception family
            raise self._translate(exc) from None
        return _typed(ChatCompletion, resp)

    async def stream(self, payload: dict[str, Any],
                     trace_headers: dict[str, str] | None = None) -> AsyncIterator[bytes]:
        try:
            chunks = await self._lib.acompletion(**self._kwargs(payload, stream=True, trace_headers=trace_headers))
            async for chunk in chunks:
                yield _typed(ChatCompletionChunk, chunk)
        except UpstreamError:
            raise
        except Exception as exc:
            raise self._translate(exc) from None

    async def check_ready(self) -> str:
        # LiteLLM offers no provider-neutral liveness probe; configuration being loaded is all we know.
        return "configured"


def _typed(model: type[ChatCompletion | ChatCompletionChunk], answer: Any) -> bytes:
    """LiteLLM's answer read as the protocol's completion (or chunk) and rendered from it."""
    try:
        return render(model.model_validate(answer.model_dump(exclude_none=True)))
    except ValidationError as exc:
        raise UpstreamError(502, f"The provider's answer is not a chat completion: {exc.errors()[0]['msg']}",
                            type="upstream_error", code="upstream_error") from None
