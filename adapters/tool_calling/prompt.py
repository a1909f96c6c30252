"""Chat turns as a model without tool calling of its own sees them: earlier tool calls written as
the call JSON the model would have produced, the offered functions listed in a system message
after the leading system messages. ``flatten_messages`` makes the embedded model's plain (role,
text) turns (``role: "tool"`` results as tool turns); ``structured.plain_turns`` makes turns any
remote chat server accepts, with the same ``written_calls``."""

from __future__ import annotations

import json
from typing import Any

from octogate.core.errors import UpstreamError
from octogate.core.messages import content_text, leading_system
from octogate.core.tool_plan import ToolPlan


def text_of(content: Any, where: str) -> str:
    """The text of a message's content for a model that reads text only: any other part is a 400 naming it."""
    def refuse(i: int, part: Any) -> None:
        raise UpstreamError(
            400, f"The embedded model reads text only; content part type '{part.get('type')}' is not supported.",
            param=f"{where}.content[{i}].type", code="unsupported_content",
        )

    return content_text(content, on_other=refuse)


def call_text(calls: list[tuple[Any, ...]]) -> str:
    """Calls written the way the grammar makes the model write them: (name, arguments) for a
    function, (name, input, "input") for a custom tool."""
    objs = [{"name": name, (key[0] if key else "arguments"): value} for name, value, *key in calls]
    return json.dumps(objs[0] if len(objs) == 1 else objs, ensure_ascii=False)


def written_calls(message: dict[str, Any], text: str, names: dict[str, str] | None = None) -> str:
    """An assistant message's text with its ``tool_calls`` (or legacy ``function_call``) written after
    it as the call JSON the model is asked to write (a custom tool's call as ``{"name", "input"}``).
    ``names`` collects each call id's tool name."""
    raw = message.get("tool_calls") or ([{"function": message["function_call"]}] if message.get("function_call") else [])
    calls: list[tuple[Any, ...]] = []
    for call in raw:
        if call.get("type") == "custom":
            custom = call.get("custom") or {}
            if names is not None and call.get("id"):
                names[call["id"]] = custom.get("name", "")
            calls.append((custom.get("name", ""), custom.get("input", ""), "input"))
            continue
        fn = call.get("function") or {}
        if names is not None and call.get("id"):
            names[call["id"]] = fn.get("name", "")
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except (TypeError, ValueError):
            args = fn.get("arguments")
        calls.append((fn.get("name", ""), args))
    if not calls:
        return text
    return f"{text}\n{call_text(calls)}" if text else call_text(calls)


def flatten_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Chat messages as plain (role, text) turns the chat template can render, tool turns included."""
    flat = []
    for i, m in enumerate(messages):
        role = m.get("role")
        text = text_of(m.get("content"), f"messages[{i}]")
        if role == "developer":
            role = "system"
        elif role == "function":
            role = "tool"
        elif role == "assistant":
            text = written_calls(m, text)
        flat.append({"role": role, "content": text})
    return flat


def tools_system_text(plan: ToolPlan) -> str:
    """The offered tools, one compact JSON line each (a custom tool with its ``input``: free text, or
    the regex it must match), and how to call them."""
    lines = ["You can call these functions:"]
    for f in plan.functions:
        if f.kind == "custom":
            listed = {"name": f.name, "description": f.description,
                      "input": f"text matching {f.schema['pattern']}" if "pattern" in f.schema else "free text"}
        else:
            listed = {"name": f.name, "description": f.description, "parameters": f.schema}
        lines.append(json.dumps(listed, ensure_ascii=False, separators=(",", ":")))
    if any(f.kind == "function" for f in plan.functions):
        lines.append('To call a function, reply with only JSON: {"name": "<function name>", "arguments": {<arguments>}}.')
    if any(f.kind == "custom" for f in plan.functions):
        lines.append('To call a function that takes text input, reply with only JSON: {"name": "<function name>", '
                     '"input": "<the text>"}.')
    if plan.mode == "auto":
        lines.append("If no function is needed, answer in plain text.")
    return "\n".join(lines)


def after_system(messages: list[dict[str, Any]], *inserted: dict[str, Any]) -> list[dict[str, Any]]:
    """``inserted`` put after the leading system messages (the persona's, the client's)."""
    lead = leading_system(messages)
    return [*messages[:lead], *inserted, *messages[lead:]]


def with_tools(flat: list[dict[str, str]], plan: ToolPlan) -> list[dict[str, str]]:
    """The tools' system message, after the leading system messages (the persona's, the client's)."""
    return after_system(flat, {"role": "system", "content": tools_system_text(plan)})


def baseline_messages(flat: list[dict[str, str]]) -> list[dict[str, str]]:
    """The same system prompt with a content-free user turn: what ``auto`` calibrates against."""
    return [*flat[:leading_system(flat)], {"role": "user", "content": "N/A"}]
