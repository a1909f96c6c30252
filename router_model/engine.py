"""What the gateway needs from a router, whatever runs the model: one decision per query, or an error.

Two engines implement it: the in-process CPU engine (``embedded_engine.py``, llama.cpp) and the
SGLang client (GPU, ``sglang_engine.py``), so the request path does not care where the router runs.
"""

from __future__ import annotations

from typing import Protocol

from octogate.router_model.protocol import RouterDecision


class RouterEngineError(Exception):
    """No routing decision could be had. ``status`` is the router server's HTTP status, if it sent one.

    The message names the server and the cause (refused, timed out, unreachable, or an answer
    that is not a routing decision) so the gateway can log it as is and fall back to a default node.
    """

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status


class RouterEngine(Protocol):
    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def decide(self, query: str) -> RouterDecision: ...
