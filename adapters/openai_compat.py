"""Direct pass-through to any OpenAI-compatible server (vLLM, SGLang, Ollama, LoRAX, llama.cpp
server, OpenAI itself).

No translation happens: the payload is posted as JSON and the answer's bytes come back untouched,
over a pooled keep-alive aiohttp session. This is the gateway's hot path, so it does as little as
it can: one ``orjson.dumps`` out, one read in, and for streams a line scan of the SSE body.
One instance talks to one address; ``adapters/replicas.py`` spreads a node's calls over several
and retries the failures this module marks ``retryable``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from octogate.adapters.base import Backend
from octogate.core.errors import PASS_THROUGH_STATUSES, RETRYABLE_STATUSES, UpstreamError, UpstreamTimeout
from octogate.core.exact_json import dump_json
from octogate.core.graph import DEFAULT_OPENAI_API_BASE, BackendConfig, resolve_secret
from octogate.core.http_pool import HttpPool


def upstream_error(status: int, body: bytes, retry_after: str | None, label: str) -> UpstreamError:
    """Build the error the gateway answers with from an upstream's error response."""
    message, etype, code, param = None, None, None, None
    try:
        err = orjson.loads(body)
        if isinstance(err, dict):
            inner = err.get("error", err)
            if isinstance(inner, dict):
                message = inner.get("message") or inner.get("detail")
                etype, code, param = inner.get("type"), inner.get("code"), inner.get("param")
            elif isinstance(inner, str):
                message = inner
            if message is None and isinstance(err.get("detail"), str):
                message = err["detail"]
    except orjson.JSONDecodeError:
        pass
    if not message:
        message = body[:500].decode("utf-8", "replace").strip() or f"HTTP {status}"
    mapped = PASS_THROUGH_STATUSES.get(status, 502)
    if mapped == 502:
        message = f"Upstream {label} answered HTTP {status}: {message}"
        etype, code = "upstream_error", "upstream_error"
    return UpstreamError(mapped, str(message), type=etype, code=str(code) if code is not None else None,
                         param=param, retry_after=retry_after, retryable=status in RETRYABLE_STATUSES)


class OpenAICompatibleBackend(Backend):
    def __init__(self, cfg: BackendConfig, label: str, api_base: str | None = None):
        """``api_base``: this instance's address as written (default: the config's only one)."""
        self.cfg = cfg
        self.label = label
        written = api_base if api_base is not None else cfg.api_bases[0]
        base = (resolve_secret(written) or DEFAULT_OPENAI_API_BASE).rstrip("/")
        self.base_url = base
        self.url = f"{base}/chat/completions"
        self.headers = {"Content-Type": "application/json", **cfg.headers}
        key = resolve_secret(cfg.api_key)
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.pool = HttpPool(f"backend {label}", limit=cfg.max_connections, connect_timeout=cfg.connect_timeout,
                             read_timeout=cfg.timeout)

    async def start(self) -> None:
        await self.pool.start()

    async def aclose(self) -> None:
        await self.pool.aclose()

    @property
    def session(self) -> aiohttp.ClientSession:
        return self.pool.session

    async def _post(self, payload: dict[str, Any], trace_headers: dict[str, str] | None) -> aiohttp.ClientResponse:
        headers = {**self.headers, **trace_headers} if trace_headers else self.headers
        try:
            body = dump_json(payload)
        except ValueError as exc:  # nesting past the encoder's depth limit: the request's own fault
            raise UpstreamError(400, f"The request cannot be forwarded as JSON: {exc}.", code="invalid_json") from None
        try:
            resp = await self.session.post(self.url, data=body, headers=headers)
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(f"Upstream {self.label} did not answer within {self.cfg.timeout:g}s.") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(502, f"Upstream {self.label} is unreachable: {exc}", code="upstream_unreachable",
                                retryable=True) from None
        if resp.status >= 400:
            try:
                body = await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                body = b""
            finally:
                resp.release()
            raise upstream_error(resp.status, body, resp.headers.get("Retry-After"), self.label)
        return resp

    async def complete(self, payload: dict[str, Any], trace_headers: dict[str, str] | None = None) -> bytes:
        resp = await self._post(payload, trace_headers)
        try:
            return await resp.read()
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(f"Upstream {self.label} stopped answering for {self.cfg.timeout:g}s.") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(502, f"Upstream {self.label} failed mid-response: {exc}", code="upstream_error") from None
        finally:
            resp.release()

    #: events after which a stream is complete without ``[DONE]`` (none for chat completions)
    END_MARKERS: tuple[bytes, ...] = ()

    def _ends(self, event: bytes) -> bool:
        return any(marker in event for marker in self.END_MARKERS)

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
                    continue  # comments (":"), event:, id:, retry: carry nothing; or a blank line with nothing pending
                event, data = b"\n".join(data), []  # blank line: end of one SSE event
                if event == b"[DONE]":
                    finished = True
                    return
                yield event
                if self.END_MARKERS and self._ends(event):  # no call per chunk on the chat path
                    finished = True
            if data:  # the last event, without its blank line
                event = b"\n".join(data)
                if event == b"[DONE]":
                    finished = True
                elif self.END_MARKERS:
                    yield event
                    finished = finished or self._ends(event)
            if not finished:
                raise UpstreamError(502, f"Upstream {self.label} closed the stream before it finished.",
                                    code="upstream_error")
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(f"Upstream {self.label} sent nothing for {self.cfg.timeout:g}s mid-stream.") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(502, f"Upstream {self.label} broke off the stream: {exc}", code="upstream_error") from None
        finally:
            # A finished stream gives its connection back to the pool; otherwise closing it is what
            # tells the upstream to stop generating for a client that has gone away.
            if finished:
                resp.release()
            else:
                resp.close()

    async def check_ready(self) -> str:
        try:
            async with self.session.get(f"{self.base_url}/models", headers=self.headers,
                                        timeout=aiohttp.ClientTimeout(total=3)) as resp:
                if resp.status >= 500:
                    raise UpstreamError(502, f"HTTP {resp.status}")
                return "ok" if resp.status < 400 else f"reachable (HTTP {resp.status})"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise UpstreamError(502, f"unreachable: {exc or type(exc).__name__}") from None
