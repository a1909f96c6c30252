"""Conversations on the request path: which requests have one, what history they get, what is kept.

A request belongs to a conversation when it carries ``X-Conversation-Id`` or
``metadata.conversation_id``. Its stored history is inserted after the client's leading system
messages and before its new messages (the node's persona still comes first of all); once the
answer is complete (a stream assembled in full) the turn, meaning the client's new non-system
messages plus the answer, is appended, before the response ends, so the next turn sees it.

When the store is down the request is served without history and says so in the
``x-octogate-history: unavailable`` header and the ``octogate_history_unavailable_total`` metric.
A turn whose append fails is not lost: it waits in a bounded outbox of this process, retried in
order until the store is back (``x-octogate-history: pending`` on a non-streamed answer; a stream's
headers are gone by then). What overflows the outbox is counted (``operation="outbox_overflow"``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import orjson
from pydantic import ValidationError

from octogate.core.errors import OpenAIError
from octogate.core.graph import HistoryConfig
from octogate.core.messages import SYSTEM_ROLES, leading_system
from octogate.core.responses import ChatMessage
from octogate.gateway.auth import bearer_token
from octogate.gateway.history import (
    ConversationStore,
    HistoryLimits,
    HistoryUnavailable,
    check_conversation_id,
    scope_for_key,
)
from octogate.gateway.metrics import Metrics

CONVERSATION_HEADER = b"x-conversation-id"
HISTORY_HEADER = b"x-octogate-history"
OUTBOX_LIMIT = 1000  # turns waiting for the store, per process
OUTBOX_RETRY_SECONDS = 1.0
log = logging.getLogger("octogate.history")


def conversation_id(header: bytes | None, data: dict[str, Any]) -> str | None:
    """The request's conversation id, validated (a 400 naming where it came from otherwise). The
    header wins over ``metadata.conversation_id``, but a bad id in the metadata is a 400 either way."""
    metadata = data.get("metadata")
    in_metadata = metadata.get("conversation_id") if isinstance(metadata, dict) else None
    if in_metadata is not None:
        in_metadata = _checked(in_metadata, "metadata.conversation_id")
    return _checked(header.decode("latin-1"), "X-Conversation-Id") if header is not None else in_metadata


def _checked(value: object, param: str) -> str:
    try:
        return check_conversation_id(value)
    except ValueError as exc:
        raise OpenAIError(400, f"Invalid {param}: {exc}", param=param, code="invalid_conversation_id") from None


class Turn:
    """One request's part in its conversation."""

    __slots__ = ("scope", "conversation_id", "new_messages", "header")

    def __init__(self, scope: str, conversation_id: str, new_messages: list[dict[str, Any]], header: bytes | None):
        self.scope = scope
        self.conversation_id = conversation_id
        self.new_messages = new_messages
        self.header = header  # value for x-octogate-history, or None


class Outbox:
    """Appends that failed, kept in order and retried until the store takes them."""

    def __init__(self, store: ConversationStore, metrics: Metrics, limit: int = OUTBOX_LIMIT):
        self.store = store
        self.metrics = metrics
        self.pending: deque[tuple[str, str, list[dict[str, Any]], dict[str, Any]]] = deque()
        self.limit = limit
        self._retrying: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self.pending)

    def put(self, scope: str, conversation: str, messages: list[dict[str, Any]], answer: dict[str, Any]) -> None:
        if len(self.pending) >= self.limit:
            self.pending.popleft()
            self.metrics.history_unavailable("outbox_overflow")
            log.error("history outbox full (%d turns): the oldest pending turn is dropped", self.limit)
        self.pending.append((scope, conversation, messages, answer))
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.ensure_future(self._retry())

    async def flush(self) -> bool:
        """Append what is pending, in order; False as soon as the store fails again."""
        async with self._lock:
            while self.pending:
                if not await self.store.append(*self.pending[0]):
                    return False
                self.pending.popleft()
            return True

    async def _retry(self) -> None:
        while self.pending:
            await asyncio.sleep(OUTBOX_RETRY_SECONDS)
            if await self.flush():
                log.info("history store back: pending turns appended")

    async def aclose(self) -> None:
        if self.pending:
            await self.flush()
            if self.pending:
                log.error("shutting down with %d conversation turns the store never took", len(self.pending))
        if self._retrying is not None:
            self._retrying.cancel()


class Conversations:
    def __init__(self, config: HistoryConfig | None, metrics: Metrics):
        self.metrics = metrics
        self.store = None if config is None else ConversationStore(
            config.resolved_url(),
            HistoryLimits(max_turns=config.max_turns, max_tokens=config.max_tokens, ttl_seconds=config.ttl_seconds),
            key_prefix=config.key_prefix, op_timeout=config.op_timeout,
        )
        self.outbox = None if self.store is None else Outbox(self.store, metrics)

    async def start(self) -> None:
        if self.store is not None:
            await self.store.start()

    async def aclose(self) -> None:
        if self.store is not None:
            await self.outbox.aclose()
            await self.store.aclose()

    def status(self) -> str:
        if self.store is None:
            return "disabled"
        return "degraded" if self.store.degraded else "ok"

    async def begin(self, conversation: str, authorization: str | None, data: dict[str, Any]) -> Turn:
        """Insert the stored history into ``data["messages"]`` (in place); return the turn to record."""
        messages = data["messages"]
        lead = leading_system(messages)
        new_messages = [m for m in messages[lead:] if m.get("role") not in SYSTEM_ROLES]
        turn = Turn(scope_for_key(bearer_token(authorization)), conversation, new_messages, None)
        if self.store is None:
            turn.header = b"disabled"
            return turn
        if self.outbox and not self.store.degraded:  # turns still pending go in first, so this one reads them
            await self.outbox.flush()
        history = await self.store.history(turn.scope, conversation)
        if history is None:
            turn.header = b"unavailable"
            self.metrics.history_unavailable("read")
        elif history:
            data["messages"] = [*messages[:lead], *history, *messages[lead:]]
        return turn

    async def finish(self, turn: Turn, answer: dict[str, Any] | None) -> None:
        if self.store is None or answer is None or turn.header is not None:
            return
        if not await self.store.append(turn.scope, turn.conversation_id, turn.new_messages, answer):
            self.metrics.history_unavailable("append")
            self.outbox.put(turn.scope, turn.conversation_id, turn.new_messages, answer)
            turn.header = b"pending"

    # ------------------------------------------------------------------ GET/DELETE /v1/conversations/{id}
    async def get(self, conversation: str, authorization: str | None) -> dict[str, Any]:
        found = await self._on_store(conversation, authorization, ConversationStore.get)
        if found is None:
            raise _not_found(conversation)
        return found

    async def delete(self, conversation: str, authorization: str | None) -> dict[str, Any]:
        if not await self._on_store(conversation, authorization, ConversationStore.delete):
            raise _not_found(conversation)
        return {"id": conversation, "object": "conversation.deleted", "deleted": True}

    async def _on_store(self, conversation: str, authorization: str | None, operation: Any) -> Any:
        """Run a store operation on the caller's conversation, mapping failures to OpenAI errors."""
        if self.store is None:
            raise OpenAIError(404, "Conversation history is not configured on this gateway (no 'history:' in its graph).",
                              code="history_disabled")
        cid = conversation_id(conversation.encode("latin-1", "replace"), {})
        scope = scope_for_key(bearer_token(authorization))
        try:
            return await operation(self.store, scope, cid)
        except HistoryUnavailable:
            raise OpenAIError(503, "Conversation history is unavailable right now (Redis is not answering).",
                              code="history_unavailable") from None


def _not_found(conversation: str) -> OpenAIError:
    return OpenAIError(404, f"No conversation '{conversation}'.", param="conversation_id", code="conversation_not_found")


def answer_of(completion: dict[str, Any]) -> dict[str, Any] | None:
    """The assistant message of a parsed non-streamed completion (its first choice), read as the
    protocol's ``ChatMessage``, without its empty fields; None when there is no such message."""
    try:
        message = ChatMessage.model_validate(completion["choices"][0]["message"])
    except (KeyError, IndexError, TypeError, ValidationError):
        return None
    return message.model_dump(exclude_none=True)


class AnswerAssembler:
    """Rebuilds a streamed answer's first choice from its chunks: content and tool calls."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.seen = False
        self.model: str | None = None
        self.response_id: str | None = None
        self.finish_reasons: list[str] = []

    def feed(self, chunk: bytes) -> None:
        try:
            parsed = orjson.loads(chunk)
            choices = parsed.get("choices") or []
        except (orjson.JSONDecodeError, AttributeError):
            return
        if self.model is None:
            self.model, self.response_id = parsed.get("model"), parsed.get("id")
        for choice in choices:
            if choice.get("finish_reason"):
                self.finish_reasons.append(choice["finish_reason"])
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            self.seen = True
            if delta.get("content"):
                self.content.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                index = call.get("index", 0)
                if index not in self.tool_calls:  # a custom tool's call streams ``custom`` pieces, a function's ``function``
                    self.tool_calls[index] = ({"id": None, "type": "custom", "custom": {"name": "", "input": ""}}
                                              if "custom" in call or call.get("type") == "custom" else
                                              {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                slot = self.tool_calls[index]
                if call.get("id"):
                    slot["id"] = call["id"]
                if slot["type"] == "custom":
                    piece = call.get("custom") or {}
                    slot["custom"]["name"] += piece.get("name") or ""
                    slot["custom"]["input"] += piece.get("input") or ""
                    continue
                fn = call.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""

    async def complete(self) -> None:
        """Called once the stream has ended normally, before [DONE]; subclasses record the answer."""

    def answer(self) -> dict[str, Any] | None:
        """The assembled message as ``answer_of`` reads a non-streamed one."""
        if not self.seen:
            return None
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content)}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return message
