"""An agent's steps as Responses output items and their stream events (``POST /v1/responses`` with
``model`` naming an agent; the serving side is ``gateway/responses_agent.py``).

The agent reports its run as Husky's history lines (``Step: [tool] subtask``, then ``Output: ...``;
``Step: [finish]`` last), a ``code`` step's code and a ``search`` step's query in between, and the
answer last (``agents/husky.py``, its ``on_event`` sink). ``StepItems.feed`` turns each report into
items of the response and the events that announce them, numbered by the ``EventWriter`` the text
answer is written through too. Per step, in order:

- a ``reasoning`` item (``rs_``) whose one ``summary_text`` part is the step in Husky's format,
  ``Step: [code] subtask\\nOutput: ...``: ``response.output_item.added``,
  ``response.reasoning_summary_part.added``, ``response.reasoning_summary_text.delta`` with the step
  line as soon as the step is decided and another with ``\\nOutput: ...`` when its output is known,
  ``response.reasoning_summary_text.done``, ``response.reasoning_summary_part.done``,
  ``response.output_item.done``;
- after it, for a ``code`` step whose expert wrote code, a ``code_interpreter_call`` item (``ci_``):
  ``code``, ``outputs: [{"type": "logs", "logs": <the step's output>}]``, the response's
  ``container_id``; events ``response.output_item.added``, ``response.code_interpreter_call.in_progress``,
  ``response.code_interpreter_call_code.delta`` / ``.done``, ``response.code_interpreter_call.interpreting``,
  ``response.code_interpreter_call.completed``, ``response.output_item.done``;
- for a ``search`` step whose expert wrote a query, a ``web_search_call`` item (``ws_``) with
  ``action: {"type": "search", "query": ...}``: ``response.output_item.added``,
  ``response.web_search_call.in_progress`` / ``.searching`` / ``.completed``, ``response.output_item.done``.

A tool item's status is ``failed`` (and its ``.completed`` event left out) when the expert failed
after writing its code or query (the step's output is then ``Error: the ... expert failed: ...``);
a program that ran and raised is a ``completed`` call whose logs hold the error, as OpenAI reports it.
Items follow one another: each is done before the next is added.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from octogate.core.responses_events import EventWriter
from octogate.core.responses_items import new_id
from octogate.core.responses_translate import finish_response, usage_of

_STEP = re.compile(r"Step: \[(\w+)\]")
_OUTPUT = "Output: "


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(orjson.dumps(item))


def _failed(tool: str, output: str) -> bool:
    return output.startswith(f"Error: the {tool} expert failed")


def container_of(response_id: str) -> str:
    """The ``container_id`` of a response's code steps: one per response, derived from its id."""
    return "cntr_" + response_id.removeprefix("resp_")


class StepItems:
    """An agent's reports in, output items and SSE event bytes out (``b""`` when a report makes none)."""

    def __init__(self, writer: EventWriter, container_id: str):
        self.writer = writer
        self.container_id = container_id
        self.item: dict[str, Any] | None = None  # the step's reasoning item, while the step runs
        self.tool = ""
        self.code: str | None = None
        self.query: str | None = None

    @property
    def output(self) -> list[dict[str, Any]]:
        return self.writer.response.output

    def feed(self, kind: str, text: str) -> bytes:
        if kind == "reasoning":
            text = text.rstrip("\n")
            if text.startswith("Step: "):
                line, sep, output = text.partition("\n" + _OUTPUT)
                out = self._close() + self._begin(line)
                if sep or self.tool == "finish":
                    out += self._end(output if sep else None)
                return out
            if text.startswith(_OUTPUT) and self.item is not None:
                return self._end(text[len(_OUTPUT):])
            return b""
        if kind == "code":
            self.code = text
            return b""
        if kind == "search":
            self.query = text
            return b""
        if kind == "content":
            return self._close() + self.writer.feed(orjson.dumps(
                {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}))
        return b""

    def finish(self, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The closing events once the agent has answered; the response is then final. ``length``
        (max_steps ran out) makes it ``incomplete`` with ``incomplete_details.reason: "max_output_tokens"``."""
        out = self._close()
        writer = self.writer
        writer.response.usage = usage_of({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens})
        out += writer.close()  # the answer's message item is whole either way: it closes as completed
        if finish_reason == "length":
            finish_response(writer.response, "length")
            writer.response.completed_at = None
        return out

    # ------------------------------------------------------------------ one step
    def _begin(self, line: str) -> bytes:
        m = _STEP.match(line)
        self.tool = m.group(1) if m else ""
        self.code = self.query = None
        item = self.item = {"id": new_id("rs"), "type": "reasoning", "status": "in_progress",
                            "summary": [{"type": "summary_text", "text": line}]}
        index = len(self.output)
        self.output.append(item)
        ev = self.writer.event
        shown = {**item, "summary": []}
        return (ev("response.output_item.added", output_index=index, item=shown)
                + ev("response.reasoning_summary_part.added", item_id=item["id"], output_index=index,
                     summary_index=0, part={"type": "summary_text", "text": ""})
                + ev("response.reasoning_summary_text.delta", item_id=item["id"], output_index=index,
                     summary_index=0, delta=line))

    def _end(self, output: str | None) -> bytes:
        item, self.item = self.item, None
        assert item is not None
        index = len(self.output) - 1
        part = item["summary"][0]
        ev = self.writer.event
        out = b""
        if output is not None:
            delta = f"\n{_OUTPUT}{output}"
            part["text"] += delta
            out += ev("response.reasoning_summary_text.delta", item_id=item["id"], output_index=index,
                      summary_index=0, delta=delta)
        item["status"] = "completed"
        out += (ev("response.reasoning_summary_text.done", item_id=item["id"], output_index=index, summary_index=0,
                   text=part["text"])
                + ev("response.reasoning_summary_part.done", item_id=item["id"], output_index=index, summary_index=0,
                     part=dict(part))
                + ev("response.output_item.done", output_index=index, item=_copy(item)))
        if self.tool == "code" and self.code is not None:
            out += self._code_call(output or "")
        elif self.tool == "search" and self.query is not None:
            out += self._search_call(output or "")
        self.code = self.query = None
        return out

    def _close(self) -> bytes:
        """A step still open when the next report comes (none is, in Husky's order) ends without output."""
        return self._end(None) if self.item is not None else b""

    def _code_call(self, output: str) -> bytes:
        code = self.code or ""
        item = {"id": new_id("ci"), "type": "code_interpreter_call", "status": "in_progress", "code": "",
                "container_id": self.container_id, "outputs": None}
        index = len(self.output)
        self.output.append(item)
        ev, at = self.writer.event, {"item_id": item["id"], "output_index": index}
        out = (ev("response.output_item.added", output_index=index, item=_copy(item))
               + ev("response.code_interpreter_call.in_progress", **at)
               + ev("response.code_interpreter_call_code.delta", **at, delta=code)
               + ev("response.code_interpreter_call_code.done", **at, code=code)
               + ev("response.code_interpreter_call.interpreting", **at))
        item["code"] = code
        item["outputs"] = [{"type": "logs", "logs": output}]
        if _failed("code", output):
            item["status"] = "failed"
        else:
            item["status"] = "completed"
            out += ev("response.code_interpreter_call.completed", **at)
        return out + ev("response.output_item.done", output_index=index, item=_copy(item))

    def _search_call(self, output: str) -> bytes:
        item = {"id": new_id("ws"), "type": "web_search_call", "status": "in_progress",
                "action": {"type": "search", "query": self.query or ""}}
        index = len(self.output)
        self.output.append(item)
        ev, at = self.writer.event, {"item_id": item["id"], "output_index": index}
        out = (ev("response.output_item.added", output_index=index, item=_copy(item))
               + ev("response.web_search_call.in_progress", **at)
               + ev("response.web_search_call.searching", **at))
        if _failed("search", output):
            item["status"] = "failed"
        else:
            item["status"] = "completed"
            out += ev("response.web_search_call.completed", **at)
        return out + ev("response.output_item.done", output_index=index, item=_copy(item))
