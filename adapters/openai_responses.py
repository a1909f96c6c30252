"""``responses: native``: an OpenAI-compatible server's own ``/v1/responses`` (vLLM, SGLang, OpenAI).

The same pooled pass-through as chat completions (``openai_compat``), posting to ``{api_base}/responses``
instead; replicas, retries and cooldowns come from ``replicas.py`` as for every remote backend. A
stream's events are yielded as their JSON payloads; it ends with the upstream's closing event
(``response.completed``, ``.incomplete`` or ``.failed``) or a ``[DONE]``, whichever it sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from octogate.adapters.base import Backend
from octogate.adapters.openai_compat import OpenAICompatibleBackend
from octogate.adapters.replicas import ReplicaObserver, ReplicatedBackend
from octogate.core.backend_config import BackendConfig
from octogate.core.errors import UpstreamError, UpstreamTimeout

_CLOSING = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')


class OpenAIResponsesBackend(OpenAICompatibleBackend):
    def __init__(self, cfg: BackendConfig, label: str, api_base: str | None = None):
        super().__init__(cfg, label, api_base=api_base)
        self.url = f"{self.base_url}/responses"

    async def stream(self, payload: dict[str, Any],
                     trace_headers: dict[str, str] | None = None) -> AsyncIterator[bytes]:
        resp = await self._post(payload, trace_headers)
        finished = False
        try:
            data: list[bytes] = []
            async for raw in resp.content:
                line = raw.rstrip(b"\r\n")
                if line.startswith(b"data:"):
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
                    continue
                if line or not data:
                    continue  # event:, id:, comments; or a blank line with nothing pending
                event, data = b"\n".join(data), []
                if event == b"[DONE]":
                    finished = True
                    return
                yield event
                if any(marker in event for marker in _CLOSING):
                    finished = True
            if data and data != [b"[DONE]"]:
                yield b"\n".join(data)
                finished = finished or any(marker in data[0] for marker in _CLOSING)
            if not finished:
                raise UpstreamError(502, f"Upstream {self.label} closed the stream before it finished.",
                                    code="upstream_error")
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(f"Upstream {self.label} sent nothing for {self.cfg.timeout:g}s mid-stream.") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(502, f"Upstream {self.label} broke off the stream: {exc}", code="upstream_error") from None
        finally:
            if finished:
                resp.release()
            else:
                resp.close()


def build_responses_backend(cfg: BackendConfig, label: str, observer: ReplicaObserver | None = None) -> Backend:
    """The backend that serves ``/v1/responses`` natively for a node whose backend says ``responses: native``."""
    from octogate.adapters import replica_address

    replicas = [(replica_address(cfg, written), OpenAIResponsesBackend(cfg, label, api_base=written))
                for written in cfg.api_bases]
    return ReplicatedBackend(cfg, label, replicas, observer)
