"""``responses:`` in the graph: where ``POST /v1/responses`` keeps stored responses (Redis) and for how long."""

from __future__ import annotations

import os

from pydantic import Field

from octogate.core.config_base import StrictModel, resolve_secret


class ResponsesConfig(StrictModel):
    """Stored responses (``store: true``, the default of the Responses API): kept in Redis, per API key,
    for ``previous_response_id``, ``GET``/``DELETE /v1/responses/{id}`` and ``input_items``."""

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="env:NAME allowed; OCTOGATE_REDIS_URL overrides")
    ttl_seconds: int = Field(default=30 * 24 * 3600, ge=1, description="a stored response expires this long after it was made")
    key_prefix: str = Field(default="octogate:resp:", min_length=1)
    op_timeout: float = Field(default=0.5, gt=0, description="seconds one Redis operation may take")

    def resolved_url(self) -> str:
        return os.environ.get("OCTOGATE_REDIS_URL") or resolve_secret(self.redis_url) or "redis://127.0.0.1:6379/0"
