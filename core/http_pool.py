"""One pooled keep-alive aiohttp session, opened at start-up and closed at shutdown: what every
client of a remote server (OpenAI-compatible upstreams, the SGLang router) holds."""

from __future__ import annotations

import aiohttp


class HttpPool:
    def __init__(self, label: str, *, limit: int, connect_timeout: float, read_timeout: float | None = None,
                 total_timeout: float | None = None, keepalive_seconds: float = 60.0):
        self.label = label
        self._connector_args = {"limit": limit, "ttl_dns_cache": 300, "keepalive_timeout": keepalive_seconds}
        self._timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(**self._connector_args), timeout=self._timeout,
            skip_auto_headers=("User-Agent",), auto_decompress=True,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"{self.label} used before start()")
        return self._session
