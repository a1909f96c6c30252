"""Stored responses of ``POST /v1/responses`` in Redis: ``store: true`` (the API's default) keeps the
response, its input items and the context before them, so that ``previous_response_id`` can
continue it and ``GET``/``DELETE /v1/responses/{id}`` and ``.../input_items`` can read it.

One response is one Redis string, ``{key_prefix}{scope}:{response_id}``, written once with its TTL:
``{"response": {...}, "input": [items], "context": [items]}``, where ``context`` is what came
before this response's input (the previous response's context, input and output), so continuing
a chain is one read. The scope is the caller's API key's hash (``history.scope_for_key``): one key
can neither read nor delete another's responses, and the raw key never reaches Redis.

The Redis conventions are the history store's (``history.ConversationStore``): one pool, each
operation bounded by ``op_timeout``, a circuit breaker that fails fast while Redis is down. Unlike
history, a stored response is not optional once asked for: the caller turns ``StoreUnavailable``
into a 503 rather than answering without keeping it.
"""

from __future__ import annotations

from typing import Any

import orjson

from octogate.core.errors import OpenAIError
from octogate.core.responses_config import ResponsesConfig
from octogate.gateway.auth import bearer_token
from octogate.gateway.history import ConversationStore, HistoryLimits, HistoryUnavailable, scope_for_key

StoreUnavailable = HistoryUnavailable


class ResponseStore(ConversationStore):
    """Responses by id, within a scope; the breaker, pool and timeouts of the conversation store."""

    def __init__(self, config: ResponsesConfig):
        super().__init__(config.resolved_url(), HistoryLimits(ttl_seconds=config.ttl_seconds),
                         key_prefix=config.key_prefix, op_timeout=config.op_timeout)

    async def put(self, scope: str, response_id: str, record: dict[str, Any]) -> None:
        key = self.key(scope, response_id)
        value = orjson.dumps(record)
        await self._call(lambda r: r.set(key, value, ex=self.limits.ttl_seconds))

    async def load(self, scope: str, response_id: str) -> dict[str, Any] | None:
        key = self.key(scope, response_id)
        raw = await self._call(lambda r: r.get(key))
        if raw is None:
            return None
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return record if isinstance(record, dict) and isinstance(record.get("response"), dict) else None

    async def remove(self, scope: str, response_id: str) -> bool:
        key = self.key(scope, response_id)
        return bool(await self._call(lambda r: r.delete(key)))


def _unavailable() -> OpenAIError:
    return OpenAIError(503, "Stored responses are unavailable right now (Redis is not answering). Send 'store': "
                       "false (without 'previous_response_id') to be answered without storing.",
                       code="responses_store_unavailable")


def _not_found(response_id: str, param: str = "response_id") -> OpenAIError:
    return OpenAIError(404, f"Response with id '{response_id}' not found.", param=param, code="response_not_found")


class Responses:
    """The store as the endpoints use it: scoped by the caller's key, failures as OpenAI errors."""

    def __init__(self, config: ResponsesConfig | None):
        self.store = ResponseStore(config) if config is not None else None

    async def start(self) -> None:
        if self.store is not None:
            await self.store.start()

    async def aclose(self) -> None:
        if self.store is not None:
            await self.store.aclose()

    @staticmethod
    def scope(authorization: str | None) -> str:
        return scope_for_key(bearer_token(authorization))

    def _check_id(self, response_id: str, param: str) -> str:
        if self.store is None:
            raise OpenAIError(404, "Stored responses are not configured on this gateway (no 'responses:' in its "
                              "graph).", param=param, code="responses_store_disabled")
        try:
            self.store.key("x", response_id)
        except ValueError:
            raise _not_found(response_id[:80], param) from None
        return response_id

    async def load(self, response_id: str, authorization: str | None, param: str = "response_id") -> dict[str, Any]:
        self._check_id(response_id, param)
        try:
            record = await self.store.load(self.scope(authorization), response_id)
        except StoreUnavailable:
            raise _unavailable() from None
        if record is None:
            raise _not_found(response_id, param)
        return record

    async def put(self, scope: str, response_id: str, record: dict[str, Any]) -> None:
        try:
            await self.store.put(scope, response_id, record)
        except StoreUnavailable:
            raise _unavailable() from None

    async def check_writable(self) -> None:
        """Fail fast, before any work, when a store:true request could not be kept (Redis known down)."""
        if self.store is not None and self.store.degraded and not await self.store.ping():
            raise _unavailable()

    async def delete(self, response_id: str, authorization: str | None) -> dict[str, Any]:
        self._check_id(response_id, "response_id")
        try:
            found = await self.store.remove(self.scope(authorization), response_id)
        except StoreUnavailable:
            raise _unavailable() from None
        if not found:
            raise _not_found(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    async def input_items(self, response_id: str, authorization: str | None, after: str | None, limit: int,
                          order: str) -> dict[str, Any]:
        """``GET /v1/responses/{id}/input_items``: OpenAI's list (``data``, ``first_id``, ``last_id``,
        ``has_more``), ``order`` desc by default, ``limit`` 1-100 (20), ``after`` an item id."""
        record = await self.load(response_id, authorization)
        items = list(record.get("input") or [])
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise OpenAIError(400, f"Invalid value for 'after': no input item '{after[:80]}' in this response.",
                                  param="after", code="invalid_value")
            items = items[ids.index(after) + 1:]
        page = items[:limit]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}
