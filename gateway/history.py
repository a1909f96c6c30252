"""Conversation history kept in Redis, so that any gateway replica can serve any turn (Octopus v4).

A conversation is one Redis list, ``{key_prefix}{scope}:{conversation_id}``, holding one JSON
string per turn: ``{"messages": [...], "answer": {...}, "created": unix_ts}``, where ``messages``
are the user's new messages of that turn (kept exactly as sent, content parts included) and
``answer`` is the assistant's message. One turn is one ``RPUSH`` of one element, which Redis
applies atomically, so concurrent appends from any number of replicas never lose a turn; the
trim and the TTL refresh run in the same Lua script, so a list never outgrows its cap and never
outlives its TTL. (A script rather than MULTI/EXEC: one command instead of five, which halves the
client's CPU per append, and that is what bounds a burst of appends on one event loop.)

The scope is a hash of the caller's API key: the key is part of the Redis key, so one key cannot
name, read or delete another key's conversations, and the raw key never reaches Redis.

History is an enhancement, not a dependency: when Redis is down or slow, ``history()`` and
``append()`` answer None/False within ``op_timeout`` and the request is served without it. After
a failure, a small circuit breaker fails every call fast, without touching the network, for
``retry_after`` seconds; then one call probes Redis, and its success closes the breaker. A call
that times out while Redis keeps answering other calls fails alone, without opening the breaker:
Redis is up, that call was merely slow. (A process so starved of CPU that it cannot read any
answer within ``op_timeout`` does open it; shedding history for ``retry_after`` is then no loss.)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

log = logging.getLogger("octogate.history")

T = TypeVar("T")

_CONVERSATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# A scope never contains ':' so that "scope:id" cannot be split two ways: ids may contain ':'.
_SCOPE = re.compile(r"[A-Za-z0-9_-]{1,64}")
ANONYMOUS_SCOPE = "anonymous"  # not hex, so no key's hash can collide with it
_BYTES_PER_TOKEN = 4
# Whatever keeps Redis from serving a call: refused or lost connections, timeouts, protocol
# errors (something else on the port), and refusals such as OOM or READONLY (a failed-over
# primary). History cannot work through any of them, so all count as unavailable.
_FAILURES = (RedisError, OSError, asyncio.TimeoutError)
_TIMEOUTS = (RedisTimeoutError, asyncio.TimeoutError)

# KEYS[1]: the conversation. ARGV: the turn's JSON, -(turns to keep), TTL in seconds.
_APPEND_LUA = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], ARGV[2], -1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class HistoryUnavailable(Exception):
    """Redis could not be used for this operation (down, slow, or refusing)."""


@dataclass(frozen=True)
class HistoryLimits:
    max_turns: int = 20  # turns prepended at most (a turn = the user's new messages + the answer)
    max_tokens: int = 3000  # approximate token budget of prepended history; oldest turns dropped first
    ttl_seconds: int = 7 * 24 * 3600  # a conversation expires this long after its last write

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_tokens", "ttl_seconds"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"HistoryLimits.{name} must be a positive integer, got {value!r}.")

    @property
    def stored_turns(self) -> int:
        """Turns kept in Redis per conversation. More than are prepended, so that
        GET /v1/conversations/{id} shows a longer past, but bounded so keys cannot grow forever."""
        return 4 * self.max_turns


def scope_for_key(api_key: str | None) -> str:
    """The storage scope of a bearer key: its sha256, hex[:24] (96 bits); ``anonymous`` without one.

    An empty key counts as none: it identifies no one, so it must not get a scope of its own."""
    if not api_key:
        return ANONYMOUS_SCOPE
    return hashlib.sha256(api_key.encode()).hexdigest()[:24]


def check_conversation_id(conversation_id: object) -> str:
    """The id itself if it is 1-128 characters of ``[A-Za-z0-9._:-]``; ValueError otherwise.

    Exposed so the request path can reject a bad id (400) before doing any other work."""
    if not isinstance(conversation_id, str) or not _CONVERSATION_ID.fullmatch(conversation_id):
        shown = conversation_id if isinstance(conversation_id, str) and len(conversation_id) <= 40 else None
        raise ValueError(
            "A conversation id must be 1 to 128 characters of letters, digits, '.', '_', ':' or '-'"
            + (f"; got {shown!r}." if shown is not None else ".")
        )
    return conversation_id


def estimate_tokens(turn_json: bytes) -> int:
    """Approximate tokens of one stored turn: its compact JSON's length in bytes / 4.

    That is chars/4 for English text, the usual rule of thumb, plus a few tokens of framing per
    message (about what chat templates add); non-Latin scripts, which take more bytes per char,
    also take more tokens per char. Inline images count by their encoded size, which overstates
    them: history that carries images is dropped sooner, which is the cheap direction to err."""
    return -(-len(turn_json) // _BYTES_PER_TOKEN)


class ConversationStore:
    def __init__(
        self,
        url: str,
        limits: HistoryLimits,
        *,
        key_prefix: str = "octogate:conv:",
        op_timeout: float = 0.5,
        retry_after: float = 2.0,
        max_connections: int = 64,
    ):
        self.url = url
        self.limits = limits
        self.key_prefix = key_prefix
        self.op_timeout = op_timeout
        self.retry_after = retry_after
        self.max_connections = max_connections
        self._redis: Redis | None = None
        self._append_script: AsyncScript | None = None
        self._last_success = 0.0  # monotonic time a call last succeeded
        self._degraded = False
        self._tripped_at = 0.0  # monotonic time the breaker last opened
        self._retry_at = 0.0  # monotonic time after which one call may probe Redis again
        self._probing = False

    async def start(self) -> None:
        """Create the client and check Redis once. Redis being down is not an error here: the
        store starts degraded and recovers by itself. A malformed URL is, and raises ValueError."""
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=None,  # waiting for a connection is bounded by op_timeout around each call
            socket_timeout=self.op_timeout,
            socket_connect_timeout=self.op_timeout,
            # No client-side retries: they would multiply the time bound, and a retried append
            # whose reply was lost would store the same turn twice.
            retry=Retry(NoBackoff(), 0),
        )
        self._redis = Redis.from_pool(pool)  # the client owns the pool: aclose() closes both
        # EVALSHA, falling back to loading the script when Redis does not know it (after a restart).
        self._append_script = self._redis.register_script(_APPEND_LUA)
        await self.ping()

    async def aclose(self) -> None:
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await redis.aclose()

    @property
    def degraded(self) -> bool:
        """True while Redis is considered down (from a failed call until a call succeeds)."""
        return self._degraded

    def key(self, scope: str, conversation_id: str) -> str:
        if not _SCOPE.fullmatch(scope):
            raise ValueError(f"Invalid history scope {scope!r}; use scope_for_key().")
        return f"{self.key_prefix}{scope}:{check_conversation_id(conversation_id)}"

    async def history(self, scope: str, conversation_id: str) -> list[dict] | None:
        """The messages to prepend to this turn's: the stored turns, oldest first, flattened
        (each turn's messages, then its answer). At most ``max_turns`` turns and about
        ``max_tokens`` tokens; the oldest turns go first, and a turn is never cut in half.
        [] for a new conversation; None when Redis is unavailable."""
        key = self.key(scope, conversation_id)
        try:
            raw = await self._call(lambda r: r.lrange(key, -self.limits.max_turns, -1))
        except HistoryUnavailable:
            return None
        kept: list[dict] = []
        budget = self.limits.max_tokens
        for entry in reversed(raw):  # newest first, so the budget is spent on the most recent turns
            budget -= estimate_tokens(entry)
            if budget < 0:
                break
            turn = _decode(entry, key)
            if turn is not None:
                kept.append(turn)
        messages: list[dict] = []
        for turn in reversed(kept):
            messages.extend(turn["messages"])
            messages.append(turn["answer"])
        return messages

    async def append(self, scope: str, conversation_id: str, new_messages: list[dict], answer: dict) -> bool:
        """Store one turn, trim to ``stored_turns`` and refresh the TTL, atomically. False when
        Redis is unavailable; then the turn may or may not have been stored (a reply lost in flight)."""
        key = self.key(scope, conversation_id)
        entry = orjson.dumps({"messages": new_messages, "answer": answer, "created": int(time.time())})
        args = [entry, -self.limits.stored_turns, self.limits.ttl_seconds]
        try:
            await self._call(lambda r: self._append_script(keys=[key], args=args, client=r))
        except HistoryUnavailable:
            return False
        return True

    async def get(self, scope: str, conversation_id: str) -> dict | None:
        """The stored conversation, for GET /v1/conversations/{id}; None if it does not exist.
        Raises HistoryUnavailable when Redis is down: "no such conversation" would be a lie."""
        key = self.key(scope, conversation_id)
        raw = await self._call(lambda r: r.lrange(key, 0, -1))
        if not raw:  # Redis deletes a list with its last element, so empty means absent
            return None
        turns = [turn for turn in (_decode(entry, key) for entry in raw) if turn is not None]
        return {"id": conversation_id, "object": "conversation", "turns": turns}

    async def delete(self, scope: str, conversation_id: str) -> bool:
        """Delete the conversation; True if it existed. Raises HistoryUnavailable when Redis is down."""
        key = self.key(scope, conversation_id)
        return bool(await self._call(lambda r: r.delete(key)))

    async def ping(self) -> bool:
        """Whether Redis answers, for /readyz. While the breaker is open this is False without
        asking Redis, like every other call."""
        try:
            await self._call(lambda r: r.ping())
        except HistoryUnavailable:
            return False
        return True

    async def _call(self, op: Callable[[Redis], Awaitable[T]]) -> T:
        """Run one Redis operation within ``op_timeout``, through the circuit breaker."""
        redis = self._redis
        if redis is None:
            raise HistoryUnavailable("The conversation store is not started.")
        probe = False
        if self._degraded:
            if self._probing or time.monotonic() < self._retry_at:
                raise HistoryUnavailable("Redis is unavailable (retrying shortly).")
            probe = self._probing = True  # one call probes; the others keep failing fast meanwhile
        started = time.monotonic()
        try:
            # The bound includes waiting for a free pooled connection: it is time the caller waits.
            async with asyncio.timeout(self.op_timeout):
                result = await op(redis)
        except _FAILURES as exc:
            if isinstance(exc, _TIMEOUTS) and self._last_success > started:
                # Redis answered other calls meanwhile: this one was slow (a blocked write, or a
                # queue of this replica's own calls ahead of it), which is no sign of an outage.
                raise HistoryUnavailable(f"Redis did not answer within {self.op_timeout}s.") from None
            self._trip(exc)
            raise HistoryUnavailable(f"Redis is unavailable: {_describe(exc)}") from None
        finally:
            if probe:
                self._probing = False
        self._last_success = time.monotonic()
        # A call that began before the breaker opened proves nothing about Redis now.
        if self._degraded and started >= self._tripped_at:
            self._degraded = False
            log.warning("Redis is reachable again at %s; conversation history is back.", _safe_url(self.url))
        return result

    def _trip(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._retry_at = now + self.retry_after
        if not self._degraded:
            self._degraded = True
            self._tripped_at = now
            log.warning(
                "Redis at %s is unavailable (%s); serving without conversation history, retrying every %gs.",
                _safe_url(self.url), _describe(exc), self.retry_after,
            )


def _decode(entry: bytes, key: str) -> dict[str, Any] | None:
    """One stored turn, or None (logged) if the entry is not one: a foreign write must not
    break the conversation for good."""
    try:
        turn = orjson.loads(entry)
        if isinstance(turn, dict) and isinstance(turn.get("messages"), list) and isinstance(turn.get("answer"), dict):
            return turn
    except orjson.JSONDecodeError:
        pass
    log.warning("Skipping a malformed turn in %s.", key)
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError) and not str(exc):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    return re.sub(r"//[^@/]*@", "//***@", url)
