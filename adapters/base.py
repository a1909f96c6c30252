"""The one interface every backend implements, and the errors they raise.

A backend receives the final OpenAI chat-completions payload (persona applied, ``model`` already
set to the name the upstream knows) and returns either the response body as JSON bytes or, for
streams, an async iterator of chunk JSON payloads (bytes, without SSE framing).

Streams must fail *before* their first chunk when the upstream refuses the request, so that the
gateway can still answer with a proper HTTP status; after that, errors travel inside the stream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any

from gateway.errors import OpenAIError


class UpstreamError(OpenAIError):
    """The backend failed; ``status`` is what the gateway should answer with."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        retry_after: str | None = None,
    ):
        super().__init__(status, message, type=type, param=param, code=code,
                         headers={"Retry-After": retry_after} if retry_after else None)
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError):
    def __init__(self, message: str):
        super().__init__(504, message, type="timeout_error", code="upstream_timeout")


class Backend(ABC):
    """A place a node's requests can go."""

    #: what /readyz and logs call it (never contains a secret)
    label: str

    async def start(self) -> None:
        """Open pools, load models. Called once per worker before serving."""

    async def aclose(self) -> None:
        """Release everything ``start`` acquired."""

    @abstractmethod
    async def complete(self, payload: dict[str, Any], trace_headers: dict[str, str] | None = None) -> bytes:
        """A non-streaming chat completion: the response body, JSON-encoded.

        ``trace_headers`` (W3C ``traceparent``/``tracestate``) go to remote upstreams so that their
        own spans (vLLM, SGLang) join the caller's trace."""

    @abstractmethod
    def stream(self, payload: dict[str, Any], trace_headers: dict[str, str] | None = None) -> AsyncIterator[bytes]:
        """A streaming chat completion: each chunk's JSON payload."""

    @abstractmethod
    async def check_ready(self) -> str:
        """Raise if the backend cannot serve now; otherwise return a short status word."""
