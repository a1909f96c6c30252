"""A chat stream turned into OpenAI's Responses events, each with its ``sequence_number``:
``response.created``, ``response.in_progress``, per output item ``response.output_item.added``,
(``response.content_part.added``, ``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done`` | ``response.function_call_arguments.delta``...,
``response.function_call_arguments.done`` | ``response.custom_tool_call_input.delta``...,
``response.custom_tool_call_input.done``), ``response.output_item.done``, then
``response.completed`` (``response.incomplete`` when cut off; ``error`` and ``response.failed``
when the backend fails after the stream began).
"""

from __future__ import annotations

from typing import Any

import orjson

from octogate.core.errors import OpenAIError
from octogate.core.responses_items import new_id
from octogate.core.responses_translate import (ResponseObject, call_item, finish_response, message_item, responses_error,
                                               text_logprobs, usage_of)


# ---------------------------------------------------------------- the stream
class EventWriter:
    """A chat stream's chunks in, Responses events out (SSE bytes), numbered from 0."""

    def __init__(self, shell: ResponseObject, logprobs: bool):
        self.response = shell
        self.logprobs = logprobs
        self.sequence = 0
        self.open_item: dict[str, Any] | None = None  # the output item being streamed
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> function_call item
        self.finish_reason: str | None = None
        self.text_logprobs: list[dict[str, Any]] = []

    def event(self, kind: str, **fields: Any) -> bytes:
        body = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(body) + b"\n\n"

    def start(self) -> bytes:
        data = self.response.model_dump()
        return self.event("response.created", response=data) + self.event("response.in_progress", response=data)

    def feed(self, chunk: bytes) -> bytes:
        """The events one chat chunk makes (b"" for none; a chunk that is not what the protocol says, too)."""
        try:
            parsed = orjson.loads(chunk)
        except orjson.JSONDecodeError:
            return b""
        if not isinstance(parsed, dict):
            return b""
        try:
            return self._events(parsed)
        except (AttributeError, TypeError, KeyError):
            return b""

    def _events(self, parsed: dict[str, Any]) -> bytes:
        out = []
        if isinstance(parsed.get("usage"), dict):
            self.response.usage = usage_of(parsed["usage"])
        for choice in parsed.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.append(self._text(text, text_logprobs(choice.get("logprobs")) if self.logprobs else []))
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    out.append(self._call(call))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return b"".join(out)

    def _text(self, text: str, logprobs: list[dict[str, Any]]) -> bytes:
        out = b""
        item = self.open_item
        if item is None or item["type"] != "message":
            out += self._close()
            item = self.open_item = message_item("", [] if self.logprobs else None, status="in_progress")
            item["content"] = []
            index = len(self.response.output)
            self.response.output.append(item)
            out += self.event("response.output_item.added", output_index=index, item=_copy(item))
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item["content"].append(part)
            out += self.event("response.content_part.added", item_id=item["id"], output_index=index,
                              content_index=0, part=_copy(part))
        part = item["content"][0]
        part["text"] += text
        if self.logprobs:
            part["logprobs"].extend(logprobs)
        return out + self.event("response.output_text.delta", item_id=item["id"], output_index=self._index(item),
                                content_index=0, delta=text, logprobs=logprobs)

    def _call(self, call: dict[str, Any]) -> bytes:
        out = b""
        index = call.get("index", 0)
        item = self.calls.get(index)
        first = item is None
        if item is None:
            item = call_item(call)
            if item is None:
                return b""
            out += self._close()
            item[_PIECE[item["type"]]] = ""  # what the first delta carries is added below, as a delta event
            self.calls[index] = self.open_item = item
            self.response.output.append(item)
            out += self.event("response.output_item.added", output_index=self._index(item), item=_copy(item))
        field = _PIECE[item["type"]]
        body = call.get("custom" if item["type"] == "custom_tool_call" else "function") or {}
        if not first and body.get("name"):
            item["name"] += body["name"]
        piece = body.get(field)
        if piece:
            item[field] += piece
            out += self.event(_DELTA[item["type"]], item_id=item["id"], output_index=self._index(item), delta=piece)
        return out

    def _index(self, item: dict[str, Any]) -> int:
        for i, candidate in enumerate(self.response.output):
            if candidate is item:
                return i
        raise AssertionError("item not in output")

    def _close(self) -> bytes:
        item, self.open_item = self.open_item, None
        if item is None:
            return b""
        index = self._index(item)
        out = b""
        status = "incomplete" if self.finish_reason in ("length", "content_filter") else "completed"
        if item["type"] == "message":
            part = item["content"][0]
            out += self.event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                              text=part["text"], logprobs=part.get("logprobs", []))
            out += self.event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                              part=_copy(part))
        elif item["type"] == "custom_tool_call":
            out += self.event("response.custom_tool_call_input.done", item_id=item["id"], output_index=index,
                              input=item["input"])
        else:
            out += self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                              name=item["name"], arguments=item["arguments"])
        item["status"] = status
        return out + self.event("response.output_item.done", output_index=index, item=_copy(item))

    def close(self) -> bytes:
        """The closing events of the open output item, once the chat stream has ended; the response
        is then final (``self.response``: status, output, usage), to be stored before ``completed``."""
        out = self._close()
        finish_response(self.response, self.finish_reason)
        return out

    def completed(self) -> bytes:
        """``response.completed`` (``response.incomplete`` when cut off), after ``close``."""
        response = self.response
        kind = "response.incomplete" if response.status == "incomplete" else "response.completed"
        return self.event(kind, response=response.model_dump())

    def fail(self, error: OpenAIError) -> bytes:
        """The closing events of a stream whose backend failed after it began."""
        error = responses_error(error)
        response = self.response
        response.status = "failed"
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"
        response.error = {"code": code, "message": error.message}
        return (self.event("error", code=error.code or code, message=error.message, param=error.param)
                + self.event("response.failed", response=response.model_dump()))


_PIECE = {"function_call": "arguments", "custom_tool_call": "input"}  # the field a call's deltas add to
_DELTA = {"function_call": "response.function_call_arguments.delta",
          "custom_tool_call": "response.custom_tool_call_input.delta"}


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(orjson.dumps(item))
