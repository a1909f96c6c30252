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
