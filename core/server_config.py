"""The gateway's own settings: who may call (keys, their names and budgets), how much a client
connection may cost, shutdown, and the Redis stores for conversations and routing decisions."""

from __future__ import annotations

import os

from pydantic import Field, model_validator

from octogate.core.config_base import PathError, StrictModel, resolve_secret


class RateLimit(StrictModel):
    """Budgets per key and minute, counted over a moving window in Redis (shared by every gateway process)."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1, description="prompt + completion tokens, as the backends report them")


class ApiKeyConfig(RateLimit):
    """One caller: its key, the name metrics and logs know it by, and its own budgets."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    key: str = Field(min_length=1, description="the bearer key; env:NAME allowed")


class RateLimitsConfig(RateLimit):
    """``server.rate_limits``: the budgets of every key that sets none of its own, and where they are counted."""

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="env:NAME allowed; OCTOGATE_REDIS_URL overrides")
    key_prefix: str = Field(default="octogate:ratelimit", min_length=1)

    def resolved_url(self) -> str:
        return os.environ.get("OCTOGATE_REDIS_URL") or resolve_secret(self.redis_url) or "redis://127.0.0.1:6379/0"


class HttpLimitsConfig(StrictModel):
    """What one client connection may cost before it is answered or dropped."""

    max_header_bytes: int = Field(default=64 * 1024, ge=1024, description="request line + headers; larger: 431")
    header_timeout: float = Field(default=10.0, gt=0, description="seconds to send the request line and headers; then 408")
    body_timeout: float = Field(default=30.0, gt=0, description="seconds between two pieces of the body; then 408")
    max_connections: int = Field(default=1024, ge=1, description="open client connections per worker at most")
    keepalive_seconds: float = Field(default=5.0, gt=0, description="an idle keep-alive connection is closed after this")


class ServerConfig(StrictModel):
    api_keys: list[str | ApiKeyConfig] = Field(default_factory=list, description=(
        "accepted bearer keys: a string (env:NAME allowed), or {name, key, requests_per_minute, tokens_per_minute}"))
    admin_keys: list[str] = Field(default_factory=list, description="keys for /admin/* (config reload); env:NAME allowed")
    rate_limits: RateLimitsConfig | None = None
    http: HttpLimitsConfig = Field(default_factory=lambda: HttpLimitsConfig())
    shutdown_grace_seconds: float = Field(default=30.0, ge=0, description=(
        "on SIGTERM: seconds in-flight requests and streams may take to finish"))
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    trace_content: bool = Field(default=False, description="put prompt and completion text in trace spans "
                                "(OCTOGATE_TRACE_CONTENT=true does the same)")

    def resolved_api_keys(self) -> list[str]:
        return list(self.key_table())

    def key_table(self) -> dict[str, ApiKeyConfig]:
        """Every accepted key -> its caller (a plain key is named ``key-1``, ``key-2`` ... in file order)."""
        table: dict[str, ApiKeyConfig] = {}
        default = self.rate_limits or RateLimit()
        for i, entry in enumerate(self.api_keys, 1):
            if isinstance(entry, str):
                entry = ApiKeyConfig(name=f"key-{i}", key=entry, requests_per_minute=default.requests_per_minute,
                                     tokens_per_minute=default.tokens_per_minute)
            elif entry.requests_per_minute is None and entry.tokens_per_minute is None:
                entry = entry.model_copy(update={"requests_per_minute": default.requests_per_minute,
                                                 "tokens_per_minute": default.tokens_per_minute})
            key = resolve_secret(entry.key)
            if key:
                table[key] = entry
        for i, key in enumerate((k.strip() for k in os.environ.get("OCTOGATE_API_KEYS", "").split(",")), 1):
            if key and key not in table:
                table[key] = ApiKeyConfig(name=f"env-{i}", key=key, requests_per_minute=default.requests_per_minute,
                                          tokens_per_minute=default.tokens_per_minute)
        return table

    def resolved_admin_keys(self) -> list[str]:
        return [k for k in (resolve_secret(k) for k in self.admin_keys) if k]

    @model_validator(mode="after")
    def _names_unique(self) -> ServerConfig:
        names = [e.name for e in self.api_keys if isinstance(e, ApiKeyConfig)]
        for i, entry in enumerate(self.api_keys):
            if isinstance(entry, ApiKeyConfig) and names.count(entry.name) > 1:
                raise PathError(("api_keys", i, "name"), f"duplicate key name '{entry.name}'")
        return self


class HistoryConfig(StrictModel):
    """Conversations kept in Redis (requests that carry a conversation id)."""

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="env:NAME allowed; OCTOGATE_REDIS_URL overrides")
    max_turns: int = Field(default=20, ge=1, description="turns prepended at most")
    max_tokens: int = Field(default=3000, ge=1, description="approximate tokens of history prepended at most")
    ttl_seconds: int = Field(default=7 * 24 * 3600, ge=1, description="a conversation expires after this long unused")
    key_prefix: str = Field(default="octogate:conv:", min_length=1)
    op_timeout: float = Field(default=0.5, gt=0, description="seconds one Redis operation may take")

    def resolved_url(self) -> str:
        return os.environ.get("OCTOGATE_REDIS_URL") or resolve_secret(self.redis_url) or "redis://127.0.0.1:6379/0"


class RouteCacheConfig(StrictModel):
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="env:NAME allowed; OCTOGATE_REDIS_URL overrides")
    ttl_seconds: int = Field(default=3600, ge=1)
    op_timeout: float = Field(default=0.2, gt=0)

    def resolved_url(self) -> str:
        return os.environ.get("OCTOGATE_REDIS_URL") or resolve_secret(self.redis_url) or "redis://127.0.0.1:6379/0"
