"""Backends that need protocol translation (Anthropic, Bedrock, Vertex, Cohere, ...) go through
LiteLLM's SDK. LiteLLM is imported on first use, so graphs without such nodes never pay its
import time.

OpenAI's custom tools (``tools[i].type: "custom"``, ``tool_choice`` ``custom`` and ``allowed_tools``,
custom calls in the history) reach the provider unchanged where LiteLLM carries them as they are
(``CUSTOM_TOOL_PROVIDERS``; a custom ``tool_choice``, which LiteLLM refuses for every provider, goes in
its ``extra_body``); their calls come back as ``{"type": "custom", "custom": {"name",
"input"}}``, streamed in octogate's chunk shape (no ``type`` in a custom delta, ``core/responses.py``).
Other providers have no custom tools: LiteLLM would turn them into function tools without their
grammar (hosted_vllm), or fail inside its translation (Anthropic: a 502 that cooled the replica down).
They get a 400 naming the field instead (``tool_calls: octogate`` on the backend gives them custom
tools, see docs/tool-calling.md), and ``allowed_tools``, which LiteLLM refuses for them without
naming a field, is sent as what it means: only the listed tools, under its mode.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from octogate.adapters.base import Backend
from octogate.core.errors import PASS_THROUGH_STATUSES, RETRYABLE_STATUSES, UpstreamError, UpstreamTimeout
from octogate.core.graph import BackendConfig, resolve_secret
from octogate.core.responses import ChatCompletion, ChatCompletionChunk, render


#: LiteLLM providers whose chat API takes custom tools, custom and allowed_tools choices and custom calls
#: in the history as OpenAI writes them (tests/test_litellm_custom_tools.py checks each on loopback)
CUSTOM_TOOL_PROVIDERS = frozenset({"openai", "azure", "litellm_proxy"})


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
        self._custom_tools = cfg.provider in CUSTOM_TOOL_PROVIDERS

    async def start(self) -> None:
        self._lib = await asyncio.to_thread(_litellm)

    def _kwargs(self, payload: dict[str, Any], stream: bool, trace_headers: dict[str, str] | None) -> dict[str, Any]:
        if self._custom_tools:
            kwargs = dict(payload)
            choice = kwargs.get("tool_choice")
            if isinstance(choice, dict) and choice.get("type") == "custom":
                # LiteLLM refuses a custom tool_choice whatever the provider; the provider's client sends it as is
                del kwargs["tool_choice"]
                extra = kwargs.get("extra_body")
                kwargs["extra_body"] = {**(extra if isinstance(extra, dict) else {}), "tool_choice": choice}
        else:
            kwargs = without_custom_tools(payload, self.label, self.cfg.provider)
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
                yield _typed_chunk(chunk)
        except UpstreamError:
            raise
        except Exception as exc:
            raise self._translate(exc) from None

    async def check_ready(self) -> str:
        # LiteLLM offers no provider-neutral liveness probe; configuration being loaded is all we know.
        return "configured"


def _typed(model: type[ChatCompletion | ChatCompletionChunk], answer: Any, data: dict[str, Any] | None = None) -> bytes:
    """LiteLLM's answer (or ``data``, its dump) read as the protocol's completion (or chunk) and rendered from it."""
    try:
        return render(model.model_validate(answer.model_dump(exclude_none=True) if data is None else data))
    except ValidationError as exc:
        raise UpstreamError(502, f"The provider's answer is not a chat completion: {exc.errors()[0]['msg']}",
                            type="upstream_error", code="upstream_error") from None


def _typed_chunk(chunk: Any) -> bytes:
    """A streamed chunk; a custom tool call's deltas lose LiteLLM's ``type: "custom"``, which the spec's
    chunk schema does not allow (``core/responses.py``: the ``custom`` key says what the call is)."""
    data = chunk.model_dump(exclude_none=True)
    for choice in data.get("choices") or ():
        for call in (choice.get("delta") or {}).get("tool_calls") or ():
            if "custom" in call:
                call.pop("type", None)
    return _typed(ChatCompletionChunk, chunk, data)


# ------------------------------------------------------------------ providers without custom tools
def without_custom_tools(payload: dict[str, Any], label: str, provider: str) -> dict[str, Any]:
    """The request for a provider that has no custom tools: a 400 naming the first custom tool, custom
    ``tool_choice`` or custom call in the history; ``allowed_tools`` sent as only the listed tools under
    its mode (``auto`` or ``required``), which providers with tool calling all take."""
    tools = payload.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            if isinstance(tool, dict) and tool.get("type") == "custom":
                raise _no_custom_tools(f"tools[{i}].type", label, provider, "custom tools")
    kwargs = dict(payload)
    choice = payload.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "custom":
        raise _no_custom_tools("tool_choice.type", label, provider, "a custom tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        kwargs["tools"], kwargs["tool_choice"] = _allowed_only(choice["allowed_tools"], tools, label, provider)
    for i, message in enumerate(payload.get("messages") or ()):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for j, call in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(call, dict) and call.get("type") == "custom":
                raise _no_custom_tools(f"messages[{i}].tool_calls[{j}].type", label, provider,
                                       "custom tool calls in the history")
    return kwargs


def _no_custom_tools(param: str, label: str, provider: str, what: str) -> UpstreamError:
    return UpstreamError(400, f"Invalid value for '{param}': backend {label} (LiteLLM provider '{provider}') cannot "
                         f"take {what}; OpenAI's custom tools reach only the providers "
                         f"{', '.join(sorted(CUSTOM_TOOL_PROVIDERS))} as they are. Send function tools, or set "
                         "'tool_calls: octogate' on this backend to have octogate make custom tool calls.",
                         param=param, code="unsupported_value")


def _allowed_only(allowed: dict[str, Any], tools: Any, label: str, provider: str) -> tuple[list[Any], str]:
    """``tool_choice: allowed_tools`` (its shape checked by ``core/protocol.py``) as (the listed tools, in
    their order in ``tools``; its mode)."""
    at = "tool_choice.allowed_tools.tools"
    offered = {t["function"].get("name"): t for t in tools or () if t.get("type") == "function"}
    wanted: set[str] = set()
    for j, tool in enumerate(allowed["tools"]):
        kind = tool.get("type")
        if kind == "custom":
            raise _no_custom_tools(f"{at}[{j}].type", label, provider, "custom tools")
        named = tool.get(kind) if kind == "function" else None
        name = named.get("name") if isinstance(named, dict) else None
        if name not in offered:
            raise UpstreamError(400, f"Invalid value for '{at}[{j}]': no function tool named {json.dumps(name)} in "
                                "'tools'.", param=f"{at}[{j}]", code="invalid_value")
        wanted.add(name)
    if not wanted:
        raise UpstreamError(400, f"Invalid value for '{at}': a non-empty array of tools is required.", param=at,
                            code="invalid_value")
    return [tool for name, tool in offered.items() if name in wanted], allowed["mode"]
