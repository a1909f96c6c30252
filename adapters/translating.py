"""The template of a backend that makes its own answers instead of forwarding the client's request:
the embedded model, and octogate's tool calls for remote models.

``TranslatingBackend`` runs every request as **prepare** (the payload validated into the protocol's
``ChatCompletionRequest``, then translated for the model; a bad request is a 400 here, before any
generation), **generate** (an ``Answer``: choices of text or tool calls, and usage) and **render**
(one ``ChatCompletion``, or ``ChatCompletionChunk``s through a ``ChunkWriter``). A subclass writes
``prepare`` and ``generate``; one that can stream as it generates (the embedded model's text)
overrides ``generate_chunks``, whose default streams the whole answer once it is complete and
validated (so a refusal is still an HTTP error).
"""

from __future__ import annotations

import re
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from octogate.adapters.base import Backend
from octogate.adapters.tool_calling.parsing import stream_deltas
from octogate.core.errors import UpstreamError, from_validation_error
from octogate.core.protocol import ChatCompletionRequest
from octogate.core.responses import (
    AnyToolCall,
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessage,
    Choice,
    ChunkChoice,
    ChunkDelta,
    Usage,
    new_completion_id,
    render,
)

_PIECES = re.compile(r"\s*\S+|\s+$")


def validated(payload: dict[str, Any]) -> ChatCompletionRequest:
    """The payload as the node built it (persona, node params, stored history included), as the protocol model."""
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        err = from_validation_error(exc)
        raise UpstreamError(err.status, err.message, type=err.type, param=err.param, code=err.code) from None


@dataclass
class AnswerChoice:
    """One choice: text, or tool calls."""

    content: str | None = None
    tool_calls: list[AnyToolCall] | None = None
    finish_reason: str = "stop"
    logprobs: dict[str, Any] | None = None  # {"content": [...], "refusal": None} when asked for

    @classmethod
    def calls(cls, tool_calls: list[AnyToolCall]) -> AnswerChoice:
        return cls(tool_calls=tool_calls, finish_reason="tool_calls")


@dataclass
class Answer:
    """What a translating backend generated, before it is rendered."""

    choices: list[AnswerChoice]
    usage: Usage | None = None


@dataclass
class Origin:
    """Who answers: the id, time, model and fingerprint every completion or chunk of one answer carries."""

    model: str | None
    id: str = field(default_factory=new_completion_id)
    created: int = field(default_factory=lambda: int(time.time()))
    system_fingerprint: str | None = None

    def completion(self, answer: Answer) -> ChatCompletion:
        choices = [
            Choice(index=i, message=ChatMessage(content=c.content, tool_calls=c.tool_calls), finish_reason=c.finish_reason,
                   logprobs=c.logprobs)
            for i, c in enumerate(answer.choices)
        ]
        return ChatCompletion(id=self.id, created=self.created, model=self.model,
                              system_fingerprint=self.system_fingerprint, choices=choices, usage=answer.usage)


class ChunkWriter:
    """Renders the pieces of a streamed answer as chunk bodies, all with one origin."""

    def __init__(self, origin: Origin, include_usage: bool):
        self.origin = origin
        self.include_usage = include_usage

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
        o = self.origin
        return render(ChatCompletionChunk(id=o.id, created=o.created, model=o.model,
                                          system_fingerprint=o.system_fingerprint, choices=choices, usage=usage))

    def delta(self, index: int, delta: ChunkDelta, finish_reason: str | None = None,
              logprobs: dict[str, Any] | None = None) -> bytes:
        return self._chunk([ChunkChoice(index=index, delta=delta, finish_reason=finish_reason, logprobs=logprobs)])

    def start(self, index: int, calls: bool = False) -> bytes:
        """The first chunk of a choice: its role (with ``content: null`` when tool calls follow)."""
        return self.delta(index, ChunkDelta(role="assistant", content=None if calls else ""))

    def text(self, index: int, text: str, logprobs: list[dict[str, Any]] | None = None) -> bytes:
        return self.delta(index, ChunkDelta(content=text),
                          logprobs=None if logprobs is None else {"content": logprobs, "refusal": None})

    def finish(self, index: int, reason: str) -> bytes:
        return self.delta(index, ChunkDelta(), reason)

    def usage(self, usage: Usage | None) -> Iterator[bytes]:
        """The usage chunk, when the client asked for one and there is usage to tell."""
        if self.include_usage and usage is not None:
            yield self._chunk([], usage)

    def answer(self, answer: Answer) -> Iterator[bytes]:
        """A whole answer as a stream: per choice its start, its text in word pieces or its calls'
        deltas, its finish; then usage."""
        for index, choice in enumerate(answer.choices):
            if choice.tool_calls is not None:
                yield self.start(index, calls=True)
                for delta in stream_deltas(choice.tool_calls):
                    yield self.delta(index, delta)
            else:
                yield self.start(index)
                for piece in _PIECES.findall(choice.content or ""):
                    yield self.text(index, piece)
            yield self.finish(index, choice.finish_reason)
        yield from self.usage(answer.usage)


class TranslatingBackend(Backend):
    """prepare -> generate -> render (module docstring). A job is whatever ``prepare`` returns; None
    means the request needs no translation and goes to ``forward_complete``/``forward_stream``."""

    @abstractmethod
    def prepare(self, request: ChatCompletionRequest, payload: dict[str, Any],
                trace_headers: dict[str, str] | None) -> Any:
        """The request translated for the model; raise ``UpstreamError`` (400) for what it cannot take."""

    @abstractmethod
    async def generate(self, job: Any) -> Answer:
        """The whole answer."""

    @abstractmethod
    def origin(self, job: Any) -> Origin:
        """The id, time and model the answer is rendered with (called after ``generate``, for a backend
        that takes them from the model it asked)."""

    async def generate_chunks(self, job: Any, include_usage: bool) -> AsyncIterator[bytes]:
        """The answer as chunk bodies; by default the whole answer, generated and validated first."""
        answer = await self.generate(job)
        for chunk in ChunkWriter(self.origin(job), include_usage).answer(answer):
            yield chunk

    async def forward_complete(self, payload: dict[str, Any], trace_headers: dict[str, str] | None) -> bytes:
        raise NotImplementedError

    def forward_stream(self, payload: dict[str, Any], trace_headers: dict[str, str] | None) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def prepare_off_loop(self, request: ChatCompletionRequest, payload: dict[str, Any],
                               trace_headers: dict[str, str] | None) -> Any:
        """``prepare``, where the backend runs it: on the event loop by default; a backend whose
        preparation is CPU work (templating, tokenising) runs it elsewhere so other requests go on."""
        return self.prepare(request, payload, trace_headers)

    async def complete(self, payload: dict[str, Any], trace_headers: dict[str, str] | None = None) -> bytes:
        job = await self.prepare_off_loop(validated(payload), payload, trace_headers)
        if job is None:
            return await self.forward_complete(payload, trace_headers)
        answer = await self.generate(job)
        return render(self.origin(job).completion(answer))

    async def stream(self, payload: dict[str, Any],
                     trace_headers: dict[str, str] | None = None) -> AsyncIterator[bytes]:
        request = validated(payload)
        job = await self.prepare_off_loop(request, payload, trace_headers)
        if job is None:
            chunks = self.forward_stream(payload, trace_headers)
        else:
            chunks = self.generate_chunks(job, bool(request.stream_options and request.stream_options.include_usage))
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()  # a client gone mid-stream stops the generation (or the upstream call) now
