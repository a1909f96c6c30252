"""Chat turns as the embedded model's prompt sees them: plain (role, text) turns, earlier tool calls
written as the call JSON the model would have produced, ``role: "tool"`` results as tool turns, and
the offered functions listed in a system message after the leading system messages."""

from __future__ import annotations

import json
from typing import Any

from octogate.core.errors import UpstreamError
from octogate.core.tool_plan import ToolPlan


def text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for i, part in enumerate(content):
        if part.get("type") != "text":
            raise UpstreamError(
                400, f"The embedded model reads text only; content part type '{part.get('type')}' is not supported.",
                param=f"{where}.content[{i}].type", code="unsupported_content",
            )
        texts.append(part.get("text", ""))
    return "".join(texts)


def call_text(calls: list[tuple[str, Any]]) -> str:
    """Calls written the way the grammar makes the model write them."""
    objs = [{"name": name, "arguments": args} for name, args in calls]
    return json.dumps(objs[0] if len(objs) == 1 else objs, ensure_ascii=False)


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
        elif role == "assistant" and (m.get("tool_calls") or m.get("function_call")):
            raw = m.get("tool_calls") or [{"function": m["function_call"]}]
            calls = []
            for call in raw:
                fn = call.get("function") or {}
                try:
                    args = json.loads(fn.get("arguments") or "{}")
                except (TypeError, ValueError):
                    args = fn.get("arguments")
                calls.append((fn.get("name", ""), args))
            text = f"{text}\n{call_text(calls)}" if text else call_text(calls)
        flat.append({"role": role, "content": text})
    return flat


def tools_system_text(plan: ToolPlan) -> str:
    lines = ["You can call these functions:"]
    for f in plan.functions:
        lines.append(json.dumps({"name": f.name, "description": f.description, "parameters": f.schema},
                                ensure_ascii=False, separators=(",", ":")))
    lines.append('To call a function, reply with only JSON: {"name": "<function name>", "arguments": {<arguments>}}.')
    if plan.mode == "auto":
        lines.append("If no function is needed, answer in plain text.")
    return "\n".join(lines)


def with_tools(flat: list[dict[str, str]], plan: ToolPlan) -> list[dict[str, str]]:
    """The tools' system message, after the leading system messages (the persona's, the client's)."""
    lead = 0
    while lead < len(flat) and flat[lead]["role"] == "system":
        lead += 1
    return [*flat[:lead], {"role": "system", "content": tools_system_text(plan)}, *flat[lead:]]


def baseline_messages(flat: list[dict[str, str]]) -> list[dict[str, str]]:
    """The same system prompt with a content-free user turn: what ``auto`` calibrates against."""
    lead = 0
    while lead < len(flat) and flat[lead]["role"] == "system":
        lead += 1
    return [*flat[:lead], {"role": "user", "content": "N/A"}]
