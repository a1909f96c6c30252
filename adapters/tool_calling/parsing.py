"""Calls read back from model output: checked against their schemas (constrained output), read
loosely (the unconstrained baseline), and written as OpenAI ``tool_calls`` objects and stream deltas."""

from __future__ import annotations

import json
import re
from typing import Any

from octogate.core.json_schema import validation_error
from octogate.core.responses import AnyToolCall, ChunkDelta, ResponseCustomToolCall, ResponseToolCall, ToolCallDelta
from octogate.core.tool_plan import ToolPlan


class InvalidCall(ValueError):
    pass


def parse_calls(text: str, plan: ToolPlan) -> list[tuple[str, Any]]:
    """The calls in the model's output, each checked against its function's schema."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidCall(f"not JSON ({exc})") from None
    items = value if isinstance(value, list) else [value]
    if not items or (len(items) > 1 and not plan.parallel):
        raise InvalidCall(f"{len(items)} calls where {'1' if not plan.parallel else '1 or more'} are allowed")
    functions = plan.by_name()
    calls = []
    for item in items:
        function = functions.get(item.get("name")) if isinstance(item, dict) else None
        key = function.value_key if function is not None else "arguments"
        value = item.get(key) if isinstance(item, dict) else None
        if function is None or not isinstance(value, str if function.kind == "custom" else dict):
            raise InvalidCall(f"not a call of an offered tool: {json.dumps(item)[:200]}")
        problem = validation_error(function.schema, value)
        if not problem and function.regex is not None and re.fullmatch(function.regex, value) is None:
            problem = f"the input {json.dumps(value)[:100]} does not match the regex in full"
        if problem:
            what = "input" if function.kind == "custom" else "arguments"
            raise InvalidCall(f"{what} of {item['name']} do not match its {'grammar' if what == 'input' else 'schema'} "
                              f"at {problem}")
        calls.append((item["name"], value))
    return calls


def loose_calls(text: str, plan: ToolPlan) -> list[ResponseToolCall]:
    """Calls read from *unconstrained* text, as a client of a model without octogate would read them:
    the outermost JSON object or array in the text, each item naming an offered function. The
    arguments are passed on exactly as written, valid or not (that is what the baseline measures)."""
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    end = max(text.rfind("}"), text.rfind("]"))
    if start < 0 or end <= start:
        return []
    try:
        value = json.loads(text[start:end + 1])
    except ValueError:
        return []
    names = plan.by_name()
    calls = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict) and item.get("name") in names:
            args = item.get("arguments", item.get("parameters", {}))
            raw = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False, separators=(",", ":"))
            calls.append(ResponseToolCall.of(item["name"], raw))
    return calls


def tool_call_objects(calls: list[tuple[str, Any]], plan: ToolPlan | None = None) -> list[AnyToolCall]:
    """OpenAI's call objects: a custom tool's call (``custom.input``, the text) for the plan's custom
    tools, a function call (``function.arguments``, compact JSON) otherwise."""
    custom = {f.name for f in plan.functions if f.kind == "custom"} if plan is not None else set()
    return [ResponseCustomToolCall.of(name, value) if name in custom
            else ResponseToolCall.of(name, json.dumps(value, ensure_ascii=False, separators=(",", ":")))
            for name, value in calls]


def stream_deltas(tool_calls: list[AnyToolCall], piece: int = 12) -> list[ChunkDelta]:
    """The ``delta`` objects OpenAI streams for these calls: name first, then argument fragments (a
    custom call's ``custom.input`` fragments, without ``type``: see ``core/responses.py``)."""
    deltas = []
    for index, call in enumerate(tool_calls):
        if isinstance(call, ResponseCustomToolCall):
            deltas.append(ChunkDelta(tool_calls=[ToolCallDelta(index=index, id=call.id,
                                                               custom={"name": call.custom.name, "input": ""})]))
            text = call.custom.input
            for start in range(0, len(text), piece):
                deltas.append(ChunkDelta(tool_calls=[ToolCallDelta(index=index,
                                                                   custom={"input": text[start:start + piece]})]))
            continue
        fn = call.function
        deltas.append(ChunkDelta(tool_calls=[ToolCallDelta(index=index, id=call.id, type="function",
                                                           function={"name": fn.name, "arguments": ""})]))
        args = fn.arguments
        for start in range(0, len(args), piece):
            deltas.append(ChunkDelta(tool_calls=[ToolCallDelta(index=index,
                                                               function={"arguments": args[start:start + piece]})]))
    return deltas
