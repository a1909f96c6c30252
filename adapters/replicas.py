"""Replicas of one backend: load balancing, retries before the first byte, and cooldowns.

A backend whose ``api_base`` is a list has one pooled backend per address. Each call goes to the
healthy replica with the fewest requests in flight (ties in turn). A call that fails before its
first byte in a way another try could mend (connect error, reset, timeout, 5xx, 408, 429) is tried
again, up to ``retries`` times, on a replica it has not tried yet when there is one, after a
jittered exponential pause, or after the upstream's ``Retry-After`` when that fits the backend's
timeout. The policy is tenacity's; this module only says what is retried and where. Once a first
byte (a stream's first chunk) is in hand nothing is retried.

After ``cooldown.failures`` failures in a row a replica is skipped for ``cooldown.seconds``; then
one request probes it, and its outcome decides whether it is back. A slow answer is an answer.
A backend with one address gets the same retries and cooldown, at no cost when nothing fails.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from octogate.adapters.base import Backend
from octogate.core.backend_config import BackendConfig
from octogate.core.errors import UpstreamError

_BACKOFF = wait_random_exponential(multiplier=0.05, max=1.0)


class ReplicaObserver(Protocol):
    """Where replica events go (the gateway's metrics); adapters know nothing of Prometheus."""

    def replica_in_flight(self, backend: str, replica: str, delta: int) -> None: ...

    def replica_outcome(self, backend: str, replica: str, outcome: str) -> None: ...


class _Quiet:
    def replica_in_flight(self, backend: str, replica: str, delta: int) -> None:
        pass

    def replica_outcome(self, backend: str, replica: str, outcome: str) -> None:
        pass


@dataclass(eq=False)
class Replica:
    backend: Backend
    address: str
    in_flight: int = 0
    failures: int = 0  # in a row
    cooling_until: float = 0.0
    probing: bool = False
    last_error: UpstreamError | None = None

    def state(self, now: float) -> str:
        if self.cooling_until > now:
            return f"cooling down ({self.cooling_until - now:.0f}s left)"
        if self.probing:
            return "probing"
        if self.cooling_until:
            return "cooled down, next request probes it"
        return "failing" if self.failures else "healthy"


def retryable(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamError) and exc.retryable


class ReplicatedBackend(Backend):
    def __init__(self, cfg: BackendConfig, label: str, replicas: list[tuple[str, Backend]],
                 observer: ReplicaObserver | None = None):
        self.cfg = cfg
        self.label = label
        self.replicas = [Replica(backend, address) for address, backend in replicas]
        self.observer = observer or _Quiet()
        self._turn = itertools.count()

    async def start(self) -> None:
        for r in self.replicas:
            await r.backend.start()

    async def aclose(self) -> None:
        for r in self.replicas:
            await r.backend.aclose()

    # ------------------------------------------------------------------ choosing
    def _pick(self, tried: set[Replica]) -> Replica:
        now = time.monotonic()
        usable = [r for r in self.replicas if r.cooling_until <= now and not r.probing]
        fresh = [r for r in usable if r not in tried] or usable
        if not fresh:
            raise self._all_cooling(now)
        least = min(r.in_flight for r in fresh)
        ties = [r for r in fresh if r.in_flight == least]
        replica = ties[next(self._turn) % len(ties)] if len(ties) > 1 else ties[0]
        if replica.cooling_until:  # cooled down: this request is the probe
            replica.probing = True
        return replica

    def _enter(self, replica: Replica) -> None:
        replica.in_flight += 1
        self.observer.replica_in_flight(self.label, replica.address, 1)

    def _leave(self, replica: Replica) -> None:
        replica.in_flight -= 1
        self.observer.replica_in_flight(self.label, replica.address, -1)

    def _answered(self, replica: Replica) -> None:
        replica.failures, replica.cooling_until, replica.probing = 0, 0.0, False
        self.observer.replica_outcome(self.label, replica.address, "ok")

    def _failed(self, replica: Replica, exc: UpstreamError) -> None:
        if not exc.retryable:  # the replica answered; the request was refused on its merits
            self._answered(replica)
            return
        replica.failures += 1
        replica.probing = False
        replica.last_error = exc
        if replica.failures >= self.cfg.cooldown.failures or replica.cooling_until:
            replica.cooling_until = time.monotonic() + self.cfg.cooldown.seconds
        self.observer.replica_outcome(self.label, replica.address, exc.reason)

    def _all_cooling(self, now: float) -> UpstreamError:
        """What a call gets while every replica cools down: the last failure, said to be recent."""
        last = max(self.replicas, key=lambda r: r.cooling_until).last_error
        wait = min(r.cooling_until for r in self.replicas) - now
        why = f" The last failure: {last.message}" if last is not None else ""
        return UpstreamError(last.status if last is not None else 503,
                             f"Every replica of {self.label} is cooling down after repeated failures "
                             f"(next try in {wait:.0f}s).{why}", type=last.type if last is not None else None,
                             code="upstream_cooling_down", retryable=True)

    # ------------------------------------------------------------------ retry policy
    def _pause(self, exc: BaseException | None, attempt: int) -> float:
        """The pause before try ``attempt + 1``: jittered exponential, or a lone replica's Retry-After."""
        pause = _BACKOFF(_Attempt(attempt))
        after = _retry_after_seconds(getattr(exc, "retry_after", None))
        if after is not None and len(self.replicas) == 1:
            return max(pause, after)
        return pause

    def _gives_up(self, exc: BaseException | None) -> bool:
        """A rate limit that outlasts the backend's timeout is not waited out on the only replica."""
        after = _retry_after_seconds(getattr(exc, "retry_after", None))
        return after is not None and len(self.replicas) == 1 and after > self.cfg.timeout

    def _retries(self, first: UpstreamError) -> AsyncRetrying:
        """tenacity's loop over the retries left after a first try failed with ``first``: tries 2, 3 ...
        The first try runs outside it, so a call that succeeds at once pays nothing for the policy."""
        def stop(state: RetryCallState) -> bool:
            return (stop_after_attempt(self.cfg.retries)(state)
                    or self._gives_up(state.outcome.exception() if state.outcome else None))

        def wait(state: RetryCallState) -> float:
            return self._pause(state.outcome.exception() if state.outcome else None, state.attempt_number + 1)

        return AsyncRetrying(stop=stop, wait=wait, retry=retry_if_exception(retryable), reraise=True)

    def _worth_retrying(self, exc: UpstreamError) -> bool:
        return exc.retryable and self.cfg.retries > 0 and not self._gives_up(exc)

    # ------------------------------------------------------------------ one try
    async def _complete_once(self, tried: set[Replica], payload: dict[str, Any],
                             trace_headers: dict[str, str] | None) -> bytes:
        replica = self._pick(tried)
        tried.add(replica)
        self._enter(replica)
        try:
            body = await replica.backend.complete(payload, trace_headers)
        except UpstreamError as exc:
            self._failed(replica, exc)
            raise
        except BaseException:
            replica.probing = False  # cancelled (client gone): no verdict on the replica
            raise
        finally:
            self._leave(replica)
        self._answered(replica)
        return body

    async def _open_stream_once(self, tried: set[Replica], payload: dict[str, Any],
                                trace_headers: dict[str, str] | None) -> tuple[Replica, Any, bytes | None]:
        """A stream's replica, its chunks and its first chunk (None: it ended at once); the replica
        stays counted in flight until the caller is done with the chunks."""
        replica = self._pick(tried)
        tried.add(replica)
        self._enter(replica)
        chunks = replica.backend.stream(payload, trace_headers)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = None
        except UpstreamError as exc:
            self._leave(replica)
            self._failed(replica, exc)
            await chunks.aclose()
            raise
        except BaseException:
            self._leave(replica)
            replica.probing = False
            await chunks.aclose()
            raise
        self._answered(replica)
        return replica, chunks, first

    # ------------------------------------------------------------------ the Backend interface
    async def complete(self, payload: dict[str, Any], trace_headers: dict[str, str] | None = None) -> bytes:
        tried: set[Replica] = set()
        try:
            return await self._complete_once(tried, payload, trace_headers)
        except UpstreamError as exc:
            if not self._worth_retrying(exc):
                raise
            first = exc
        await asyncio.sleep(self._pause(first, 1))
        async for attempt in self._retries(first):
            with attempt:
                return await self._complete_once(tried, payload, trace_headers)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def stream(self, payload: dict[str, Any],
                     trace_headers: dict[str, str] | None = None) -> AsyncIterator[bytes]:
        tried: set[Replica] = set()
        try:
            replica, chunks, first = await self._open_stream_once(tried, payload, trace_headers)
        except UpstreamError as exc:
            if not self._worth_retrying(exc):
                raise
            await asyncio.sleep(self._pause(exc, 1))
            async for attempt in self._retries(exc):
                with attempt:
                    replica, chunks, first = await self._open_stream_once(tried, payload, trace_headers)
        try:
            if first is None:
                return
            yield first
            async for chunk in chunks:  # after the first chunk nothing is retried
                yield chunk
        finally:
            self._leave(replica)
            await chunks.aclose()

    async def check_ready(self) -> str:
        """"ok" while some replica can take calls; the per-replica view is ``replica_states``."""
        now = time.monotonic()
        states = self.replica_states(now)
        usable = [r for r in self.replicas if r.cooling_until <= now]
        if not usable:
            raise UpstreamError(503, "every replica is cooling down: " + "; ".join(f"{a}: {s}" for a, s in states.items()))
        probes = []
        for r in usable:
            try:
                probes.append(await r.backend.check_ready())
            except UpstreamError as exc:
                states[r.address] = f"unreachable: {exc.message}"
        if not probes:
            raise UpstreamError(503, "no replica answers: " + "; ".join(f"{a}: {s}" for a, s in states.items()))
        return "ok" if len(probes) == len(self.replicas) else f"ok ({len(probes)} of {len(self.replicas)} replicas)"

    def replica_states(self, now: float | None = None) -> dict[str, str]:
        now = time.monotonic() if now is None else now
        return {r.address: r.state(now) for r in self.replicas}


class _Attempt:
    """What tenacity's wait strategies read of a retry's state: the number of the try that failed."""

    __slots__ = ("attempt_number",)

    def __init__(self, attempt_number: int):
        self.attempt_number = attempt_number


def replica_states(backend: Backend) -> dict[str, str] | None:
    """The replicas' states of a remote backend (seen through a tool-calling wrapper); None for others."""
    inner = getattr(backend, "inner", backend)
    return inner.replica_states() if isinstance(inner, ReplicatedBackend) else None


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: not worth parsing for a retry decision
    return seconds if seconds >= 0 else None
