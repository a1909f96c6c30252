"""Per-key rate limits shared by every gateway process: requests and tokens per minute, counted over a
moving window in Redis with the ``limits`` library, and OpenAI's ``x-ratelimit-*`` headers.

A request is refused (429, ``rate_limit_exceeded``, ``Retry-After``) when its key has used its
requests for the last minute, or has already spent its tokens; the tokens a response reports
(``usage``) are counted once it is answered. Redis down: requests are let through unchecked (fail
open), counted by ``octogate_rate_limit_unchecked_total``, and ``/readyz`` says ``degraded``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from octogate.core.errors import OpenAIError
from octogate.core.server_config import ApiKeyConfig, RateLimitsConfig
from octogate.gateway.metrics import Metrics

log = logging.getLogger("octogate.ratelimit")
_RETRY_STORE_SECONDS = 5.0  # after a Redis failure, skip it this long before trying again


def _reset(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``."""
    seconds = max(0.0, seconds)
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


class RateLimiter:
    def __init__(self, cfg: RateLimitsConfig | None, metrics: Metrics, op_timeout: float = 0.5):
        self.metrics = metrics
        self.op_timeout = op_timeout
        self.enabled = cfg is not None
        self.prefix = cfg.key_prefix if cfg else ""
        self._limiter: MovingWindowRateLimiter | None = None
        self._url = cfg.resolved_url() if cfg else ""
        self._down_until = 0.0
        self.status = "ok" if cfg else "off"

    async def start(self) -> None:
        if self.enabled:
            storage = RedisStorage(f"async+{self._url}", implementation="redispy", key_prefix=self.prefix,
                                   socket_timeout=self.op_timeout, socket_connect_timeout=self.op_timeout)
            self._limiter = MovingWindowRateLimiter(storage)

    async def aclose(self) -> None:
        self._limiter = None

    def _applies(self, caller: ApiKeyConfig | None) -> bool:
        return (self._limiter is not None and caller is not None
                and (caller.requests_per_minute is not None or caller.tokens_per_minute is not None))

    async def _guarded(self, coro):  # type: ignore[no-untyped-def]
        """A store call, or None when the store is down (fail open: counted, logged, degraded)."""
        if time.monotonic() < self._down_until:
            coro.close()
            self.metrics.rate_limit_unchecked()
            return None
        try:
            result = await asyncio.wait_for(coro, self.op_timeout)
        except Exception as exc:  # noqa: BLE001 - any store failure lets the request through
            if self.status != "degraded":
                log.warning("rate-limit store unreachable, limits not enforced: %s", exc)
            self.status = "degraded"
            self._down_until = time.monotonic() + _RETRY_STORE_SECONDS
            self.metrics.rate_limit_unchecked()
            return None
        self.status = "ok"
        return result

    async def admit(self, caller: ApiKeyConfig | None) -> list[tuple[bytes, bytes]]:
        """Count one request against ``caller``'s budgets; the x-ratelimit headers for its response.
        Raises a 429 when a budget is spent."""
        if not self._applies(caller):
            return []
        assert caller is not None and self._limiter is not None
        headers: list[tuple[bytes, bytes]] = []
        if caller.tokens_per_minute is not None:
            item = RateLimitItemPerMinute(caller.tokens_per_minute)
            stats = await self._guarded(self._limiter.get_window_stats(item, "tokens", caller.name))
            if stats is not None:
                headers += self._headers("tokens", caller.tokens_per_minute, stats.remaining, stats.reset_time)
                if stats.remaining <= 0:
                    self._refuse(caller, "tokens", caller.tokens_per_minute, stats.reset_time, headers)
        if caller.requests_per_minute is not None:
            item = RateLimitItemPerMinute(caller.requests_per_minute)
            allowed = await self._guarded(self._limiter.hit(item, "requests", caller.name))
            if allowed is not None:
                stats = await self._guarded(self._limiter.get_window_stats(item, "requests", caller.name))
                remaining, reset = (stats.remaining, stats.reset_time) if stats else (0, time.time() + 60)
                headers = self._headers("requests", caller.requests_per_minute, remaining, reset) + headers
                if not allowed:
                    self._refuse(caller, "requests", caller.requests_per_minute, reset, headers)
        return headers

    async def spent(self, caller: ApiKeyConfig | None, tokens: int) -> None:
        """Count the tokens a response reported against ``caller``'s token budget."""
        if tokens <= 0 or not self._applies(caller) or caller.tokens_per_minute is None:  # type: ignore[union-attr]
            return
        assert caller is not None and self._limiter is not None
        item = RateLimitItemPerMinute(caller.tokens_per_minute)
        stats = await self._guarded(self._limiter.get_window_stats(item, "tokens", caller.name))
        if stats is None or stats.remaining <= 0:
            return
        # A moving window refuses a cost above what is left: record what fits, which spends the budget.
        await self._guarded(self._limiter.hit(item, "tokens", caller.name, cost=min(tokens, stats.remaining)))

    @staticmethod
    def _headers(kind: str, limit: int, remaining: int, reset_at: float) -> list[tuple[bytes, bytes]]:
        return [(f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
                (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, remaining)).encode()),
                (f"x-ratelimit-reset-{kind}".encode(), _reset(reset_at - time.time()).encode())]

    def _refuse(self, caller: ApiKeyConfig, kind: str, limit: int, reset_at: float,
                headers: list[tuple[bytes, bytes]]) -> None:
        self.metrics.rate_limited(caller.name, kind)
        wait = max(1, math.ceil(reset_at - time.time()))
        raise OpenAIError(
            429, f"Rate limit reached for key '{caller.name}' on {kind} per minute: limit {limit}. "
            f"Please try again in {wait}s.", type="rate_limit_error", code="rate_limit_exceeded",
            headers={"Retry-After": str(wait), **{k.decode(): v.decode() for k, v in headers}},
        )
